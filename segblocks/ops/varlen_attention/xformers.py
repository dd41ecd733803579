"""xformers varlen attention: ``memory_efficient_attention`` with a ``BlockDiagonalMask``.

The authors' own call (HRSAM/Inter2Former backbones). CUDA only; xformers is imported lazily.
"""
from __future__ import annotations

import torch

from segblocks.ops.varlen_attention import SeqLens

__all__ = ["varlen_attention_xformers"]


def _bias(seqlens: SeqLens, device: torch.device):
    """``(kv_rows, BlockDiagonalMask)``; ``kv_rows`` selects the keys of non-empty query segments
    (None when every segment has queries)."""
    from xformers.ops import fmha

    keep = [i for i, n in enumerate(seqlens.q_seqlens) if n > 0]
    rows = None
    if len(keep) < seqlens.num_segments:
        rows = [torch.arange(seqlens.kv_start_py[i], seqlens.kv_start_py[i + 1]) for i in keep]
        rows = torch.cat([torch.zeros(0, dtype=torch.long), *rows]).to(device)
    q_lens = [seqlens.q_seqlens[i] for i in keep]
    kv_lens = [seqlens.kv_seqlens[i] for i in keep]
    try:
        bias = fmha.BlockDiagonalMask.from_seqlens(q_lens, kv_lens, device=device)
    except TypeError:  # xformers < 0.0.24 has no device argument (it moves the bias itself)
        bias = fmha.BlockDiagonalMask.from_seqlens(q_lens, kv_lens)
    return rows, bias


def varlen_attention_xformers(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seqlens: SeqLens, scale: float
) -> torch.Tensor:
    """Block-diagonal attention through xformers (packed ``[1, N, H, D]`` BMHK inputs).

    Segments without queries are dropped first, with their keys: xformers' kernels are not
    guaranteed to accept zero-length query blocks.

    Args:
        q: ``(Nq, H, D)``; k, v: ``(Nkv, H, D)``; seqlens: the segment description.
        scale: logit scale.

    Returns:
        ``(Nq, H, D)``.
    """
    from xformers.ops import fmha

    key = ("xformers_bias", q.device)
    if key not in seqlens._cache:
        seqlens._cache[key] = _bias(seqlens, q.device)
    rows, bias = seqlens._cache[key]
    if rows is not None:
        k, v = k[rows], v[rows]
    out = fmha.memory_efficient_attention(q[None], k[None], v[None], attn_bias=bias, scale=scale)  # 1 x Nq x H x D
    return out[0]
