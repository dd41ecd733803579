"""Binary object masks as they are stored in the wild, decoded strictly to an object map and an ignore map.

Benchmark masks come in many encodings: grayscale BMP with 0 / 128 / 255 (GrabCut's 128 band is
"unknown" and excluded from IoU), palette PNG whose *index* is the label (FocusCut's ``#001``
files, object = 1), 0/1 or 0/255 grayscale PNG, and RGB PNG where any non-black pixel, or one
chosen colour, is the object. :func:`read_mask_array` returns the stored values unchanged (a
palette index is kept, never converted to its colour) and :class:`MaskEncoding` says which of
them mean object and ignore.

Decoding is strict, because a mis-encoded mask otherwise scores silently (IoU 0, NoC 20):

* with an exact ``object_value``, a stored value that is neither 0, the object nor the ignore
  value raises a ``ValueError`` naming the file and the values found (``strict=False`` maps
  them to background instead);
* a mask with no object pixel (all background, all ignore, or a 0/1 mask read with a 255 or
  ``> 128`` rule) raises :class:`EmptyMaskError`, naming the file and the values found. The
  datasets can skip such files instead and record them (``on_empty="skip"``, see
  :class:`~segblocks.data.interactive.ImageMaskFolderDataset`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from ..io import open_image

__all__ = ["EmptyMaskError", "MaskEncoding", "MaskValue", "check_mask_size", "mask_values", "read_mask_array"]

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
    img = open_image(path, "mask")
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


class EmptyMaskError(ValueError):
    """A mask file decodes to no object pixel (all background or all ignore)."""


def mask_values(raw: np.ndarray, limit: int = 10) -> str:
    """The distinct stored values (or RGB colours) of ``raw``, at most ``limit`` of them, for error messages."""
    values = np.unique(raw.reshape(-1, 3), axis=0) if raw.ndim == 3 else np.unique(raw)
    shown = [tuple(int(c) for c in v) if raw.ndim == 3 else int(v) for v in values[:limit]]
    more = f" and {len(values) - limit} more" if len(values) > limit else ""
    return f"{shown}{more}"


@dataclass(frozen=True)
class MaskEncoding:
    """Which stored mask values are the object and which are ignored.

    Three rules for the object, tried in this order after the ignore value:

    * ``object_threshold=t``: stored values ``> t`` (the GrabCut / Berkeley rule of RITM,
      SamsungLabs/ritm_interactive_segmentation, isegm/data/datasets/grabcut.py: ``> 128``
      object, ``== 128`` ignore; for an RGB mask the blue channel, which is what its
      ``cv2.imread(path)[:, :, 0]`` reads);
    * ``object_value=v``: exactly ``v``;
    * neither: every non-zero (non-black) value.

    An int value matches a gray RGB colour ``(v, v, v)``; a colour matches a single-channel mask
    only when it is gray. Examples: GrabCut ``MaskEncoding(object_threshold=128,
    ignore_value=128)``; DAVIS / COCO-MVal ``MaskEncoding()``; FocusCut palette masks
    ``MaskEncoding(object_value=1, ignore_value=255)``.

    Attributes:
        object_value: the object's value or colour; None = any non-zero (or the threshold).
        ignore_value: value or colour of pixels excluded from errors and IoU; None = none.
        object_threshold: object where the stored value is greater; None = not used.
        strict: with ``object_value``, values other than 0, the object and the ignore value are
            an error (False: background).
        allow_empty: accept masks without any object pixel (False: :class:`EmptyMaskError`).
    """

    object_value: MaskValue | None = None
    ignore_value: MaskValue | None = None
    object_threshold: int | None = None
    strict: bool = True
    allow_empty: bool = False

    def __post_init__(self) -> None:
        for name in ("object_value", "ignore_value"):
            _check_value(name, getattr(self, name))
        if self.object_value is not None and self.object_value == self.ignore_value:
            raise ValueError(f"object_value and ignore_value must differ, both are {self.object_value}")
        if self.object_threshold is not None:
            t = self.object_threshold
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < 255:
                raise TypeError(f"object_threshold must be None or an int in [0, 255), received {t!r}")
            if self.object_value is not None:
                raise ValueError("give object_value or object_threshold, not both")

    def decode(self, raw: np.ndarray, *, source: str | os.PathLike = "<array>") -> tuple[np.ndarray, np.ndarray]:
        """Split stored values into object and ignore maps.

        Args:
            raw: ``(H, W)`` integer or ``(H, W, 3)`` RGB array, e.g. from :func:`read_mask_array`.
            source: file name used in error messages.

        Returns:
            ``mask`` and ``ignore``, both ``(H, W)`` bool and disjoint.

        Raises:
            ValueError: bad shape, or (``strict``) values that the encoding does not know.
            EmptyMaskError: no object pixel, unless ``allow_empty``.
        """
        if not (raw.ndim == 2 or (raw.ndim == 3 and raw.shape[2] == 3)):
            raise ValueError(f"mask {source} must be (H, W) or (H, W, 3), received shape {raw.shape}")
        stored = raw
        if self.object_threshold is not None and raw.ndim == 3:
            raw = raw[..., 2].astype(np.int64)  # H x W: the blue channel, as cv2's BGR [..., 0] in RITM
        ignore = np.zeros(raw.shape[:2], dtype=bool) if self.ignore_value is None else _equals(raw, self.ignore_value, source)
        if self.object_threshold is not None:
            mask = (raw > self.object_threshold) & ~ignore
        elif self.object_value is None:
            nonzero = raw != 0 if raw.ndim == 2 else (raw != 0).any(axis=2)
            mask = nonzero & ~ignore
        else:
            mask = _equals(raw, self.object_value, source)
            if self.strict:
                background = raw == 0 if raw.ndim == 2 else (raw == 0).all(axis=2)
                unknown = ~(mask | ignore | background)
                if unknown.any():
                    raise ValueError(
                        f"mask {source}: {int(unknown.sum())} pixels hold values that are neither background (0), object "
                        f"({self.object_value}) nor ignore ({self.ignore_value}); values found: {mask_values(raw)}. "
                        "Check the mask's encoding (e.g. a 0/1 mask read as 0/255)"
                    )
        if not self.allow_empty and not mask.any():
            raise EmptyMaskError(
                f"mask {source} has no object pixel ({'all ignore' if ignore.all() else 'all background or ignore'}); "
                f"values found: {mask_values(stored)}, expected the object as {self._object_rule()}"
            )
        return mask, ignore

    def _object_rule(self) -> str:
        if self.object_threshold is not None:
            return f"values > {self.object_threshold}"
        return "any non-zero value" if self.object_value is None else f"{self.object_value}"


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
