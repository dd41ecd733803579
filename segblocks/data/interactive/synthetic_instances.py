"""Deterministic synthetic instance dataset for interactive segmentation (the embedded default).

Small enough to train and evaluate on CPU in minutes, yet exercising what makes interactive
segmentation hard: thin structures (1.4-2.6 px wires, rings), small and large objects,
occlusion, truncation at the border, unlabelled clutter and a textured background.

Each image is ``H x W`` with both sides uniform in ``[min_side, max_side]``: a background of
random colour with a smooth low-frequency field, stripes of random orientation and pixel noise;
then 4-12 unlabelled clutter specks (small discs and short strokes); then 3-7 objects painted
in order, later ones occluding earlier ones:

=======  ==============================================================================
kind     shape
=======  ==============================================================================
disc     ellipse, radius log-uniform in 3%-35% of the shorter side, any rotation
box      rotated rectangle, same size range
polygon  star-shaped polygon with 5-9 vertices at radius 0.5-1 x r
ring     annulus of radius 8%-30% of the shorter side and width 1.4-3 px
wire     cubic Bezier curve across the image, width 1.4-2.6 px
=======  ==============================================================================

Objects get a random colour at least 80 (L1) away from the background's mean, a shading ramp
and noise. An object whose visible area ends below ``_MIN_AREA`` pixels is dropped: its pixels
stay in the image as unlabelled clutter. Every listed object is one sample.

Files under ``<cache>/synthetic_instances-v<version>-<hash>/``: ``<split>/images/<name>.png``,
``<split>/instances/<name>.png`` (8-bit instance ids, 0 = background) and ``index.json``
listing each image's size and objects. The folder is written atomically
(:mod:`segblocks.data._atomic`); image ``i`` of a split depends only on ``(seed, split, i)``
(and on how many objects are still needed, which caps the last image's count).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from .._atomic import build_directory_atomically
from ..io import load_json, read_rgb_image
from ..synthetic_panoptic import default_cache_dir
from .collate import SampleTransform, make_sample
from .masks import check_mask_size, read_mask_array

__all__ = ["OBJECT_KINDS", "SYNTHETIC_INSTANCES_VERSION", "SyntheticInstanceDataset", "make_synthetic_instances"]

# Bump whenever the drawing changes, so that old caches are not reused.
SYNTHETIC_INSTANCES_VERSION = 1
OBJECT_KINDS = ("disc", "box", "polygon", "ring", "wire")
_KIND_PROBS = (0.25, 0.2, 0.2, 0.15, 0.2)
_MIN_AREA = 12
_SPLITS = ("train", "val")


def make_synthetic_instances(
    *,
    cache_dir: str | os.PathLike | None = None,
    num_train_objects: int = 200,
    num_val_objects: int = 30,
    min_side: int = 128,
    max_side: int = 192,
    seed: int = 0,
) -> Path:
    """Return the root of the synthetic dataset, generating it on first use.

    Args:
        cache_dir: parent folder; None → ``$SEGBLOCKS_CACHE`` or ``~/.cache/segblocks``.
        num_train_objects: exact number of training objects (samples).
        num_val_objects: exact number of validation objects.
        min_side, max_side: range of image heights and widths (32 <= min_side <= max_side).
        seed: generation seed.

    Returns:
        ``<cache_dir>/synthetic_instances-v<version>-<hash of the parameters>``.
    """
    if not 32 <= min_side <= max_side:
        raise ValueError(f"need 32 <= min_side <= max_side, received min_side={min_side}, max_side={max_side}")
    if num_train_objects < 0 or num_val_objects < 0:
        raise ValueError(f"object counts must be >= 0, received {num_train_objects} and {num_val_objects}")
    params = {
        "version": SYNTHETIC_INSTANCES_VERSION,
        "num_train_objects": int(num_train_objects),
        "num_val_objects": int(num_val_objects),
        "min_side": int(min_side),
        "max_side": int(max_side),
        "seed": int(seed),
    }
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    final = Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"synthetic_instances-v{SYNTHETIC_INSTANCES_VERSION}-{digest}"

    def build(tmp: Path) -> None:
        splits = {
            split: _write_split(tmp, split, split_index, count, params)
            for split_index, (split, count) in enumerate(zip(_SPLITS, (num_train_objects, num_val_objects)))
        }
        (tmp / "index.json").write_text(json.dumps({"params": params, "splits": splits}, sort_keys=True, indent=1) + "\n")

    return build_directory_atomically(final, build)


def _write_split(root: Path, split: str, split_index: int, count: int, params: dict[str, Any]) -> list[dict[str, Any]]:
    from PIL import Image

    image_dir, inst_dir = root / split / "images", root / split / "instances"
    image_dir.mkdir(parents=True)
    inst_dir.mkdir(parents=True)
    entries, remaining, i = [], count, 0
    while remaining > 0:
        rng = np.random.default_rng([params["seed"], split_index, i])
        image, instances, objects = _render(rng, params["min_side"], params["max_side"], remaining)
        i += 1
        if not objects:
            continue
        name = f"{i - 1:05d}"
        Image.fromarray(image).save(image_dir / f"{name}.png", format="PNG")
        Image.fromarray(instances).save(inst_dir / f"{name}.png", format="PNG")
        entries.append({"name": name, "height": image.shape[0], "width": image.shape[1], "objects": objects})
        remaining -= len(objects)
    return entries


def _render(rng: np.random.Generator, min_side: int, max_side: int, max_objects: int) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """One scene: image (H, W, 3) uint8, instance ids (H, W) uint8, and the listed objects."""
    H, W = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
    S = min(H, W)
    yy, xx = np.mgrid[0:H, 0:W] + 0.5  # pixel centres, H x W each

    # Textured background: smooth field + oriented stripes + pixel noise.
    base = rng.uniform(30, 225, 3)
    coarse = rng.normal(0, 25, (H // 16 + 2, W // 16 + 2, 3))
    smooth = _upsample(coarse, H, W)  # H x W x 3
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 14)
    stripes = rng.uniform(5, 20) * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    image = base + smooth + stripes[..., None] + rng.normal(0, 5, (H, W, 3))

    for _ in range(int(rng.integers(4, 13))):  # unlabelled clutter
        cx, cy = rng.uniform(0, W), rng.uniform(0, H)
        if rng.random() < 0.5:
            speck = (xx - cx) ** 2 + (yy - cy) ** 2 <= rng.uniform(1, 4) ** 2
        else:
            end = np.array([cx, cy]) + rng.uniform(-10, 10, 2)
            speck = _distance_to_polyline(xx, yy, np.array([[cx, cy], end])) <= 0.8
        image[speck] = rng.uniform(0, 255, 3)

    instances = np.zeros((H, W), dtype=np.uint8)
    kinds = {}
    for k in range(1, min(int(rng.integers(3, 8)), max_objects) + 1):
        kind = OBJECT_KINDS[int(rng.choice(len(OBJECT_KINDS), p=_KIND_PROBS))]
        mask = _draw_shape(rng, kind, xx, yy, H, W, S)
        color = rng.uniform(0, 255, 3)
        for _ in range(10):  # keep objects visible against the background
            if np.abs(color - base).sum() >= 80:
                break
            color = rng.uniform(0, 255, 3)
        ramp = rng.uniform(-20, 20) * (xx - W / 2) / W + rng.uniform(-20, 20) * (yy - H / 2) / H
        image[mask] = (color + ramp[..., None] + rng.normal(0, 4, (H, W, 3)))[mask]
        instances[mask] = k
        kinds[k] = kind

    objects = []
    for k, kind in kinds.items():
        area = int((instances == k).sum())
        if area < _MIN_AREA:
            instances[instances == k] = 0  # too small after occlusion: unlabelled clutter
        else:
            objects.append({"id": k, "kind": kind, "area": area})
    return np.clip(image, 0, 255).round().astype(np.uint8), instances, objects


def _draw_shape(rng: np.random.Generator, kind: str, xx: np.ndarray, yy: np.ndarray, H: int, W: int, S: int) -> np.ndarray:
    """(H, W) bool mask of one object of ``kind``; its centre lies inside the image."""
    cx, cy, theta = rng.uniform(0.1, 0.9) * W, rng.uniform(0.1, 0.9) * H, rng.uniform(0, np.pi)
    u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)  # H x W, shape frame
    v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    r = S * np.exp(rng.uniform(np.log(0.03), np.log(0.35)))
    if kind == "disc":
        return (u / r) ** 2 + (v / (r * rng.uniform(0.5, 1))) ** 2 <= 1
    if kind == "box":
        return (np.abs(u) <= r) & (np.abs(v) <= r * rng.uniform(0.3, 1))
    if kind == "polygon":
        n = int(rng.integers(5, 10))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = r * rng.uniform(0.5, 1, n)
        # Star-shaped around the centre: radius interpolated between vertices, by angle.
        phi = np.arctan2(v, u) % (2 * np.pi)
        boundary = np.interp(phi, angles, radii, period=2 * np.pi)
        return np.hypot(u, v) <= boundary
    if kind == "ring":
        radius = S * rng.uniform(0.08, 0.3)
        return np.abs(np.hypot(u, v * rng.uniform(1, 1.4)) - radius) <= rng.uniform(0.7, 1.5)
    # wire: a cubic Bezier whose control points lie anywhere in the image
    ctrl = rng.uniform(0, 1, (4, 2)) * np.array([W, H])  # 4 x 2 control points (x, y)
    t = np.linspace(0, 1, 48)[:, None]  # 48 x 1
    curve = (1 - t) ** 3 * ctrl[0] + 3 * (1 - t) ** 2 * t * ctrl[1] + 3 * (1 - t) * t**2 * ctrl[2] + t**3 * ctrl[3]  # 48 x 2
    return _distance_to_polyline(xx, yy, curve) <= rng.uniform(0.7, 1.3)


def _distance_to_polyline(xx: np.ndarray, yy: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(H, W) Euclidean distance from pixel centres to the polyline through ``points`` (P, 2)."""
    dist = np.full(xx.shape, np.inf)
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / max(dx * dx + dy * dy, 1e-12), 0, 1)
        dist = np.minimum(dist, np.hypot(xx - x0 - t * dx, yy - y0 - t * dy))
    return dist


