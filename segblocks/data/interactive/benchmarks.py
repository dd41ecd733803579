"""Interactive-segmentation benchmarks in their distributed folder layouts.

* :class:`ImageMaskFolderDataset`: any image folder + mask folder paired by file stem.
* :class:`BenchmarkDataset`: the same with a named layout from :data:`BENCHMARK_LAYOUTS`:

  ===========  ============  =====================  ==========================================
  layout       images        masks                  values
  ===========  ============  =====================  ==========================================
  grabcut      ``data_GT/``  ``boundary_GT/``       255 object, 128 ignore band, 0 background
  berkeley     ``data_GT/``  ``boundary_GT/``       as grabcut (Berkeley in the GrabCut layout)
  davis        ``img/``      ``gt/<stem>.png``      any non-zero is the object
  coco_mval    ``img/``      ``gt/<stem>.png``      any non-zero is the object
  focuscut     ``img/``      ``gt/<stem>#001.png``  palette index 1 object, 255 ignore
  ===========  ============  =====================  ==========================================

  ``focuscut`` is the layout of the FocusCut zips that the Inter2Former / HRSAM / FocSAM loaders
  read (notes §0.3): those loaders count value 255 as *background*, while InterFormer and the
  standard protocol exclude it, as here; pass ``MaskEncoding(object_value=1)`` to
  :class:`ImageMaskFolderDataset` for the former. The loaders ignore ``list/val.txt`` and use
  every file; so do these layouts (``list_file`` restricts the generic class).
* :class:`SBDInstanceDataset`: SBD's ``img/*.jpg`` + ``inst/*.mat``, one sample per instance.

Samples follow :mod:`segblocks.data.interactive.collate`; ``sample_id`` is the image stem (SBD:
``<stem>_<instance id>``). All files are listed at construction, so a missing mask fails early.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from ..coco_panoptic import read_rgb_image
from .collate import SampleTransform, make_sample
from .masks import MaskEncoding, check_mask_size, read_mask_array

__all__ = ["BENCHMARK_LAYOUTS", "BenchmarkDataset", "BenchmarkLayout", "IMAGE_SUFFIXES", "ImageMaskFolderDataset", "SBDInstanceDataset"]

#: Image file extensions listed by default (case-insensitive).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {path}")
    return path


def _read_list_file(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"list file not found: {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


class ImageMaskFolderDataset(Dataset):
    """One object per image: an image folder and a mask folder paired by file stem.

    The mask of ``image_dir/<stem>.<ext>`` is the first existing ``mask_dir/<stem><suffix>``
    for ``suffix`` in ``mask_suffixes`` (file names compared case-insensitively).

    Args:
        image_dir: folder of RGB (or grayscale) images.
        mask_dir: folder of masks.
        mask_suffixes: what follows the stem in a mask's file name, tried in order, e.g.
            ``(".png",)`` or ``("#001.png",)``.
        encoding: which stored values are object / ignore (see :class:`MaskEncoding`).
        image_suffixes: extensions of the images to list.
        list_file: optional text file of stems, one per line: only those, in that order.
        transform: ``transform(sample) -> sample`` (see :mod:`.transforms`).
    """

    def __init__(
        self,
        *,
        image_dir: str | os.PathLike,
        mask_dir: str | os.PathLike,
        mask_suffixes: tuple[str, ...] = (".png",),
        encoding: MaskEncoding = MaskEncoding(),
        image_suffixes: tuple[str, ...] = IMAGE_SUFFIXES,
        list_file: str | os.PathLike | None = None,
        transform: SampleTransform | None = None,
    ) -> None:
        if not mask_suffixes or not image_suffixes:
            raise ValueError(f"mask_suffixes and image_suffixes must be non-empty, received {mask_suffixes} and {image_suffixes}")
        self.image_dir = _require_dir(Path(image_dir), "image")
        self.mask_dir = _require_dir(Path(mask_dir), "mask")
        self.encoding = encoding
        self.transform = transform
        wanted = tuple(s.lower() for s in image_suffixes)
        images: dict[str, Path] = {}
        for p in sorted(self.image_dir.iterdir()):
            if p.is_file() and p.suffix.lower() in wanted:
                if p.stem in images:
                    raise ValueError(f"two images share the stem {p.stem!r} in {self.image_dir}: {images[p.stem].name} and {p.name}")
                images[p.stem] = p
        if list_file is not None:
            stems = _read_list_file(Path(list_file))
            missing = [s for s in stems if s not in images]
            if missing:
                raise FileNotFoundError(f"{len(missing)} images listed in {list_file} not found in {self.image_dir}, e.g. {missing[:3]}")
        else:
            stems = list(images)
        masks = {p.name.lower(): p for p in self.mask_dir.iterdir() if p.is_file()}
        self.records: list[tuple[str, Path, Path]] = []
        for stem in stems:
            found = [masks[(stem + s).lower()] for s in mask_suffixes if (stem + s).lower() in masks]
            if not found:
                tried = ", ".join(str(self.mask_dir / (stem + s)) for s in mask_suffixes)
                raise FileNotFoundError(f"no mask for image {images[stem]}: tried {tried}")
            self.records.append((stem, images[stem], found[0]))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        stem, image_path, mask_path = self.records[index]
        image = read_rgb_image(image_path)
        raw = read_mask_array(mask_path)
        check_mask_size(raw, mask_path, image, image_path)
        mask, ignore = self.encoding.decode(raw, source=mask_path)
        return make_sample(image=image, mask=mask, ignore=ignore, sample_id=stem, transform=self.transform)


@dataclass(frozen=True)
class BenchmarkLayout:
    """Where a benchmark keeps its files and how its masks are encoded (paths relative to the root)."""

    image_dir: str
    mask_dir: str
    mask_suffixes: tuple[str, ...]
    encoding: MaskEncoding


_GRABCUT = BenchmarkLayout("data_GT", "boundary_GT", (".bmp", ".png"), MaskEncoding(object_value=255, ignore_value=128))
_IMG_GT = BenchmarkLayout("img", "gt", (".png",), MaskEncoding())

#: Named layouts accepted by :class:`BenchmarkDataset` (see the module docstring).
BENCHMARK_LAYOUTS: dict[str, BenchmarkLayout] = {
    "grabcut": _GRABCUT,
    "berkeley": _GRABCUT,
    "davis": _IMG_GT,
    "coco_mval": _IMG_GT,
    "focuscut": BenchmarkLayout("img", "gt", ("#001.png",), MaskEncoding(object_value=1, ignore_value=255)),
}


class BenchmarkDataset(ImageMaskFolderDataset):
    """A benchmark folder in a named layout, e.g. ``BenchmarkDataset(root="GrabCut", layout="grabcut")``.

    Args:
        root: the benchmark's folder.
        layout: a key of :data:`BENCHMARK_LAYOUTS` or a :class:`BenchmarkLayout`.
        transform: ``transform(sample) -> sample``.
    """

    def __init__(self, *, root: str | os.PathLike, layout: str | BenchmarkLayout, transform: SampleTransform | None = None) -> None:
        if isinstance(layout, str):
            if layout not in BENCHMARK_LAYOUTS:
                raise ValueError(f"layout must be one of {sorted(BENCHMARK_LAYOUTS)} or a BenchmarkLayout, received {layout!r}")
            layout = BENCHMARK_LAYOUTS[layout]
        elif not isinstance(layout, BenchmarkLayout):
            raise TypeError(f"layout must be a str or a BenchmarkLayout, received {type(layout).__name__}")
        root = _require_dir(Path(root), "benchmark root")
        self.layout = layout
        super().__init__(
            image_dir=root / layout.image_dir,
            mask_dir=root / layout.mask_dir,
            mask_suffixes=layout.mask_suffixes,
            encoding=layout.encoding,
            transform=transform,
        )


def _read_sbd_instances(path: Path) -> np.ndarray:
    """The ``GTinst.Segmentation`` instance map of an SBD ``inst/*.mat`` as (H, W) int64."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    if not path.is_file():
        raise FileNotFoundError(f"SBD instance file not found: {path}")
    try:
        gt = loadmat(str(path))["GTinst"]
        # A 1x1 MATLAB struct with fields Segmentation, Boundaries, Categories; the authors'
        # loaders index it positionally ([0][0][0]), the field name is the robust equivalent.
        seg = np.asarray(gt["Segmentation"][0, 0])
    except (MatReadError, KeyError, ValueError, IndexError, TypeError, OSError) as e:
        raise ValueError(f"corrupt SBD instance file {path} (expected a GTinst struct with a Segmentation field): {e!r}") from e
    if seg.ndim != 2 or seg.dtype.kind not in "ui":
        raise ValueError(f"SBD instance file {path}: Segmentation must be a 2-D integer map, received {seg.dtype} {seg.shape}")
    return seg.astype(np.int64)


class SBDInstanceDataset(Dataset):
    """SBD (Hariharan et al. 2011) as used for interactive evaluation: one sample per instance.

    Layout: ``root/{split}.txt`` (stems), ``root/img/<stem>.jpg``, ``root/inst/<stem>.mat``
    whose ``GTinst.Segmentation`` is the instance map (0 = background). As in the authors'
    loaders (notes §0.3) every instance id != 0 of a listed image is a sample (object =
    ``map == id``, nothing ignored). Every ``.mat`` is read once at construction to list them.

    Args:
        root: the SBD ``dataset`` folder.
        split: list file stem, ``"val"`` or ``"train"``.
        transform: ``transform(sample) -> sample``.
    """

    def __init__(self, *, root: str | os.PathLike, split: str = "val", transform: SampleTransform | None = None) -> None:
        self.root = _require_dir(Path(root), "SBD root")
        self.image_dir = _require_dir(self.root / "img", "SBD image")
        self.inst_dir = _require_dir(self.root / "inst", "SBD instance")
        self.transform = transform
        self.records: list[tuple[str, int]] = []
        for stem in _read_list_file(self.root / f"{split}.txt"):
            ids = np.unique(_read_sbd_instances(self.inst_dir / f"{stem}.mat"))
            self.records.extend((stem, int(i)) for i in ids if i != 0)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        stem, instance_id = self.records[index]
        image_path, inst_path = self.image_dir / f"{stem}.jpg", self.inst_dir / f"{stem}.mat"
        image = read_rgb_image(image_path)
        instances = _read_sbd_instances(inst_path)
        check_mask_size(instances, inst_path, image, image_path)
        return make_sample(image=image, mask=instances == instance_id, ignore=None, sample_id=f"{stem}_{instance_id}", transform=self.transform)
