"""MST (Xu et al., "MST: Adaptive Multi-Scale Tokens Guided Interactive Segmentation"): a
SimpleClick-style click model with multi-scale token blocks (:mod:`segblocks.blocks.mst`).

Registered models: ``mst_tiny``, ``mst_vit_base``, ``simpleclick_vit_base``.
"""
from segblocks.models.mst.model import (
    MST_DEPTHS,
    MSTBackbone,
    MSTClickModel,
    MSTSegHead,
    MSTState,
    SimpleFPN,
    mst_tiny,
    mst_vit_base,
    simpleclick_vit_base,
)

__all__ = [
    "MST_DEPTHS",
    "MSTBackbone",
    "MSTClickModel",
    "MSTSegHead",
    "MSTState",
    "SimpleFPN",
    "mst_tiny",
    "mst_vit_base",
    "simpleclick_vit_base",
]
