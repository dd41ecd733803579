"""Binary object masks as they are stored in the wild, decoded to an object map and an ignore map.

Benchmark masks come in many encodings: grayscale BMP with 0 / 128 / 255 (GrabCut's 128 band is
"unknown" and excluded from IoU), palette PNG whose *index* is the label (FocusCut's ``#001``
files, object = 1), 0/1 or 0/255 grayscale PNG, and RGB PNG where any non-black pixel, or one
chosen colour, is the object. :func:`read_mask_array` returns the stored values unchanged (a
palette index is kept, never converted to its colour) and :class:`MaskEncoding` says which of
them mean object and ignore.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from ..coco_panoptic import _open_image

__all__ = ["MaskEncoding", "MaskValue", "check_mask_size", "read_mask_array"]

#: A grayscale / palette value, or an RGB colour ``(r, g, b)``.
MaskValue = Union[int, tuple[int, int, int]]

# PIL modes whose pixels are one integer each (palette indices stay indices).
_SINGLE_CHANNEL_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L")


def read_mask_array(path: str | os.PathLike) -> np.ndarray:
    """Read a mask file's stored values without any colour conversion.

    Args:
        path: any format PIL reads (PNG, BMP, ...).

    Returns:
        ``(H, W)`` int64 for single-channel and palette images (mode ``"1"`` gives 0/1) and for
        RGB images whose three channels are equal everywhere (a gray mask saved as RGB);
        ``(H, W, 3)`` uint8 for other RGB images (an alpha channel is dropped).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unreadable file or unsupported mode (e.g. float or CMYK), naming the file.
    """
    path = Path(path)
    img = _open_image(path, "mask")
    if img.mode == "LA":
        img = img.getchannel("L")
    if img.mode in _SINGLE_CHANNEL_MODES:
        return np.asarray(img).astype(np.int64)
    if img.mode not in ("RGB", "RGBA"):
        raise ValueError(f"mask {path} has unsupported mode {img.mode}; expected one of {_SINGLE_CHANNEL_MODES} or RGB(A)")
    rgb = np.asarray(img.convert("RGB"))  # H x W x 3
    if (rgb[..., :1] == rgb).all():
        return rgb[..., 0].astype(np.int64)
    return rgb


def check_mask_size(mask: np.ndarray, mask_path: str | os.PathLike, image: np.ndarray, image_path: str | os.PathLike) -> None:
    """Raise ValueError naming both files unless ``mask`` has the image's (H, W)."""
    if mask.shape[:2] != image.shape[:2]:
        raise ValueError(f"mask {mask_path} is {mask.shape[:2]} (H, W) but image {image_path} is {image.shape[:2]}")


@dataclass(frozen=True)
class MaskEncoding:
    """Which stored mask values are the object and which are ignored.

    ``None`` for ``object_value`` means "every non-zero (non-black) value that is not ignored".
    An int value matches a gray RGB colour ``(v, v, v)``; a colour matches a single-channel mask
    only when it is gray. Examples: GrabCut ``MaskEncoding(object_value=255, ignore_value=128)``;
    DAVIS / COCO-MVal ``MaskEncoding()``; FocusCut palette masks
    ``MaskEncoding(object_value=1, ignore_value=255)``.

    Attributes:
        object_value: the object's value or colour; None = any non-zero.
        ignore_value: value or colour of pixels excluded from errors and IoU; None = none.
    """

    object_value: MaskValue | None = None
    ignore_value: MaskValue | None = None

    def __post_init__(self) -> None:
        for name in ("object_value", "ignore_value"):
            _check_value(name, getattr(self, name))
        if self.object_value is not None and self.object_value == self.ignore_value:
            raise ValueError(f"object_value and ignore_value must differ, both are {self.object_value}")

    def decode(self, raw: np.ndarray, *, source: str | os.PathLike = "<array>") -> tuple[np.ndarray, np.ndarray]:
        """Split stored values into object and ignore maps.

        Args:
            raw: ``(H, W)`` integer or ``(H, W, 3)`` RGB array, e.g. from :func:`read_mask_array`.
            source: file name used in error messages.

        Returns:
            ``mask`` and ``ignore``, both ``(H, W)`` bool and disjoint.
        """
        if not (raw.ndim == 2 or (raw.ndim == 3 and raw.shape[2] == 3)):
            raise ValueError(f"mask {source} must be (H, W) or (H, W, 3), received shape {raw.shape}")
        ignore = np.zeros(raw.shape[:2], dtype=bool) if self.ignore_value is None else _equals(raw, self.ignore_value, source)
        if self.object_value is None:
            nonzero = raw != 0 if raw.ndim == 2 else (raw != 0).any(axis=2)
            return nonzero & ~ignore, ignore
        return _equals(raw, self.object_value, source), ignore


def _check_value(name: str, value: object) -> None:
    if value is None or (isinstance(value, (int, np.integer)) and not isinstance(value, bool)):
        return
    if isinstance(value, tuple) and len(value) == 3 and all(isinstance(v, (int, np.integer)) and 0 <= v <= 255 for v in value):
        return
    raise TypeError(f"{name} must be None, an int or an (r, g, b) tuple of ints in [0, 255], received {value!r}")


def _equals(raw: np.ndarray, value: MaskValue, source: str | os.PathLike) -> np.ndarray:
    """``(H, W)`` bool: pixels equal to ``value``."""
    if isinstance(value, tuple):
        if raw.ndim == 3:
            return (raw == np.asarray(value, dtype=raw.dtype)).all(axis=2)
        if len(set(value)) != 1:
            raise ValueError(f"mask {source} is single-channel (or gray); colour {value} cannot occur in it, use an int value")
        value = value[0]
    return raw == value if raw.ndim == 2 else (raw == value).all(axis=2)
