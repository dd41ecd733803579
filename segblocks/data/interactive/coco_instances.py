"""COCO / LVIS instance annotations as per-object samples for interactive-segmentation training.

The papers train on COCO+LVIS (Inter2Former §4.1, HRSAM App. D, FocSAM §4.1 after InterFormer):
every annotated instance is one training object. Masks are decoded with ``pycocotools.mask``
from polygons (merged when an object has several), uncompressed RLE (``counts`` as a list) or
compressed RLE. LVIS uses the same JSON schema and API; its images carry ``coco_url`` instead
of ``file_name`` (the file name is taken from the URL) and come from both COCO train2017 and
val2017, so ``image_dir`` must hold all of them. LVIS has no ``iscrowd`` (nothing is crowd).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from ..checks import require_file
from ..io import load_json, read_rgb_image
from .collate import SampleTransform, make_sample

__all__ = ["COCOInstanceDataset", "decode_segmentation"]


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Decode a COCO ``segmentation`` (polygon list, uncompressed or compressed RLE) to (H, W) bool."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):  # polygons: one RLE per part, merged
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width)) if segmentation else None
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        rle = segmentation
    else:
        raise ValueError(f"unknown COCO segmentation type {type(segmentation).__name__}: {str(segmentation)[:100]}")
    if rle is None:
        return np.zeros((height, width), dtype=bool)
    return mask_utils.decode(rle).astype(bool)


class COCOInstanceDataset(Dataset):
    """One COCO/LVIS instance per sample.

    Crowd annotations (``iscrowd=1``) are never objects; with ``crowd_as_ignore`` the union of
    an image's crowd regions becomes the sample's ``ignore`` map (object pixels excepted),
    otherwise they count as background like any other pixel.

    Args:
        image_dir: folder with the images.
        annotation_file: ``instances_*.json`` (COCO) or ``lvis_v1_*.json``.
        min_area: objects whose annotated ``area`` (pixels) is below it are skipped.
        crowd_as_ignore: ignore crowd regions instead of treating them as background.
        transform: ``transform(sample) -> sample`` (see :mod:`.transforms`).

    Samples follow :mod:`segblocks.data.interactive.collate`, with ``sample_id =
    "<image id>_<annotation id>"`` and extra ``category_id`` (int).
    """

    def __init__(
        self,
        *,
        image_dir: str | os.PathLike,
        annotation_file: str | os.PathLike,
        min_area: float = 0.0,
        crowd_as_ignore: bool = False,
        transform: SampleTransform | None = None,
    ) -> None:
        if min_area < 0:
            raise ValueError(f"min_area must be >= 0, received {min_area}")
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.image_dir}")
        self.annotation_file = Path(annotation_file)
        self.crowd_as_ignore = bool(crowd_as_ignore)
        self.transform = transform
        data = load_json(self.annotation_file)
        try:
            self.images = {img["id"]: _image_record(img) for img in data["images"]}
            anns = data["annotations"]
            self.crowds: dict[int, list[Any]] = {}
            self.records: list[dict[str, Any]] = []
            for ann in anns:
                if ann.get("iscrowd", 0):
                    self.crowds.setdefault(ann["image_id"], []).append(ann["segmentation"])
                elif ann["area"] >= min_area:
                    if ann["image_id"] not in self.images:
                        raise KeyError(f"image id {ann['image_id']} of annotation {ann['id']} is not in 'images'")
                    keys = ("id", "image_id", "category_id", "segmentation")
                    self.records.append({k: ann[k] for k in keys})
        except (KeyError, TypeError) as e:
            raise ValueError(f"{self.annotation_file} is not a COCO/LVIS instances JSON: {e!r}") from e
        if not self.records:
            raise ValueError(
                f"{self.annotation_file} has no non-crowd object with area >= {min_area} "
                f"({len(anns)} annotations in all): an empty dataset"
            )

    def __len__(self) -> int:
        return len(self.records)

    def _read_image(self, image_id: int) -> np.ndarray:
        img = self.images[image_id]
        image_path = self.image_dir / img["file_name"]
        image = read_rgb_image(image_path)
        if image.shape[:2] != (img["height"], img["width"]):
            raise ValueError(
                f"image {image_path} is {image.shape[:2]} (H, W) but {self.annotation_file} says {(img['height'], img['width'])}"
            )
        return image

    def check_sample(self, index: int, *, decode: bool = True) -> None:
        """Raise naming the file if object ``index``'s image is missing, corrupt or of the wrong size, or its mask is empty.

        Each image is read once however many objects it holds; ``decode=False`` only checks
        that the image file exists and is not empty.
        """
        rec = self.records[index]
        checked = self.__dict__.setdefault("_checked_images", set())
        if rec["image_id"] not in checked:
            if decode:
                self._read_image(rec["image_id"])
            else:
                require_file(self.image_dir / self.images[rec["image_id"]]["file_name"], "image")
            checked.add(rec["image_id"])
        if decode:
            img = self.images[rec["image_id"]]
            if not decode_segmentation(rec["segmentation"], img["height"], img["width"]).any():
                raise ValueError(f"{self.annotation_file}: annotation {rec['id']} (image {rec['image_id']}) decodes to an empty mask")

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        img = self.images[rec["image_id"]]
        image = self._read_image(rec["image_id"])
        h, w = img["height"], img["width"]
        mask = decode_segmentation(rec["segmentation"], h, w)
        ignore = None
        if self.crowd_as_ignore and rec["image_id"] in self.crowds:
            ignore = np.logical_or.reduce([decode_segmentation(s, h, w) for s in self.crowds[rec["image_id"]]])
        sample = make_sample(
            image=image, mask=mask, ignore=ignore, sample_id=f"{rec['image_id']}_{rec['id']}", transform=self.transform
        )
        sample["category_id"] = int(rec["category_id"])
        return sample


def _image_record(img: dict[str, Any]) -> dict[str, Any]:
    name = img.get("file_name") or img["coco_url"].rsplit("/", 1)[-1]  # LVIS has only coco_url
    return {"file_name": name, "height": int(img["height"]), "width": int(img["width"])}
