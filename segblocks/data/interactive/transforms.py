"""Transforms of interactive samples that keep the image, the object mask and the ignore map aligned.

* :class:`InteractiveTrainTransform`: flip, random scale, crop around the object, colour jitter
  (albumentations, imported when the transform is built).
* :class:`InteractiveEvalTransform`: SAM-style resize of the longest side to ``T`` and zero
  padding at the bottom/right to ``T x T``, as HRSAM and FocSAM do at test time
  (YouHuang67/High-Resolution-Segment-Anything, ``engine/utils/resize.py``);
  :func:`segblocks.ops.geometry.crop_and_resize_back` maps predictions back to the original
  resolution, where the protocol scores them (the authors' click test loop,
  ``models/runners/click_test_loops.py``).

The geometry itself lives in :mod:`segblocks.ops.geometry`.

Both take and return the sample dict of :mod:`segblocks.data.interactive.collate` and add
``valid_size``, the (h, w) of real content at the top-left of the output. Masks are resized
pixel-centre aligned (OpenCV ``INTER_NEAREST_EXACT`` / torch ``nearest-exact``) so they stay on
the bilinearly resized image; padding is background and not ignored, like the authors'
``seg_pad_val=0`` (crop with ``valid_size`` where that matters).
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from ...ops.geometry import resize_longest_side_and_pad
from ..transforms import import_albumentations

__all__ = ["InteractiveEvalTransform", "InteractiveTrainTransform"]

# The object, ignore and valid maps travel through albumentations as bits of one uint8 map,
# so a single nearest-neighbour warp keeps them aligned.
_OBJECT, _IGNORE, _VALID = 1, 2, 4


class InteractiveTrainTransform:
    """Random flip, scale, ``crop_size`` crop containing part of the object, colour jitter.

    The image is flipped horizontally with ``hflip_prob``, resized so that its longer side is
    ``s * crop_size`` (``s`` uniform in ``scale_range``, integer sizes), padded at the
    bottom/right to at least ``crop_size`` and cropped to ``crop_size x crop_size`` around a
    random object pixel (albumentations' ``CropNonEmptyMaskIfExists``; a random crop if the
    object vanished when downscaled). Brightness, contrast and saturation are then jittered by
    up to ``color_jitter`` and the hue by up to ``color_jitter / 4``. Flipping first keeps the
    valid region at the top-left.

    Randomness comes from torch's generator (one seed per call), so ``torch.manual_seed``
    makes it reproducible and DataLoader workers draw different augmentations.

    Args:
        crop_size: side ``T`` of the square output.
        scale_range: (min, max) of ``s``.
        hflip_prob: probability of a horizontal flip.
        color_jitter: jitter strength in [0, 1); 0 disables it.
    """

    def __init__(
        self, *, crop_size: int, scale_range: tuple[float, float] = (0.75, 1.4), hflip_prob: float = 0.5, color_jitter: float = 0.2
    ) -> None:
        if int(crop_size) < 1:
            raise ValueError(f"crop_size must be a positive int, received {crop_size}")
        lo, hi = (float(v) for v in scale_range)
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < min <= max, received {scale_range}")
        if not 0.0 <= hflip_prob <= 1.0:
            raise ValueError(f"hflip_prob must lie in [0, 1], received {hflip_prob}")
        if not 0.0 <= color_jitter < 1.0:
            raise ValueError(f"color_jitter must lie in [0, 1), received {color_jitter}")
        self.crop_size, self.scale_range, self.hflip_prob, self.color_jitter = int(crop_size), (lo, hi), float(hflip_prob), float(color_jitter)
        A, cv2 = import_albumentations()
        c = self.crop_size
        steps = [
            A.HorizontalFlip(p=self.hflip_prob),
            A.LongestMaxSize(
                max_size=list(range(max(1, round(lo * c)), max(1, round(hi * c)) + 1)),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST_EXACT,
            ),
            A.PadIfNeeded(min_height=c, min_width=c, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0),
            # Only codes with the object bit count as "non-empty".
            A.CropNonEmptyMaskIfExists(height=c, width=c, ignore_values=[v for v in range(8) if not v & _OBJECT]),
        ]
        if self.color_jitter > 0:
            j = self.color_jitter
            steps.append(A.ColorJitter(brightness=j, contrast=j, saturation=j, hue=j / 4, p=1.0))
        self._compose = A.Compose(steps)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        image, mask, ignore = _unpack(sample)
        code = (mask * _OBJECT | ignore * _IGNORE | _VALID).astype(np.uint8)  # H x W
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        # One shared generator: Compose.set_random_seed would seed every step alike (correlated draws).
        self._compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
        out = self._compose(image=image, mask=code)
        code = torch.from_numpy(out["mask"])
        valid = (code & _VALID) > 0
        return {
            **sample,
            "image": torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1))),  # 3 x T x T
            "mask": (code & _OBJECT) > 0,
            "ignore": (code & _IGNORE) > 0,
            "valid_size": (int(valid.any(dim=1).sum()), int(valid.any(dim=0).sum())),
        }


class InteractiveEvalTransform:
    """Resize the longest side to ``target_size`` and pad to a square, keeping the originals.

    The output image is float32 (bilinear, ``align_corners=False``, no antialiasing, like the
    authors' ``torchvision`` resize of tensors) so no rounding is added; see
    :func:`segblocks.ops.geometry.resize_longest_side_and_pad`.

    Args:
        target_size: side ``T`` of the square output (1024 for SAM-style models).
        keep_original: store the input ``mask`` / ``ignore`` as ``original_mask`` /
            ``original_ignore`` for scoring at the original resolution.
    """

    def __init__(self, *, target_size: int, keep_original: bool = True) -> None:
        if int(target_size) < 1:
            raise ValueError(f"target_size must be a positive int, received {target_size}")
        self.target_size, self.keep_original = int(target_size), bool(keep_original)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        image, mask, ignore = sample["image"], sample["mask"], sample["ignore"]
        if image.ndim != 3 or image.shape[0] != 3 or mask.shape != image.shape[1:] or ignore.shape != image.shape[1:]:
            raise ValueError(
                f"sample {sample.get('sample_id')}: expected image (3, H, W) with mask and ignore (H, W), received "
                f"{tuple(image.shape)}, {tuple(mask.shape)}, {tuple(ignore.shape)}"
            )
        out_image, valid_size = resize_longest_side_and_pad(image.float(), self.target_size)
        maps, _ = resize_longest_side_and_pad(torch.stack([mask, ignore]).float(), self.target_size, mode="nearest-exact")  # 2 x T x T
        out = {**sample, "image": out_image, "mask": maps[0] > 0.5, "ignore": maps[1] > 0.5, "valid_size": valid_size}
        if self.keep_original:
            out["original_mask"], out["original_ignore"] = mask, ignore
        return out


def _unpack(sample: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``image`` (H, W, 3) uint8, ``mask`` and ``ignore`` (H, W) bool as numpy arrays."""
    image, mask, ignore = sample["image"], sample["mask"], sample["ignore"]
    if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
        raise ValueError(f"sample {sample.get('sample_id')}: image must be (3, H, W) uint8, received {image.dtype} {tuple(image.shape)}")
    for name, m in (("mask", mask), ("ignore", ignore)):
        if m.shape != image.shape[1:] or m.dtype != torch.bool:
            raise ValueError(f"sample {sample.get('sample_id')}: {name} must be bool {tuple(image.shape[1:])}, received {m.dtype} {tuple(m.shape)}")
    return np.ascontiguousarray(image.permute(1, 2, 0).numpy()), mask.numpy(), ignore.numpy()  # H x W x 3, H x W, H x W
