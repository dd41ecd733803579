"""Segmentation metrics as torchmetrics Metrics (DDP-reducible): panoptic quality, mIoU, COCO mask AP."""
from segblocks.metrics.mask_ap import MaskAP
from segblocks.metrics.panoptic import (
    PanopticQualityMetric,
    check_masks_target,
    panoptic_from_masks,
    panoptic_from_segments,
)
from segblocks.metrics.semantic import SemanticIoU, semantic_from_masks
from segblocks.metrics.table import format_metrics_table

__all__ = [
    "MaskAP",
    "PanopticQualityMetric",
    "SemanticIoU",
    "check_masks_target",
    "format_metrics_table",
    "panoptic_from_masks",
    "panoptic_from_segments",
    "semantic_from_masks",
]
