"""A small convolutional backbone for CPU demos and tests (not from a paper).

Five stride-2 3×3 convolutions (a stem and one per stage) give strides 2, 4, 8, 16, 32; each stage
then applies ``depths[i]`` residual basic blocks (He et al. 2016, Fig. 2). With the default widths
(32, 64, 128, 256) it has about 2 M parameters; forward + backward of a batch of four 128×128
images takes well under 0.1 s on one CPU core.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from segblocks.models._registry import register_model

from .base import FEATURE_STRIDES, Backbone
from .resnet import NormName, make_norm

__all__ = ["TinyBackbone", "tiny_backbone"]


def _conv_norm_relu(in_channels: int, out_channels: int, stride: int, norm: NormName) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        make_norm(norm, out_channels),
        nn.ReLU(inplace=True),
    )


class _BasicBlock(nn.Module):
    """conv3×3-norm-ReLU-conv3×3-norm plus identity, then ReLU. x (B, C, H, W) → (B, C, H, W)."""

    def __init__(self, channels: int, norm: NormName) -> None:
        super().__init__()
        self.conv1 = _conv_norm_relu(channels, channels, 1, norm)
        self.conv2 = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), make_norm(norm, channels))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.conv2(self.conv1(x)))


class TinyBackbone(Backbone):
    """Small conv backbone with the standard res2..res5 outputs.

    Args:
        widths: channels of res2..res5 (the stride-2 stem has ``widths[0]`` channels).
        depths: residual blocks per stage after its stride-2 convolution (0 allowed).
        norm: ``"GN"`` (default: independent of the tiny CPU batch sizes), ``"BN"`` or ``"FrozenBN"``.

    Forward: images (B, 3, H, W) → ``{"res2": (B, widths[0], H/4, W/4), ..., "res5": (B, widths[3], H/32, W/32)}``
    (ceil division).
    """

    def __init__(
        self,
        *,
        widths: Sequence[int] = (32, 64, 128, 256),
        depths: Sequence[int] = (1, 1, 1, 1),
        norm: NormName = "GN",
    ) -> None:
        super().__init__()
        if len(widths) != 4 or len(depths) != 4:
            raise ValueError(f"TinyBackbone: widths and depths need 4 stages, got {widths} and {depths}")
        if min(widths) < 1 or min(depths) < 0:
            raise ValueError(f"TinyBackbone: widths must be ≥ 1 and depths ≥ 0, got {widths} and {depths}")
        self.stem = _conv_norm_relu(3, widths[0], 2, norm)
        self.stages = nn.ModuleList()
        in_channels = widths[0]
        for width, depth in zip(widths, depths):
            self.stages.append(
                nn.Sequential(
                    _conv_norm_relu(in_channels, width, 2, norm), *(_BasicBlock(width, norm) for _ in range(depth))
                )
            )
            in_channels = width
        self.out_channels = dict(zip(FEATURE_STRIDES, (int(w) for w in widths)))
        self.out_strides = dict(FEATURE_STRIDES)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(images)  # B x widths[0] x H/2 x W/2
        out = {}
        for name, stage in zip(FEATURE_STRIDES, self.stages):
            x = stage(x)
            out[name] = x
        return out


@register_model
def tiny_backbone(
    *, widths: Sequence[int] = (32, 64, 128, 256), depths: Sequence[int] = (1, 1, 1, 1), norm: NormName = "GN"
) -> TinyBackbone:
    """The CPU demo backbone of the recipes (about 2 M parameters); arguments as :class:`TinyBackbone`."""
    return TinyBackbone(widths=widths, depths=depths, norm=norm)