def _upsample(coarse: np.ndarray, H: int, W: int) -> np.ndarray:
    """Bilinear upsampling of a (h, w, C) grid to (H, W, C), grid points spread over the image."""
    h, w = coarse.shape[:2]
    ys, xs = np.linspace(0, h - 1, H), np.linspace(0, w - 1, W)
    y0, x0 = np.minimum(ys.astype(int), h - 2), np.minimum(xs.astype(int), w - 2)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx  # H x W x C
    bottom = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


class SyntheticInstanceDataset(Dataset):
    """One synthetic object per sample (see the module docstring).

    Args:
        split: ``"train"`` or ``"val"``.
        root: folder from :func:`make_synthetic_instances`; None generates (or reuses) the
            default one in the cache.
        transform: ``transform(sample) -> sample`` (see :mod:`.transforms`).

    Samples follow :mod:`segblocks.data.interactive.collate` with ``sample_id =
    "<split>_<image>_<id>"`` and an extra ``kind`` (one of :data:`OBJECT_KINDS`).
    """

    def __init__(self, *, split: str = "train", root: str | os.PathLike | None = None, transform: SampleTransform | None = None) -> None:
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, received {split!r}")
        self.root = Path(root) if root is not None else make_synthetic_instances()
        self.split = split
        self.transform = transform
        index_path = self.root / "index.json"
        index = load_json(index_path)
        try:
            self.records = [(e["name"], o["id"], o["kind"]) for e in index["splits"][split] for o in e["objects"]]
        except (KeyError, TypeError) as e:
            raise ValueError(f"{index_path} is not a synthetic-instances index: {e!r}") from e

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name, object_id, kind = self.records[index]
        image_path = self.root / self.split / "images" / f"{name}.png"
        inst_path = self.root / self.split / "instances" / f"{name}.png"
        image = read_rgb_image(image_path)
        instances = read_mask_array(inst_path)
        check_mask_size(instances, inst_path, image, image_path)
        sample = make_sample(
            image=image, mask=instances == object_id, ignore=None, sample_id=f"{self.split}_{name}_{object_id}", transform=self.transform
        )
        sample["kind"] = kind
        return sample
