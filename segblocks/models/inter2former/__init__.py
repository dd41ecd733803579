"""Inter2Former (Huang et al., "Inter2Former: Dynamic Hybrid Attention for Efficient High-Precision
Interactive Segmentation"; code YouHuang67/inter2former): encoder, model, presets, official keys."""
from segblocks.models.inter2former.encoder import Inter2FormerEncoder
from segblocks.models.inter2former.model import Inter2Former, Inter2FormerBlock, Inter2FormerNeck, Inter2FormerState
from segblocks.models.inter2former.official import OFFICIAL_RENAMES, is_official_state_dict, official_to_segblocks
from segblocks.models.inter2former.presets import build_inter2former, inter2former_tiny, inter2former_vit_b

__all__ = [
    "Inter2Former",
    "Inter2FormerBlock",
    "Inter2FormerEncoder",
    "Inter2FormerNeck",
    "Inter2FormerState",
    "OFFICIAL_RENAMES",
    "build_inter2former",
    "inter2former_tiny",
    "inter2former_vit_b",
    "is_official_state_dict",
    "official_to_segblocks",
]
