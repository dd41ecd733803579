"""HRSAM / HRSAM++ image encoders (Huang et al., "HRSAM: Efficient Interactive Segmentation in
High-Resolution Images") for SAM's prompt encoder and mask decoder."""
from segblocks.models.hrsam.encoder import (
    MAE_ABSENT_KEYS,
    HRSAMBlock,
    HRSAMEncoder,
    HRSAMPlusPlusEncoder,
    hrsam_pp_tiny,
    hrsam_pp_vit_b,
    hrsam_tiny,
    hrsam_vit_b,
    interpolate_pos_embed,
    is_mae_state_dict,
    mae_to_hrsam,
)
from segblocks.models.hrsam.sam_hrsam import sam_hrsam_pp_tiny, sam_hrsam_pp_vit_b, sam_hrsam_tiny, sam_hrsam_vit_b

__all__ = [
    "HRSAMBlock",
    "HRSAMEncoder",
    "HRSAMPlusPlusEncoder",
    "MAE_ABSENT_KEYS",
    "hrsam_pp_tiny",
    "hrsam_pp_vit_b",
    "hrsam_tiny",
    "hrsam_vit_b",
    "interpolate_pos_embed",
    "is_mae_state_dict",
    "mae_to_hrsam",
    "sam_hrsam_pp_tiny",
    "sam_hrsam_pp_vit_b",
    "sam_hrsam_tiny",
    "sam_hrsam_vit_b",
]
