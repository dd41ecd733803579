"""HRSAM / HRSAM++ image encoders (Huang et al., seed 002) for SAM's prompt encoder and mask decoder."""
from segblocks.models.hrsam.encoder import (
    HRSAM_PRESETS,
    HRSAMBlock,
    HRSAMEncoder,
    HRSAMPlusPlusEncoder,
    hrsam_pp_tiny,
    hrsam_pp_vit_b,
    hrsam_tiny,
    hrsam_vit_b,
    interpolate_pos_embed,
)

__all__ = [
    "HRSAM_PRESETS",
    "HRSAMBlock",
    "HRSAMEncoder",
    "HRSAMPlusPlusEncoder",
    "hrsam_pp_tiny",
    "hrsam_pp_vit_b",
    "hrsam_tiny",
    "hrsam_vit_b",
    "interpolate_pos_embed",
]
