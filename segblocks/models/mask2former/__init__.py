"""Mask2Former-style universal segmentation: pixel decoder, masked-attention decoder, losses, inference."""
from segblocks.models.mask2former.criterion import SetCriterion
from segblocks.layers.ms_deform_attn import MSDeformAttn
from segblocks.models.mask2former.inference import instance_inference, panoptic_inference, semantic_inference
from segblocks.models.mask2former.matcher import HungarianMatcher
from segblocks.models.mask2former.model import Mask2Former
from segblocks.models.mask2former.pixel_decoder import MSDeformPixelDecoder
from segblocks.layers.position_encoding import PositionEmbeddingSine
from segblocks.models.mask2former.transformer_decoder import MultiScaleMaskedTransformerDecoder

__all__ = [
    "HungarianMatcher",
    "MSDeformAttn",
    "MSDeformPixelDecoder",
    "Mask2Former",
    "MultiScaleMaskedTransformerDecoder",
    "PositionEmbeddingSine",
    "SetCriterion",
    "instance_inference",
    "panoptic_inference",
    "semantic_inference",
]
