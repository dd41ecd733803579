"""Pure-PyTorch reference of the multi-scale deformable attention core (no compiled code).

One ``F.grid_sample`` per level, the same algorithm as the fallback in the Deformable DETR and
Mask2Former code bases, but importable on any machine. It is the CPU path of
:func:`segblocks.ops.ms_deform_attn.ms_deform_attn` and works on every device.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

__all__ = ["LevelShapes", "ms_deform_attn_pytorch"]

#: Python ``(H_l, W_l)`` per level: read without a host synchronisation.
LevelShapes = Tuple[Tuple[int, int], ...]


def ms_deform_attn_pytorch(
    value: torch.Tensor,
    spatial_shapes: LevelShapes,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention core (Deformable DETR, Eq. 3, inner sums).

    Bilinear sampling follows ``grid_sample(align_corners=False, padding_mode="zeros")``: a
    location ``(x, y)`` in ``[0, 1]`` maps to pixel ``(x * W - 0.5, y * H - 0.5)`` and corners
    outside the map contribute zero. Half-precision inputs are computed in float32 (grid
    coordinates in fp16 are off by up to a quarter pixel on a 256-wide map); the output has
    ``value.dtype``.

    Args:
        value: ``(B, S, M, D)`` per-head values of all levels, flattened row-major per level.
        spatial_shapes: ``((H_l, W_l), ...)`` Python ints (levels follow each other in ``S``).
        sampling_locations: ``(B, Lq, M, L, P, 2)`` normalized ``(x, y)``.
        attention_weights: ``(B, Lq, M, L, P)``.

    Returns:
        ``(B, Lq, M * D)``.
    """
    B, _, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    compute = torch.promote_types(
        torch.promote_types(value.dtype, sampling_locations.dtype),
        torch.promote_types(attention_weights.dtype, torch.float32),
    )
    grids = 2 * sampling_locations.to(compute) - 1  # B x Lq x M x L x P x 2, grid_sample's [-1, 1]
    samples = []
    start = 0
    for lvl, (h, w) in enumerate(spatial_shapes):
        v = value[:, start : start + h * w].to(compute)  # B x HW x M x D
        v = v.permute(0, 2, 3, 1).reshape(B * M, D, h, w)  # BM x D x H x W
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(B * M, Lq, P, 2)  # BM x Lq x P x 2
        samples.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))  # BM x D x Lq x P
        start += h * w
    sampled = torch.stack(samples, dim=-2).flatten(-2)  # BM x D x Lq x LP
    weights = attention_weights.to(compute).transpose(1, 2).reshape(B * M, 1, Lq, L * P)  # BM x 1 x Lq x LP
    out = (sampled * weights).sum(-1)  # BM x D x Lq
    return out.view(B, M * D, Lq).transpose(1, 2).to(value.dtype)  # B x Lq x MD
