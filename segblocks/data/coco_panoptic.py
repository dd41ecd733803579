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
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from .panoptic_meta import PanopticMeta

__all__ = ["COCOPanopticDataset", "PanopticTransform", "id_to_rgb", "load_json", "read_panoptic_png", "read_rgb_image", "rgb_to_id"]

# (image (H, W, 3) uint8, segment index map (H, W) int32, 0 = void) -> the same, transformed.
PanopticTransform = Callable[[np.ndarray, np.ndarray], "tuple[np.ndarray, np.ndarray]"]


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Segment ids of a panoptic PNG: (H, W, 3) uint8 -> (H, W) int64, ``R + 256 G + 256^2 B``."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_id`: (H, W) ids in ``[0, 256^3)`` -> (H, W, 3) uint8."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 256**3):
        raise ValueError(f"segment ids must lie in [0, 2^24), received range [{ids.min()}, {ids.max()}]")
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)  # H x W x 3


def load_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; FileNotFoundError / ValueError name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSON file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"corrupt JSON file {path}: {e}") from e


def _open_image(path: Path, what: str):
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        img = Image.open(path)
        img.load()  # decode now so that truncated files fail here, with the file name
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"corrupt {what} {path}: {e}") from e
    return img


def read_rgb_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB (grayscale images are expanded)."""
    return np.asarray(_open_image(Path(path), "image").convert("RGB"))


def read_panoptic_png(path: str | os.PathLike) -> np.ndarray:
    """Read a panoptic PNG as (H, W) int64 segment ids (0 = void)."""
    img = _open_image(Path(path), "panoptic PNG")
    if img.mode != "RGB":  # converting e.g. a palette image would silently change the ids
        raise ValueError(f"panoptic PNG {path} must be RGB, received mode {img.mode}")
    return rgb_to_id(np.asarray(img))


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
            except (KeyError, TypeError) as e:
                raise ValueError(f"{self.annotation_file}: malformed annotation {str(ann)[:200]}: missing {e}") from e
            unknown = sorted({c for _, c in targets} - to_contiguous.keys())
            if unknown:
                raise ValueError(f"{self.annotation_file}: image {image_id} uses unknown category ids {unknown}")
            targets = [(segment_id, to_contiguous[c]) for segment_id, c in targets]
            self.records.append({"image_id": image_id, "image": image_name, "png": png_name, "targets": targets})

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        image_path, png_path = self.image_dir / rec["image"], self.panoptic_dir / rec["png"]
        image = read_rgb_image(image_path)
        ids = read_panoptic_png(png_path)
        if ids.shape != image.shape[:2]:
            raise ValueError(f"panoptic PNG {png_path} is {ids.shape} (H, W) but image {image_path} is {image.shape[:2]}")
        orig_size = image.shape[:2]
        segments = np.zeros(ids.shape, dtype=np.int32)  # crowd and unlisted ids stay void
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
