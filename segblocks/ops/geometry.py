"""Image geometry shared by models, datasets and the evaluation loop: longest-side resize, pad, crop back.

The convention is Segment Anything's (Kirillov et al., ICCV 2023, App. A; ``ResizeLongestSide`` in
facebookresearch/segment-anything, ``segment_anything/utils/transforms.py``), also used at test time
by HRSAM and FocSAM (YouHuang67/High-Resolution-Segment-Anything, ``engine/utils/resize.py``):

1. resize so that the longer side is ``T``: ``(h', w') = (int(H·s + 0.5), int(W·s + 0.5))`` with
   ``s = T / max(H, W)`` (:func:`longest_side_shape`, :func:`resize_longest_side`);
2. zero-pad at the bottom/right, to ``T × T`` or to multiples of a stride (:func:`padded_size`,
   :func:`pad_bottom_right`); the content stays at the top-left, ``valid_size = (h', w')``;
3. map a prediction back: crop ``[:h', :w']`` and resize to ``(H, W)`` (:func:`crop_and_resize_back`).

All resizing is ``torch.nn.functional.interpolate`` with ``align_corners=False`` (pixel-centre
aligned). Functions take ``(..., H, W)`` tensors with any number of leading dimensions; sizes are
plain ``int`` pairs.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "crop_and_resize_back",
    "longest_side_shape",
    "pad_bottom_right",
    "padded_size",
    "resize",
    "resize_longest_side",
    "resize_longest_side_and_pad",
]

_ALIGNED_MODES = ("linear", "bilinear", "bicubic", "trilinear")


def _check_float_map(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point or x.ndim < 2:
        raise TypeError(
            f"{name} must be a float tensor (..., H, W), received "
            f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}"
        )


def longest_side_shape(height: int, width: int, longest_side: int) -> tuple[int, int]:
    """Size after resizing so the longer side is ``longest_side`` (SAM's ``ResizeLongestSide``, rounded).

    Returns:
        ``(int(H·s + 0.5), int(W·s + 0.5))`` with ``s = longest_side / max(H, W)``, each at least 1
        (SAM's formula gives 0 for a side shorter than ``max(H, W) / (2·longest_side)``).
    """
    if min(height, width, longest_side) <= 0:
        raise ValueError(f"sizes must be positive; got {height}x{width} -> {longest_side}")
    scale = longest_side / max(height, width)
    return max(int(height * scale + 0.5), 1), max(int(width * scale + 0.5), 1)


def padded_size(
    height: int, width: int, *, size_divisor: int = 1, pad_size: int | None = None
) -> tuple[int, int]:
    """Size an ``H × W`` map is zero-padded to: ``pad_size × pad_size``, or up to multiples of ``size_divisor``.

    Raises:
        ValueError: non-positive sizes, or an input larger than ``pad_size``.
    """
    if min(height, width, size_divisor) <= 0:
        raise ValueError(f"height, width and size_divisor must be positive; got {height}x{width}, {size_divisor}")
    if pad_size is not None:
        if max(height, width) > pad_size:
            raise ValueError(f"image {height}x{width} is larger than pad_size {pad_size}; resize it first")
        return pad_size, pad_size
    d = size_divisor
    return -(-height // d) * d, -(-width // d) * d


def pad_bottom_right(x: torch.Tensor, size: Sequence[int], *, value: float = 0.0) -> torch.Tensor:
    """Pad ``(..., h, w)`` with ``value`` at the bottom/right to ``(..., H, W)`` (content stays top-left)."""
    height, width = (int(v) for v in size)
    h, w = x.shape[-2:]
    if height < h or width < w:
        raise ValueError(f"pad_bottom_right: target {height}x{width} is smaller than the input {h}x{w}")
    return F.pad(x, (0, width - w, 0, height - h), value=value)  # ... x H x W


def resize(x: torch.Tensor, size: Sequence[int], *, mode: str = "bilinear", antialias: bool = False) -> torch.Tensor:
    """``F.interpolate`` for ``(..., H, W)`` tensors with any leading dimensions.

    Args:
        x: ``(..., H, W)`` float tensor.
        size: ``(h, w)`` output size.
        mode: interpolation mode; linear modes use ``align_corners=False``.
        antialias: low-pass when downscaling (bilinear/bicubic only).

    Returns:
        ``(..., h, w)``; ``x`` itself when the size already matches.
    """
    _check_float_map(x, "x")
    size = tuple(int(v) for v in size)
    if size == tuple(x.shape[-2:]):
        return x
    flat = x.reshape(-1, 1, *x.shape[-2:])  # N x 1 x H x W
    kwargs = {"align_corners": False} if mode in _ALIGNED_MODES else {}
    if antialias:
        kwargs["antialias"] = True
    out = F.interpolate(flat, size=size, mode=mode, **kwargs)  # N x 1 x h x w
    return out.reshape(*x.shape[:-2], *size)


def resize_longest_side(
    x: torch.Tensor, longest_side: int, *, mode: str = "bilinear", antialias: bool = False
) -> torch.Tensor:
    """Resize ``(..., H, W)`` so its longer side is ``longest_side`` (aspect ratio kept).

    SAM's ``ResizeLongestSide.apply_image_torch`` is ``resize_longest_side(x, 1024, antialias=True)``;
    HRSAM's / FocSAM's test-time resize of tensors uses no antialiasing.

    Returns:
        ``(..., h', w')`` with ``(h', w') = longest_side_shape(H, W, longest_side)``.
    """
    _check_float_map(x, "x")
    return resize(x, longest_side_shape(x.shape[-2], x.shape[-1], longest_side), mode=mode, antialias=antialias)


def resize_longest_side_and_pad(
    x: torch.Tensor, target_size: int, *, mode: str = "bilinear", antialias: bool = False
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Resize ``x`` so its longer side is ``target_size``, then zero-pad bottom/right to a square.

    Args:
        x: ``(..., H, W)`` float tensor.
        target_size: ``T``.
        mode, antialias: see :func:`resize`.

    Returns:
        ``(..., T, T)`` tensor and the resized size ``(h', w')`` before padding (``valid_size``).
    """
    resized = resize_longest_side(x, target_size, mode=mode, antialias=antialias)  # ... x h' x w'
    h, w = resized.shape[-2:]
    return pad_bottom_right(resized, (target_size, target_size)), (int(h), int(w))


def crop_and_resize_back(
    x: torch.Tensor, resized_size: Sequence[int], original_size: Sequence[int], *, mode: str = "bilinear"
) -> torch.Tensor:
    """Inverse of :func:`resize_longest_side_and_pad`: crop the valid part, resize back.

    Args:
        x: ``(..., Hp, Wp)`` float predictions (e.g. logits) on the padded input.
        resized_size: ``(h', w')`` of the valid top-left region.
        original_size: ``(H0, W0)`` to resize the crop to.
        mode: interpolation mode (bilinear, ``align_corners=False``, by default).

    Returns:
        ``(..., H0, W0)``; the crop itself when ``(h', w') == (H0, W0)``.
    """
    _check_float_map(x, "logits")
    h, w = (int(v) for v in resized_size)
    H0, W0 = (int(v) for v in original_size)
    if not (0 < h <= x.shape[-2] and 0 < w <= x.shape[-1]) or min(H0, W0) < 1:
        raise ValueError(
            f"resized_size must fit in the input's {tuple(x.shape[-2:])} and original_size be positive, "
            f"received {tuple(resized_size)} and {tuple(original_size)}"
        )
    return resize(x[..., :h, :w], (H0, W0), mode=mode)
