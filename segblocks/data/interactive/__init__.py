"""Per-object datasets, transforms and collation for click-based interactive segmentation.

Every dataset yields one object per sample (see :mod:`.collate` for the sample dict):
benchmark folders (:class:`BenchmarkDataset`, :class:`ImageMaskFolderDataset`,
:class:`SBDInstanceDataset`), COCO/LVIS instances for training (:class:`COCOInstanceDataset`)
and the embedded synthetic default (:class:`SyntheticInstanceDataset`).
"""
from .benchmarks import (
    BENCHMARK_LAYOUTS,
    IMAGE_SUFFIXES,
    ON_EMPTY,
    BenchmarkDataset,
    BenchmarkLayout,
    ImageMaskFolderDataset,
    SBDInstanceDataset,
)
from .coco_instances import COCOInstanceDataset, decode_segmentation
from .collate import SampleTransform, collate_interactive, make_sample
from .masks import EmptyMaskError, MaskEncoding, MaskValue, check_mask_size, mask_values, read_mask_array
from .synthetic_instances import OBJECT_KINDS, SYNTHETIC_INSTANCES_VERSION, SyntheticInstanceDataset, make_synthetic_instances
from ...ops.geometry import crop_and_resize_back, resize_longest_side_and_pad  # defined in segblocks.ops.geometry
from .transforms import InteractiveEvalTransform, InteractiveTrainTransform

__all__ = [
    "BENCHMARK_LAYOUTS",
    "BenchmarkDataset",
    "BenchmarkLayout",
    "COCOInstanceDataset",
    "EmptyMaskError",
    "IMAGE_SUFFIXES",
    "ImageMaskFolderDataset",
    "InteractiveEvalTransform",
    "InteractiveTrainTransform",
    "MaskEncoding",
    "MaskValue",
    "OBJECT_KINDS",
    "ON_EMPTY",
    "SBDInstanceDataset",
    "SYNTHETIC_INSTANCES_VERSION",
    "SampleTransform",
    "SyntheticInstanceDataset",
    "check_mask_size",
    "collate_interactive",
    "crop_and_resize_back",
    "decode_segmentation",
    "make_sample",
    "make_synthetic_instances",
    "mask_values",
    "read_mask_array",
    "resize_longest_side_and_pad",
]
