"""Block catalog, one module per paper family (see :func:`segblocks.list_blocks`)."""
from segblocks.blocks.focsam import DynamicWindows, FocusRefiner, PDyReLU, RefineBlock
from segblocks.blocks.inter2former import (
    BSQAttention,
    CannyNet,
    DynamicHybridAttention,
    DynamicLocalUpsampling,
    DynamicPromptEmbedding,
    HybridMoE,
)
from segblocks.blocks.hrsam_attention import FlashSwinAttention, FlexibleLocalAttention
from segblocks.blocks.hrsam_cyclescan import CycleScan, MultiScaleCycleScan, PerScaleCycleScan
from segblocks.blocks.mst import (
    AdaptivePatchEmbed,
    MultiScaleTokenBlock,
    TokenSelection,
    TopKTokenSelector,
)
from segblocks.blocks.proscale import (
    PROSCALE_PRESETS,
    DeformableEncoderLayer,
    LightPixelEmbedding,
    ProgressiveScaleEncoder,
    TokenRecalibration,
)

__all__ = [
    "BSQAttention",
    "CannyNet",
    "DynamicHybridAttention",
    "DynamicLocalUpsampling",
    "DynamicPromptEmbedding",
    "HybridMoE",
    "AdaptivePatchEmbed",
    "MultiScaleTokenBlock",
    "TokenSelection",
    "TopKTokenSelector",
    "DynamicWindows",
    "FocusRefiner",
    "PDyReLU",
    "RefineBlock",
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
