"""SAM-style pre- and post-processing (Segment Anything §3 and App. A).

Pre-processing: resize so the longest side is ``T`` (done before :class:`SamPreprocess`, by the
dataset transform or :func:`segblocks.ops.geometry.resize_longest_side` — SAM's
``ResizeLongestSide`` is ``resize_longest_side(images, 1024, antialias=True)``), normalize with the
ImageNet mean/std on the 0–255 scale, then zero-pad at the bottom/right, either to ``T × T``
(SAM's 1024 × 1024, ``pad_size``) or to a multiple of 16 (any aspect ratio, ``size_divisor``).
Normalizing before padding makes the padding the mean colour, as in SAM
(facebookresearch/segment-anything, ``Sam.preprocess``) and the mmseg preprocessors of HRSAM/FocSAM.

Post-processing: upscale the stride-4 logits to the padded input, crop the valid region and
optionally resize to the original image size (bilinear, ``align_corners=False``). The geometry is
:mod:`segblocks.ops.geometry`.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from segblocks.ops.geometry import crop_and_resize_back, pad_bottom_right, padded_size, resize

__all__ = ["PIXEL_MEAN", "PIXEL_STD", "SamPreprocess", "postprocess_masks"]

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class SamPreprocess(nn.Module):
    """Normalize and zero-pad a batch of images for the SAM image encoder.

    Args:
        pixel_mean, pixel_std: per-channel statistics on the 0–255 scale (RGB order).
        size_divisor: pad height and width up to a multiple of this (the encoder's patch size).
        pad_size: if given, pad to ``pad_size × pad_size`` instead, as SAM does (1024, the
            encoder's ``img_size``; :func:`~segblocks.models.sam.sam_vit_b`'s default); larger
            inputs raise, so resize the longest side to ``pad_size`` first.

    Shapes:
        images: (B, C, H, W) float in [0, 255] -> (B, C, Hp, Wp).
    """

    def __init__(
        self,
        *,
        pixel_mean: Sequence[float] = PIXEL_MEAN,
        pixel_std: Sequence[float] = PIXEL_STD,
        size_divisor: int = 16,
        pad_size: int | None = None,
    ) -> None:
        super().__init__()
        if len(pixel_mean) != len(pixel_std) or min(pixel_std) <= 0:
            raise ValueError(f"pixel_mean/pixel_std must have equal length and std > 0; got {pixel_mean}, {pixel_std}")
        if size_divisor < 1 or (pad_size is not None and pad_size % size_divisor):
            raise ValueError(f"need size_divisor >= 1 dividing pad_size; got {size_divisor}, {pad_size}")
        # not persistent: checkpoints stay interchangeable with SAM's, which do not store them
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)
        self.size_divisor = size_divisor
        self.pad_size = pad_size

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """``(Hp, Wp)`` an ``H × W`` input is padded to (:func:`segblocks.ops.geometry.padded_size`)."""
        return padded_size(height, width, size_divisor=self.size_divisor, pad_size=self.pad_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != self.pixel_mean.shape[0]:
            raise ValueError(
                f"images must be (B, {self.pixel_mean.shape[0]}, H, W); got shape {tuple(images.shape)}"
            )
        if not images.dtype.is_floating_point:
            raise TypeError(f"images must be a float tensor on the 0-255 scale; got {images.dtype}")
        h, w = images.shape[-2:]
        if h == 0 or w == 0:
            raise ValueError(f"images must be non-empty; got {h}x{w}")
        hp, wp = self.padded_size(h, w)
        x = (images - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)
        return pad_bottom_right(x, (hp, wp))  # B x C x Hp x Wp, zeros at the bottom/right


def postprocess_masks(
    logits: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Map stride-4 decoder logits back to image resolution.

    Args:
        logits: (B, M, h4, w4) logits over the padded input ``(4·h4, 4·w4)``.
        input_size: ``(H, W)`` of the valid (unpadded) input region.
        original_size: optional ``(H0, W0)`` to resize the cropped logits to (e.g. before a
            longest-side resize).

    Returns:
        (B, M, H, W), or (B, M, H0, W0) when ``original_size`` is given.
    """
    if logits.dim() != 4:
        raise ValueError(f"logits must be (B, M, h, w); got shape {tuple(logits.shape)}")
    padded = (4 * logits.shape[-2], 4 * logits.shape[-1])
    h, w = input_size
    if not (0 < h <= padded[0] and 0 < w <= padded[1]):
        raise ValueError(f"input_size {tuple(input_size)} must fit in the padded size {padded}")
    x = resize(logits, padded)  # B x M x Hp x Wp
    return crop_and_resize_back(x, (h, w), (h, w) if original_size is None else original_size)
