"""Batch panoptic samples of different sizes by zero-padding at the bottom/right."""
from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = ["collate_panoptic"]


def collate_panoptic(samples: Sequence[dict[str, Any]], *, size_divisibility: int = 32) -> dict[str, Any]:
    """Stack samples of :class:`~segblocks.data.COCOPanopticDataset` into a padded batch.

    Images are padded with 0 (masks with False) to the largest height/width in the batch,
    rounded up to a multiple of ``size_divisibility`` (the backbone's largest stride).
    Use ``functools.partial(collate_panoptic, size_divisibility=...)`` as a DataLoader's collate_fn.

    Args:
        samples: dicts with ``image`` (3, H_i, W_i) float, ``labels`` (N_i,) int64,
            ``masks`` (N_i, H_i, W_i) bool, ``image_id``, and optionally ``orig_size`` (h, w).
        size_divisibility: padded sizes are multiples of it (1: no rounding).

    Returns:
        dict with ``images`` (B, 3, H, W) float32, ``image_sizes`` (B, 2) int64 valid (h, w),
        ``targets`` list of ``{"labels": (N_i,), "masks": (N_i, H, W) bool}``, ``image_ids``
        list, ``orig_sizes`` (B, 2) int64 when every sample has ``orig_size``, and
        ``orig_targets`` (unpadded, original resolution) when every sample has ``orig_masks``.
        An empty list gives an empty batch (B = 0, ``images`` (0, 3, 0, 0)).
    """
    if size_divisibility < 1:
        raise ValueError(f"size_divisibility must be >= 1, received {size_divisibility}")
    if not samples:  # e.g. the padding batch of a rank without evaluation samples
        sizes = torch.zeros(0, 2, dtype=torch.long)
        return {"images": torch.zeros(0, 3, 0, 0), "image_sizes": sizes, "targets": [], "image_ids": [], "orig_sizes": sizes.clone()}
    for i, s in enumerate(samples):
        image, masks, labels = s["image"], s["masks"], s["labels"]
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"sample {i}: image must be (3, H, W), received {tuple(image.shape)}")
        if masks.ndim != 3 or masks.shape[1:] != image.shape[1:] or masks.shape[0] != labels.shape[0]:
            raise ValueError(
                f"sample {i}: masks must be (N, H, W) = ({labels.shape[0]}, {image.shape[1]}, {image.shape[2]}), "
                f"received {tuple(masks.shape)}"
            )
    sizes = torch.tensor([tuple(s["image"].shape[1:]) for s in samples], dtype=torch.long)  # B x 2
    height, width = (-(-sizes.max(dim=0).values // size_divisibility) * size_divisibility).tolist()
    images = samples[0]["image"].new_zeros(len(samples), 3, height, width, dtype=torch.float32)  # B x 3 x H x W
    targets = []
    for i, s in enumerate(samples):
        h, w = s["image"].shape[1:]
        images[i, :, :h, :w] = s["image"]
        masks = s["masks"].new_zeros(s["masks"].shape[0], height, width, dtype=torch.bool)  # N x H x W
        masks[:, :h, :w] = s["masks"]
        targets.append({"labels": s["labels"].long(), "masks": masks})
    batch = {"images": images, "image_sizes": sizes, "targets": targets, "image_ids": [s["image_id"] for s in samples]}
    if all("orig_size" in s for s in samples):
        batch["orig_sizes"] = torch.tensor([tuple(s["orig_size"]) for s in samples], dtype=torch.long)  # B x 2
    if all("orig_masks" in s for s in samples):  # evaluation targets at the original resolution, unpadded
        batch["orig_targets"] = [{"labels": s["orig_labels"].long(), "masks": s["orig_masks"]} for s in samples]
    return batch
