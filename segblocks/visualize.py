"""Pictures of predictions: COCO panoptic PNG encoding, coloured panoptic overlays, click-case overlays.

Pure numpy + PIL (no torch, no Lightning), used by ``lightning predict`` of the panoptic recipes
(:class:`~segblocks.lightning.UniversalSegmentation`) and by the interactive test report
(:func:`segblocks.interactive.evaluation.write_click_cases`); usable on any arrays.

* :func:`panoptic_to_coco`: a segment map + ``segments_info`` as produced by Mask2Former's panoptic
  inference → the COCO panoptic PNG (``id = R + 256·G + 256²·B``; Kirillov et al., "Panoptic
  Segmentation", CVPR 2019, and the COCO panoptic API, cocodataset/panopticapi,
  ``panopticapi/utils.py``) and COCO ``segments_info`` (COCO category ids, ``area``, ``bbox``
  ``[x, y, w, h]``, ``iscrowd``).
* :func:`panoptic_overlay`: the image with every segment tinted in its category colour (thing
  instances jittered so neighbours differ), segment outlines, and the class name at each segment.
* :func:`save_panoptic_prediction` / :func:`write_panoptic_json`: the files ``lightning predict``
  writes (PNG, overlay, COCO predictions JSON).
* :func:`click_case_overlay`: an interactive sample: image, ground-truth outline, predicted mask,
  positive / negative clicks numbered in order, and a caption.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from segblocks.data.io import id_to_rgb
from segblocks.data.panoptic_meta import PanopticMeta

__all__ = [
    "blend_mask",
    "click_case_overlay",
    "mask_outline",
    "panoptic_overlay",
    "panoptic_to_coco",
    "save_panoptic_prediction",
    "segment_colors",
    "write_panoptic_json",
]

_POSITIVE, _NEGATIVE = (40, 220, 60), (235, 40, 40)
_GT_COLOR, _PRED_COLOR = (255, 215, 0), (30, 120, 255)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an (H, W, 3) uint8 array; got {image.dtype} {image.shape}")
    return image


def _check_map(array: np.ndarray, hw: tuple[int, int], name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.shape != tuple(hw):
        raise ValueError(f"{name} must be (H, W) = {tuple(hw)} like the image; got {array.shape}")
    return array


def panoptic_to_coco(
    panoptic_seg: np.ndarray, segments_info: Sequence[Mapping[str, Any]], meta: PanopticMeta
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """A panoptic prediction in COCO panoptic format.

    Args:
        panoptic_seg: ``(H, W)`` int segment ids, 0 = void.
        segments_info: one dict per segment with ``id`` and contiguous ``category_id`` (and
            optionally ``score``), as :func:`segblocks.models.mask2former.panoptic_inference` gives.
        meta: the dataset categories (contiguous → COCO ids).

    Returns:
        ``rgb`` ``(H, W, 3)`` uint8 to save as PNG, and the COCO ``segments_info`` (``id``,
        ``category_id`` as COCO id, ``iscrowd`` 0, ``area``, ``bbox`` ``[x, y, w, h]``, plus
        ``score`` when given). Segments without pixels are left out.
    """
    seg = np.asarray(panoptic_seg).astype(np.int64)
    if seg.ndim != 2:
        raise ValueError(f"panoptic_seg must be (H, W); got {seg.shape}")
    to_coco = meta.contiguous_to_coco
    ids = [int(s["id"]) for s in segments_info]
    if len(set(ids)) != len(ids) or any(i <= 0 for i in ids):
        raise ValueError(f"segment ids must be distinct and positive (0 is void); got {ids}")
    known = set(ids)
    stray = sorted(set(np.unique(seg).tolist()) - known - {0})
    if stray:
        raise ValueError(f"panoptic_seg holds ids {stray} that segments_info does not describe")
    info = []
    for s in segments_info:
        category = int(s["category_id"])
        if not 0 <= category < len(to_coco):
            raise ValueError(f"segment {s['id']}: category_id {category} outside [0, {len(to_coco)})")
        ys, xs = np.nonzero(seg == int(s["id"]))
        if ys.size == 0:
            continue
        x0, y0 = int(xs.min()), int(ys.min())
        entry = {
            "id": int(s["id"]), "category_id": int(to_coco[category]), "iscrowd": 0, "area": int(ys.size),
            "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
        }
        if "score" in s:
            entry["score"] = float(s["score"])
        info.append(entry)
    return id_to_rgb(seg), info


def segment_colors(segments_info: Sequence[Mapping[str, Any]], meta: PanopticMeta) -> dict[int, tuple[int, int, int]]:
    """Colour of each segment id: its category colour; thing instances after the first are jittered
    (deterministically, by instance rank) so that touching instances of one class stay apart."""
    colors, seen = {}, {}
    for s in segments_info:
        category = int(s["category_id"])
        base = np.array(meta.categories[category].color, dtype=np.int64)
        rank = seen.get(category, 0)
        seen[category] = rank + 1
        if meta.categories[category].isthing and rank:
            jitter = np.random.default_rng(rank).integers(-60, 61, size=3)
            base = np.clip(base + jitter, 0, 255)
        colors[int(s["id"])] = tuple(int(v) for v in base)
    return colors


def mask_outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels of ``mask`` ``(H, W)`` bool with a 4-neighbour outside the mask (image border counts as outside),
    thickened inward to ``width`` pixels."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W); got {mask.shape}")
    inner = mask.copy()
    for _ in range(max(int(width), 1)):
        padded = np.pad(inner, 1, constant_values=False)  # (H+2) x (W+2)
        inner = inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def blend_mask(image: np.ndarray, mask: np.ndarray, color: Sequence[int], alpha: float = 0.5) -> np.ndarray:
    """``image`` with ``color`` blended in at ``alpha`` where ``mask`` is True (a new uint8 array)."""
    image = _check_image(image)
    mask = _check_map(mask, image.shape[:2], "mask").astype(bool)
    out = image.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(color, dtype=np.float32)
    return out.round().clip(0, 255).astype(np.uint8)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # a scalable font (Pillow >= 10.1)
    except TypeError:
        return ImageFont.load_default()


def _label(draw, xy: tuple[float, float], text: str, font, *, anchor: str = "mm") -> None:
    """``text`` on a dark box, centred at ``xy`` (``anchor`` as PIL's), shifted to stay inside the image."""
    box = draw.textbbox(xy, text, font=font, anchor=anchor)
    width, height = draw.im.size
    dx = max(0, 2 - box[0]) - max(0, box[2] + 2 - (width - 1))
    dy = max(0, 1 - box[1]) - max(0, box[3] + 1 - (height - 1))
    if dx or dy:
        xy = (xy[0] + dx, xy[1] + dy)
        box = draw.textbbox(xy, text, font=font, anchor=anchor)
    draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(0, 0, 0))
    draw.text(xy, text, fill=(255, 255, 255), font=font, anchor=anchor)


