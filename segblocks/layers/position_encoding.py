"""2-D sine positional embedding shared by the Mask2Former pixel and transformer decoders.

The DETR-style fixed embedding used by Mask2Former (Cheng et al., CVPR 2022, §3.2 and
appendix): each of the ``y`` and ``x`` coordinates is encoded with ``num_pos_feats``
interleaved sine/cosine channels of geometrically spaced frequencies, and the two halves are
concatenated (``y`` first). With ``normalize=True`` the 1-based pixel index is divided by the
axis length and multiplied by ``scale`` (2π by default), so the embedding does not depend on the
feature map's absolute size.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["PositionEmbeddingSine"]


class PositionEmbeddingSine(nn.Module):
    """Fixed 2-D sine/cosine positional embedding.

    Args:
        num_pos_feats: channels per axis; the output has ``2 * num_pos_feats`` channels
            (``hidden_dim / 2`` in Mask2Former). Must be even (sine/cosine pairs).
        temperature: base of the frequency progression.
        normalize: divide positions by the axis length before scaling (Mask2Former: True).
        scale: range of the normalized positions; only used when ``normalize`` is True.
    """

    def __init__(
        self,
        *,
        num_pos_feats: int = 128,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float = 2 * math.pi,
    ) -> None:
        super().__init__()
        if num_pos_feats <= 0 or num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be a positive even integer, got {num_pos_feats}")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed the positions of a feature map (only its shape, device and dtype are used).

        Args:
            x: (B, C, H, W) feature map.

        Returns:
            (B, 2 * num_pos_feats, H, W) embedding in ``x``'s dtype; channels ``[:num_pos_feats]``
            encode ``y``, the rest ``x``. The batch dimension is a broadcast view (no copy).
        """
        if x.dim() != 4:
            raise ValueError(f"expected a (B, C, H, W) feature map, got shape {tuple(x.shape)}")
        b, _, h, w = x.shape
        y = torch.arange(1, h + 1, device=x.device, dtype=torch.float32)
        xs = torch.arange(1, w + 1, device=x.device, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6  # as in DETR/Mask2Former; keeps the last position just below `scale`
            y = y / (h + eps) * self.scale
            xs = xs / (w + eps) * self.scale
        idx = torch.arange(self.num_pos_feats, device=x.device, dtype=torch.float32)
        dim_t = self.temperature ** (2 * torch.div(idx, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_y = self._interleave(y[:, None] / dim_t)  # H x F
        pos_x = self._interleave(xs[:, None] / dim_t)  # W x F
        pos = torch.cat(
            [pos_y[:, None, :].expand(h, w, -1), pos_x[None, :, :].expand(h, w, -1)], dim=-1
        )  # H x W x 2F
        return pos.permute(2, 0, 1)[None].expand(b, -1, -1, -1).to(x.dtype)  # B x 2F x H x W

    @staticmethod
    def _interleave(angles: torch.Tensor) -> torch.Tensor:
        """(N, F) angles -> (N, F) with sin on even and cos on odd channels."""
        return torch.stack([angles[:, 0::2].sin(), angles[:, 1::2].cos()], dim=-1).flatten(1)  # N x F
