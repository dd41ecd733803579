"""Whole interactive HRSAM / HRSAM++ models: SAM's prompt encoder and mask decoder on an HRSAM encoder.

HRSAM §3.1: "our HRSAM focuses on optimizing the encoder without altering other modules" — the
model is SAM with its image encoder replaced. The decoder side is built alone
(:class:`~segblocks.models.sam.SamDecoder`), never by constructing a whole SAM and discarding
its ViT. The authors start from SAM-ViT-H's prompt encoder and decoder (HRSAM code,
YouHuang67/High-Resolution-Segment-Anything, ``configs/hrsam/hrsam.py``: ``mae_vit_base_sam_huge_dec.pth``).

Two weight sources, each with the one checkpoint convention, by injection::

    encoder = create_model("hrsam_vit_b", checkpoint="stage1/last.ckpt", checkpoint_prefix="student.")
    decoder = create_model("sam_vit_b_decoder", checkpoint="sam_vit_h_4b8939.pth")
    model = create_model("sam_hrsam_vit_b", encoder=encoder, decoder=decoder)

or ``create_model("sam_hrsam_vit_b", checkpoint=...)`` for a file of the whole model.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from segblocks.models._registry import register_model
from segblocks.models.hrsam.encoder import hrsam_pp_tiny, hrsam_pp_vit_b, hrsam_tiny, hrsam_vit_b
from segblocks.models.sam.sam import SamDecoder, SamModel, sam_from_parts, sam_tiny_decoder, sam_vit_b_decoder

__all__ = ["sam_hrsam_pp_tiny", "sam_hrsam_pp_vit_b", "sam_hrsam_tiny", "sam_hrsam_vit_b"]


def _assemble(encoder: nn.Module | None, decoder: SamDecoder | None, make_encoder, make_decoder, overrides) -> SamModel:
    if encoder is not None and overrides:
        raise ValueError(f"give either a built `encoder` or encoder overrides {sorted(overrides)}, not both")
    if decoder is not None and not isinstance(decoder, SamDecoder):
        raise TypeError(f"decoder must be a SamDecoder (e.g. sam_vit_b_decoder()); got {type(decoder).__name__}")
    encoder = encoder if encoder is not None else make_encoder(**overrides)
    return sam_from_parts(image_encoder=encoder, decoder=decoder if decoder is not None else make_decoder())


@register_model
def sam_hrsam_vit_b(*, encoder: nn.Module | None = None, decoder: SamDecoder | None = None, **encoder_overrides: Any) -> SamModel:
    """HRSAM-ViT-B with SAM's 256-d prompt encoder and mask decoder (HRSAM supp. D.2).

    Args:
        encoder: a built encoder (default :func:`~segblocks.models.hrsam.hrsam_vit_b` with ``encoder_overrides``).
        decoder: a built :class:`~segblocks.models.sam.SamDecoder` (default :func:`~segblocks.models.sam.sam_vit_b_decoder`).
    """
    return _assemble(encoder, decoder, hrsam_vit_b, sam_vit_b_decoder, encoder_overrides)


@register_model
def sam_hrsam_pp_vit_b(*, encoder: nn.Module | None = None, decoder: SamDecoder | None = None, **encoder_overrides: Any) -> SamModel:
    """HRSAM++-ViT-B with SAM's 256-d prompt encoder and mask decoder (HRSAM §3.6, supp. D.2); arguments as :func:`sam_hrsam_vit_b`."""
    return _assemble(encoder, decoder, hrsam_pp_vit_b, sam_vit_b_decoder, encoder_overrides)


@register_model
def sam_hrsam_tiny(*, encoder: nn.Module | None = None, decoder: SamDecoder | None = None, **encoder_overrides: Any) -> SamModel:
    """CPU-sized HRSAM (:func:`~segblocks.models.hrsam.hrsam_tiny`) with :func:`~segblocks.models.sam.sam_tiny_decoder` (64-d; not from the paper)."""
    return _assemble(encoder, decoder, hrsam_tiny, sam_tiny_decoder, encoder_overrides)


@register_model
def sam_hrsam_pp_tiny(*, encoder: nn.Module | None = None, decoder: SamDecoder | None = None, **encoder_overrides: Any) -> SamModel:
    """CPU-sized HRSAM++ (:func:`~segblocks.models.hrsam.hrsam_pp_tiny`) with :func:`~segblocks.models.sam.sam_tiny_decoder` (not from the paper)."""
    return _assemble(encoder, decoder, hrsam_pp_tiny, sam_tiny_decoder, encoder_overrides)
