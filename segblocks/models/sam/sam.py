"""Segment Anything model: image encoder, prompt encoder and mask decoder (Kirillov et al., ICCV 2023, §3).

The interactive interface of this library: :meth:`SamModel.encode` runs the heavy image encoder
once per image, :meth:`SamModel.decode` runs the light prompt encoder + mask decoder once per
click (SAM §3 "Efficiency"; FocSAM §3.1). Any encoder mapping ``(B, 3, H, W)`` to
``(B, C, H/16, W/16)`` can be injected (HRSAM replaces the ViT and keeps the rest).

Factories build SAM's ViT-B configuration and a small CPU-trainable configuration; a local
checkpoint with the official key names can be loaded (nothing is downloaded).
"""
from __future__ import annotations

import logging
import os
from typing import NamedTuple

import torch
from torch import nn

from segblocks.models.backbones.checkpoint import read_state_dict
from segblocks.models.sam.image_encoder import ViTImageEncoder
from segblocks.models.sam.mask_decoder import MaskDecoder, MaskDecoderOutput
from segblocks.models.sam.preprocess import SamPreprocess, postprocess_masks
from segblocks.models.sam.prompt_encoder import PromptEncoder
from segblocks.models.sam.transformer import TwoWayTransformer

__all__ = ["SamModel", "SamState", "load_sam_checkpoint", "sam_tiny", "sam_vit_b"]

logger = logging.getLogger(__name__)

# SAM's box-corner embeddings; clicks-only models have no parameters for them.
_BOX_KEYS = ("prompt_encoder.point_embeddings.2.weight", "prompt_encoder.point_embeddings.3.weight")


class SamState(NamedTuple):
    """Per-image result of :meth:`SamModel.encode`.

    Attributes:
        embeddings: (B, C, h, w) image embeddings of the padded input (``h = Hp / 16``). FocSAM
            swaps in refined embeddings with ``state._replace(embeddings=...)``.
        input_size: ``(H, W)`` of the valid, unpadded input region.
    """

    embeddings: torch.Tensor
    input_size: tuple[int, int]


