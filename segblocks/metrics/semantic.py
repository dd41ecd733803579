"""Semantic-segmentation IoU metrics from a confusion matrix, following detectron2's SemSegEvaluator.

Per class ``c``: ``IoU_c = TP_c / (|gt = c| + |pred = c| - TP_c)`` and ``Acc_c = TP_c / |gt = c|``,
counted over non-void pixels only. As in current detectron2, mIoU and mACC average over the
classes that have ground-truth pixels (``acc_valid = pos_gt > 0``; ``iou_valid`` adds ``union > 0``,
which then always holds). A class that is only predicted lowers no average but lowers the IoU of
the classes whose pixels it took. Older detectron2 averaged IoU over ``pos_gt + pos_pred > 0``.
fwIoU weights IoU by gt frequency; pACC is the pixel accuracy.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from segblocks.metrics.panoptic import panoptic_from_masks

__all__ = ["SemanticIoU", "semantic_from_masks"]


def semantic_from_masks(labels: Tensor, masks: Tensor, *, ignore_index: int) -> Tensor:
    """Ground-truth masks to a semantic map.

    Args:
        labels: ``(N,)`` contiguous class ids.
        masks: ``(N, H, W)`` bool, non-overlapping.
        ignore_index: value written on pixels that no mask covers.

    Returns:
        ``(H, W)`` long class map.
    """
    return panoptic_from_masks(labels, masks, void_category=ignore_index)[..., 0]


class SemanticIoU(Metric):
    """mIoU, fwIoU, mACC and pACC in percent from semantic scores.

    Args:
        num_classes: number of contiguous classes ``K``.
        **kwargs: forwarded to :class:`torchmetrics.Metric`.

    ``update(preds, targets)``:
        preds: per image ``(K, H, W)`` class scores (argmax is taken), or a ``(B, K, H, W)`` tensor.
        targets: per image ``(labels (N,), masks (N, H, W) bool)``; uncovered pixels are ignored.

    ``compute()`` returns float64 scalars ``mIoU, fwIoU, mACC, pACC``; NaN when no ground-truth
    pixel was seen.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, *, num_classes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"expected num_classes >= 1, got {num_classes}")
        self.num_classes = num_classes
        confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)  # K_gt x K_pred
        self.add_state("confusion", default=confusion, dist_reduce_fx="sum")

    def update(self, preds: Sequence[Tensor] | Tensor, targets: Sequence[tuple[Tensor, Tensor]]) -> None:
        """Accumulate the confusion matrix over the non-void pixels of a batch."""
        if len(preds) != len(targets):
            raise ValueError(f"expected as many predictions as targets, got {len(preds)} and {len(targets)}")
        k = self.num_classes
        for scores, (labels, masks) in zip(preds, targets):
            gt = semantic_from_masks(labels, masks, ignore_index=-1)  # H x W
            if scores.dim() != 3 or scores.shape[0] != k or scores.shape[1:] != gt.shape:
                expected = (k, *gt.shape)
                raise ValueError(f"expected semantic scores of shape (K, H, W) = {expected}, got {tuple(scores.shape)}")
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= k):
                raise ValueError(f"expected target labels in 0..{k - 1}, got {labels.tolist()}")
            valid = gt >= 0
            pred = scores.argmax(0)[valid]
            self.confusion += torch.bincount(gt[valid] * k + pred, minlength=k * k).view(k, k)  # K_gt x K_pred

    def compute(self) -> dict[str, Tensor]:
        """mIoU / fwIoU / mACC / pACC in percent."""
        conf = self.confusion.double()
        tp = conf.diagonal()
        pos_gt, pos_pred = conf.sum(1), conf.sum(0)
        valid = pos_gt > 0
        iou = tp[valid] / (pos_gt + pos_pred - tp)[valid]
        acc = tp[valid] / pos_gt[valid]
        weight = pos_gt[valid] / pos_gt.sum()
        return {
            "mIoU": 100.0 * iou.mean(),
            "fwIoU": 100.0 * (iou * weight).sum() if bool(valid.any()) else conf.new_tensor(float("nan")),
            "mACC": 100.0 * acc.mean(),
            "pACC": 100.0 * tp.sum() / pos_gt.sum(),
        }
