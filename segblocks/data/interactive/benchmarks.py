"""Interactive-segmentation benchmarks in their distributed folder layouts.

* :class:`ImageMaskFolderDataset`: any image folder + mask folder paired by file stem.
* :class:`BenchmarkDataset`: the same with a named layout from :data:`BENCHMARK_LAYOUTS`, each
  following a reference loader (its :attr:`BenchmarkLayout.reference`):

  ===========  ===============  =====================  =========================================
  layout       images           masks                  values (reference loader)
  ===========  ===============  =====================  =========================================
  grabcut      ``data_GT/``     ``boundary_GT/``       ``> 128`` object, ``128`` ignore (RITM)
  berkeley     ``images/``      ``masks/``             as grabcut (RITM)
  davis        ``img/``         ``gt/<stem>.png``      any non-zero is the object (RITM)
  coco_mval    ``img/``         ``gt/<stem>.png``      as davis (RITM)
  focuscut     ``img/``         ``gt/<stem>#001.png``  palette index 1 object, 255 ignore
  ===========  ===============  =====================  =========================================

  RITM = SamsungLabs/ritm_interactive_segmentation, isegm/data/datasets/grabcut.py (GrabCut),
  berkeley.py (Berkeley: the GrabCut loader on ``images/`` + ``masks/``) and davis.py (DAVIS,
  and COCO-MVal through the same class in isegm/inference/utils.py); RITM distributes the
  benchmarks in these layouts. Their RGB masks are read with ``cv2.imread``: the GrabCut rule
  looks at the blue channel, the DAVIS rule at the largest channel. Two deliberate deviations:
  a palette PNG is read by its index here (cv2 reads its colour), and RITM's GrabCut rule also
  keeps a stored value of exactly 1 as object (its object id after thresholding), which here
  is background.

  ``focuscut`` is the layout of the FocusCut zips that the Inter2Former / HRSAM / FocSAM
  loaders read (YouHuang67/inter2former, engine/datasets/test/): those loaders count value 255
  as *background*, while InterFormer (YouHuang67/InterFormer,
  interformer/datasets/validation/) and the standard protocol exclude it, as here; pass
  ``MaskEncoding(object_value=1, strict=False)`` to :class:`ImageMaskFolderDataset` for the
  former. The loaders ignore ``list/val.txt`` and use every file; so do these layouts
  (``list_file`` restricts the generic class).
* :class:`SBDInstanceDataset`: SBD's ``img/*.jpg`` + ``inst/*.mat``, one sample per instance.

Samples follow :mod:`segblocks.data.interactive.collate`; ``sample_id`` is the image stem (SBD:
``<stem>_<instance id>``). All files are listed at construction, so a missing mask or an empty
folder fails early, naming it. Masks are decoded strictly (:mod:`.masks`): a mask whose values
the layout does not know is an error naming the file; a mask without object pixels is an error
too, or, with ``on_empty="skip"``, left out and recorded in :attr:`ImageMaskFolderDataset.skipped`.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from ..checks import require_file
from ..io import read_rgb_image
from .collate import SampleTransform, make_sample
from .masks import EmptyMaskError, MaskEncoding, check_mask_size, read_mask_array

__all__ = ["BENCHMARK_LAYOUTS", "BenchmarkDataset", "BenchmarkLayout", "IMAGE_SUFFIXES", "ImageMaskFolderDataset", "SBDInstanceDataset"]

#: Image file extensions listed by default (case-insensitive).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

#: Accepted ``on_empty`` values: raise :class:`~.masks.EmptyMaskError`, or skip and record the file.
ON_EMPTY = ("error", "skip")


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
        on_empty: a mask without object pixels raises :class:`~.masks.EmptyMaskError` when read
            (``"error"``), or (``"skip"``) every mask is decoded at construction, the empty ones
            are left out with a warning and listed in :attr:`skipped` as ``(mask path, reason)``
            so that a report can count them.

    Raises:
        FileNotFoundError: a folder or a mask is missing, or the image folder holds no image.
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
        on_empty: str = "error",
    ) -> None:
        if on_empty not in ON_EMPTY:
            raise ValueError(f"on_empty must be one of {ON_EMPTY}, received {on_empty!r}")
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
        if not stems:
            raise FileNotFoundError(f"no images ({', '.join(image_suffixes)}) in {self.image_dir}: an empty benchmark")
        masks = {p.name.lower(): p for p in self.mask_dir.iterdir() if p.is_file()}
        self.records: list[tuple[str, Path, Path]] = []
        for stem in stems:
            found = [masks[(stem + s).lower()] for s in mask_suffixes if (stem + s).lower() in masks]
            if not found:
                tried = ", ".join(str(self.mask_dir / (stem + s)) for s in mask_suffixes)
                raise FileNotFoundError(f"no mask for image {images[stem]}: tried {tried}")
            self.records.append((stem, images[stem], found[0]))
        #: ``(mask path, reason)`` of the files left out by ``on_empty="skip"``.
        self.skipped: list[tuple[Path, str]] = []
        if on_empty == "skip":
            kept = []
            for record in self.records:
                try:
                    self.encoding.decode(read_mask_array(record[2]), source=record[2])
                except EmptyMaskError as e:
                    self.skipped.append((record[2], str(e)))
                else:
                    kept.append(record)
            self.records = kept
            if self.skipped:
                warnings.warn(
                    f"skipped {len(self.skipped)} of {len(stems)} masks in {self.mask_dir} without object pixels, "
                    f"e.g. {self.skipped[0][1]}",
                    stacklevel=2,
                )
            if not self.records:
                raise ValueError(f"every mask in {self.mask_dir} is empty (no object pixel): nothing to evaluate")

    def __len__(self) -> int:
        return len(self.records)

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image (H, W, 3) uint8, object and ignore masks (H, W) bool of sample ``index``, checked."""
        _, image_path, mask_path = self.records[index]
        image = read_rgb_image(image_path)
        raw = read_mask_array(mask_path)
        check_mask_size(raw, mask_path, image, image_path)
        mask, ignore = self.encoding.decode(raw, source=mask_path)
        return image, mask, ignore

    def check_sample(self, index: int, *, decode: bool = True) -> None:
        """Raise naming the file if sample ``index``'s image or mask is missing, corrupt, mis-encoded or empty.

        ``decode=False`` only checks that both files exist and are not empty.
        """
        if decode:
            self._read(index)
            return
        _, image_path, mask_path = self.records[index]
        require_file(image_path, "image")
        require_file(mask_path, "mask")

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask, ignore = self._read(index)
        return make_sample(image=image, mask=mask, ignore=ignore, sample_id=self.records[index][0], transform=self.transform)