class SamModel(nn.Module):
    """SAM pipeline with an encode-once / decode-per-click interface.

    Args:
        image_encoder: maps padded normalized images (B, 3, Hp, Wp) to (B, C, Hp/s, Wp/s),
            ``s = prompt_encoder.stride``.
        prompt_encoder: :class:`PromptEncoder` of width ``C``.
        mask_decoder: :class:`MaskDecoder` of width ``C``.
        preprocess: normalization and padding (default: :class:`SamPreprocess` padding to a
            multiple of the stride).
    """

    def __init__(
        self,
        *,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        preprocess: SamPreprocess | None = None,
    ) -> None:
        super().__init__()
        if prompt_encoder.embed_dim != mask_decoder.transformer_dim:
            raise ValueError(
                f"prompt_encoder.embed_dim ({prompt_encoder.embed_dim}) must equal "
                f"mask_decoder.transformer_dim ({mask_decoder.transformer_dim})"
            )
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.preprocess = preprocess if preprocess is not None else SamPreprocess(size_divisor=prompt_encoder.stride)

    def encode(self, images: torch.Tensor) -> SamState:
        """Normalize, pad and encode a batch of images (once per image).

        Args:
            images: (B, 3, H, W) float RGB on the 0–255 scale, already resized (e.g. with
                :func:`~segblocks.models.sam.preprocess.resize_longest_side`).

        Returns:
            :class:`SamState` with (B, C, Hp/16, Wp/16) embeddings and ``input_size=(H, W)``.
        """
        x = self.preprocess(images)  # B x 3 x Hp x Wp
        emb = self.image_encoder(x)  # B x C x h x w
        s, c = self.prompt_encoder.stride, self.prompt_encoder.embed_dim
        expected = (x.shape[0], c, x.shape[-2] // s, x.shape[-1] // s)
        if tuple(emb.shape) != expected:
            raise ValueError(f"image_encoder output must have shape {expected}; got {tuple(emb.shape)}")
        return SamState(embeddings=emb, input_size=(int(images.shape[-2]), int(images.shape[-1])))

    def decode(
        self,
        state: SamState,
        points: torch.Tensor,
        labels: torch.Tensor,
        previous_logits: torch.Tensor | None = None,
        multimask_output: bool = False,
    ) -> MaskDecoderOutput:
        """Predict masks for one round of clicks (once per click).

        Args:
            state: output of :meth:`encode` (``B`` images).
            points: (B, N, 2) float ``(x, y)`` pixel-centre coordinates in the encoded input
                (:func:`segblocks.interactive.clicks_to_points`, then
                :func:`segblocks.interactive.scale_points` if the image was resized).
            labels: (B, N) int, 1 positive / 0 negative / -1 padding (ignored).
            previous_logits: optional (B, 1, 4h, 4w) low-resolution logits of the previous
                round (``masks`` of the previous output) as dense prompt.
            multimask_output: return SAM's 3 ambiguity masks instead of one.

        Returns:
            :class:`MaskDecoderOutput`: ``masks`` (B, M, 4h, 4w) low-resolution logits,
            ``iou_pred`` (B, M), ``mask_tokens`` (B, M, C), ``tokens``.
        """
        emb = state.embeddings
        if points.dim() != 3 or points.shape[0] != emb.shape[0]:
            raise ValueError(f"points must be (B={emb.shape[0]}, N, 2) to match the state; got {tuple(points.shape)}")
        size = tuple(emb.shape[-2:])
        prompts = self.prompt_encoder(points, labels, image_embedding_size=size, masks=previous_logits)
        image_pe = self.prompt_encoder.get_dense_pe(size)  # 1 x C x h x w
        return self.mask_decoder(emb, image_pe, prompts, multimask_output=multimask_output)

    def postprocess(
        self, logits: torch.Tensor, state: SamState, original_size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Upscale low-resolution logits to the input (or ``original_size``): (B, M, H, W)."""
        return postprocess_masks(logits, state.input_size, original_size)

    def forward(
        self,
        images: torch.Tensor,
        points: torch.Tensor,
        labels: torch.Tensor,
        previous_logits: torch.Tensor | None = None,
        multimask_output: bool = False,
    ) -> MaskDecoderOutput:
        """:meth:`encode` followed by one :meth:`decode`."""
        return self.decode(self.encode(images), points, labels, previous_logits, multimask_output)


def load_sam_checkpoint(
    model: SamModel, path: str | os.PathLike, *, prefix: str = "", strict: bool = False
) -> tuple[list[str], list[str]]:
    """Load a local SAM checkpoint (official key names) into ``model``.

    Box-corner embeddings are dropped (clicks only). ``pos_embed`` and relative tables stored at
    another grid are resized by the encoder's load hook. Missing/unexpected keys are logged as a
    warning, or raised with ``strict=True``.

    Args:
        model: target model.
        path: ``.pth``/``.pt``/``.ckpt`` file (see :func:`~segblocks.models.backbones.checkpoint.read_state_dict`).
        prefix: strip this prefix from the file's keys (e.g. ``"model."`` for Lightning).
        strict: raise ``ValueError`` on missing or unexpected keys.

    Returns:
        ``(missing_keys, unexpected_keys)``.
    """
    state = {k: v for k, v in read_state_dict(path, prefix=prefix).items() if k not in _BOX_KEYS}
    if not model.state_dict().keys() & state.keys():
        raise ValueError(f"checkpoint {path}: none of its keys matches SamModel (first key {next(iter(state))!r})")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # size mismatches
        raise ValueError(f"checkpoint {path}: {err}") from err
    if result.missing_keys or result.unexpected_keys:
        msg = (
            f"checkpoint {path}: {len(result.missing_keys)} missing keys {result.missing_keys}; "
            f"{len(result.unexpected_keys)} unexpected keys {result.unexpected_keys}"
        )
        if strict:
            raise ValueError(msg)
        logger.warning(msg)
    return result


def _build_sam(
    *,
    encoder: ViTImageEncoder,
    prompt_dim: int,
    decoder_heads: int,
    decoder_mlp_dim: int,
    iou_head_hidden_dim: int,
    checkpoint: str | os.PathLike | None,
    strict: bool,
) -> SamModel:
    grid = encoder.img_size // encoder.patch_size
    model = SamModel(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim, image_embedding_size=(grid, grid), input_image_size=(encoder.img_size,) * 2
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=prompt_dim,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=prompt_dim, num_heads=decoder_heads, mlp_dim=decoder_mlp_dim
            ),
            num_multimask_outputs=3,
            iou_head_depth=3,
            iou_head_hidden_dim=iou_head_hidden_dim,
        ),
    )
    if checkpoint is not None:
        load_sam_checkpoint(model, checkpoint, strict=strict)
    return model


def sam_vit_b(*, checkpoint: str | os.PathLike | None = None, strict: bool = False) -> SamModel:
    """SAM with the ViT-B encoder (768-d, 12 blocks, 12 heads, window 14, global 2/5/8/11; SAM App. A).

    Args:
        checkpoint: optional local file, e.g. the official ``sam_vit_b_01ec64.pth``.
        strict: raise on missing/unexpected checkpoint keys.
    """
    encoder = ViTImageEncoder(
        img_size=1024, embed_dim=768, depth=12, num_heads=12, window_size=14, global_attn_indexes=(2, 5, 8, 11)
    )
    return _build_sam(
        encoder=encoder,
        prompt_dim=256,
        decoder_heads=8,
        decoder_mlp_dim=2048,
        iou_head_hidden_dim=256,
        checkpoint=checkpoint,
        strict=strict,
    )


def sam_tiny(*, checkpoint: str | os.PathLike | None = None, strict: bool = False) -> SamModel:
    """A small SAM for CPU training on 128–256 px images (not from the paper).

    Encoder: 96-d, 4 blocks, 3 heads, window 8, global blocks 1 and 3, 64-d neck, position
    embedding stored for 256 px. Decoder: 64-d, 4 heads, MLP 256.
    """
    encoder = ViTImageEncoder(
        img_size=256, embed_dim=96, depth=4, num_heads=3, out_chans=64, window_size=8, global_attn_indexes=(1, 3)
    )
    return _build_sam(
        encoder=encoder,
        prompt_dim=64,
        decoder_heads=4,
        decoder_mlp_dim=256,
        iou_head_hidden_dim=64,
        checkpoint=checkpoint,
        strict=strict,
    )
