"""Block catalog, one module per paper family (see :func:`segblocks.list_blocks`)."""
from segblocks.blocks.hrsam_attention import FlashSwinAttention, FlexibleLocalAttention
from segblocks.blocks.hrsam_cyclescan import CycleScan, MultiScaleCycleScan, PerScaleCycleScan
from segblocks.blocks.proscale import (
    PROSCALE_PRESETS,
    DeformableEncoderLayer,
    LightPixelEmbedding,
    ProgressiveScaleEncoder,
    TokenRecalibration,
)

__all__ = [
    "CycleScan",
    "FlashSwinAttention",
    "FlexibleLocalAttention",
    "MultiScaleCycleScan",
    "PerScaleCycleScan",
    "DeformableEncoderLayer",
    "LightPixelEmbedding",
    "PROSCALE_PRESETS",
    "ProgressiveScaleEncoder",
    "TokenRecalibration",
]
