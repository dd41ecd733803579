"""COCO mask AP (pycocotools ``COCOeval``, ``iouType="segm"``) as a DDP-reducible torchmetrics Metric.

torchmetrics' ``MeanAveragePrecision`` needs torchvision, which has no CPU build here, so this
metric drives pycocotools directly. Masks are RLE-encoded at ``update`` (a full-resolution mask
stack per image would not fit in memory over a validation set) and kept as flat tensors: the
RLE bytes, their per-mask lengths, and per-image counts and sizes. All states are 1-D lists with
``dist_reduce_fx="cat"``; every rank concatenates in the same rank order, so the per-image counts
still line up with the per-mask entries after a sync and images can be renumbered ``1..N``.

Every state is stored in the metric's floating dtype (float32 unless ``set_dtype`` changes it):
torchmetrics gives a process that saw no image an empty tensor *of that dtype* for each list
state, and a gather of tensors whose dtypes differ between processes aborts the process group.
Bytes, lengths, labels, counts and sizes are integers below 2^24, exact in float32; scores are
kept at the metric's precision.

Only thing classes are evaluated: ground-truth segments and predictions of stuff classes are
dropped. COCO's conventions apply unchanged (at most 100 detections per image and class, no crowd
regions, area ranges in pixels of the evaluated resolution).
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor
from torchmetrics import Metric

from segblocks.metrics.panoptic import check_masks_target

__all__ = ["MaskAP"]

# Largest integer below which every integer is exact, per storage dtype.
_EXACT_INTEGERS = {torch.float32: 2**24, torch.float64: 2**53}

_STATS = {"AP": 0, "AP50": 1, "AP75": 2, "APs": 3, "APm": 4, "APl": 5}  # index in COCOeval.stats


def _encode(masks: Tensor) -> tuple[Tensor, Tensor]:
    """RLE-encode ``masks (k, H, W)`` bool; returns (concatenated counts bytes, per-mask byte lengths)."""
    # pycocotools wants a Fortran-ordered H x W x k uint8 array
    array = np.asfortranarray(masks.detach().cpu().permute(1, 2, 0).numpy().astype(np.uint8))  # H x W x k
    counts = [rle["counts"] for rle in mask_utils.encode(array)] if masks.shape[0] else []
    joined = bytearray(b"".join(counts))
    data = torch.frombuffer(joined, dtype=torch.uint8).clone() if joined else torch.zeros(0, dtype=torch.uint8)
    return data, torch.tensor([len(c) for c in counts], dtype=torch.long)


def _decode(data: Tensor, lengths: Tensor) -> list[bytes]:
    """Inverse of :func:`_encode` (bytes only; the size is stored per image)."""
    raw = data.to(torch.uint8).cpu().numpy().tobytes()
    ends = np.cumsum(lengths.cpu().numpy())
    return [raw[end - n : end] for n, end in zip(lengths.tolist(), ends.tolist())]


def _coco(images: list[dict], annotations: list[dict], categories: list[dict]) -> COCO:
    """An in-memory COCO dataset; annotation ids start at 1 (COCOeval reads id 0 as "unmatched")."""
    for j, ann in enumerate(annotations, start=1):
        ann.update(id=j, iscrowd=0, area=float(mask_utils.area(ann["segmentation"])))
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    coco.createIndex()
    return coco


class MaskAP(Metric):
    """COCO mask AP, AP50, AP75, APs, APm, APl in percent over the thing classes.

    Args:
        num_classes: number of contiguous classes ``K``.
        thing_classes: ids of the thing classes, the evaluated categories.
        **kwargs: forwarded to :class:`torchmetrics.Metric`.

    ``update(preds, targets)``:
        preds: per image a dict with ``masks (k, H, W)`` bool, ``scores (k,)``, ``labels (k,)``.
        targets: per image ``(labels (N,), masks (N, H, W) bool)``.

    ``compute()`` returns float64 scalars. With ground truth but no prediction AP is 0. A value
    with no ground truth to score (no thing segment at all, or none in an area range) is NaN:
    COCOeval's -1, which detectron2 also reports as NaN.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, *, num_classes: int, thing_classes: Sequence[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.thing_classes = sorted({int(c) for c in thing_classes})
        if not self.thing_classes or not set(self.thing_classes) <= set(range(num_classes)):
            raise ValueError(
                f"expected at least one thing class within 0..{num_classes - 1}, got {self.thing_classes}"
            )
        self.num_classes = num_classes
        for prefix in ("pred", "gt"):
            self.add_state(f"{prefix}_rle", default=[], dist_reduce_fx="cat")
            self.add_state(f"{prefix}_rle_len", default=[], dist_reduce_fx="cat")
            self.add_state(f"{prefix}_labels", default=[], dist_reduce_fx="cat")
            self.add_state(f"{prefix}_count", default=[], dist_reduce_fx="cat")
        self.add_state("pred_scores", default=[], dist_reduce_fx="cat")
        self.add_state("image_size", default=[], dist_reduce_fx="cat")  # flat (H, W) pairs

    def _store(self, name: str, value: Tensor) -> None:
        """Append ``value`` to a list state in the metric dtype (see the module docstring)."""
        getattr(self, name).append(value.to(device=self.device, dtype=self.dtype))

    def _append(self, prefix: str, masks: Tensor, labels: Tensor) -> Tensor:
        """Store the thing-class masks of one image; returns the kept-entry selector."""
        keep = torch.isin(labels.cpu().long(), torch.tensor(self.thing_classes))
        data, lengths = _encode(masks[keep.to(masks.device)])
        if lengths.numel() and int(lengths.max()) >= _EXACT_INTEGERS[self.dtype]:
            raise ValueError(f"an RLE of {int(lengths.max())} bytes is not exact in {self.dtype}; use set_dtype(torch.float64)")
        self._store(f"{prefix}_rle", data)
        self._store(f"{prefix}_rle_len", lengths)
        self._store(f"{prefix}_labels", labels.cpu().long()[keep])
        self._store(f"{prefix}_count", torch.tensor([int(keep.sum())]))
        return keep

    def update(self, preds: Sequence[Mapping[str, Tensor]], targets: Sequence[tuple[Tensor, Tensor]]) -> None:
        """RLE-encode and store the predictions and thing ground truth of a batch of images."""
        if len(preds) != len(targets):
            raise ValueError(f"expected as many predictions as targets, got {len(preds)} and {len(targets)}")
        if self.dtype not in _EXACT_INTEGERS:
            raise TypeError(f"MaskAP stores its states in the metric dtype, which must be float32 or float64, not {self.dtype}")
        for pred, (labels, masks) in zip(preds, targets):
            check_masks_target(labels, masks)
            if not {"masks", "scores", "labels"} <= pred.keys():
                raise ValueError(f"expected a prediction dict with masks, scores, labels; got keys {sorted(pred)}")
            p_masks, p_scores, p_labels = pred["masks"], pred["scores"], pred["labels"]
            k = p_masks.shape[0] if p_masks.dim() == 3 else -1
            shapes_ok = p_masks.shape[1:] == masks.shape[1:] and p_scores.shape == (k,) and p_labels.shape == (k,)
            if p_masks.dtype != torch.bool or not shapes_ok:
                raise ValueError(
                    f"expected pred masks (k, {masks.shape[1]}, {masks.shape[2]}) bool, scores (k,), labels (k,); got "
                    f"masks {p_masks.dtype} {tuple(p_masks.shape)}, scores {tuple(p_scores.shape)}, "
                    f"labels {tuple(p_labels.shape)}"
                )
            self._append("gt", masks, labels)
            keep = self._append("pred", p_masks, p_labels)
            self._store("pred_scores", p_scores.detach().cpu()[keep])
            self._store("image_size", torch.tensor(masks.shape[1:]))

    def _flat(self, name: str) -> Tensor:
        """A list state as one tensor (a DDP sync has already concatenated it, maybe with a promoted dtype)."""
        value = getattr(self, name)
        if isinstance(value, Tensor):
            return value
        return torch.cat(value) if value else torch.zeros(0, dtype=self.dtype, device=self.device)

    def _annotations(self, prefix: str, sizes: list[list[int]]) -> list[dict[str, Any]]:
        """COCO-style annotation dicts (image ids ``1..N``) for the stored ``pred`` or ``gt`` masks."""
        counts = _decode(self._flat(f"{prefix}_rle"), self._flat(f"{prefix}_rle_len").long())
        per_image = self._flat(f"{prefix}_count").long().cpu()
        image_ids = torch.repeat_interleave(torch.arange(1, len(sizes) + 1), per_image).tolist()
        return [
            {"image_id": i, "category_id": c, "segmentation": {"size": sizes[i - 1], "counts": rle}}
            for i, c, rle in zip(image_ids, self._flat(f"{prefix}_labels").long().tolist(), counts)
        ]

    def compute(self) -> dict[str, Tensor]:
        """Run COCOeval on everything accumulated (on every rank after the sync)."""
        sizes = self._flat("image_size").long().view(-1, 2).tolist()  # N x 2
        gts = self._annotations("gt", sizes)
        if not gts:
            return {name: torch.tensor(float("nan"), dtype=torch.float64) for name in _STATS}
        dts = self._annotations("pred", sizes)
        for dt, score in zip(dts, self._flat("pred_scores").double().tolist()):
            dt["score"] = score
        images = [{"id": i, "height": h, "width": w} for i, (h, w) in enumerate(sizes, start=1)]
        categories = [{"id": c} for c in self.thing_classes]
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            # both sides built directly: COCO.loadRes cannot take an empty result list
            evaluator = COCOeval(_coco(images, gts, categories), _coco(images, dts, categories), iouType="segm")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        return {
            name: torch.tensor(100.0 * s if s >= 0 else float("nan"), dtype=torch.float64)
            for name, s in ((n, float(evaluator.stats[i])) for n, i in _STATS.items())
        }
