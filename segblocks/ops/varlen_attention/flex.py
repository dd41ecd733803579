"""FlexAttention varlen attention with a document mask (``create_block_mask``).

Segment ids play the role of document ids: query ``i`` may see key ``j`` iff they belong to the
same segment. Fused (and sparse over ``128 x 128`` blocks) on CUDA and under ``torch.compile``;
eager on CPU it is an unfused, forward-only implementation, hence CPU is inference-only.
"""
from __future__ import annotations

import torch

from segblocks.ops.varlen_attention import SeqLens

__all__ = ["varlen_attention_flex"]


def _block_mask(seqlens: SeqLens, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    def build():
        q_ids, kv_ids = seqlens.to(device).segment_ids()

        def same_segment(b, h, q_idx, kv_idx):
            return q_ids[q_idx] == kv_ids[kv_idx]

        return create_block_mask(
            same_segment, B=None, H=None, Q_LEN=seqlens.total_q, KV_LEN=seqlens.total_kv, device=device
        )

    return seqlens.cached(("flex_block_mask", device), build)


def varlen_attention_flex(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seqlens: SeqLens, scale: float
) -> torch.Tensor:
    """Block-diagonal attention through ``flex_attention`` with a document ``BlockMask``.

    Args:
        q: ``(Nq, H, D)``; k, v: ``(Nkv, H, D)``; seqlens: the segment description.
        scale: logit scale.

    Returns:
        ``(Nq, H, D)``.
    """
    from torch.nn.attention.flex_attention import flex_attention

    if q.device.type == "cpu" and not torch.is_grad_enabled():
        # FlexAttention refuses CPU inputs with requires_grad even under no_grad.
        q, k, v = q.detach(), k.detach(), v.detach()
    out = flex_attention(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],  # 1 x H x N x D
        block_mask=_block_mask(seqlens, q.device), scale=scale,
    )
    return out[0].transpose(0, 1)  # Nq x H x D
