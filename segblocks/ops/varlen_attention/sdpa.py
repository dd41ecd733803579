"""Dense-mask varlen attention: ``F.scaled_dot_product_attention`` with a block-diagonal mask.

Differentiable everywhere. The boolean mask and the scores cost ``O(Nq * Nkv)``, so ``auto``
prefers the ``padded`` backend unless its padded batch would be larger (very unequal segments).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from segblocks.ops.varlen_attention import SeqLens

__all__ = ["varlen_attention_sdpa"]


def varlen_attention_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seqlens: SeqLens, scale: float
) -> torch.Tensor:
    """Block-diagonal attention through one masked SDPA call over all heads.

    Every query row has at least one allowed key (non-empty query segments have non-empty key
    segments), so no row is fully masked and no NaN appears.

    Args:
        q: ``(Nq, H, D)``; k, v: ``(Nkv, H, D)``; seqlens: the segment description.
        scale: logit scale.

    Returns:
        ``(Nq, H, D)``.
    """
    # Rebuilt per call rather than cached on ``seqlens``: it is as large as the scores.
    mask = seqlens.materialize(q.device)  # Nq x Nkv
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask, scale=scale  # H x N x D
    )
    return out.transpose(0, 1)  # Nq x H x D
