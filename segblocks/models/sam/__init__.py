"""Segment Anything (Kirillov et al., ICCV 2023): ViT image encoder, prompt encoder, two-way mask decoder.

Used by FocSAM (click-fused query token from :class:`MaskDecoderOutput`) and HRSAM (which swaps
the image encoder and keeps the prompt encoder and decoder).
"""
from segblocks.models.sam.image_encoder import ViTImageEncoder, resize_pos_embed, resize_rel_pos
from segblocks.models.sam.mask_decoder import MaskDecoder, MaskDecoderOutput
from segblocks.models.sam.preprocess import (
    PIXEL_MEAN,
    PIXEL_STD,
    SamPreprocess,
    postprocess_masks,
)
from segblocks.models.sam.prompt_encoder import PromptEmbeddings, PromptEncoder, RandomFourierEncoding
from segblocks.models.sam.click_model import SamClickModel
from segblocks.models.sam.sam import (
    SamDecoder,
    SamModel,
    SamState,
    sam_from_parts,
    sam_tiny,
    sam_tiny_decoder,
    sam_tiny_encoder,
    sam_vit_b,
    sam_vit_b_decoder,
    sam_vit_b_encoder,
    sam_vit_h_encoder,
)
from segblocks.models.sam.transformer import TwoWayTransformer

__all__ = [
    "MaskDecoder",
    "MaskDecoderOutput",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "PromptEmbeddings",
    "PromptEncoder",
    "RandomFourierEncoding",
    "SamClickModel",
    "SamDecoder",
    "SamModel",
    "SamPreprocess",
    "SamState",
    "TwoWayTransformer",
    "ViTImageEncoder",
    "postprocess_masks",
    "resize_pos_embed",
    "resize_rel_pos",
    "sam_from_parts",
    "sam_tiny",
    "sam_tiny_decoder",
    "sam_tiny_encoder",
    "sam_vit_b",
    "sam_vit_b_decoder",
    "sam_vit_b_encoder",
    "sam_vit_h_encoder",
]
