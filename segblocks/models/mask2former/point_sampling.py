"""Point sampling for mask losses (PointRend, Kirillov et al. 2020; Mask2Former §3.3).

Mask2Former computes its mask losses on ``K`` sampled points instead of every pixel, which cuts
training memory 3x (§3.3, "Improving training efficiency"): the matcher uses ``K`` uniformly
random points, the final loss uses importance sampling that favours points whose prediction is
uncertain. Coordinates are normalized to ``[0, 1]`` so predictions (1/4 resolution) and targets
(full resolution) are sampled at the same physical locations.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["calculate_uncertainty", "get_uncertain_point_coords_with_randomness", "point_sample"]


def point_sample(input: torch.Tensor, point_coords: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample ``input`` at normalized points.

    Args:
        input: (B, C, H, W) map.
        point_coords: (B, P, 2) ``(x, y)`` in ``[0, 1]``, where 0 and 1 are the outer edges of
            the first and last pixel (``align_corners=False``); outside points read zeros.

    Returns:
        (B, C, P) sampled values.
    """
    if input.dim() != 4:
        raise ValueError(f"input must be (B, C, H, W), got shape {tuple(input.shape)}")
    if point_coords.dim() != 3 or point_coords.shape[-1] != 2 or point_coords.shape[0] != input.shape[0]:
        raise ValueError(
            f"point_coords must be (B={input.shape[0]}, P, 2), got shape {tuple(point_coords.shape)}"
        )
    grid = (2.0 * point_coords - 1.0).unsqueeze(2).to(input.dtype)  # B x P x 1 x 2
    return F.grid_sample(input, grid, mode="bilinear", align_corners=False).squeeze(3)  # B x C x P


def calculate_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of binary mask logits: ``-|logit|`` (highest at the decision boundary)."""
    return -logits.abs()


def get_uncertain_point_coords_with_randomness(
    coarse_logits: torch.Tensor,
    uncertainty_fn: Callable[[torch.Tensor], torch.Tensor],
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """PointRend importance sampling of points for the mask loss.

    Draws ``int(num_points * oversample_ratio)`` uniform candidates, keeps the
    ``int(importance_sample_ratio * num_points)`` most uncertain ones (uncertainty of the
    bilinearly interpolated logits) and fills up with fresh uniform points.

    Args:
        coarse_logits: (N, 1, H, W) mask logits.
        uncertainty_fn: maps (N, 1, P) logits to (N, 1, P) uncertainties (higher = more uncertain).
        num_points: points per mask.
        oversample_ratio: candidate multiplier, ``>= 1``.
        importance_sample_ratio: fraction of points chosen by uncertainty, in ``[0, 1]``.
        generator: optional RNG for the uniform draws.

    Returns:
        (N, num_points, 2) ``(x, y)`` coordinates in ``[0, 1]``.
    """
    if coarse_logits.dim() != 4 or coarse_logits.shape[1] != 1:
        raise ValueError(f"coarse_logits must be (N, 1, H, W), got shape {tuple(coarse_logits.shape)}")
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
    n = coarse_logits.shape[0]
    device, dtype = coarse_logits.device, coarse_logits.dtype
    num_sampled = int(num_points * oversample_ratio)
    candidates = torch.rand(n, num_sampled, 2, device=device, dtype=dtype, generator=generator)  # N x S x 2
    uncertainty = uncertainty_fn(point_sample(coarse_logits, candidates))  # N x 1 x S
    num_uncertain = int(importance_sample_ratio * num_points)
    top = uncertainty[:, 0, :].topk(num_uncertain, dim=1).indices  # N x U
    coords = candidates.gather(1, top[..., None].expand(-1, -1, 2))  # N x U x 2
    num_random = num_points - num_uncertain
    if num_random > 0:
        fresh = torch.rand(n, num_random, 2, device=device, dtype=dtype, generator=generator)  # N x R x 2
        coords = torch.cat([coords, fresh], dim=1)  # N x num_points x 2
    return coords
