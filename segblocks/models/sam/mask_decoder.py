"""SAM's lightweight mask decoder (Segment Anything §3 "Mask decoder", App. A).

Learned output tokens (one IoU token and ``1 + num_multimask_outputs`` mask tokens) are
concatenated with the prompt tokens and run through the two-way transformer together with the
image embedding plus the dense prompt. The updated image embedding is upscaled 4× by two
transposed convolutions; each mask token passes through its own 3-layer hypernetwork MLP and
its dot product with the upscaled embedding gives that mask's logits. A 3-layer MLP on the IoU
token predicts each mask's IoU.

Single-mask mode returns mask token 0 (SAM's output for unambiguous, multi-click prompts);
multimask mode returns tokens 1..3 (§3 "Resolving ambiguity"). The transformer output of the
returned mask tokens, before the hypernetwork MLP, is exposed as ``mask_tokens``: FocSAM's
focus refiner consumes token 0 as the "click-fused query embedding" ``q_c`` (FocSAM §3.1).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from segblocks.layers.mlp import MLPHead
from segblocks.layers.norm import LayerNorm2d
from segblocks.models.sam.prompt_encoder import PromptEmbeddings
from segblocks.models.sam.transformer import TwoWayTransformer

__all__ = ["MaskDecoder", "MaskDecoderOutput"]


class MaskDecoderOutput(NamedTuple):
    """Output of :class:`MaskDecoder` (and :meth:`SamModel.decode`).

    Attributes:
        masks: (B, M, 4h, 4w) mask logits at stride 4 of the padded input; ``M = 1`` in
            single-mask mode, ``num_multimask_outputs`` otherwise.
        iou_pred: (B, M) predicted IoU of each mask.
        mask_tokens: (B, M, C) transformer output of the returned masks' tokens (the click-fused
            query embedding of FocSAM in single-mask mode).
        tokens: (B, 1 + M_all + N + 1, C) every transformer output token: IoU token, all
            ``1 + num_multimask_outputs`` mask tokens, then the prompt tokens.
    """

    masks: torch.Tensor
    iou_pred: torch.Tensor
    mask_tokens: torch.Tensor
    tokens: torch.Tensor


class MaskDecoder(nn.Module):
    """Predict masks and IoU scores from an image embedding and prompt embeddings.

    Args:
        transformer_dim: channel width ``C`` of embeddings and tokens (divisible by 8).
        transformer: the two-way transformer (width ``transformer_dim``).
        num_multimask_outputs: masks in multimask mode (SAM: 3).
        iou_head_depth, iou_head_hidden_dim: IoU MLP layers and width.
    """

    def __init__(
        self,
        *,
        transformer_dim: int = 256,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        if transformer_dim % 8:
            raise ValueError(f"transformer_dim must be divisible by 8; got {transformer_dim}")
        if getattr(transformer, "embedding_dim", transformer_dim) != transformer_dim:
            raise ValueError(
                f"transformer width {transformer.embedding_dim} does not match transformer_dim {transformer_dim}"
            )
        if num_multimask_outputs < 1:
            raise ValueError(f"num_multimask_outputs must be >= 1; got {num_multimask_outputs}")
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(num_channels=transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLPHead(input_dim=transformer_dim, hidden_dim=transformer_dim, output_dim=transformer_dim // 8, num_layers=3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLPHead(
            input_dim=transformer_dim,
            hidden_dim=iou_head_hidden_dim,
            output_dim=self.num_mask_tokens,
            num_layers=iou_head_depth,
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        prompts: PromptEmbeddings,
        multimask_output: bool = False,
    ) -> MaskDecoderOutput:
        """Decode masks.

        Args:
            image_embeddings: (B, C, h, w) image encoder output, one per prompt set.
            image_pe: (1 or B, C, h, w) dense positional encoding
                (:meth:`PromptEncoder.get_dense_pe`).
            prompts: :class:`PromptEmbeddings` with ``sparse`` (B, N, C), ``dense``
                (B, C, h, w) and ``valid`` (B, N).
            multimask_output: return the 3 ambiguity-aware masks instead of the single mask.

        Returns:
            :class:`MaskDecoderOutput`.
        """
        if image_embeddings.dim() != 4 or image_embeddings.shape[1] != self.transformer_dim:
            raise ValueError(
                f"image_embeddings must be (B, {self.transformer_dim}, h, w); got {tuple(image_embeddings.shape)}"
            )
        b, c, h, w = image_embeddings.shape
        if prompts.sparse.shape[0] != b or tuple(prompts.dense.shape) != (b, c, h, w):
            raise ValueError(
                f"prompts do not match image_embeddings {(b, c, h, w)}: sparse {tuple(prompts.sparse.shape)}, "
                f"dense {tuple(prompts.dense.shape)}"
            )
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)  # (1+M) x C
        output_tokens = output_tokens.unsqueeze(0).expand(b, -1, -1)  # B x (1+M) x C
        tokens = torch.cat([output_tokens, prompts.sparse], dim=1)  # B x (1+M+N) x C
        valid = torch.cat([prompts.valid.new_ones(b, self.num_mask_tokens + 1), prompts.valid], dim=1)

        hs, src = self.transformer(image_embeddings + prompts.dense, image_pe, tokens, valid)
        iou_token_out = hs[:, 0]  # B x C
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens]  # B x M_all x C

        # only the returned masks are computed; the others would be discarded
        selected = range(1, self.num_mask_tokens) if multimask_output else range(1)
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))  # B x C/8 x 4h x 4w
        hyper_in = torch.stack(
            [self.output_hypernetworks_mlps[i](mask_tokens_out[:, i]) for i in selected], dim=1
        )  # B x M x C/8
        masks = (hyper_in @ upscaled.flatten(2)).reshape(b, -1, 4 * h, 4 * w)  # B x M x 4h x 4w
        iou_pred = self.iou_prediction_head(iou_token_out)  # B x M_all

        sel = slice(selected.start, selected.stop)
        return MaskDecoderOutput(
            masks=masks, iou_pred=iou_pred[:, sel], mask_tokens=mask_tokens_out[:, sel], tokens=hs
        )