def _label_point(mask: np.ndarray) -> tuple[float, float]:
    """An ``(x, y)`` inside ``mask``: the segment pixel nearest to its centroid."""
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    i = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
    return float(xs[i]), float(ys[i])


def panoptic_overlay(
    image: np.ndarray,
    panoptic_seg: np.ndarray,
    segments_info: Sequence[Mapping[str, Any]],
    meta: PanopticMeta,
    *,
    alpha: float = 0.55,
    show_labels: bool = True,
    font_size: int | None = None,
):
    """The image with each segment tinted in its category colour, outlined, and named.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        panoptic_seg: ``(H, W)`` segment ids (0 = void, left untinted).
        segments_info: ``id`` + contiguous ``category_id`` (+ ``score``) per segment.
        meta: categories (names and colours; :attr:`PanopticMeta.categories`).
        alpha: tint opacity.
        show_labels: write ``name`` (``name 0.93`` with a score) at each segment.
        font_size: label size in pixels (default: scales with the image, at least 10).

    Returns:
        A ``PIL.Image.Image`` (RGB).
    """
    from PIL import Image, ImageDraw

    image = _check_image(image)
    seg = _check_map(panoptic_seg, image.shape[:2], "panoptic_seg").astype(np.int64)
    colors = segment_colors(segments_info, meta)
    out = image.astype(np.float32)
    edges = np.zeros(seg.shape, dtype=bool)
    for sid, color in colors.items():
        m = seg == sid
        out[m] = (1 - alpha) * out[m] + alpha * np.asarray(color, dtype=np.float32)
        edges |= mask_outline(m)
    out[edges] = 255.0
    canvas = Image.fromarray(out.round().clip(0, 255).astype(np.uint8))
    if show_labels and segments_info:
        draw = ImageDraw.Draw(canvas)
        font = _font(font_size or max(10, min(image.shape[:2]) // 24))
        for s in segments_info:
            m = seg == int(s["id"])
            if not m.any():
                continue
            name = meta.categories[int(s["category_id"])].name
            text = f"{name} {float(s['score']):.2f}" if "score" in s else name
            _label(draw, _label_point(m), text, font)
    return canvas


def click_case_overlay(
    image: np.ndarray,
    gt: np.ndarray,
    pred: np.ndarray,
    clicks: Sequence[tuple[int, int, bool]],
    *,
    caption: str = "",
    ignore: np.ndarray | None = None,
    alpha: float = 0.45,
):
    """One interactive sample: prediction tinted blue, ground truth outlined in yellow, clicks numbered.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        gt: ``(H, W)`` bool ground-truth mask.
        pred: ``(H, W)`` bool predicted mask.
        clicks: ``(y, x, positive)`` in click order (positive green, negative red).
        caption: text drawn at the top-left (e.g. ``"NoC@90 7, IoU 0.91"``).
        ignore: optional ``(H, W)`` bool ignore region, shown hatched grey.
        alpha: tint opacity of the prediction.

    Returns:
        A ``PIL.Image.Image`` (RGB).
    """
    from PIL import Image, ImageDraw

    image = _check_image(image)
    hw = image.shape[:2]
    gt = _check_map(gt, hw, "gt").astype(bool)
    pred = _check_map(pred, hw, "pred").astype(bool)
    out = blend_mask(image, pred, _PRED_COLOR, alpha)
    if ignore is not None:
        ignore = _check_map(ignore, hw, "ignore").astype(bool)
        hatch = ignore & ((np.add.outer(np.arange(hw[0]), np.arange(hw[1])) // 3) % 2 == 0)
        out = blend_mask(out, hatch, (128, 128, 128), 0.6)
    width = max(1, min(hw) // 150)
    out[mask_outline(gt, width)] = _GT_COLOR
    canvas = Image.fromarray(out)
    draw = ImageDraw.Draw(canvas)
    radius = max(3, min(hw) // 50)
    font = _font(max(10, radius * 2))
    for k, click in enumerate(clicks, start=1):
        y, x, positive = int(click[0]), int(click[1]), bool(click[2])
        if not (0 <= y < hw[0] and 0 <= x < hw[1]):
            raise ValueError(f"click {k} at (y={y}, x={x}) lies outside the {hw[0]}x{hw[1]} image")
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=_POSITIVE if positive else _NEGATIVE, outline=(255, 255, 255))
        draw.text((x + radius + 1, y - radius - 1), str(k), fill=(255, 255, 255), font=font, stroke_width=1, stroke_fill=(0, 0, 0))
    if caption:
        _label(draw, (3, 3), caption, _font(max(10, min(hw) // 20)), anchor="la")
    return canvas


def save_panoptic_prediction(
    out_dir,
    image_id: str,
    image: np.ndarray,
    panoptic_seg: np.ndarray,
    segments_info: Sequence[Mapping[str, Any]],
    meta: PanopticMeta,
) -> dict[str, Any]:
    """Write ``panoptic/<image_id>.png`` (COCO panoptic PNG) and ``overlay/<image_id>.png`` under ``out_dir``.

    Returns:
        The COCO panoptic annotation of the image: ``image_id``, ``file_name`` (relative to
        ``out_dir/panoptic``) and ``segments_info`` (:func:`panoptic_to_coco`).
    """
    from pathlib import Path

    from PIL import Image

    out_dir = Path(out_dir)
    rgb, info = panoptic_to_coco(panoptic_seg, segments_info, meta)
    name = f"{image_id}.png"
    for sub, picture in (("panoptic", Image.fromarray(rgb)), ("overlay", panoptic_overlay(image, panoptic_seg, segments_info, meta))):
        path = out_dir / sub / name
        path.parent.mkdir(parents=True, exist_ok=True)
        picture.save(path)
    return {"image_id": image_id, "file_name": name, "segments_info": info}


def write_panoptic_json(path, annotations: Sequence[Mapping[str, Any]], meta: PanopticMeta) -> None:
    """A COCO panoptic predictions JSON: ``{"annotations": [...], "categories": [...]}`` sorted by image id."""
    import json
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"annotations": sorted(annotations, key=lambda a: str(a["image_id"])), "categories": meta.to_coco_categories()}
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
