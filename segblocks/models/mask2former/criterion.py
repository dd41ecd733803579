"""Set-prediction loss of Mask2Former (§3.3) with point-sampled mask losses.

After Hungarian matching, matched queries get a cross-entropy class loss towards their target's
class and unmatched queries towards "no object" (down-weighted to 0.1); matched masks get a
binary cross-entropy and a dice loss, both evaluated on ``K = 12544`` importance-sampled points
(PointRend) rather than on full masks (§3.3, "Improving training efficiency"). Total:
``L = λ_cls·L_cls + λ_ce·L_ce + λ_dice·L_dice`` with (2, 5, 5) (§4.1 and PRO-SCALE supp. A),
applied to the final prediction and, with deep supervision, to every intermediate one.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from segblocks.models.mask2former.matcher import validate_targets
from segblocks.models.mask2former.point_sampling import (
    calculate_uncertainty,
    get_uncertain_point_coords_with_randomness,
    point_sample,
)
from segblocks.ops._checks import check_positive_int, check_tensor

__all__ = ["SetCriterion", "point_sampled_dice_loss", "point_sampled_sigmoid_ce_loss"]

Indices = list[tuple[torch.Tensor, torch.Tensor]]


def point_sampled_sigmoid_ce_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Binary cross-entropy averaged over points, summed over masks, divided by ``num_masks``.

    Mask2Former's mask BCE on ``P`` sampled points per matched mask (§3.3).

    Args:
        logits: (M, P) mask logits at P points.
        targets: (M, P) targets at the same points.
        num_masks: normaliser (number of target masks per GPU).
    """
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1).sum() / num_masks


