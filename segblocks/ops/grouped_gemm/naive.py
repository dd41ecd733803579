"""Reference and pure-PyTorch paths of the grouped GEMM (Inter2Former §3.6, Eq. 19-20).

Rows of ``x`` are sorted by group (expert) so that group ``e`` is the contiguous slice
``offsets[e]:offsets[e + 1]``; every slice is multiplied by its own weight:
``out[s:t] = x[s:t] @ weight[e]^T + bias[e]``.

* :func:`grouped_gemm_loop` — one ``addmm`` per non-empty group (the authors' C++ extension does
  this with ``at::parallel_for`` over experts, YouHuang67/inter2former,
  ``inter2former/cpp_extension/fast_moe/fast_moe_linear.cpp``); the reference.
* :func:`grouped_gemm_bmm` — the CPU fast path: the groups are scattered into a zero-padded
  ``(E, L_max, K)`` batch and multiplied by **one** ``torch.baddbmm``, then gathered back. Cost
  ``E * L_max`` rows instead of ``M``; with balanced experts (aux-loss-free balancing keeps them
  so) ``L_max ≈ M / E`` and the single call replaces ``E`` dispatches.
"""
from __future__ import annotations

import torch

__all__ = ["group_rows", "grouped_gemm_bmm", "grouped_gemm_loop"]


def group_rows(offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Group id and position inside the group of every sorted row.

    Args:
        offsets: ``(E + 1,)`` int64 cumulative row counts (``offsets[0] == 0``).

    Returns:
        ``group`` ``(M,)``, ``slot`` ``(M,)`` (row index within its group) and ``L_max``.
    """
    counts = offsets[1:] - offsets[:-1]  # E
    M = int(offsets[-1])
    E = counts.numel()
    group = torch.repeat_interleave(torch.arange(E, device=offsets.device), counts, output_size=M)  # M
    slot = torch.arange(M, device=offsets.device) - offsets[:-1][group]  # M
    return group, slot, int(counts.max()) if E else 0


def grouped_gemm_loop(x: torch.Tensor, offsets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``(M, K)`` sorted rows, ``(E + 1,)`` offsets, ``(E, N, K)`` weights, ``(E, N)`` bias → ``(M, N)``."""
    bounds = offsets.tolist()
    parts = []
    for e in range(weight.shape[0]):
        s, t = bounds[e], bounds[e + 1]
        if t > s:
            rows = x[s:t]  # n_e x K
            parts.append(rows @ weight[e].t() if bias is None else torch.addmm(bias[e], rows, weight[e].t()))
    if not parts:
        return x.new_zeros(0, weight.shape[1])
    return torch.cat(parts)  # M x N


def grouped_gemm_bmm(x: torch.Tensor, offsets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Same as :func:`grouped_gemm_loop` with one padded batched matmul (module docstring)."""
    M, K = x.shape
    E, N, _ = weight.shape
    if M == 0:
        return x.new_zeros(0, N)
    group, slot, L = group_rows(offsets)
    flat = group * L + slot  # M: position in the padded batch
    padded = x.new_zeros(E * L, K).index_copy(0, flat, x).view(E, L, K)  # E x L x K
    if bias is None:
        out = torch.bmm(padded, weight.transpose(1, 2))  # E x L x N
    else:
        out = torch.baddbmm(bias.unsqueeze(1), padded, weight.transpose(1, 2))  # E x L x N
    return out.reshape(E * L, N).index_select(0, flat)  # M x N
