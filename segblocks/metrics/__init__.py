"""Segmentation metrics as torchmetrics Metrics (DDP-reducible): PQ, mIoU, COCO mask AP, NoC/NoF/mIoU@k/SPC."""
from segblocks.metrics.interactive import InteractiveMetrics, binary_iou, seconds_per_click
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
    "InteractiveMetrics",
    "MaskAP",
    "PanopticQualityMetric",
    "SemanticIoU",
    "binary_iou",
    "check_masks_target",
    "format_metrics_table",
    "panoptic_from_masks",
    "panoptic_from_segments",
    "seconds_per_click",
    "semantic_from_masks",
]
