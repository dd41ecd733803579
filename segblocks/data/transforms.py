"""Panoptic augmentations built on albumentations, applied to the image and the segment map together.

Panoptic segments do not overlap, so a sample's masks travel as one (H, W) int32 segment index
map (0 = void, k = k-th segment): a single nearest-neighbour warp keeps every mask aligned with
the image and with each other, whatever the number of segments. Masks use
``INTER_NEAREST_EXACT`` (pixel-centre aligned like the bilinear image resize; OpenCV's plain
``INTER_NEAREST`` is shifted by half a pixel). Padding is void (index 0) and black.

Randomness comes from torch's generator (one seed per call), so ``torch.manual_seed`` /
Lightning's ``seed_everything`` make augmentations reproducible and every DataLoader worker
draws different ones (albumentations' own generator would be copied into each worker).

albumentations is imported when a transform is built, never at ``import segblocks``.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["PanopticEvalTransform", "PanopticTrainTransform", "import_albumentations"]

_INTERPOLATIONS = ("linear", "nearest", "area", "cubic")


def import_albumentations():
    """``(albumentations, cv2)``, imported on first use without albumentations' PyPI version check."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # it queries PyPI at import otherwise
    import albumentations
    import cv2

    return albumentations, cv2


class _ComposedTransform:
    """Runs an albumentations pipeline on ``(image, segments)`` with a torch-drawn seed."""

    def __init__(self, *, image_interpolation: str) -> None:
        if image_interpolation not in _INTERPOLATIONS:
            raise ValueError(f"image_interpolation must be one of {_INTERPOLATIONS}, received {image_interpolation!r}")
        _, cv2 = import_albumentations()
        self.image_interpolation = image_interpolation
        flags = {"linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST_EXACT, "area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC}
        self._resize_kwargs = {"interpolation": flags[image_interpolation], "mask_interpolation": cv2.INTER_NEAREST_EXACT}

    def _pipeline(self, height: int, width: int):
        """The ``A.Compose`` for an input of this size, or None for identity."""
        raise NotImplementedError

    def __call__(self, image: np.ndarray, segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Transform ``image`` (H, W, 3) uint8 and ``segments`` (H, W) int32 consistently."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8, received {image.shape} {image.dtype}")
        if segments.shape != image.shape[:2]:
            raise ValueError(f"segments must be (H, W) = {image.shape[:2]}, received {segments.shape}")
        compose = self._pipeline(*image.shape[:2])
        if compose is None:
            return image, segments
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        # One shared generator: Compose.set_random_seed would give every transform its own
        # generator with the same seed, i.e. correlated decisions (flip iff crop left, ...).
        compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
        out = compose(image=image, mask=segments.astype(np.int32, copy=False))
        return out["image"], out["mask"]


class PanopticTrainTransform(_ComposedTransform):
    """Scale jitter, fixed-size crop and horizontal flip.

    Large-scale jitter as used by Mask2Former (Cheng et al. 2022, Sec. 4.1, after Ghiasi et al.
    2021): the image is resized so that its longer side is ``s * crop_size`` with ``s`` uniform
    in ``scale_range`` (integer sizes), padded to at least ``crop_size`` (bottom/right, void),
    randomly cropped to ``crop_size x crop_size`` and flipped horizontally with ``hflip_prob``.
    Mask2Former uses ``scale_range=(0.1, 2.0)`` at 1024; the milder default suits short runs.

    Args:
        crop_size: side of the square output.
        scale_range: (min, max) factor of ``crop_size`` for the longer side after resizing.
        hflip_prob: probability of a horizontal flip.
        image_interpolation: ``"linear"`` (default), ``"nearest"``, ``"area"`` or ``"cubic"``.
    """

    def __init__(
        self,
        *,
        crop_size: int,
        scale_range: tuple[float, float] = (0.75, 1.5),
        hflip_prob: float = 0.5,
        image_interpolation: str = "linear",
    ) -> None:
        if int(crop_size) < 1:
            raise ValueError(f"crop_size must be a positive int, received {crop_size}")
        lo, hi = (float(v) for v in scale_range)
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < min <= max, received {scale_range}")
        if not 0.0 <= hflip_prob <= 1.0:
            raise ValueError(f"hflip_prob must lie in [0, 1], received {hflip_prob}")
        super().__init__(image_interpolation=image_interpolation)
        self.crop_size, self.scale_range, self.hflip_prob = int(crop_size), (lo, hi), float(hflip_prob)
        A, cv2 = import_albumentations()
        c = self.crop_size
        sizes = list(range(max(1, round(lo * c)), max(1, round(hi * c)) + 1))
        self._compose = A.Compose([
            A.LongestMaxSize(max_size=sizes, **self._resize_kwargs),
            A.PadIfNeeded(min_height=c, min_width=c, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0),
            A.RandomCrop(height=c, width=c),
            A.HorizontalFlip(p=self.hflip_prob),
        ])

    def _pipeline(self, height: int, width: int):
        return self._compose


class PanopticEvalTransform(_ComposedTransform):
    """Deterministic resize for evaluation, with the size rule of detectron2's ``ResizeShortestEdge``.

    The shorter side becomes ``short_side``; then, if the longer side exceeds ``max_size``, the
    image is shrunk so that it equals ``max_size`` (COCO: 800 and 1333). ``None`` skips a rule;
    both None is the identity.

    Args:
        short_side: target length of the shorter side.
        max_size: upper bound of the longer side.
        image_interpolation: ``"linear"`` (default), ``"nearest"``, ``"area"`` or ``"cubic"``.
    """

    def __init__(self, *, short_side: int | None = None, max_size: int | None = None, image_interpolation: str = "linear") -> None:
        for name, v in (("short_side", short_side), ("max_size", max_size)):
            if v is not None and int(v) < 1:
                raise ValueError(f"{name} must be a positive int or None, received {v}")
        super().__init__(image_interpolation=image_interpolation)
        self.short_side, self.max_size = short_side, max_size

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after resizing an input of this size."""
        scale = 1.0 if self.short_side is None else self.short_side / min(height, width)
        if self.max_size is not None and max(height, width) * scale > self.max_size:
            scale = self.max_size / max(height, width)
        return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))

    def _pipeline(self, height: int, width: int):
        out_h, out_w = self.output_size(height, width)
        if (out_h, out_w) == (height, width):
            return None
        A, _ = import_albumentations()
        return A.Compose([A.Resize(height=out_h, width=out_w, **self._resize_kwargs)])
