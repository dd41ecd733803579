"""Datasets, transforms and collation for segmentation training (panoptic COCO format)."""
from .coco_panoptic import COCOPanopticDataset, id_to_rgb, rgb_to_id
from .collate import collate_panoptic
from .panoptic_meta import PanopticCategory, PanopticMeta
from .synthetic_panoptic import SYNTHETIC_CATEGORIES, make_synthetic_panoptic, synthetic_panoptic_meta
from .transforms import PanopticEvalTransform, PanopticTrainTransform

__all__ = [
    "COCOPanopticDataset",
    "PanopticCategory",
    "PanopticEvalTransform",
    "PanopticMeta",
    "PanopticTrainTransform",
    "SYNTHETIC_CATEGORIES",
    "collate_panoptic",
    "id_to_rgb",
    "make_synthetic_panoptic",
    "rgb_to_id",
    "synthetic_panoptic_meta",
]
