"""Losses for (interactive) binary segmentation: NFL, sigmoid focal, dice and FocSAM's point loss."""
from segblocks.losses.dice import DiceLoss, dice_loss
from segblocks.losses.focal import NormalizedFocalLoss, SigmoidFocalLoss, normalized_focal_loss, sigmoid_focal_loss
from segblocks.losses.point import PointLoss, point_loss
from segblocks.losses.token import score_focal_loss, token_targets, triplet_token_loss

__all__ = [
    "DiceLoss",
    "NormalizedFocalLoss",
    "PointLoss",
    "SigmoidFocalLoss",
    "dice_loss",
    "normalized_focal_loss",
    "point_loss",
    "score_focal_loss",
    "sigmoid_focal_loss",
    "token_targets",
    "triplet_token_loss",
]
