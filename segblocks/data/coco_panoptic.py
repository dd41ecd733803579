"""Reader for datasets in COCO panoptic format (Kirillov et al., "Panoptic Segmentation", 2019).

Layout: an image folder, a folder of panoptic PNGs and one JSON file with

- ``images``: ``{id, file_name, height, width}``;
- ``annotations``: ``{image_id, file_name (the PNG), segments_info: [{id, category_id, iscrowd,
  bbox, area}]}``;
- ``categories``: ``{id, name, isthing, color}`` (or in a separate file such as
  ``panoptic_coco_categories.json``).

A PNG pixel of colour (R, G, B) belongs to segment ``id = R + 256 G + 256^2 B``; id 0 is void.
Crowd segments (``iscrowd=1``) are not targets: their pixels are treated as void, as in
Mask2Former's COCO panoptic mapper.

The PNG and the JSON are cross-checked as the COCO panoptic API does for its inputs
(cocodataset/panopticapi, panopticapi/evaluation.py ``pq_compute_single_core``): a segment
listed in ``segments_info`` but absent from the PNG, a PNG segment missing from
``segments_info`` and a duplicated segment id are errors naming the files, never silently
dropped, voided or relabelled (:func:`check_panoptic_segments`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from .checks import require_file
from .io import load_json, read_panoptic_png, read_rgb_image
from .panoptic_meta import PanopticMeta

__all__ = ["COCOPanopticDataset", "PanopticTransform", "check_panoptic_segments"]

# (image (H, W, 3) uint8, segment index map (H, W) int32, 0 = void) -> the same, transformed.
PanopticTransform = Callable[[np.ndarray, np.ndarray], "tuple[np.ndarray, np.ndarray]"]


def check_panoptic_segments(ids: np.ndarray, listed: list[int], *, png: str | os.PathLike, annotation_file: str | os.PathLike) -> None:
    """Raise ValueError unless the PNG's segments are exactly the listed ones (void 0 aside).

    Args:
        ids: ``(H, W)`` segment ids read from the PNG (:func:`~segblocks.data.io.read_panoptic_png`).
        listed: the ``id`` of every entry of the annotation's ``segments_info`` (crowd included).
        png: the PNG's path, named in the error.
        annotation_file: the JSON's path, named in the error.
    """
    duplicates = sorted({i for i in listed if listed.count(i) > 1})
    if duplicates:
        raise ValueError(f"{annotation_file}: segments_info of {png} lists the segment ids {duplicates} more than once")
    if 0 in listed:
        raise ValueError(f"{annotation_file}: segments_info of {png} lists id 0, which is void in panoptic PNGs")
    present = set(np.unique(ids).tolist()) - {0}
    absent = sorted(set(listed) - present)
    if absent:
        raise ValueError(f"segments {absent} are listed in {annotation_file} but absent from the panoptic PNG {png}")
    unlisted = sorted(present - set(listed))
    if unlisted:
        raise ValueError(f"panoptic PNG {png} holds segments {unlisted[:10]} that are missing from segments_info in {annotation_file}")


class COCOPanopticDataset(Dataset):
    """Panoptic samples from a COCO panoptic folder layout.

    Each sample is a dict:

    - ``image``: (3, H, W) float32 RGB in 0..255;
    - ``labels``: (N,) int64 contiguous class ids (see :class:`PanopticMeta`);
    - ``masks``: (N, H, W) bool, non-overlapping, one per non-crowd segment still visible after
      ``transform``;
    - ``image_id``: the COCO image id;
    - ``orig_size``: ``(height, width)`` of the image on disk, for evaluation.

    Args:
        image_dir: folder of the images.
        panoptic_dir: folder of the panoptic PNGs.
        annotation_file: COCO panoptic JSON.
        categories_file: JSON list of categories; if None, the annotation file's ``categories``.
        transform: called as ``transform(image, segments)`` with image (H, W, 3) uint8 and the
            segment index map (H, W) int32 (0 = void, ``k`` = k-th target segment); returns both
            transformed (see :mod:`segblocks.data.transforms`).
        keep_original_targets: also return ``orig_labels`` / ``orig_masks`` at the file's
            resolution, for evaluation at the original size (Mask2Former/detectron2 protocol)
            when the eval transform resizes.
    """

    def __init__(
        self,
        *,
        image_dir: str | os.PathLike,
        panoptic_dir: str | os.PathLike,
        annotation_file: str | os.PathLike,
        categories_file: str | os.PathLike | None = None,
        transform: PanopticTransform | None = None,
        keep_original_targets: bool = False,
    ) -> None:
        self.keep_original_targets = keep_original_targets
        self.image_dir = Path(image_dir)
        self.panoptic_dir = Path(panoptic_dir)
        self.annotation_file = Path(annotation_file)
        self.transform = transform
        data = load_json(self.annotation_file)
        if not isinstance(data, dict) or "annotations" not in data:
            raise ValueError(f"{self.annotation_file} is not a COCO panoptic JSON: no 'annotations' list")
        if categories_file is not None:
            categories = load_json(categories_file)
        elif "categories" in data:
            categories = data["categories"]
        else:
            raise ValueError(f"{self.annotation_file} has no 'categories'; pass categories_file")
        self.meta = PanopticMeta.from_coco_categories(categories)
        images = {img["id"]: img for img in data.get("images", [])}
        to_contiguous = self.meta.coco_to_contiguous
        self.records: list[dict[str, Any]] = []
        for ann in data["annotations"]:
            try:
                image_id, png_name, segments = ann["image_id"], ann["file_name"], ann["segments_info"]
                # COCO images are .jpg named like the PNG; the images list is authoritative when present.
                image_name = images.get(image_id, {}).get("file_name", Path(png_name).stem + ".jpg")
                targets = [(s["id"], s["category_id"]) for s in segments if not s.get("iscrowd", 0)]
                listed = [int(s["id"]) for s in segments]
            except (KeyError, TypeError) as e:
                raise ValueError(f"{self.annotation_file}: malformed annotation {str(ann)[:200]}: missing {e}") from e
            unknown = sorted({c for _, c in targets} - to_contiguous.keys())
            if unknown:
                raise ValueError(f"{self.annotation_file}: image {image_id} uses unknown category ids {unknown}")
            duplicates = sorted({i for i in listed if listed.count(i) > 1})
            if duplicates:
                raise ValueError(f"{self.annotation_file}: image {image_id} ({png_name}) lists the segment ids {duplicates} more than once")
            targets = [(segment_id, to_contiguous[c]) for segment_id, c in targets]
            self.records.append({"image_id": image_id, "image": image_name, "png": png_name, "targets": targets, "listed": listed})
        if not self.records:
            raise ValueError(f"{self.annotation_file} has no annotations: an empty panoptic split")

    def __len__(self) -> int:
        return len(self.records)

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The checked image (H, W, 3) uint8 and segment ids (H, W) of sample ``index``."""
        rec = self.records[index]
        image_path, png_path = self.image_dir / rec["image"], self.panoptic_dir / rec["png"]
        image = read_rgb_image(image_path)
        ids = read_panoptic_png(png_path)
        if ids.shape != image.shape[:2]:
            raise ValueError(f"panoptic PNG {png_path} is {ids.shape} (H, W) but image {image_path} is {image.shape[:2]}")
        check_panoptic_segments(ids, rec["listed"], png=png_path, annotation_file=self.annotation_file)
        return image, ids

    def check_sample(self, index: int, *, decode: bool = True) -> None:
        """Raise naming the file if sample ``index``'s image or PNG is missing, corrupt or inconsistent.

        ``decode=False`` only checks that both files exist and are not empty.
        """
        if decode:
            self._read(index)
            return
        rec = self.records[index]
        require_file(self.image_dir / rec["image"], "image")
        require_file(self.panoptic_dir / rec["png"], "panoptic PNG")

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        image, ids = self._read(index)
        orig_size = image.shape[:2]
        segments = np.zeros(ids.shape, dtype=np.int32)  # crowd segments stay void
        for k, (segment_id, _) in enumerate(rec["targets"], start=1):
            segments[ids == segment_id] = k
        labels = torch.tensor([label for _, label in rec["targets"]], dtype=torch.long)
        sample = {}
        if self.keep_original_targets:
            sample["orig_labels"], sample["orig_masks"] = _segment_masks(segments, labels)
        if self.transform is not None:
            image, segments = self.transform(image, segments)
        sample["labels"], sample["masks"] = _segment_masks(segments, labels)
        return {
            "image": torch.tensor(image.transpose(2, 0, 1), dtype=torch.float32),  # 3 x H x W
            "image_id": rec["image_id"],
            "orig_size": (int(orig_size[0]), int(orig_size[1])),
            **sample,
        }


def _segment_masks(segments: np.ndarray, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index map (H, W) with 0 = void, k = k-th segment → (labels, masks (N, H, W)) of non-empty segments."""
    masks = torch.from_numpy(segments)[None] == torch.arange(1, len(labels) + 1, dtype=torch.int32)[:, None, None]  # N x H x W
    keep = masks.flatten(1).any(dim=1)  # segments that vanished (cropped out, or absent) are no targets
    return labels[keep], masks[keep]
