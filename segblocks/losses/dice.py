"""Soft dice loss on sigmoid probabilities, with an ignore index (Milletari et al. 2016, V-Net).

Dense, per image, for binary (interactive) segmentation. Mask2Former's dice on point-sampled
matched masks is a different function:
:func:`segblocks.models.mask2former.criterion.point_sampled_dice_loss`.

Per sample, over its valid pixels ``w``: ``1 - (2 Σ p·y·w + s) / (Σ p·w + Σ y·w + s)`` with
``p = σ(x)`` and smoothing ``s = 1``. The smoothing makes a sample with an empty target and an
empty prediction cost ~0, and one with no valid pixel cost exactly 0.
"""
from __future__ import annotations

import torch
from torch import nn

from segblocks.losses.focal import binary_inputs, check_reduction, reduce_per_sample

__all__ = ["DiceLoss", "dice_loss"]


def dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    smooth: float = 1.0,
    ignore_index: int | None = 255,
    reduction: str = "mean",
) -> torch.Tensor:
    """Soft dice loss per sample.

    Args:
        logits: (B, 1, H, W) logits, or (B, 2, H, W) reduced to ``x[:, 1] - x[:, 0]``.
        target: (B, H, W) or (B, 1, H, W) labels in {0, 1, ignore_index}.
        smooth: additive smoothing of numerator and denominator.
        ignore_index: label excluded from the loss, or None.
        reduction: ``'mean'`` over samples, ``'sum'`` or ``'none'`` (B,).

    Returns:
        Scalar loss, or (B,) for ``reduction='none'``.
    """
    x, y, valid = binary_inputs(logits, target, ignore_index)  # B x HW each
    w = valid.to(x.dtype)
    p = x.sigmoid() * w
    y = y * w
    per_sample = 1 - (2 * (p * y).sum(1) + smooth) / (p.sum(1) + y.sum(1) + smooth)
    return reduce_per_sample(per_sample, reduction)


class DiceLoss(nn.Module):
    """Module wrapper of :func:`dice_loss` (see it for the arguments)."""

    def __init__(self, *, smooth: float = 1.0, ignore_index: int | None = 255, reduction: str = "mean") -> None:
        super().__init__()
        self.smooth, self.ignore_index = smooth, ignore_index
        self.reduction = check_reduction(reduction)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits: (B, 1|2, H, W); target: (B, H, W) → scalar or (B,)."""
        return dice_loss(logits, target, smooth=self.smooth, ignore_index=self.ignore_index, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"smooth={self.smooth}, ignore_index={self.ignore_index}, reduction={self.reduction!r}"
