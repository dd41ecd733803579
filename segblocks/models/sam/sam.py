"""Segment Anything model: image encoder, prompt encoder and mask decoder (Kirillov et al., ICCV 2023, §3).

The interactive interface of this library: :meth:`SamModel.encode` runs the heavy image encoder
once per image, :meth:`SamModel.decode` runs the light prompt encoder + mask decoder once per
click (SAM §3 "Efficiency"; FocSAM §3.1). Any encoder mapping ``(B, 3, H, W)`` to
``(B, C, H/16, W/16)`` can be injected (HRSAM replaces the ViT and keeps the rest).

Registered factories (:func:`segblocks.models.create_model`) build SAM's ViT-B configuration, a
small CPU-trainable configuration, their image encoders and their prompt-encoder + mask-decoder
halves; a local checkpoint with the official key names loads with ``checkpoint=`` (nothing is
downloaded; SAM's box-corner embeddings are ignored, the prompt encoder takes clicks only).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from segblocks.models._registry import register_model
from segblocks.models.sam.image_encoder import ViTImageEncoder
from segblocks.models.sam.mask_decoder import MaskDecoder, MaskDecoderOutput
from segblocks.models.sam.preprocess import SamPreprocess, postprocess_masks
from segblocks.models.sam.prompt_encoder import PromptEncoder
from segblocks.models.sam.transformer import TwoWayTransformer

__all__ = [
    "SamDecoder",
    "SamModel",
    "SamState",
    "sam_from_parts",
    "sam_tiny",
    "sam_tiny_decoder",
    "sam_tiny_encoder",
    "sam_vit_b",
    "sam_vit_b_decoder",
    "sam_vit_b_encoder",
    "sam_vit_h_encoder",
]

# SAM's box-corner embeddings; clicks-only models have no parameters for them.
_BOX_KEYS = ("prompt_encoder.point_embeddings.2.weight", "prompt_encoder.point_embeddings.3.weight")



def _check_same_width(prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder) -> None:
    """The prompt tokens and the decoder's transformer must share one width ``C``."""
    if prompt_encoder.embed_dim != mask_decoder.transformer_dim:
        raise ValueError(
            f"prompt_encoder.embed_dim ({prompt_encoder.embed_dim}) must equal "
            f"mask_decoder.transformer_dim ({mask_decoder.transformer_dim})"
        )

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

    #: SAM's box-corner embeddings in official files: clicks-only models have no slot for them.
    checkpoint_ignore_keys = _BOX_KEYS

    def __init__(
        self,
        *,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        preprocess: SamPreprocess | None = None,
    ) -> None:
        super().__init__()
        _check_same_width(prompt_encoder, mask_decoder)
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.preprocess = preprocess if preprocess is not None else SamPreprocess(size_divisor=prompt_encoder.stride)

    def encode(self, images: torch.Tensor) -> SamState:
        """Normalize, pad and encode a batch of images (once per image).

        Args:
            images: (B, 3, H, W) float RGB on the 0–255 scale, already resized (e.g. with
                :func:`segblocks.ops.geometry.resize_longest_side`; SAM:
                ``resize_longest_side(images, 1024, antialias=True)``).

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


class SamDecoder(nn.Module):
    """SAM's prompt encoder and mask decoder without an image encoder (HRSAM §3.1 keeps exactly these).

    Built alone so that a model with another image encoder (HRSAM) never constructs a ViT only to
    discard it. Its keys are ``prompt_encoder.*`` / ``mask_decoder.*`` as in a whole SAM file; a
    whole-SAM checkpoint loads into it (its ``image_encoder.*`` keys and box-corner embeddings are
    ignored by design), e.g. ``sam_vit_b_decoder(checkpoint="sam_vit_h_4b8939.pth")`` (the ViT-B,
    -L and -H decoders are all the same 256-d module).

    Args:
        prompt_encoder: :class:`PromptEncoder` of width ``C``.
        mask_decoder: :class:`MaskDecoder` of width ``C``.
    """

    checkpoint_ignore_keys = ("image_encoder.*", *_BOX_KEYS)

    def __init__(self, *, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder) -> None:
        super().__init__()
        _check_same_width(prompt_encoder, mask_decoder)
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder

    @property
    def embed_dim(self) -> int:
        """Width ``C`` the image embeddings must have."""
        return self.prompt_encoder.embed_dim


def _vit_encoder(**kwargs) -> ViTImageEncoder:
    return ViTImageEncoder(**kwargs)


def _decoder(*, dim: int, heads: int, mlp_dim: int, iou_hidden: int, grid: int, input_size: int) -> SamDecoder:
    return SamDecoder(
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid), input_image_size=(input_size,) * 2),
        mask_decoder=MaskDecoder(
            transformer_dim=dim,
            transformer=TwoWayTransformer(depth=2, embedding_dim=dim, num_heads=heads, mlp_dim=mlp_dim),
            num_multimask_outputs=3,
            iou_head_depth=3,
            iou_head_hidden_dim=iou_hidden,
        ),
    )


def sam_from_parts(*, image_encoder: nn.Module, decoder: SamDecoder, preprocess: SamPreprocess | None = None) -> SamModel:
    """A :class:`SamModel` from an image encoder and a :class:`SamDecoder` (their widths must agree)."""
    width = getattr(image_encoder, "out_chans", decoder.embed_dim)
    if width != decoder.embed_dim:
        raise ValueError(
            f"the image encoder's out_chans ({width}) must equal the decoder width ({decoder.embed_dim})"
        )
    return SamModel(
        image_encoder=image_encoder, prompt_encoder=decoder.prompt_encoder, mask_decoder=decoder.mask_decoder,
        preprocess=preprocess,
    )


@register_model
def sam_vit_b_encoder() -> ViTImageEncoder:
    """SAM's ViT-B image encoder (768-d, 12 blocks, 12 heads, window 14, global 2/5/8/11; SAM App. A).

    From an official SAM file: ``checkpoint_prefix="image_encoder."``.
    """
    return _vit_encoder(
        img_size=1024, embed_dim=768, depth=12, num_heads=12, window_size=14, global_attn_indexes=(2, 5, 8, 11)
    )


@register_model
def sam_vit_h_encoder() -> ViTImageEncoder:
    """SAM's ViT-H image encoder (1280-d, 32 blocks, 16 heads, global 7/15/23/31; SAM App. A), HRSAM's teacher.

    From the official ``sam_vit_h_4b8939.pth``: ``checkpoint_prefix="image_encoder."``.
    """
    return _vit_encoder(
        img_size=1024, embed_dim=1280, depth=32, num_heads=16, window_size=14, global_attn_indexes=(7, 15, 23, 31)
    )


@register_model
def sam_tiny_encoder() -> ViTImageEncoder:
    """The image encoder of :func:`sam_tiny` (not from the paper): 96-d, 4 blocks, 3 heads, window 8, 64-d neck."""
    return _vit_encoder(
        img_size=256, embed_dim=96, depth=4, num_heads=3, out_chans=64, window_size=8, global_attn_indexes=(1, 3)
    )


@register_model
def sam_vit_b_decoder() -> SamDecoder:
    """SAM's prompt encoder + mask decoder (256-d, two-way depth 2, 8 heads, MLP 2048, IoU head 3×256; SAM App. A).

    The same module in SAM ViT-B, -L and -H, so any official SAM file loads into it.
    """
    return _decoder(dim=256, heads=8, mlp_dim=2048, iou_hidden=256, grid=64, input_size=1024)


@register_model
def sam_tiny_decoder() -> SamDecoder:
    """The prompt encoder + mask decoder of :func:`sam_tiny` (not from the paper): 64-d, 4 heads, MLP 256."""
    return _decoder(dim=64, heads=4, mlp_dim=256, iou_hidden=64, grid=16, input_size=256)


@register_model
def sam_vit_b(*, pad_to_square: bool = True) -> SamModel:
    """SAM with the ViT-B encoder (:func:`sam_vit_b_encoder` + :func:`sam_vit_b_decoder`; SAM App. A).

    The official ``sam_vit_b_01ec64.pth`` loads with ``checkpoint=`` (its box-corner embeddings
    are ignored: the prompt encoder takes clicks only).

    Args:
        pad_to_square: pad every input to 1024 × 1024 as SAM does (``Sam.preprocess`` after
            ``ResizeLongestSide(1024)``), so that an official checkpoint reproduces SAM's outputs on
            non-square images — the absolute position embedding and the global blocks' relative
            tables then see SAM's 64 × 64 grid. Inputs must already have their longest side
            resized to at most 1024 (:func:`segblocks.ops.geometry.resize_longest_side`).
            ``False`` pads only to a multiple of 16 (less compute on non-square inputs; the
            embeddings are resized to the smaller grid, which official weights were not trained on).
    """
    preprocess = SamPreprocess(pad_size=1024) if pad_to_square else SamPreprocess(size_divisor=16)
    return sam_from_parts(image_encoder=sam_vit_b_encoder(), decoder=sam_vit_b_decoder(), preprocess=preprocess)


@register_model
def sam_tiny() -> SamModel:
    """A small SAM for CPU training on 128–256 px images (not from the paper).

    Encoder: 96-d, 4 blocks, 3 heads, window 8, global blocks 1 and 3, 64-d neck, position
    embedding stored for 256 px. Decoder: 64-d, 4 heads, MLP 256.
    """
    return sam_from_parts(image_encoder=sam_tiny_encoder(), decoder=sam_tiny_decoder())
