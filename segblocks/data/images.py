"""Unlabelled images resized to a fixed longest side and padded square (SAM's input convention).

HRSAM distils SAM-ViT-H's image embeddings into its encoder on COCO + LVIS images without labels
(HRSAM, supp. D.3, stage 1). The authors' stage-1 pipeline (YouHuang67/High-Resolution-Segment-Anything,
configs/hrsam/, the ``SimpleDistillation`` stage-1 config) resizes every image so that its
longest side is 1024 (aspect ratio kept) and zero-pads it to 1024 x 1024: no crop and no flip, so
one image always gives the same input and teacher embeddings can be precomputed once per image.
Their photometric jitter is not applied here (it would break precomputed embeddings).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from ..ops.geometry import resize_longest_side_and_pad
from .checks import require_file
from .interactive.benchmarks import IMAGE_SUFFIXES
from .io import read_rgb_image

__all__ = ["ImageFolderDataset", "collate_images"]


class ImageFolderDataset(Dataset):
    """The images under ``root`` (recursive, sorted), resized to longest side ``size`` and padded to ``size²``.

    Each sample: ``image`` (3, size, size) float32 RGB 0–255 (zero padding at the bottom/right),
    ``valid_size`` ``(h, w)`` of the resized image, ``sample_id`` the path relative to ``root``
    without suffix (e.g. the key of precomputed embeddings).

    Args:
        root: image folder.
        size: longest side and padded side (1024 in HRSAM).
        limit: keep only the first N images (None: all).

    Raises:
        FileNotFoundError: ``root`` is missing or holds no image, naming it.
    """

    def __init__(self, *, root: str | os.PathLike, size: int, limit: int | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root}")
        if size < 1 or (limit is not None and limit < 1):
            raise ValueError(f"size and limit must be >= 1; got {size}, {limit}")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
        self.root, self.size, self.files = root, int(size), files[:limit]

    def __len__(self) -> int:
        return len(self.files)

    def check_sample(self, index: int, *, decode: bool = True) -> None:
        """Raise naming the file if image ``index`` is missing or (``decode``) corrupt."""
        if decode:
            read_rgb_image(self.files[index])
        else:
            require_file(self.files[index], "image")

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        image = torch.from_numpy(read_rgb_image(path).copy()).permute(2, 0, 1).float()  # 3 x H x W (PIL arrays are read-only)
        image, valid_size = resize_longest_side_and_pad(image, self.size)  # 3 x S x S
        return {"image": image, "valid_size": valid_size, "sample_id": path.relative_to(self.root).with_suffix("").as_posix()}


def collate_images(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch :class:`ImageFolderDataset` samples: ``image`` (B, 3, S, S), ``valid_size`` (B, 2) int64, ``sample_id`` list.

    An empty list gives an empty batch (B = 0, ``image`` (0, 3, 0, 0)).
    """
    if not samples:
        return {"image": torch.zeros(0, 3, 0, 0), "valid_size": torch.zeros(0, 2, dtype=torch.long), "sample_id": []}
    return {
        "image": torch.stack([s["image"] for s in samples]),  # B x 3 x S x S
        "valid_size": torch.tensor([tuple(s["valid_size"]) for s in samples], dtype=torch.long),  # B x 2
        "sample_id": [s["sample_id"] for s in samples],
    }
