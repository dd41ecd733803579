"""SAM's prompt encoder for clicks and a previous mask (Segment Anything §3, App. A).

Sparse prompts: each point is a random-Fourier positional encoding of its location (Tancik et
al., the Gaussian-matrix features SAM uses) plus a learned embedding of its label (positive or
negative). Dense prompt: the previous low-resolution mask logits, downscaled 4× by two strided
2×2 convolutions and projected to the embedding width; without a mask, a learned "no mask"
embedding is broadcast over the grid.

As in the authors' code, one "not a point" token is appended to every click set (they do so
whenever no box is given), and a point with label ``-1`` gets that embedding with its positional
encoding zeroed. Here label ``-1`` is also the *batch padding* of ragged click sets; such tokens
are reported as invalid so the mask decoder can keep them out of attention, which makes each
sample's result independent of how much it was padded (the authors let them attend).

Box prompts (SAM's ``point_embeddings.2/3``) are not implemented: FocSAM and HRSAM use clicks only.

Sizes are per-call arguments: a point ``(x, y)`` is normalized by the input size
``(stride · w, stride · h)`` of the current image embedding ``(h, w)``, so any padded input size
works with the same weights.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from segblocks.layers.norm import LayerNorm2d

__all__ = ["PromptEmbeddings", "PromptEncoder", "RandomFourierEncoding"]


class RandomFourierEncoding(nn.Module):
    """Positional encoding ``[sin(2π (2u − 1) G), cos(2π (2u − 1) G)]`` of normalized coordinates.

    ``G`` is a fixed ``(2, num_pos_feats)`` Gaussian matrix (std ``scale``), ``u ∈ [0, 1]²`` the
    ``(x, y)`` location divided by the image size.

    Args:
        num_pos_feats: half the output channels.
        scale: standard deviation of ``G`` (SAM: 1).
    """

    def __init__(self, *, num_pos_feats: int, scale: float = 1.0) -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError(f"scale must be positive; got {scale}")
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn(2, num_pos_feats))

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """Encode normalized coordinates.

        Args:
            coords: (..., 2) ``(x, y)`` in ``[0, 1]``.

        Returns:
            (..., 2 * num_pos_feats): sines then cosines.
        """
        gaussian = self.positional_encoding_gaussian_matrix
        # phases reach ~±20 rad: under half-precision autocast sin/cos would be off by ~0.1
        with torch.autocast(device_type=coords.device.type, enabled=False):
            proj = 2 * math.pi * ((2 * coords.to(gaussian.dtype) - 1) @ gaussian)  # ... x num_pos_feats
            return torch.cat([proj.sin(), proj.cos()], dim=-1)

    def dense(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of the cell centres of an ``(h, w)`` grid: (2 * num_pos_feats, h, w)."""
        h, w = size
        gaussian = self.positional_encoding_gaussian_matrix
        y = (torch.arange(h, device=gaussian.device, dtype=gaussian.dtype) + 0.5) / h
        x = (torch.arange(w, device=gaussian.device, dtype=gaussian.dtype) + 0.5) / w
        grid = torch.stack(torch.meshgrid(x, y, indexing="xy"), dim=-1)  # h x w x 2, (x, y)
        return self(grid).permute(2, 0, 1)  # C x h x w


class PromptEmbeddings(NamedTuple):
    """Output of :class:`PromptEncoder`.

    Attributes:
        sparse: (B, N + 1, C) point tokens; the last is the appended "not a point" token.
        dense: (B, C, h, w) mask (or "no mask") embedding.
        valid: (B, N + 1) bool, False at batch-padding tokens (label ``-1`` in the input).
    """

    sparse: torch.Tensor
    dense: torch.Tensor
    valid: torch.Tensor


