"""Datasets, transforms, collation and file reading for segmentation training and evaluation.

Panoptic COCO format (:class:`COCOPanopticDataset`), unlabelled image folders
(:class:`ImageFolderDataset`), the per-object interactive datasets in
:mod:`segblocks.data.interactive`, the public file readers of :mod:`segblocks.data.io`, and
:func:`check_data`, which validates every file of a DataModule's splits up front.
"""
from .checks import DataCheckError, DataReport, SplitReport, check_data, check_dataset, describe_dataset
from .coco_panoptic import COCOPanopticDataset, check_panoptic_segments
from .collate import collate_panoptic
from .images import ImageFolderDataset, collate_images
from .indexed import IndexedDataset
from .io import id_to_rgb, load_json, open_image, read_panoptic_png, read_rgb_image, rgb_to_id
from .panoptic_meta import PanopticCategory, PanopticMeta
from .synthetic_panoptic import SYNTHETIC_CATEGORIES, make_synthetic_panoptic, synthetic_panoptic_meta
from .transforms import PanopticEvalTransform, PanopticTrainTransform, import_albumentations

__all__ = [
    "COCOPanopticDataset",
    "DataCheckError",
    "DataReport",
    "ImageFolderDataset",
    "IndexedDataset",
    "PanopticCategory",
    "PanopticEvalTransform",
    "PanopticMeta",
    "PanopticTrainTransform",
    "SYNTHETIC_CATEGORIES",
    "SplitReport",
    "check_data",
    "check_dataset",
    "check_panoptic_segments",
    "collate_images",
    "collate_panoptic",
    "describe_dataset",
    "id_to_rgb",
    "import_albumentations",
    "load_json",
    "make_synthetic_panoptic",
    "open_image",
    "read_panoptic_png",
    "read_rgb_image",
    "rgb_to_id",
    "synthetic_panoptic_meta",
]
