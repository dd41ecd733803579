"""Segment Anything (Kirillov et al., ICCV 2023): ViT image encoder, prompt encoder, two-way mask decoder.

Used by FocSAM (click-fused query token from :class:`MaskDecoderOutput`) and HRSAM (which swaps
the image encoder and keeps the prompt encoder and decoder).
"""
from segblocks.models.sam.common import MLP, LayerNorm2d, MLPBlock
from segblocks.models.sam.image_encoder import ViTImageEncoder, resize_pos_embed, resize_rel_pos
from segblocks.models.sam.mask_decoder import MaskDecoder, MaskDecoderOutput
from segblocks.models.sam.preprocess import (
    PIXEL_MEAN,
    PIXEL_STD,
    SamPreprocess,
    postprocess_masks,
    resize_longest_side,
)
from segblocks.models.sam.prompt_encoder import PromptEmbeddings, PromptEncoder, RandomFourierEncoding
from segblocks.models.sam.sam import SamModel, SamState, load_sam_checkpoint, sam_tiny, sam_vit_b
from segblocks.models.sam.transformer import TwoWayTransformer

__all__ = [
    "LayerNorm2d",
    "MLP",
    "MLPBlock",
    "MaskDecoder",
    "MaskDecoderOutput",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "PromptEmbeddings",
    "PromptEncoder",
    "RandomFourierEncoding",
    "SamModel",
    "SamPreprocess",
    "SamState",
    "TwoWayTransformer",
    "ViTImageEncoder",
    "load_sam_checkpoint",
    "postprocess_masks",
    "resize_longest_side",
    "resize_pos_embed",
    "resize_rel_pos",
    "sam_tiny",
    "sam_vit_b",
]