class PromptEncoder(nn.Module):
    """Encode clicks and an optional previous mask into sparse and dense prompt embeddings.

    Args:
        embed_dim: prompt embedding width ``C`` (even).
        image_embedding_size: default ``(h, w)`` of the image embedding (overridable per call).
        input_image_size: default ``(H, W)`` of the padded encoder input; with
            ``image_embedding_size`` it fixes the encoder stride ``H / h`` (must be equal per axis).
        mask_in_chans: hidden channels of the mask downscaling stack.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 256,
        image_embedding_size: tuple[int, int] = (64, 64),
        input_image_size: tuple[int, int] = (1024, 1024),
        mask_in_chans: int = 16,
    ) -> None:
        super().__init__()
        if embed_dim % 2:
            raise ValueError(f"embed_dim must be even (sine/cosine halves); got {embed_dim}")
        (h, w), (H, W) = image_embedding_size, input_image_size
        if H % h or W % w or H // h != W // w:
            raise ValueError(
                f"input_image_size must be the same integer multiple of image_embedding_size on both axes; "
                f"got {input_image_size} and {image_embedding_size}"
            )
        if mask_in_chans % 4:
            raise ValueError(f"mask_in_chans must be divisible by 4; got {mask_in_chans}")
        self.embed_dim = embed_dim
        self.image_embedding_size = (h, w)
        self.stride = H // h
        self.pe_layer = RandomFourierEncoding(num_pos_feats=embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(2))  # 0 neg, 1 pos
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(num_channels=mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(num_channels=mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self, image_embedding_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Positional encoding of the image-embedding grid: (1, C, h, w)."""
        return self.pe_layer.dense(tuple(image_embedding_size or self.image_embedding_size)).unsqueeze(0)

    def embed_points(
        self, points: torch.Tensor, labels: torch.Tensor, image_embedding_size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Point tokens without the appended "not a point" token.

        Args:
            points: (B, N, 2) float ``(x, y)`` in input pixels, already at pixel centres
                (``col + 0.5, row + 0.5``, as from :func:`segblocks.interactive.clicks_to_points`;
                SAM's own encoder adds the 0.5 itself).
            labels: (B, N) int, 1 positive, 0 negative, -1 padding.
            image_embedding_size: ``(h, w)``; the input size is ``stride · (h, w)``.

        Returns:
            (B, N, C).
        """
        h, w = image_embedding_size or self.image_embedding_size
        size = points.new_tensor([w * self.stride, h * self.stride])  # (x, y) order
        pe = self.pe_layer(points / size)  # B x N x C
        lab = labels.unsqueeze(-1)  # B x N x 1
        neg, pos = (e.weight for e in self.point_embeddings)  # 1 x C each
        return torch.where(lab == -1, self.not_a_point_embed.weight, pe + torch.where(lab == 1, pos, neg))

    def forward(
        self,
        points: torch.Tensor,
        labels: torch.Tensor,
        *,
        image_embedding_size: tuple[int, int] | None = None,
        masks: torch.Tensor | None = None,
    ) -> PromptEmbeddings:
        """Embed a batch of click sets and optional previous mask logits.

        Args:
            points: (B, N, 2) float ``(x, y)`` at pixel centres of the padded input (see
                :meth:`embed_points`); ``N`` may be 0.
            labels: (B, N) integer labels in {1, 0, -1}; -1 marks padding.
            image_embedding_size: ``(h, w)`` of the current image embedding (default: the
                constructor's).
            masks: optional (B, 1, 4h, 4w) previous low-resolution mask logits.

        Returns:
            :class:`PromptEmbeddings` with ``sparse`` (B, N + 1, C), ``dense`` (B, C, h, w) and
            ``valid`` (B, N + 1).
        """
        h, w = image_embedding_size or self.image_embedding_size
        _check_prompts(points, labels)
        b = points.shape[0]
        pad_label = labels.new_full((b, 1), -1)
        labels = torch.cat([labels, pad_label], dim=1)  # B x (N+1)
        points = torch.cat([points, points.new_zeros(b, 1, 2)], dim=1)  # B x (N+1) x 2
        sparse = self.embed_points(points, labels, (h, w))  # B x (N+1) x C
        valid = labels >= 0
        valid[:, -1] = True  # the appended token is part of SAM's prompt, not padding
        if masks is None:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(b, -1, h, w)  # B x C x h x w
        else:
            if masks.dim() != 4 or tuple(masks.shape) != (b, 1, 4 * h, 4 * w):
                raise ValueError(f"masks must have shape {(b, 1, 4 * h, 4 * w)}; got {tuple(masks.shape)}")
            dense = self.mask_downscaling(masks.to(self.no_mask_embed.weight.dtype))
        return PromptEmbeddings(sparse=sparse, dense=dense, valid=valid)


def _check_prompts(points: torch.Tensor, labels: torch.Tensor) -> None:
    if not isinstance(points, torch.Tensor) or not points.dtype.is_floating_point:
        raise TypeError(f"points must be a float tensor (B, N, 2); got {getattr(points, 'dtype', type(points))}")
    if points.dim() != 3 or points.shape[-1] != 2:
        raise ValueError(f"points must have shape (B, N, 2); got {tuple(points.shape)}")
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor (B, N); got {getattr(labels, 'dtype', type(labels))}")
    if tuple(labels.shape) != tuple(points.shape[:2]):
        raise ValueError(f"labels must have shape {tuple(points.shape[:2])}; got {tuple(labels.shape)}")
    # A value check reads the data: skipped while torch.export / torch.compile trace (segblocks.export).
    if labels.numel() and not torch.compiler.is_compiling() and bool(((labels < -1) | (labels > 1)).any()):
        raise ValueError(f"labels must be in {{-1, 0, 1}}; got values {torch.unique(labels).tolist()}")
