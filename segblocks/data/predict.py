"""Unlabelled images for ``lightning predict`` of the panoptic recipes (a folder of plain images)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .collate import collate_panoptic
from .interactive.benchmarks import IMAGE_SUFFIXES
from .io import read_rgb_image

__all__ = ["PredictImageDataset", "collate_predict"]


class PredictImageDataset(Dataset):
    """The images under ``root`` (recursive, sorted by path) as panoptic samples without targets.

    Each sample: ``image`` (3, H, W) float32 RGB 0–255 after ``transform`` (e.g.
    :class:`~segblocks.data.PanopticEvalTransform`), empty ``labels`` (0,) / ``masks`` (0, H, W),
    ``image_id`` the path relative to ``root`` without suffix, ``orig_size`` (h, w) of the file and
    ``path``. Batch with :func:`collate_predict`.

    Args:
        root: image folder (``.jpg``, ``.jpeg``, ``.png``, ``.bmp``).
        transform: called as ``transform(image, segments)`` like the panoptic transforms, or None.

    Raises:
        FileNotFoundError: ``root`` is missing or holds no image, naming it.
    """

    def __init__(self, *, root: str | os.PathLike, transform=None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"predict_dir not found: {root}")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
        self.root, self.files, self.transform = root, files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        image = read_rgb_image(path)  # H x W x 3 uint8
        orig_size = (int(image.shape[0]), int(image.shape[1]))
        if self.transform is not None:
            image, _ = self.transform(image, np.zeros(image.shape[:2], dtype=np.int32))
        height, width = image.shape[:2]
        return {
            "image": torch.tensor(image.transpose(2, 0, 1), dtype=torch.float32),  # 3 x H x W
            "labels": torch.zeros(0, dtype=torch.long),
            "masks": torch.zeros(0, height, width, dtype=torch.bool),
            "image_id": path.relative_to(self.root).with_suffix("").as_posix(),
            "orig_size": orig_size,
            "path": str(path),
        }


def collate_predict(samples: Sequence[dict[str, Any]], *, size_divisibility: int = 32) -> dict[str, Any]:
    """:func:`~segblocks.data.collate_panoptic` plus ``paths`` (the image files, for drawing overlays)."""
    batch = collate_panoptic(samples, size_divisibility=size_divisibility)
    batch["paths"] = [s["path"] for s in samples]
    return batch
