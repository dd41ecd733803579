"""Normalization layers for channels-first feature maps.

:class:`LayerNorm2d` is the per-pixel LayerNorm over channels of SAM's neck, prompt encoder and
mask decoder (Segment Anything, Kirillov et al., ICCV 2023, App. A; ``LayerNorm2d`` in
facebookresearch/segment-anything, ``segment_anything/modeling/common.py``, eps 1e-6). Parameter
names ``weight``/``bias`` match those checkpoints.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LayerNorm2d"]


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dimension of a channels-first map.

    ``y[b, :, i, j] = (x[b, :, i, j] - mean) / sqrt(var + eps) * weight + bias`` with the mean
    and (biased) variance over the ``C`` channels of pixel ``(i, j)``.

    Args:
        num_channels: ``C``.
        eps: variance epsilon. SAM uses 1e-6; HRSAM's output head uses ``nn.LayerNorm``'s
            default 1e-5 (authors' ``out_conv``, YouHuang67/High-Resolution-Segment-Anything,
            ``models/backbones/hrsam.py``).

    Shapes:
        x: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, *, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        if num_channels < 1 or eps <= 0:
            raise ValueError(f"LayerNorm2d: need num_channels >= 1 and eps > 0; got {num_channels}, {eps}")
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # B x H x W x C
        x = F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # B x C x H x W

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