def point_sampled_dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Dice loss ``1 - (2|p·t| + 1) / (|p| + |t| + 1)`` per mask, summed, divided by ``num_masks``.

    Mask2Former's dice on ``P`` sampled points of the matched masks (§3.3; ``dice_loss`` in
    facebookresearch/Mask2Former, ``mask2former/modeling/criterion.py``). Not to be confused with
    :func:`segblocks.losses.dice_loss`, the dense per-image dice with an ignore index used by the
    interactive models.

    Args:
        logits: (M, P) mask logits at P points.
        targets: (M, P) targets at the same points.
        num_masks: normaliser (number of target masks per GPU).
    """
    probs = logits.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


class SetCriterion(nn.Module):
    """Mask2Former training loss.

    Args:
        num_classes: number of real classes ``K`` (logits have ``K + 1`` entries).
        matcher: callable ``(outputs, targets) -> [(pred_idx, tgt_idx)] * B``, e.g.
            :class:`~segblocks.models.mask2former.matcher.HungarianMatcher`.
        class_weight: weight of the classification loss.
        mask_weight: weight of the point-sampled binary cross-entropy.
        dice_weight: weight of the point-sampled dice loss.
        no_object_weight: cross-entropy class weight of the "no object" class.
        num_points: points per mask for the mask losses.
        oversample_ratio: PointRend candidate multiplier.
        importance_sample_ratio: fraction of points chosen by uncertainty.
        deep_supervision: also supervise every entry of ``outputs["aux_outputs"]``.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        matcher: Callable[[dict, Sequence[dict]], Indices],
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        num_classes = check_positive_int(num_classes, "num_classes", owner="SetCriterion")
        num_points = check_positive_int(num_points, "num_points", owner="SetCriterion")
        self.num_classes = num_classes
        self.matcher = matcher
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.deep_supervision = deep_supervision
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = no_object_weight
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    def forward(
        self, outputs: dict[str, torch.Tensor | list], targets: Sequence[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Compute the weighted losses.

        Args:
            outputs: ``pred_logits`` (B, Q, K+1), ``pred_masks`` (B, Q, h, w) and optionally
                ``aux_outputs``, a list of dicts with the same two keys.
            targets: per image ``labels`` (N,) in ``[0, K)`` and ``masks`` (N, H, W) (bool or
                float) at input resolution. Masks smaller than the largest in the batch are
                zero-padded bottom/right, matching a batch of images padded the same way; the
                points are normalized, so ``H, W`` need not be ``4·h, 4·w``.

        Returns:
            ``loss_ce``, ``loss_mask``, ``loss_dice`` (already multiplied by their weights) and,
            with deep supervision, ``loss_ce_{i}``, ``loss_mask_{i}``, ``loss_dice_{i}`` for each
            auxiliary output ``i``.
        """
        logits = outputs["pred_logits"]
        check_tensor(logits, "pred_logits", owner="SetCriterion", ndim=3)
        check_tensor(outputs["pred_masks"], "pred_masks", owner="SetCriterion", shape=("B", "Q", "h", "w"))
        if logits.dim() != 3 or logits.shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"pred_logits must be (B, Q, {self.num_classes + 1}), got {tuple(logits.shape)}"
            )
        validate_targets(targets, logits.shape[0], self.num_classes)
        targets = self._pad_targets(targets, tuple(outputs["pred_masks"].shape[-2:]))
        num_masks = self._num_masks(targets, logits.device)
        losses = self._losses(outputs, targets, num_masks, suffix="")
        if self.deep_supervision:
            for i, aux in enumerate(outputs.get("aux_outputs", [])):
                losses.update(self._losses(aux, targets, num_masks, suffix=f"_{i}"))
        return losses

    def _losses(
        self, outputs: dict[str, torch.Tensor], targets: Sequence[dict], num_masks: float, suffix: str
    ) -> dict[str, torch.Tensor]:
        if outputs["pred_logits"].shape[0] == 0:  # empty batch: zero losses, graph kept (DDP)
            zero = outputs["pred_logits"].sum() * 0.0 + outputs["pred_masks"].sum() * 0.0
            return {f"loss_ce{suffix}": zero, f"loss_mask{suffix}": zero, f"loss_dice{suffix}": zero}
        indices = self.matcher(outputs, targets)
        loss_mask, loss_dice = self._mask_losses(outputs["pred_masks"], targets, indices, num_masks)
        return {
            f"loss_ce{suffix}": self.class_weight * self._class_loss(outputs["pred_logits"], targets, indices),
            f"loss_mask{suffix}": self.mask_weight * loss_mask,
            f"loss_dice{suffix}": self.dice_weight * loss_dice,
        }

    def _class_loss(self, logits: torch.Tensor, targets: Sequence[dict], indices: Indices) -> torch.Tensor:
        """Weighted cross-entropy over all queries; unmatched ones target "no object"."""
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        for b, (src, tgt) in enumerate(indices):
            target_classes[b, src.to(logits.device)] = targets[b]["labels"].to(logits.device)[tgt.to(logits.device)]
        weight = self.empty_weight.to(logits.dtype)
        return F.cross_entropy(logits.transpose(1, 2), target_classes, weight=weight)  # B x (K+1) x Q input

    def _mask_losses(
        self, pred_masks: torch.Tensor, targets: Sequence[dict], indices: Indices, num_masks: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Point-sampled BCE and dice between matched predictions and targets."""
        device = pred_masks.device
        batch_idx = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(indices)]).to(device)
        src_idx = torch.cat([src for src, _ in indices]).to(device)
        if src_idx.numel() == 0:
            zero = pred_masks.sum() * 0.0  # keeps the graph (and DDP's used-parameter set) intact
            return zero, zero
        src = pred_masks[batch_idx, src_idx][:, None]  # M x 1 x h x w
        tgt = torch.cat([t["masks"][j.to(t["masks"].device)] for t, (_, j) in zip(targets, indices)])
        tgt = tgt.to(device=device, dtype=src.dtype)[:, None]  # M x 1 x H x W
        with torch.no_grad():
            coords = get_uncertain_point_coords_with_randomness(
                src.detach(),
                calculate_uncertainty,
                self.num_points,
                self.oversample_ratio,
                self.importance_sample_ratio,
            )  # M x P x 2
            point_labels = point_sample(tgt, coords)[:, 0]  # M x P
        point_logits = point_sample(src, coords)[:, 0]  # M x P
        return (
            point_sampled_sigmoid_ce_loss(point_logits, point_labels, num_masks),
            point_sampled_dice_loss(point_logits, point_labels, num_masks),
        )

    @staticmethod
    def _pad_targets(
        targets: Sequence[dict[str, torch.Tensor]], pred_size: tuple[int, int]
    ) -> list[dict[str, torch.Tensor]]:
        """Zero-pad every image's masks (bottom/right) to the largest mask size in the batch.

        Point coordinates are normalised to the padded image, so the padded target masks must
        cover the same field of view as the predictions (same aspect ratio, e.g. masks at the
        padded input size and predictions at 1/4 of it).
        """
        if not targets:  # empty batch: nothing to pad
            return []
        h = max(t["masks"].shape[-2] for t in targets)
        w = max(t["masks"].shape[-1] for t in targets)
        if h * pred_size[1] != w * pred_size[0]:
            raise ValueError(
                f"target masks padded to {(h, w)} do not cover the predictions' {tuple(pred_size)} grid "
                "(pad targets to the padded input size, as collate_panoptic does)"
            )
        padded = []
        for t in targets:
            masks = t["masks"]
            if masks.shape[-2:] != (h, w):
                masks = F.pad(masks, (0, w - masks.shape[-1], 0, h - masks.shape[-2]))
            padded.append({**t, "masks": masks})
        return padded

    @staticmethod
    def _num_masks(targets: Sequence[dict], device: torch.device) -> float:
        """Target masks per process, averaged over DDP ranks and clamped to >= 1."""
        total = torch.tensor(float(sum(t["labels"].numel() for t in targets)), device=device)
        world_size = 1
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
            world_size = dist.get_world_size()
        return max(total.item() / world_size, 1.0)
