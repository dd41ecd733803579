"""Deterministic synthetic panoptic dataset in real COCO panoptic format (the embedded default).

Small enough that a small model learns it on 2 CPU cores in minutes, yet not trivial: every
class has its own shape *and* colour, both perturbed, and scenes have scale variation,
occlusion, truncation at the border, thin structures, textured stuff and void pixels.

Categories (COCO ids are deliberately non-contiguous to exercise the id mapping):

====  ========  =====  ==========================================================
id    name      thing  how it is drawn
====  ========  =====  ==========================================================
1     disc      yes    red ellipse (aspect 0.6-1), any rotation
2     box       yes    blue rectangle (aspect 0.5-1), any rotation
3     triangle  yes    yellow triangle (squashed up to 0.7), any rotation
4     pole      yes    magenta line segment 1.5-3 px wide (the thin structure)
101   sky       no     light blue, vertical gradient and horizontal stripes
102   grass     no     green, blotchy low-frequency noise plus fine noise
103   wall      no     brown bricks with light mortar lines
====  ========  =====  ==========================================================

Each scene: the sky sits above a wavy horizon and grass below it (10% of scenes are all sky,
10% all grass); half of the scenes with a horizon have a wall block standing on it. A grey noise patch
labelled void (id 0) appears in a quarter of the scenes. Then 1-6 things are painted in order,
later ones occluding earlier ones; their size is log-uniform between 4% and 30% of the image
side (poles: half-length 20-45%), centres are uniform so things may be cut by the border. Each
instance's colour is its class colour jittered by up to +-30 per channel with a linear shading
ramp; finally Gaussian pixel noise is added. Segments smaller than ``_MIN_AREA_FRACTION`` of
the image after occlusion become void. Segment ids are random distinct integers in [1, 2^24),
so ids use all three PNG channels.

Files follow the COCO layout under ``<cache>/synthetic_panoptic-v<version>-<hash>/``:
``{train,val}/<id>.png`` images (PNG: lossless, byte-reproducible), ``panoptic_{train,val}/<id>.png``
and ``annotations/panoptic_{train,val}.json``. The folder is written atomically
(:mod:`segblocks.data._atomic`); image ``i`` of a split depends only on ``(seed, split, i)``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import build_directory_atomically
from .io import id_to_rgb
from .panoptic_meta import PanopticMeta

__all__ = ["SYNTHETIC_CATEGORIES", "SYNTHETIC_VERSION", "default_cache_dir", "make_synthetic_panoptic", "synthetic_panoptic_meta"]

# Bump whenever the drawing changes, so that old caches are not reused.
SYNTHETIC_VERSION = 1

SYNTHETIC_CATEGORIES: tuple[dict[str, Any], ...] = (
    {"id": 1, "name": "disc", "isthing": 1, "color": [220, 50, 50]},
    {"id": 2, "name": "box", "isthing": 1, "color": [40, 70, 200]},
    {"id": 3, "name": "triangle", "isthing": 1, "color": [235, 195, 30]},
    {"id": 4, "name": "pole", "isthing": 1, "color": [200, 40, 200]},
    {"id": 101, "name": "sky", "isthing": 0, "color": [135, 185, 235]},
    {"id": 102, "name": "grass", "isthing": 0, "color": [70, 140, 60]},
    {"id": 103, "name": "wall", "isthing": 0, "color": [150, 95, 70]},
)
_SKY, _GRASS, _WALL = 101, 102, 103
_MIN_AREA_FRACTION = 1 / 2048
_SPLITS = ("train", "val")


def synthetic_panoptic_meta() -> PanopticMeta:
    """Categories of the synthetic dataset (no generation needed)."""
    return PanopticMeta.from_coco_categories(SYNTHETIC_CATEGORIES)


def default_cache_dir() -> Path:
    """``$SEGBLOCKS_CACHE`` if set, else ``~/.cache/segblocks``."""
    return Path(os.environ.get("SEGBLOCKS_CACHE") or Path.home() / ".cache" / "segblocks")


def make_synthetic_panoptic(
    *,
    cache_dir: str | os.PathLike | None = None,
    num_train: int = 240,
    num_val: int = 32,
    image_size: int = 128,
    seed: int = 0,
) -> Path:
    """Return the root of the synthetic dataset, generating it on first use.

    Args:
        cache_dir: parent folder; None → :func:`default_cache_dir`.
        num_train: number of training images.
        num_val: number of validation images.
        image_size: side of the square images (>= 16).
        seed: generation seed.

    Returns:
        ``<cache_dir>/synthetic_panoptic-v<version>-<hash of the parameters>``.
    """
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, received {image_size}")
    if num_train < 0 or num_val < 0:
        raise ValueError(f"num_train and num_val must be >= 0, received {num_train} and {num_val}")
    params = {"version": SYNTHETIC_VERSION, "num_train": int(num_train), "num_val": int(num_val), "image_size": int(image_size), "seed": int(seed)}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    final = Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"synthetic_panoptic-v{SYNTHETIC_VERSION}-{digest}"

    def build(tmp: Path) -> None:
        for split_index, (split, count) in enumerate(zip(_SPLITS, (num_train, num_val))):
            _write_split(tmp, split, split_index, count, params)
        (tmp / "generation.json").write_text(json.dumps(params, sort_keys=True, indent=1) + "\n")

    return build_directory_atomically(final, build)


def _write_split(root: Path, split: str, split_index: int, count: int, params: dict[str, Any]) -> None:
    from PIL import Image

    image_dir, png_dir, ann_dir = root / split, root / f"panoptic_{split}", root / "annotations"
    for d in (image_dir, png_dir, ann_dir):
        d.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    size = params["image_size"]
    for i in range(count):
        rng = np.random.default_rng([params["seed"], split_index, i])
        image, ids, segments_info = _render_sample(rng, size)
        image_id, name = i + 1, f"{i + 1:012d}"
        Image.fromarray(image).save(image_dir / f"{name}.png", format="PNG")
        Image.fromarray(id_to_rgb(ids)).save(png_dir / f"{name}.png", format="PNG")
        images.append({"id": image_id, "file_name": f"{name}.png", "height": size, "width": size})
        annotations.append({"image_id": image_id, "file_name": f"{name}.png", "segments_info": segments_info})
    data = {
        "info": {"description": "segblocks synthetic panoptic dataset", "version": SYNTHETIC_VERSION},
        "images": images,
        "annotations": annotations,
        "categories": [dict(c) for c in SYNTHETIC_CATEGORIES],
    }
    (ann_dir / f"panoptic_{split}.json").write_text(json.dumps(data, sort_keys=True))


def _render_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Draw one scene: image (S, S, 3) uint8, segment ids (S, S) int64, COCO ``segments_info``."""
    colors = {c["id"]: np.array(c["color"], dtype=np.float64) for c in SYNTHETIC_CATEGORIES}
    yy, xx = np.mgrid[0:size, 0:size] + 0.5  # pixel centres, S x S each
    image = np.zeros((size, size, 3))
    cat = np.zeros((size, size), dtype=np.int64)  # category per pixel, 0 = void
    inst = np.zeros((size, size), dtype=np.int64)  # thing instance per pixel (1-based), 0 = stuff/void

    # Stuff: sky over a wavy horizon, grass under it, sometimes a wall standing on the horizon.
    layout = rng.random()
    level, amplitude, period, phase = rng.uniform(0.25, 0.7), rng.uniform(0, 0.08), rng.uniform(0.5, 2), rng.uniform(0, 2 * np.pi)
    horizon = size * (level + amplitude * np.sin(2 * np.pi * xx / (size * period) + phase))  # S x S, constant along y
    below = np.ones_like(xx, dtype=bool) if layout < 0.1 else np.zeros_like(xx, dtype=bool) if layout < 0.2 else yy >= horizon
    cat[:] = np.where(below, _GRASS, _SKY)
    if layout >= 0.2 and rng.random() < 0.5:
        x0 = rng.uniform(0, 0.8) * size
        top = horizon.min() - size * rng.uniform(0.1, 0.35)
        cat[(xx >= x0) & (xx < x0 + size * rng.uniform(0.2, 0.5)) & (yy >= top) & ~below] = _WALL

    def jitter(category: int, amount: float) -> np.ndarray:
        return colors[category] + rng.uniform(-amount, amount, 3)

    sky = jitter(_SKY, 15) + (yy / size * 30 - 15 + 12 * np.sin(2 * np.pi * yy / rng.uniform(5, 10) + rng.uniform(0, 2 * np.pi)))[..., None]
    coarse = np.kron(rng.normal(0, 18, (size // 8 + 1, size // 8 + 1, 3)), np.ones((8, 8, 1)))[:size, :size]
    grass = jitter(_GRASS, 15) + coarse + rng.normal(0, 12, (size, size, 3))
    brick_h = rng.integers(5, 9)
    row = (yy // brick_h).astype(np.int64)
    mortar = (yy % brick_h < 1) | ((xx + (row % 2) * brick_h) % (2 * brick_h) < 1)
    wall = np.where(mortar[..., None], np.array([205.0, 200, 190]), jitter(_WALL, 15))
    for c, texture in ((_SKY, sky), (_GRASS, grass), (_WALL, wall)):
        image[cat == c] = texture[cat == c]

    if rng.random() < 0.25:  # an unlabelled patch, like COCO's void regions
        h, w = (size * rng.uniform(0.05, 0.15, 2)).astype(int) + 1
        y, x = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
        image[y : y + h, x : x + w] = rng.normal(128, 30, (h, w, 3))
        cat[y : y + h, x : x + w] = 0

    # Things, painted in order so that later ones occlude earlier ones.
    for k in range(1, int(rng.integers(1, 7)) + 1):
        c = int(rng.choice([1, 2, 3, 4], p=[0.3, 0.3, 0.25, 0.15]))
        cx, cy, theta = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)  # S x S, coordinates in the shape's frame
        v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
        r = size * np.exp(rng.uniform(np.log(0.04), np.log(0.3)))
        if c == 1:
            mask = (u / r) ** 2 + (v / (r * rng.uniform(0.6, 1))) ** 2 <= 1
        elif c == 2:
            mask = (np.abs(u) <= r) & (np.abs(v) <= r * rng.uniform(0.5, 1))
        elif c == 3:
            # Vertices (r, 0) and (-r/2, +-h): |v| shrinks linearly from h at u = -r/2 to 0 at u = r.
            h = r * np.sqrt(3) / 2 * rng.uniform(0.7, 1)
            mask = (u >= -r / 2) & (1.5 * r * np.abs(v) <= h * (r - u))
        else:
            r, half_width = size * rng.uniform(0.2, 0.45), rng.uniform(0.75, 1.5)
            mask = (np.abs(u) <= r) & (np.abs(v) <= half_width)
        shade = np.clip(rng.uniform(-15, 15) * u / r, -25, 25)[..., None]
        image[mask] = (jitter(c, 30) + shade)[mask]
        cat[mask], inst[mask] = c, k

    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).round().astype(np.uint8)
    return image, *_segments(rng, cat, inst, size)


def _segments(rng: np.random.Generator, cat: np.ndarray, inst: np.ndarray, size: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Segment id map and ``segments_info``: one segment per thing instance / stuff class."""
    pairs = np.unique(np.stack([cat.ravel(), inst.ravel()], axis=1), axis=0)  # P x 2 (category, instance)
    keys = [(int(c), int(k)) for c, k in pairs if c]
    seg_ids = rng.choice(2**24 - 1, size=len(keys), replace=False) + 1
    ids = np.zeros(cat.shape, dtype=np.int64)
    info = []
    for (c, k), seg_id in zip(keys, seg_ids.tolist()):
        mask = (cat == c) & (inst == k)
        area = int(mask.sum())
        if area < max(1, _MIN_AREA_FRACTION * size * size):
            continue  # too small after occlusion: void
        ys, xs = np.nonzero(mask)
        ids[mask] = seg_id
        bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
        info.append({"id": seg_id, "category_id": c, "iscrowd": 0, "bbox": bbox, "area": area})
    return ids, info