@dataclass(frozen=True)
class BenchmarkLayout:
    """Where a benchmark keeps its files and how its masks are encoded (paths relative to the root).

    Attributes:
        image_dir: image folder.
        mask_dir: mask folder.
        mask_suffixes: what follows the image stem in a mask's name, tried in order.
        encoding: the stored values of object and ignore.
        reference: the loader whose layout and thresholds these are (repository and file).
    """

    image_dir: str
    mask_dir: str
    mask_suffixes: tuple[str, ...]
    encoding: MaskEncoding
    reference: str = ""


_RITM = "SamsungLabs/ritm_interactive_segmentation"
_RITM_GRABCUT_RULE = MaskEncoding(object_threshold=128, ignore_value=128)  # isegm/data/datasets/grabcut.py
_RITM_SUFFIXES = (".png", ".bmp", ".jpg")  # RITM pairs any file with the image's stem

#: Named layouts accepted by :class:`BenchmarkDataset` (see the module docstring).
BENCHMARK_LAYOUTS: dict[str, BenchmarkLayout] = {
    "grabcut": BenchmarkLayout(
        "data_GT", "boundary_GT", _RITM_SUFFIXES, _RITM_GRABCUT_RULE, f"{_RITM}, isegm/data/datasets/grabcut.py"
    ),
    "berkeley": BenchmarkLayout(
        "images", "masks", _RITM_SUFFIXES, _RITM_GRABCUT_RULE, f"{_RITM}, isegm/data/datasets/berkeley.py"
    ),
    "davis": BenchmarkLayout("img", "gt", (".png",), MaskEncoding(), f"{_RITM}, isegm/data/datasets/davis.py"),
    "coco_mval": BenchmarkLayout(
        "img", "gt", (".png",), MaskEncoding(), f"{_RITM}, isegm/data/datasets/davis.py (COCO_MVal in isegm/inference/utils.py)"
    ),
    "focuscut": BenchmarkLayout(
        "img", "gt", ("#001.png",), MaskEncoding(object_value=1, ignore_value=255),
        "YouHuang67/InterFormer, interformer/datasets/validation/ (255 ignored; YouHuang67/inter2former, "
        "engine/datasets/test/ reads the same files with 255 as background)",
    ),
}


class BenchmarkDataset(ImageMaskFolderDataset):
    """A benchmark folder in a named layout, e.g. ``BenchmarkDataset(root="GrabCut", layout="grabcut")``.

    Args:
        root: the benchmark's folder.
        layout: a key of :data:`BENCHMARK_LAYOUTS` or a :class:`BenchmarkLayout`.
        transform: ``transform(sample) -> sample``.
        on_empty: ``"error"`` or ``"skip"`` masks without object pixels (see :class:`ImageMaskFolderDataset`).
    """

    def __init__(
        self,
        *,
        root: str | os.PathLike,
        layout: str | BenchmarkLayout,
        transform: SampleTransform | None = None,
        on_empty: str = "error",
    ) -> None:
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
            on_empty=on_empty,
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
    loaders (YouHuang67/inter2former, engine/datasets/test/; RITM,
    isegm/data/datasets/sbd.py ``SBDEvaluationDataset``) every instance id != 0 of a listed
    image is a sample (object = ``map == id``, nothing ignored). Every ``.mat`` is read once at
    construction to list them.

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
        if not self.records:
            raise ValueError(f"SBD split {self.root / f'{split}.txt'} lists no image with an instance: an empty benchmark")

    def __len__(self) -> int:
        return len(self.records)

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        stem, _ = self.records[index]
        image_path, inst_path = self.image_dir / f"{stem}.jpg", self.inst_dir / f"{stem}.mat"
        image = read_rgb_image(image_path)
        instances = _read_sbd_instances(inst_path)
        check_mask_size(instances, inst_path, image, image_path)
        return image, instances

    def check_sample(self, index: int, *, decode: bool = True) -> None:
        """Raise naming the file if sample ``index``'s image or instance file is missing or corrupt."""
        stem, _ = self.records[index]
        if decode:
            self._read(index)
        else:
            require_file(self.image_dir / f"{stem}.jpg", "image")
            require_file(self.inst_dir / f"{stem}.mat", "SBD instance file")

    def __getitem__(self, index: int) -> dict[str, Any]:
        stem, instance_id = self.records[index]
        image, instances = self._read(index)
        return make_sample(image=image, mask=instances == instance_id, ignore=None, sample_id=f"{stem}_{instance_id}", transform=self.transform)
