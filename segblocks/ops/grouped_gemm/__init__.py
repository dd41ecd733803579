"""Grouped GEMM over rows sorted by group, with backend dispatch (Inter2Former §3.6, Eq. 19-20).

HMoE's "efficient parallel processing": the tokens routed to the experts are sorted by expert
(Eq. 19), so that expert ``e`` owns the contiguous rows ``offsets[e]:offsets[e + 1]`` (Eq. 20),
and every expert's linear layer becomes one matrix product on its slice::

    out[offsets[e]:offsets[e + 1]] = x[offsets[e]:offsets[e + 1]] @ weight[e]^T + bias[e]

Backends, tried in order by ``backend="auto"``:

=======  ====================================================  ============================
name     where                                                 dtypes
=======  ====================================================  ============================
triton   CUDA; CPU only under ``TRITON_INTERPRET=1`` and only  fp32, fp16 (+ bf16 on CUDA)
         when named (``segblocks_kernels.grouped_gemm``)
bmm      any device: one padded ``baddbmm`` (pure PyTorch, no  all floating
         C++ extension); on CPU unless the padding exceeds
         :data:`MAX_PAD_RATIO` times the rows
loop     ``torch.split`` + one ``addmm`` per group (no         all floating
         padding; the reference); CPU choice for unequal groups
=======  ====================================================  ============================

All backends are differentiable (the Triton one through its own backward). On CPU the choice is
by padding: a padded batch computes ``E * L_max`` rows instead of ``M`` but costs one call, the
per-group loop wastes nothing but costs ``E`` calls (about 10 µs of dispatch each) and a
concatenation; with balanced groups the batch wins at every group count measured, with very
unequal groups (one group holding most rows) the wasted padding dominates and the loop wins. :func:`select_grouped_gemm_backend` tells callers (HMoE) which path auto takes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from segblocks.ops._checks import check_same, check_tensor
from segblocks.ops._dispatch import Backend, _select, explain, triton_check
from segblocks.ops.grouped_gemm.naive import group_rows, grouped_gemm_bmm, grouped_gemm_loop, padded_layout

__all__ = [
    "GROUPED_GEMM_BACKENDS",
    "MAX_PAD_RATIO",
    "explain_grouped_gemm",
    "group_rows",
    "grouped_gemm",
    "grouped_gemm_bmm",
    "grouped_gemm_loop",
    "pad_ratio",
    "padded_layout",
    "select_grouped_gemm_backend",
    "sort_by_group",
]

#: CPU auto choice: ``bmm`` unless its padded batch has more than this many times the real rows
#: (``E * L_max / M``, very unequal groups), then ``loop``. Measured with HMoE's shapes (1024
#: rows, 256 → 512 / E → 256, one thread, balanced experts): the padded batch is faster from 2
#: to 64 groups (e.g. 1.9 vs 2.0 ms at 4, 0.85 vs 1.6 ms at 64); with few groups the matmuls
#: dominate, so a batch that is mostly padding loses.
MAX_PAD_RATIO = 2.0


def _bmm_check(x: torch.Tensor, weight: torch.Tensor, *tensors: torch.Tensor, requested: str = "auto",
               pad_ratio: float | None = None) -> list[str]:
    if requested == "auto" and x.device.type == "cpu" and pad_ratio is not None and pad_ratio > MAX_PAD_RATIO:
        return [f"padded batch E*L_max/M = {pad_ratio:.2f} > MAX_PAD_RATIO={MAX_PAD_RATIO} times the rows on cpu: "
                "one addmm per group (`loop`) pads nothing"]
    return []


GROUPED_GEMM_BACKENDS: tuple[Backend, ...] = (
    Backend(
        name="triton",
        loader="segblocks_kernels.grouped_gemm:grouped_gemm_triton",
        dtypes=frozenset({torch.float32, torch.float16, torch.bfloat16}),
        check=triton_check,
    ),
    Backend(name="bmm", loader=grouped_gemm_bmm, check=_bmm_check),
    Backend(name="loop", loader=grouped_gemm_loop),
)


def _validate(x, offsets, weight, bias) -> None:
    op = "grouped_gemm"
    M, K = check_tensor(x, "x", owner=op, shape=("M", "K"))
    E, N, _ = check_tensor(weight, "weight", owner=op, shape=("E", "N", ("K", K)))
    check_tensor(offsets, "offsets", owner=op, shape=(("E+1", E + 1),), dtype=torch.int64)
    if bias is not None:
        check_tensor(bias, "bias", owner=op, shape=(("E", E), ("N", N)))
    check_same({"x": x, "weight": weight, "bias": bias}, owner=op)
    if offsets.device != x.device:
        raise ValueError(f"grouped_gemm: offsets must be on {x.device}, got {offsets.device}")
    if offsets.device.type == "cpu" and E >= 0:
        first, last = int(offsets[0]), int(offsets[-1])
        if first != 0 or last != M or bool((offsets[1:] < offsets[:-1]).any()):
            raise ValueError(
                f"grouped_gemm: offsets must rise from 0 to M={M} (cumulative group sizes); got {offsets.tolist()}"
            )


def explain_grouped_gemm(x, offsets, weight, bias=None, *, backend: str = "auto") -> dict[str, list[str]]:
    """Why each backend would (empty list) or would not run these inputs with ``backend=``."""
    tensors = (x, weight) if bias is None else (x, weight, bias)
    counts = offsets[1:] - offsets[:-1]
    ratio = pad_ratio(counts) if counts.device.type == "cpu" else None
    return explain("grouped_gemm", GROUPED_GEMM_BACKENDS, tensors, requested=backend, pad_ratio=ratio)


def pad_ratio(counts: torch.Tensor) -> float:
    """``E * L_max / M`` of a padded batch over groups of ``counts`` rows (``(E,)``; host sync)."""
    total = int(counts.sum())
    return counts.numel() * int(counts.max()) / total if total else 1.0


def select_grouped_gemm_backend(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    counts: torch.Tensor | None = None,
    backend: str = "auto",
) -> Backend:
    """The backend :func:`grouped_gemm` runs for these inputs (raises with every refusal if none).

    For callers that keep a whole multi-layer computation in one layout (HMoE's padded expert
    FFN) instead of calling :func:`grouped_gemm` per layer. ``counts`` ``(E,)`` (rows per group)
    lets the CPU choice weigh the padding (:data:`MAX_PAD_RATIO`); it is read on CPU only.
    """
    tensors = (x, weight) if bias is None else (x, weight, bias)
    ratio = pad_ratio(counts) if counts is not None and counts.device.type == "cpu" else None
    return _select("grouped_gemm", GROUPED_GEMM_BACKENDS, tensors, backend, {"requested": backend, "pad_ratio": ratio})


def grouped_gemm(
    x: torch.Tensor,
    offsets: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Per-group linear layers on group-sorted rows (module docstring).

    Args:
        x: ``(M, K)`` rows sorted by group.
        offsets: ``(E + 1,)`` int64 cumulative group sizes, ``offsets[0] = 0``, ``offsets[E] = M``
            (empty groups allowed).
        weight: ``(E, N, K)`` one ``nn.Linear`` weight per group.
        bias: ``(E, N)`` or None.
        backend: ``"auto"`` or a name in :data:`GROUPED_GEMM_BACKENDS`.

    Returns:
        ``(M, N)`` in ``x.dtype``.
    """
    _validate(x, offsets, weight, bias)
    chosen = select_grouped_gemm_backend(x, weight, bias, counts=offsets[1:] - offsets[:-1], backend=backend)
    return chosen.load()(x, offsets, weight, bias)


def sort_by_group(groups: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 19: the permutation ``π`` sorting rows by group id, and the ``(E + 1,)`` offsets.

    Args:
        groups: ``(M,)`` integer group (expert) id of every row, in ``[0, num_groups)``.
        num_groups: ``E``.

    Returns:
        ``order`` ``(M,)`` (``x[order]`` is grouped, stable within a group) and ``offsets``.
    """
    check_tensor(groups, "groups", owner="sort_by_group", shape=("M",), dtype="integer")
    order = torch.argsort(groups, stable=True)  # M
    counts = torch.bincount(groups, minlength=num_groups)  # E
    return order, F.pad(counts.cumsum(0), (1, 0))  # E+1
