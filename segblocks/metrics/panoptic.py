"""Panoptic quality (Kirillov et al., "Panoptic Segmentation", CVPR 2019, Sec. 4.1, Eq. 1).

``PQ = sum_{(p, g) in TP} IoU(p, g) / (|TP| + 0.5 |FP| + 0.5 |FN|)`` per class, where a prediction
and a ground-truth segment of the same class match when ``IoU > 0.5`` (unique by Theorem 1);
``SQ`` is the mean IoU of matches and ``RQ`` the F1 of the matching, ``PQ = SQ * RQ``. Class
scores are averaged over the classes with ``|TP| + |FP| + |FN| > 0``, as panopticapi does.

The counting is torchmetrics' :class:`~torchmetrics.detection.PanopticQuality` (its states are
per-class sums, so DDP reduction is a plain ``sum``). Void follows panopticapi / detectron2
(Sec. 4.1 "Void labels"), which torchmetrics does not do on its own:

* ground-truth void (pixels covered by no mask) is removed from each prediction's area in the
  IoU, and an unmatched prediction lying more than half on void is not a false positive;
* a void *prediction* (``panoptic_seg == 0``, pixels no segment claimed) is an ordinary miss:
  torchmetrics gives predicted void the same colour as target void and then ignores it (it
  shrinks the ground-truth area in the IoU and hides false negatives that are mostly unclaimed),
  so predicted void is mapped to an extra category ``num_classes`` that no target carries and
  that is left out of every average.

Stuff segments of the same class are merged per image (torchmetrics zeroes stuff instance ids),
which is what detectron2's panoptic inference already outputs. There is no crowd handling.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics.detection import PanopticQuality

__all__ = ["PanopticQualityMetric", "check_masks_target", "panoptic_from_masks", "panoptic_from_segments"]


def check_masks_target(labels: Tensor, masks: Tensor) -> None:
    """Validate one ground-truth image given as ``labels (N,)`` + non-overlapping ``masks (N, H, W)``."""
    if not isinstance(labels, Tensor) or not isinstance(masks, Tensor):
        raise TypeError(f"expected target (labels, masks) tensors, got ({type(labels)}, {type(masks)})")
    if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"expected integer labels of shape (N,), got {labels.dtype} {tuple(labels.shape)}")
    if masks.dim() != 3 or masks.dtype != torch.bool or masks.shape[0] != labels.shape[0]:
        raise ValueError(
            f"expected bool masks of shape (N={labels.shape[0]}, H, W), got {masks.dtype} {tuple(masks.shape)}"
        )
    if masks.shape[0] > 1 and bool((masks.sum(0) > 1).any()):
        raise ValueError("expected non-overlapping ground-truth masks, but some pixels are covered twice")


def panoptic_from_masks(labels: Tensor, masks: Tensor, *, void_category: int) -> Tensor:
    """Ground-truth masks to a (category, instance) map.

    Args:
        labels: ``(N,)`` contiguous class ids.
        masks: ``(N, H, W)`` bool, non-overlapping.
        void_category: category written on pixels that no mask covers.

    Returns:
        ``(H, W, 2)`` long: channel 0 the category, channel 1 the instance id (``i + 1`` for
        mask ``i``, 0 on void).
    """
    check_masks_target(labels, masks)
    h, w = masks.shape[-2:]
    out = torch.zeros(h, w, 2, dtype=torch.long, device=masks.device)  # H x W x 2
    out[..., 0] = void_category
    if masks.shape[0]:
        covered = masks.any(0)
        index = masks.to(torch.uint8).argmax(0)  # H x W: which mask covers each pixel
        out[..., 0] = torch.where(covered, labels.to(torch.long)[index], out[..., 0])
        out[..., 1] = torch.where(covered, index + 1, 0)
    return out


def panoptic_from_segments(
    panoptic_seg: Tensor, segments_info: Sequence[Mapping[str, Any]], *, void_category: int
) -> Tensor:
    """A panoptic prediction (segment-id map + segment list) to a (category, instance) map.

    Args:
        panoptic_seg: ``(H, W)`` integer segment ids; 0 is void (no segment).
        segments_info: one dict per segment with at least ``id`` (>= 1) and ``category_id``.
        void_category: category written on void pixels.

    Returns:
        ``(H, W, 2)`` long: channel 0 the category, channel 1 the segment id (0 on void).

    Raises:
        ValueError: a non-zero id in ``panoptic_seg`` that ``segments_info`` does not list, as
            panopticapi does.
    """
    if not isinstance(panoptic_seg, Tensor) or panoptic_seg.dim() != 2 or panoptic_seg.dtype.is_floating_point:
        raise ValueError(f"expected an integer panoptic_seg of shape (H, W), got {panoptic_seg!r:.80}")
    ids = panoptic_seg.to(torch.long)
    lut_size = max([int(ids.max()) if ids.numel() else 0] + [int(s["id"]) for s in segments_info]) + 1
    lut = torch.full((lut_size,), -1, dtype=torch.long, device=ids.device)  # segment id -> category
    lut[0] = void_category
    for seg in segments_info:
        if int(seg["id"]) < 1:
            raise ValueError(f"expected segment ids >= 1 (0 is void), got {seg['id']}")
        lut[int(seg["id"])] = int(seg["category_id"])
    category = lut[ids]  # H x W
    if bool((category < 0).any()):
        missing = sorted(set(ids[category < 0].unique().tolist()))
        raise ValueError(f"panoptic_seg holds segment ids {missing} that segments_info does not list")
    return torch.stack([category, ids], dim=-1)  # H x W x 2


class PanopticQualityMetric(PanopticQuality):
    """PQ / SQ / RQ overall, on things and on stuff, in percent (detectron2 reports this way).

    Args:
        num_classes: number of contiguous classes ``K``; ids are ``0..K-1``.
        thing_classes: the ids that are things; every other id is stuff.
        **kwargs: forwarded to :class:`torchmetrics.Metric` (e.g. ``dist_sync_on_step``).

    ``update(preds, targets)``:
        preds: per image ``(panoptic_seg (H, W), segments_info)`` as produced by panoptic inference.
        targets: per image ``(labels (N,), masks (N, H, W) bool)``; uncovered pixels are void.

    ``compute()`` returns float64 scalars ``PQ, SQ, RQ, PQ_th, SQ_th, RQ_th, PQ_st, SQ_st, RQ_st``;
    a group with no class seen (no TP, FP or FN) gives NaN, like torchmetrics' empty mean.
    """

    def __init__(self, *, num_classes: int, thing_classes: Sequence[int], **kwargs: Any) -> None:
        things = {int(c) for c in thing_classes}
        if num_classes < 1 or not things <= set(range(num_classes)):
            raise ValueError(
                f"expected thing_classes within 0..{num_classes - 1}, got {sorted(things)} (num_classes={num_classes})"
            )
        # The extra stuff category ``num_classes`` stands for predicted void (see module docstring); it
        # sorts last, so it is the last entry of every per-class state.
        stuffs = set(range(num_classes + 1)) - things
        super().__init__(things=things, stuffs=stuffs, **kwargs)
        self.num_classes = num_classes
        self.thing_classes = sorted(things)

    def update(  # type: ignore[override]
        self,
        preds: Sequence[tuple[Tensor, Sequence[Mapping[str, Any]]]],
        targets: Sequence[tuple[Tensor, Tensor]],
    ) -> None:
        """Accumulate per-class IoU sums and TP / FP / FN counts for a batch of images."""
        if len(preds) != len(targets):
            raise ValueError(f"expected as many predictions as targets, got {len(preds)} and {len(targets)}")
        pred_void, target_void = self.num_classes, self.void_color[0]
        for (panoptic_seg, segments_info), (labels, masks) in zip(preds, targets):
            pred = panoptic_from_segments(panoptic_seg, segments_info, void_category=pred_void)
            target = panoptic_from_masks(labels, masks, void_category=target_void)
            categories = [int(s["category_id"]) for s in segments_info] + labels.tolist()
            if any(c < 0 or c >= self.num_classes for c in categories):
                raise ValueError(f"expected category ids in 0..{self.num_classes - 1}, got {sorted(set(categories))}")
            if pred.shape != target.shape:
                raise ValueError(
                    f"expected panoptic_seg of the target size {tuple(target.shape[:2])}, got {tuple(pred.shape[:2])}"
                )
            super().update(pred[None], target[None])  # 1 x H x W x 2: images may differ in size

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        """Average the per-class PQ / SQ / RQ over the classes seen, in percent."""
        k = self.num_classes  # drop the trailing predicted-void category
        tp, fp, fn = (s[:k].double() for s in (self.true_positives, self.false_positives, self.false_negatives))
        sq = torch.where(tp > 0, self.iou_sum[:k] / tp.clamp(min=1), 0.0)
        denominator = tp + 0.5 * fp + 0.5 * fn
        rq = torch.where(denominator > 0, tp / denominator.clamp(min=1e-12), 0.0)
        pq = sq * rq
        # states are indexed things (sorted) first, then stuff (sorted)
        is_thing = torch.arange(k, device=tp.device) < len(self.thing_classes)
        seen = denominator > 0
        out = {}
        for suffix, group in (("", seen), ("_th", seen & is_thing), ("_st", seen & ~is_thing)):
            for name, per_class in (("PQ", pq), ("SQ", sq), ("RQ", rq)):
                out[name + suffix] = 100.0 * per_class[group].mean()
        return out
