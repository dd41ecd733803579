"""Padded-batch varlen attention: segments gathered into ``(S, L_max)`` rows, one SDPA call.

The segments that have queries become a batch: ``q`` → ``(S, Lq_max, H, D)`` and ``k``/``v`` →
``(S, Lkv_max, H, D)`` by one gather each, keys past a segment's length are masked out, and the
output rows of real queries are gathered back to ``(Nq, H, D)``. Scores cost
``S * Lq_max * Lkv_max`` per head instead of the dense mask's ``Nq * Nkv``: for windows (HRSAM
§3.3 Flash Swin, §3.4 KV-only padding) that is about ``Nkv / k²`` times less. Autograd runs
through the gathers and SDPA, so it trains on every device.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from segblocks.ops.varlen_attention import SeqLens

__all__ = ["varlen_attention_padded"]


class _Layout(NamedTuple):
    """Index tensors of the padded batch (``None`` where a plain reshape does the job)."""

    q_index: torch.Tensor | None  # (S * Lq_max,) rows of q; None: q is already S x Lq_max
    kv_index: torch.Tensor | None  # (S * Lkv_max,) rows of k, v; None: they are S x Lkv_max
    kv_mask: torch.Tensor | None  # (S, 1, 1, Lkv_max) bool, True = real key; None: no padding
    out_index: torch.Tensor | None  # (Nq,) rows of the S*Lq_max outputs that are real queries


def _rows(starts: list[int], lengths: list[int], width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather index ``(S, width)`` of segments laid out as rows, and which slots are real."""
    start = torch.tensor(starts, device=device)[:, None]  # S x 1
    slot = torch.arange(width, device=device)[None]  # 1 x width
    real = slot < torch.tensor(lengths, device=device)[:, None]  # S x width
    return torch.where(real, start + slot, start), real  # pad slots repeat the segment's first row


def _layout(seqlens: SeqLens) -> _Layout:
    s, lq, lkv = seqlens.padded_shape
    kept = [i for i, n in enumerate(seqlens.q_seqlens) if n > 0]  # empty query segments produce nothing
    q_lens, kv_lens = [seqlens.q_seqlens[i] for i in kept], [seqlens.kv_seqlens[i] for i in kept]
    q_index, q_real = _rows([seqlens.q_start_py[i] for i in kept], q_lens, lq, seqlens.device)
    kv_index, kv_real = _rows([seqlens.kv_start_py[i] for i in kept], kv_lens, lkv, seqlens.device)
    q_full = all(n == lq for n in q_lens)  # then the kept segments tile q (empty ones hold no rows)
    kv_full = all(n == lkv for n in kv_lens)
    return _Layout(
        q_index=None if q_full else q_index.flatten(),
        kv_index=None if kv_full and s * lkv == seqlens.total_kv else kv_index.flatten(),
        kv_mask=None if kv_full else kv_real[:, None, None, :],  # S x 1 x 1 x Lkv_max
        out_index=None if q_full else torch.arange(s * lq, device=seqlens.device)[q_real.flatten()],
    )


def _pack(x: torch.Tensor, index: torch.Tensor | None, s: int, width: int) -> torch.Tensor:
    if index is not None:
        x = x.index_select(0, index)  # S*width x H x D
    return x.reshape(s, width, *x.shape[1:]).transpose(1, 2)  # S x H x width x D


def varlen_attention_padded(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seqlens: SeqLens, scale: float
) -> torch.Tensor:
    """Block-diagonal attention as one batched SDPA call over the padded segments.

    Padded query rows attend like real ones and are then dropped; padded keys are masked, and
    every kept segment has at least one real key, so no softmax row is empty. When all kept
    key segments have the same length no mask is passed (SDPA may then use its fused kernel).

    Args:
        q: ``(Nq, H, D)``; k, v: ``(Nkv, H, D)``; seqlens: the segment description.
        scale: logit scale.

    Returns:
        ``(Nq, H, D)``.
    """
    s, lq, lkv = seqlens.padded_shape
    layout = seqlens.cached("padded", lambda: _layout(seqlens))
    out = F.scaled_dot_product_attention(
        _pack(q, layout.q_index, s, lq), _pack(k, layout.kv_index, s, lkv), _pack(v, layout.kv_index, s, lkv),
        attn_mask=layout.kv_mask, scale=scale,
    )  # S x H x Lq_max x D
    out = out.transpose(1, 2).reshape(s * lq, *q.shape[1:])  # S*Lq_max x H x D
    return out if layout.out_index is None else out.index_select(0, layout.out_index)  # Nq x H x D
