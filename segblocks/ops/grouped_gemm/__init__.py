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
bmm      any device: one zero-padded ``baddbmm`` (pure         all floating
         PyTorch, no C++ extension; the CPU fast path)
loop     one ``addmm`` per group (the reference); by name      all floating
=======  ====================================================  ============================

All backends are differentiable (the Triton one through its own backward).
"""
from __future__ import annotations

import torch

from segblocks.ops._checks import check_same, check_tensor
from segblocks.ops._dispatch import Backend, dispatch, explain, triton_usable
from segblocks.ops.grouped_gemm.naive import group_rows, grouped_gemm_bmm, grouped_gemm_loop

__all__ = [
    "GROUPED_GEMM_BACKENDS",
    "explain_grouped_gemm",
    "group_rows",
    "grouped_gemm",
    "grouped_gemm_bmm",
    "grouped_gemm_loop",
    "sort_by_group",
]


def _triton_check(x: torch.Tensor, *tensors: torch.Tensor, requested: str = "auto") -> list[str]:
    reasons = triton_usable(x.device)
    if x.device.type == "cpu":
        if x.dtype == torch.bfloat16:
            reasons.append("dtype=torch.bfloat16 is not supported by the Triton interpreter on cpu")
        if requested == "auto" and not reasons:
            reasons.append("the Triton interpreter on cpu is only used when asked for (backend='triton')")
    return reasons


GROUPED_GEMM_BACKENDS: tuple[Backend, ...] = (
    Backend(
        name="triton",
        loader="segblocks_kernels.grouped_gemm:grouped_gemm_triton",
        dtypes=frozenset({torch.float32, torch.float16, torch.bfloat16}),
        check=_triton_check,
    ),
    Backend(name="bmm", loader=grouped_gemm_bmm),
    Backend(name="loop", loader=grouped_gemm_loop, auto=False),
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
    return explain("grouped_gemm", GROUPED_GEMM_BACKENDS, tensors, requested=backend)


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
    tensors = (x, weight) if bias is None else (x, weight, bias)
    fn = dispatch("grouped_gemm", GROUPED_GEMM_BACKENDS, tensors, backend, requested=backend)
    return fn(x, offsets, weight, bias)


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
    offsets = torch.zeros(num_groups + 1, dtype=torch.int64, device=groups.device)
    offsets[1:] = counts.cumsum(0)
    return order, offsets
