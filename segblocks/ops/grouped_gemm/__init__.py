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
         ``max_pad_rows`` rows per group
loop     ``torch.split`` + one ``addmm`` per group (no         all floating
         padding; the reference); CPU choice for unequal groups
=======  ====================================================  ============================

All backends are differentiable (the Triton one through its own backward). On CPU the choice is
by padding: a padded batch computes ``E * L_max`` rows instead of ``M`` but costs one call, the
per-group loop wastes nothing but costs one call per group; so the batch is taken while the
padding it adds stays under ``max_pad_rows`` rows per group
(:func:`pad_rows_per_group`), whatever the group count — with very unequal groups (one holding
most rows) the padding dominates and the loop wins. :func:`select_grouped_gemm_backend` tells
callers (HMoE) which path auto takes.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from segblocks.ops import _dispatch
from segblocks.ops._checks import check_same, check_tensor
from segblocks.ops._dispatch import Backend, _select, explain, triton_check
from segblocks.ops.grouped_gemm.naive import group_rows, grouped_gemm_bmm, grouped_gemm_loop, padded_layout

__all__ = [
    "GROUPED_GEMM_BACKENDS",
    "MAX_PAD_ROWS",
    "explain_grouped_gemm",
    "group_rows",
    "grouped_gemm",
    "grouped_gemm_bmm",
    "grouped_gemm_loop",
    "pad_rows_per_group",
    "padded_layout",
    "select_grouped_gemm_backend",
    "sort_by_group",
]

#: CPU auto choice for one grouped GEMM: ``bmm`` while its padding adds at most this many rows per
#: group (``L_max - M / E``), else ``loop``. The break-even measured on one
#: thread for single layers (K x N = 256 x 16 and 64 x 256, 4-64 groups, 64-4096 rows) lies
#: between 6 and 12 rows; callers that keep several layers in the padded layout pay the layout
#: once and pass a larger ``max_pad_rows`` (HMoE's padded FFN: 32).
MAX_PAD_ROWS = 8


def _bmm_check(x: torch.Tensor, weight: torch.Tensor, *tensors: torch.Tensor, requested: str = "auto",
               pad_rows: float | None = None, max_pad_rows: float = MAX_PAD_ROWS) -> list[str]:
    if requested == "auto" and x.device.type == "cpu" and pad_rows is not None and pad_rows > max_pad_rows:
        return [f"padded batch adds {pad_rows:.1f} rows per group > max_pad_rows={max_pad_rows} on cpu: "
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


def explain_grouped_gemm(x, offsets, weight, bias=None, *, backend: str = "auto",
                         max_pad_rows: float = MAX_PAD_ROWS) -> dict[str, list[str]]:
    """Why each backend would (empty list) or would not run these inputs with ``backend=``."""
    tensors = (x, weight) if bias is None else (x, weight, bias)
    counts = offsets[1:] - offsets[:-1]
    rows = pad_rows_per_group(counts, x.shape[0]) if counts.device.type == "cpu" else None
    return explain("grouped_gemm", GROUPED_GEMM_BACKENDS, tensors, requested=backend, pad_rows=rows,
                   max_pad_rows=max_pad_rows)


def pad_rows_per_group(counts: torch.Tensor, rows: int) -> float:
    """Padding rows a ``(E, L_max)`` batch adds per group, ``L_max - M / E``.

    ``counts``: ``(E,)`` rows per group (read on the host); ``rows``: ``M``.
    """
    if not counts.numel():
        return 0.0
    return int(counts.max()) - rows / counts.numel()


def select_grouped_gemm_backend(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    counts: torch.Tensor | None = None,
    max_count: int | None = None,
    backend: str = "auto",
    max_pad_rows: float = MAX_PAD_ROWS,
) -> Backend:
    """The backend :func:`grouped_gemm` runs for these inputs (raises with every refusal if none).

    For callers that keep a whole multi-layer computation in one layout (HMoE's padded expert
    FFN) instead of calling :func:`grouped_gemm` per layer. The CPU choice weighs the padding
    (:func:`pad_rows_per_group`) against ``max_pad_rows`` (:data:`MAX_PAD_ROWS`); it needs the
    largest group, given as ``max_count`` (``L_max``, when the caller has read it anyway) or
    read here from ``counts`` ``(E,)`` (rows per group) when they are on the CPU. With neither,
    the padding is not weighed (GPU callers that avoid a host sync).

    The choice is remembered per :func:`_choice_key` (HMoE asks on every sub-millisecond call).
    """
    tensors = (x, weight) if bias is None else (x, weight, bias)
    if max_count is not None:
        rows = max_count - x.shape[0] / weight.shape[0] if weight.shape[0] else 0.0
    elif counts is not None and counts.device.type == "cpu":
        rows = pad_rows_per_group(counts, x.shape[0])
    else:
        rows = None
    return _select("grouped_gemm", GROUPED_GEMM_BACKENDS, tensors, backend,
                   {"requested": backend, "pad_rows": rows, "max_pad_rows": max_pad_rows},
                   memo_key=_choice_key(tensors, rows is not None and rows > max_pad_rows))


def _choice_key(tensors, too_much_padding: bool) -> tuple:
    """Everything the checks of :data:`GROUPED_GEMM_BACKENDS` read: devices, dtypes, whether a
    backward is needed, Triton's availability (installed, ``TRITON_INTERPRET``) and whether the
    padding exceeds ``max_pad_rows`` (``_bmm_check``)."""
    return (*(t.device.type for t in tensors), *(t.dtype for t in tensors),
            torch.is_grad_enabled() and any(t.requires_grad for t in tensors),
            _dispatch.module_available("triton"), os.environ.get("TRITON_INTERPRET"), too_much_padding)


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
