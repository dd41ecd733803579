"""Interactive segmentation: click containers, click simulation, click encodings and ``M_ref``."""
from segblocks.interactive.clicker import (
    TRAIN_INNER_K,
    Clicks,
    next_click,
    sample_generators,
    sample_initial_clicks,
    sample_num_clicks,
)
from segblocks.interactive.encodings import clicks_to_points, disk_maps, scale_points
from segblocks.interactive.protocol import ClickPrompts, InteractiveModel, logits_to_input
from segblocks.interactive.ref_label import (
    RefLabel,
    initial_ref_label,
    points_to_ref_label,
    update_ref_label,
    update_ref_label_by_prediction,
)
from segblocks.ops.geometry import longest_side_shape

__all__ = [
    "ClickPrompts",
    "Clicks",
    "InteractiveModel",
    "RefLabel",
    "TRAIN_INNER_K",
    "clicks_to_points",
    "disk_maps",
    "initial_ref_label",
    "logits_to_input",
    "longest_side_shape",
    "next_click",
    "points_to_ref_label",
    "sample_generators",
    "sample_initial_clicks",
    "sample_num_clicks",
    "scale_points",
    "update_ref_label",
    "update_ref_label_by_prediction",
]
