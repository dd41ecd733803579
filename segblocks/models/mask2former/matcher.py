"""Bipartite (Hungarian) matching between predicted and ground-truth masks (Mask2Former §3.3).

Mask2Former follows DETR/MaskFormer set prediction: every ground-truth segment is assigned to
one query by minimising ``λ_cls·C_cls + λ_ce·C_ce + λ_dice·C_dice`` with the Hungarian algorithm.
The mask costs are evaluated on ``K`` points drawn uniformly at random, the same points for all
predictions and targets of an image (§3.3: "in the matching loss ... uniformly sampled").
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from segblocks.models.mask2former.point_sampling import point_sample
from segblocks.ops._checks import check_positive_int, check_tensor

__all__ = ["HungarianMatcher", "pairwise_dice_cost", "pairwise_sigmoid_ce_cost", "validate_targets"]


def pairwise_sigmoid_ce_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy between every prediction and every target.

    Args:
        logits: (Q, P) mask logits at P points.
        targets: (N, P) soft or binary targets at the same points.

    Returns:
        (Q, N) costs.
    """
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")  # Q x P
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")  # Q x P
    # BCE(x, t) = t·BCE(x, 1) + (1 - t)·BCE(x, 0): linear in t, so all pairs are two matmuls.
    return (pos @ targets.T + neg @ (1 - targets).T) / logits.shape[1]


def pairwise_dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice cost ``1 - (2|p·t| + 1) / (|p| + |t| + 1)`` between every prediction and target.

    Args:
        logits: (Q, P) mask logits at P points.
        targets: (N, P) targets at the same points.

    Returns:
        (Q, N) costs.
    """
    probs = logits.sigmoid()
    numerator = 2 * probs @ targets.T  # Q x N
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]  # Q x N
    return 1 - (numerator + 1) / (denominator + 1)


def validate_targets(targets: Sequence[dict], batch_size: int, num_classes: int) -> None:
    """Check the ``list[dict(labels (N,), masks (N, H, W))]`` target format.

    Raises:
        ValueError/TypeError naming the offending image and what was expected.
    """
    if len(targets) != batch_size:
        raise ValueError(f"expected {batch_size} target dicts (one per image), got {len(targets)}")
    for b, t in enumerate(targets):
        if "labels" not in t or "masks" not in t:
            raise ValueError(f"targets[{b}] must have keys 'labels' and 'masks', got {sorted(t)}")
        labels, masks = t["labels"], t["masks"]
        if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(
                f"targets[{b}]['labels'] must be a 1-D integer tensor, got {labels.dtype} {tuple(labels.shape)}"
            )
        if masks.dim() != 3 or masks.shape[0] != labels.shape[0]:
            raise ValueError(
                f"targets[{b}]['masks'] must be (N={labels.shape[0]}, H, W), got {tuple(masks.shape)}"
            )
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"targets[{b}]['labels'] must lie in [0, {num_classes}), got range "
                f"[{labels.min().item()}, {labels.max().item()}]"
            )


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to ground-truth segments (no gradients).

    Args:
        cost_class: weight of the class cost ``-p(target class)``.
        cost_mask: weight of the sigmoid binary cross-entropy mask cost.
        cost_dice: weight of the dice mask cost.
        num_points: uniformly random points per image for the mask costs (Mask2Former:
            112·112 = 12544). ``None`` evaluates the masks at every pixel centre of the
            prediction grid instead (deterministic; targets are bilinearly sampled there).
    """

    def __init__(
        self,
        *,
        cost_class: float = 2.0,
        cost_mask: float = 5.0,
        cost_dice: float = 5.0,
        num_points: int | None = 12544,
    ) -> None:
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("at least one of cost_class, cost_mask, cost_dice must be non-zero")
        if num_points is not None:
            num_points = check_positive_int(num_points, "num_points", owner="HungarianMatcher")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def forward(
        self, outputs: dict[str, torch.Tensor], targets: Sequence[dict[str, torch.Tensor]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Match each image's queries to its targets.

        Args:
            outputs: ``pred_logits`` (B, Q, K+1) class logits (last = no object) and
                ``pred_masks`` (B, Q, h, w) mask logits.
            targets: per image ``labels`` (N,) in ``[0, K)`` and ``masks`` (N, H, W) covering the
                same field of view as the predictions (any resolution).

        Returns:
            Per image ``(pred_idx, tgt_idx)``, two int64 CPU tensors of length ``min(Q, N)``;
            query ``pred_idx[i]`` is matched to target ``tgt_idx[i]``.
        """
        logits, masks = outputs["pred_logits"], outputs["pred_masks"]
        check_tensor(logits, "pred_logits", owner="HungarianMatcher", shape=("B", "Q", "K+1"))
        check_tensor(masks, "pred_masks", owner="HungarianMatcher", shape=("B", "Q", "h", "w"))
        if logits.dim() != 3 or masks.dim() != 4 or masks.shape[:2] != logits.shape[:2]:
            raise ValueError(
                "expected pred_logits (B, Q, K+1) and pred_masks (B, Q, h, w), got "
                f"{tuple(logits.shape)} and {tuple(masks.shape)}"
            )
        validate_targets(targets, logits.shape[0], logits.shape[-1] - 1)
        # Costs in (at least) float32 even under autocast: half precision blurs the small cost
        # differences the assignment depends on.
        dtype = torch.promote_types(logits.dtype, torch.float32)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return [self._match_one(b, logits[b].to(dtype), masks[b].to(dtype), t) for b, t in enumerate(targets)]

    def _match_one(
        self, b: int, logits: torch.Tensor, pred_masks: torch.Tensor, target: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Assignment for one image: logits (Q, K+1), pred_masks (Q, h, w)."""
        labels = target["labels"].to(logits.device)
        num_queries, num_targets = logits.shape[0], labels.numel()
        if num_targets == 0:
            empty = torch.empty(0, dtype=torch.int64)
            return empty, empty.clone()
        tgt_masks = target["masks"].to(device=logits.device, dtype=logits.dtype)
        coords = self._points(pred_masks)  # 1 x P x 2
        pred_pts = point_sample(pred_masks[:, None], coords.expand(num_queries, -1, -1))[:, 0]  # Q x P
        tgt_pts = point_sample(tgt_masks[:, None], coords.expand(num_targets, -1, -1))[:, 0]  # N x P
        cost = (
            self.cost_class * -logits.softmax(-1)[:, labels]
            + self.cost_mask * pairwise_sigmoid_ce_cost(pred_pts, tgt_pts)
            + self.cost_dice * pairwise_dice_cost(pred_pts, tgt_pts)
        )  # Q x N
        if not torch.isfinite(cost).all():
            raise ValueError(f"matching cost of image {b} has non-finite entries (NaN/inf predictions?)")
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)

    def _points(self, pred_masks: torch.Tensor) -> torch.Tensor:
        """(1, P, 2) sample points: uniform random, or all pixel centres when num_points is None."""
        if self.num_points is not None:
            return torch.rand(1, self.num_points, 2, device=pred_masks.device, dtype=pred_masks.dtype)
        h, w = pred_masks.shape[-2:]
        ys = (torch.arange(h, device=pred_masks.device, dtype=pred_masks.dtype) + 0.5) / h
        xs = (torch.arange(w, device=pred_masks.device, dtype=pred_masks.dtype) + 0.5) / w
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # h x w each
        return torch.stack([grid_x, grid_y], dim=-1).reshape(1, h * w, 2)  # 1 x hw x 2
