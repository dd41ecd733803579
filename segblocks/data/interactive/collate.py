"""The per-object sample of the interactive datasets, and its batching.

Every interactive dataset yields one object per sample::

    image          (3, H, W) uint8 RGB (float32 0..255 after InteractiveEvalTransform)
    mask           (H, W) bool, the object
    ignore         (H, W) bool, pixels excluded from errors and IoU (all False if none)
    sample_id      str
    original_size  (H0, W0) of the image on disk

Transforms (:mod:`.transforms`) add ``valid_size`` (the un-padded size) and the eval transform
also ``original_mask`` / ``original_ignore`` for scoring at the original resolution.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

__all__ = ["SampleTransform", "collate_interactive", "make_sample"]

#: ``transform(sample) -> sample``; see :mod:`segblocks.data.interactive.transforms`.
SampleTransform = Callable[[dict[str, Any]], dict[str, Any]]


def make_sample(
    *,
    image: np.ndarray,
    mask: np.ndarray,
    ignore: np.ndarray | None,
    sample_id: str,
    transform: SampleTransform | None = None,
) -> dict[str, Any]:
    """Build the sample dict from numpy arrays and apply ``transform``.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        mask: ``(H, W)`` bool-like object mask.
        ignore: ``(H, W)`` bool-like ignore map, or None for none; object pixels are never ignored.
        sample_id: unique id of the object.
        transform: applied to the finished sample.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"sample {sample_id}: image must be (H, W, 3) uint8, received {image.shape} {image.dtype}")
    for name, m in (("mask", mask), ("ignore", ignore)):
        if m is not None and m.shape != image.shape[:2]:
            raise ValueError(f"sample {sample_id}: {name} must be (H, W) = {image.shape[:2]}, received {m.shape}")
    mask = torch.from_numpy(np.asarray(mask, dtype=bool).copy())
    ignore = torch.zeros_like(mask) if ignore is None else torch.from_numpy(np.asarray(ignore, dtype=bool).copy()) & ~mask
    sample = {
        "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),  # 3 x H x W
        "mask": mask,
        "ignore": ignore,
        "sample_id": str(sample_id),
        "original_size": (int(image.shape[0]), int(image.shape[1])),
    }
    return sample if transform is None else transform(sample)


def collate_interactive(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack per-object samples into a batch, zero-padding at the bottom/right if sizes differ.

    After :class:`~segblocks.data.interactive.InteractiveEvalTransform` or
    :class:`~segblocks.data.interactive.InteractiveTrainTransform` all samples are ``T x T``
    and nothing is padded here.

    Args:
        samples: sample dicts (see the module docstring).

    Returns:
        dict with ``image`` (B, 3, H, W) float32 0..255, ``mask`` and ``ignore`` (B, H, W)
        bool (padding: False), ``valid_size`` (B, 2) int64 (the sample's ``valid_size``, else
        its image size), ``original_size`` (B, 2) int64, ``sample_id`` list, and, when every
        sample has them, ``original_mask`` / ``original_ignore`` lists of (H0_i, W0_i) bool
        and ``index`` (B,) int64 (see :class:`~segblocks.data.IndexedDataset`). An empty list gives an empty batch (B = 0, ``image`` (0, 3, 0, 0)).
    """
    if not samples:  # e.g. the padding batch of a rank without evaluation samples
        empty = torch.zeros(0, 0, 0, dtype=torch.bool)
        return {
            "image": torch.zeros(0, 3, 0, 0), "mask": empty, "ignore": empty.clone(),
            "valid_size": torch.zeros(0, 2, dtype=torch.long), "original_size": torch.zeros(0, 2, dtype=torch.long),
            "sample_id": [], "original_mask": [], "original_ignore": [], "index": torch.zeros(0, dtype=torch.long),
        }
    for i, s in enumerate(samples):
        image = s["image"]
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"sample {i} ({s.get('sample_id')}): image must be (3, H, W), received {tuple(image.shape)}")
        for key in ("mask", "ignore"):
            if s[key].shape != image.shape[1:] or s[key].dtype != torch.bool:
                raise ValueError(
                    f"sample {i} ({s.get('sample_id')}): {key} must be bool {tuple(image.shape[1:])}, "
                    f"received {s[key].dtype} {tuple(s[key].shape)}"
                )
    height = max(s["image"].shape[1] for s in samples)
    width = max(s["image"].shape[2] for s in samples)
    B = len(samples)
    image = torch.zeros(B, 3, height, width, dtype=torch.float32)
    mask = torch.zeros(B, height, width, dtype=torch.bool)
    ignore = torch.zeros(B, height, width, dtype=torch.bool)
    for i, s in enumerate(samples):
        h, w = s["image"].shape[1:]
        image[i, :, :h, :w] = s["image"]
        mask[i, :h, :w] = s["mask"]
        ignore[i, :h, :w] = s["ignore"]
    batch = {
        "image": image,
        "mask": mask,
        "ignore": ignore,
        "valid_size": torch.tensor([tuple(s.get("valid_size", s["image"].shape[1:])) for s in samples], dtype=torch.long),  # B x 2
        "original_size": torch.tensor([tuple(s["original_size"]) for s in samples], dtype=torch.long),  # B x 2
        "sample_id": [s["sample_id"] for s in samples],
    }
    for key in ("original_mask", "original_ignore"):
        if all(key in s for s in samples):
            batch[key] = [s[key] for s in samples]
    if all("index" in s for s in samples):
        batch["index"] = torch.tensor([s["index"] for s in samples], dtype=torch.long)  # B
    return batch
