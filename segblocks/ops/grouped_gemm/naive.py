"""Reference and pure-PyTorch paths of the grouped GEMM (Inter2Former §3.6, Eq. 19-20).

Rows of ``x`` are sorted by group (expert) so that group ``e`` is the contiguous slice
``offsets[e]:offsets[e + 1]``; every slice is multiplied by its own weight:
``out[s:t] = x[s:t] @ weight[e]^T + bias[e]``.

* :func:`grouped_gemm_loop` — ``torch.split`` into the contiguous group slices and one ``addmm``
  per non-empty group (the authors' C++ extension does this with ``at::parallel_for`` over
  experts, YouHuang67/inter2former, ``inter2former/cpp_extension/fast_moe/fast_moe_linear.cpp``).
  No padding, one dispatch per group: the CPU choice for few groups, and the reference.
* :func:`grouped_gemm_bmm` — the groups are gathered into a padded ``(E, L_max, K)`` batch
  (:func:`padded_layout`; a padding slot re-reads a real row, so nothing is zero-filled and the
  padded rows' results are simply never read back) and multiplied by **one** ``torch.baddbmm``.
  Cost ``E * L_max`` rows instead of ``M``; with balanced experts (aux-loss-free balancing keeps
  them so) ``L_max ≈ M / E`` and the single call replaces ``E`` dispatches: the CPU choice for
  many groups.
"""
from __future__ import annotations

import torch

__all__ = ["group_rows", "grouped_gemm_bmm", "grouped_gemm_loop", "padded_layout"]


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


def padded_layout(offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Gather/scatter indices between sorted rows and the padded ``(E, L_max)`` batch.

    Args:
        offsets: ``(E + 1,)`` int64 cumulative row counts, ``offsets[E] = M > 0``.

    Returns:
        ``src`` ``(E * L_max,)``: the sorted row each padded slot reads (a padding slot reads row
        0, any real row would do: its result is dropped and its gradient is zero);
        ``flat`` ``(M,)``: the padded slot of every sorted row; ``L_max``.
    """
    counts = offsets[1:] - offsets[:-1]  # E
    L = int(counts.max())
    j = torch.arange(L, device=offsets.device)  # L
    src = offsets[:-1, None] + j  # E x L
    src = torch.where(j < counts[:, None], src, 0).reshape(-1)  # E*L
    group, slot, _ = group_rows(offsets)
    return src, group * L + slot, L


def grouped_gemm_loop(x: torch.Tensor, offsets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``(M, K)`` sorted rows, ``(E + 1,)`` offsets, ``(E, N, K)`` weights, ``(E, N)`` bias → ``(M, N)``."""
    counts = (offsets[1:] - offsets[:-1]).tolist()
    parts = []
    for e, rows in enumerate(x.split(counts)):  # n_e x K, contiguous group slices
        if rows.shape[0]:
            parts.append(rows @ weight[e].t() if bias is None else torch.addmm(bias[e], rows, weight[e].t()))
    if not parts:
        return x.new_zeros(0, weight.shape[1])
    return torch.cat(parts) if len(parts) > 1 else parts[0]  # M x N


def grouped_gemm_bmm(x: torch.Tensor, offsets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Same as :func:`grouped_gemm_loop` with one padded batched matmul (module docstring)."""
    M, K = x.shape
    E, N, _ = weight.shape
    if M == 0:
        return x.new_zeros(0, N)
    src, flat, L = padded_layout(offsets)
    padded = x.index_select(0, src).view(E, L, K)  # E x L x K
    if bias is None:
        out = torch.bmm(padded, weight.transpose(1, 2))  # E x L x N
    else:
        out = torch.baddbmm(bias.unsqueeze(1), padded, weight.transpose(1, 2))  # E x L x N
    return out.view(E * L, N).index_select(0, flat)  # M x N
