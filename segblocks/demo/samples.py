"""Procedural sample images for the demo: no files to ship, the same pixels on every machine.

Each sample is a smooth two-colour gradient background with mild noise and a few clearly
bounded objects (a disc, a rotated box, a star polygon), so the training-free baselines
(:mod:`segblocks.models.classical`) segment an object from a click or two.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["SAMPLE_NAMES", "sample_image"]

#: Names accepted by :func:`sample_image`.
SAMPLE_NAMES = ("shapes", "star")


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)  # H x W each
    c0, c1 = rng.uniform(40, 120, 3), rng.uniform(120, 200, 3)
    t = (0.6 * yy + 0.4 * xx)[..., None]  # H x W x 1
    return c0 * (1 - t) + c1 * t + rng.normal(0, 4, (height, width, 3))  # H x W x 3


def _shade(image: np.ndarray, mask: np.ndarray, colour: tuple[float, float, float], rng: np.random.Generator) -> None:
    image[mask] = np.asarray(colour) + rng.normal(0, 5, (int(mask.sum()), 3))


def sample_image(name: str, *, height: int = 240, width: int = 320) -> np.ndarray:
    """A sample photo-like image.

    Args:
        name: one of :data:`SAMPLE_NAMES`.
        height, width: size in pixels (>= 32).

    Returns:
        ``(height, width, 3)`` uint8 RGB.
    """
    if name not in SAMPLE_NAMES:
        raise ValueError(f"unknown sample {name!r}; choose one of {SAMPLE_NAMES}")
    if int(height) < 32 or int(width) < 32:
        raise ValueError(f"sample size must be at least 32 x 32, got {height} x {width}")
    rng = np.random.default_rng(SAMPLE_NAMES.index(name))
    image = _background(rng, height, width)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)  # H x W each
    s = min(height, width)
    if name == "shapes":
        disc = (yy - 0.45 * height) ** 2 + (xx - 0.32 * width) ** 2 <= (0.22 * s) ** 2
        _shade(image, disc, (210, 60, 50), rng)
        a = math.radians(25)
        u = (xx - 0.72 * width) * math.cos(a) + (yy - 0.55 * height) * math.sin(a)
        v = -(xx - 0.72 * width) * math.sin(a) + (yy - 0.55 * height) * math.cos(a)
        _shade(image, (np.abs(u) <= 0.16 * s) & (np.abs(v) <= 0.09 * s), (40, 90, 200), rng)
    else:
        r = np.hypot(yy - 0.5 * height, xx - 0.5 * width)
        theta = np.arctan2(yy - 0.5 * height, xx - 0.5 * width)
        star = r <= 0.3 * s * (0.7 + 0.3 * np.cos(5 * theta))
        _shade(image, star, (240, 200, 40), rng)
    return np.clip(image, 0, 255).round().astype(np.uint8)
