"""Reference varlen attention: one dense softmax attention per segment (the test oracle).

Readable and differentiable, works on every device and dtype; too slow for real use (a Python
loop over segments), so ``backend="auto"`` never picks it.
"""
from __future__ import annotations

import torch

from segblocks.ops.varlen_attention import SeqLens

__all__ = ["varlen_attention_reference"]


def varlen_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seqlens: SeqLens, scale: float
) -> torch.Tensor:
    """Segment ``i``: ``softmax(scale * Q^i K^iT) V^i`` per head (HRSAM §3.2, Fig. 3 left).

    Half precision is computed in float32.

    Args:
        q: ``(Nq, H, D)``; k, v: ``(Nkv, H, D)``; seqlens: the segment description.
        scale: logit scale.

    Returns:
        ``(Nq, H, D)`` in ``q.dtype``.
    """
    compute = torch.promote_types(q.dtype, torch.float32)
    outs = [q.new_zeros(0, *q.shape[1:]).to(compute)]
    for i in range(seqlens.num_segments):
        q0, q1 = seqlens.q_start_py[i], seqlens.q_start_py[i + 1]
        k0, k1 = seqlens.kv_start_py[i], seqlens.kv_start_py[i + 1]
        if q1 == q0:
            continue
        qi = q[q0:q1].to(compute).transpose(0, 1)  # H x Lq x D
        ki = k[k0:k1].to(compute).transpose(0, 1)  # H x Lkv x D
        vi = v[k0:k1].to(compute).transpose(0, 1)  # H x Lkv x D
        attn = torch.softmax(scale * qi @ ki.transpose(1, 2), dim=-1)  # H x Lq x Lkv
        outs.append((attn @ vi).transpose(0, 1))  # Lq x H x D
    return torch.cat(outs).to(q.dtype)
