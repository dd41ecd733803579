"""File reading shared by every dataset: JSON, RGB images, panoptic PNGs, with the file named in every error.

All readers decode eagerly, so a truncated or corrupt file fails where it is read, with a
``ValueError`` naming it, and a missing one with a ``FileNotFoundError`` naming it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["id_to_rgb", "load_json", "open_image", "read_panoptic_png", "read_rgb_image", "rgb_to_id"]


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Segment ids of a COCO panoptic PNG: (H, W, 3) uint8 -> (H, W) int64, ``R + 256 G + 256^2 B``.

    The encoding of Kirillov et al., "Panoptic Segmentation" (CVPR 2019), as in the COCO panoptic
    API (cocodataset/panopticapi, panopticapi/utils.py ``rgb2id``).
    """
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_id`: (H, W) ids in ``[0, 256^3)`` -> (H, W, 3) uint8."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 256**3):
        raise ValueError(f"segment ids must lie in [0, 2^24), received range [{ids.min()}, {ids.max()}]")
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)  # H x W x 3


def load_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; FileNotFoundError / ValueError name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSON file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"corrupt JSON file {path}: {e}") from e


def open_image(path: str | os.PathLike, what: str = "image"):
    """Open and fully decode an image with PIL (a ``PIL.Image.Image``, mode unchanged).

    Args:
        path: the file.
        what: how the file is named in error messages (``"mask"``, ``"panoptic PNG"``...).

    Raises:
        FileNotFoundError: no such file, naming it.
        ValueError: PIL cannot decode it (corrupt, truncated, not an image), naming it.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        img = Image.open(path)
        img.load()  # decode now so that truncated files fail here, with the file name
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"corrupt {what} {path}: {e}") from e
    return img


def read_rgb_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB (grayscale images are expanded)."""
    return np.asarray(open_image(path, "image").convert("RGB"))


def read_panoptic_png(path: str | os.PathLike) -> np.ndarray:
    """Read a panoptic PNG as (H, W) int64 segment ids (0 = void)."""
    img = open_image(path, "panoptic PNG")
    if img.mode != "RGB":  # converting e.g. a palette image would silently change the ids
        raise ValueError(f"panoptic PNG {path} must be RGB, received mode {img.mode}")
    return rgb_to_id(np.asarray(img))
