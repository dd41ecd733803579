"""ResNet backbones (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, §3.3/Table 1).

Bottleneck blocks with the stride on the 3×3 convolution (the torchvision "ResNet v1.5" variant that
detectron2 and Mask2Former use with ``STRIDE_IN_1X1=False``), a 7×7 stride-2 stem and a 3×3 max-pool.
Parameter and buffer names follow torchvision's ``resnet50`` (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.downsample.0``/``.1``, ...), so a local torchvision state dict loads directly; its
``fc.*`` classifier keys are reported as unexpected.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from segblocks.models._registry import register_model

from .base import FEATURE_STRIDES, Backbone

__all__ = ["NormName", "FrozenBatchNorm2d", "make_norm", "Bottleneck", "ResNet", "ResNet50", "resnet50"]

NormName = Literal["BN", "FrozenBN", "GN"]
_STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters: a per-channel affine map.

    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias``, with all four stored as
    buffers (no gradients, no statistic updates), as detectron2's FrozenBatchNorm2d. Loading a
    BatchNorm2d state dict ignores its ``num_batches_tracked``.

    Args:
        num_features: channels C.
        eps: added to the variance.

    Forward: x (B, C, H, W) → (B, C, H, W).
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.to(x.dtype).view(1, -1, 1, 1) + shift.to(x.dtype).view(1, -1, 1, 1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)  # BatchNorm2d-only counter
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """Replace every BatchNorm2d in ``module`` (or ``module`` itself) by a frozen copy."""
        if isinstance(module, nn.BatchNorm2d):
            frozen = cls(module.num_features, eps=module.eps)
            if module.affine:
                frozen.weight.copy_(module.weight.detach())
                frozen.bias.copy_(module.bias.detach())
            if module.track_running_stats:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
            return frozen
        for name, child in module.named_children():
            new_child = cls.convert(child)
            if new_child is not child:
                setattr(module, name, new_child)
        return module

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def make_norm(norm: NormName, channels: int) -> nn.Module:
    """Normalization layer by name: ``"BN"``, ``"FrozenBN"`` or ``"GN"`` (32 groups, fewer if C isn't a multiple)."""
    if norm == "BN":
        return nn.BatchNorm2d(channels)
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if norm == "GN":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    raise ValueError(f"norm must be one of 'BN', 'FrozenBN', 'GN', got {norm!r}")


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 (stride here) → 1×1 expand, plus the (projected) identity; ReLU after the sum.

    Args:
        in_channels: input channels.
        width: channels of the 3×3 convolution (output is ``4 * width``).
        stride: spatial stride of the 3×3 convolution.
        norm: normalization layer name.

    Forward: x (B, in_channels, H, W) → (B, 4·width, ceil(H/stride), ceil(W/stride)).
    """

    expansion = 4

    def __init__(self, *, in_channels: int, width: int, stride: int = 1, norm: NormName = "FrozenBN") -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = make_norm(norm, width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = make_norm(norm, width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = make_norm(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), make_norm(norm, out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(Backbone):
    """Bottleneck ResNet backbone returning res2..res5 (256, 512, 1024, 2048 channels).

    Args:
        depth: 50, 101 or 152 (blocks per stage from He et al. Table 1).
        norm: ``"FrozenBN"`` (detectron2's default for ImageNet-initialized backbones), ``"BN"`` or ``"GN"``.
        freeze_at: 0 trains everything; k ≥ 1 freezes the stem and the first k−1 stages
            (1 = stem, 2 = stem + res2, ..., 5 = everything), as detectron2's ``FREEZE_AT``. Frozen
            parts get ``requires_grad=False`` and their BatchNorms become FrozenBatchNorm2d.

    Forward: images (B, 3, H, W) → ``{"res2": (B, 256, H/4, W/4), ..., "res5": (B, 2048, H/32, W/32)}``
    (ceil division: every convolution pads so that a stride-2 step maps n to ceil(n / 2)).
    """

    #: torchvision's ImageNet classifier is not part of the backbone (see segblocks.models.checkpoint).
    checkpoint_ignore_keys = ("fc.*",)

    def __init__(
        self,
        *,
        depth: int = 50,
        norm: NormName = "FrozenBN",
        freeze_at: int = 0,
    ) -> None:
        super().__init__()
        if depth not in _STAGE_BLOCKS:
            raise ValueError(f"ResNet: depth must be one of {sorted(_STAGE_BLOCKS)}, got {depth}")
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"ResNet: freeze_at must be in 0..5, got {freeze_at}")
        make_norm(norm, 64)  # validates the name before building anything
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = make_norm(norm, 64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = 64
        for i, num_blocks in enumerate(_STAGE_BLOCKS[depth]):
            width = 64 * 2**i
            blocks = []
            for j in range(num_blocks):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(Bottleneck(in_channels=in_channels, width=width, stride=stride, norm=norm))
                in_channels = width * Bottleneck.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.out_channels = {name: 256 * 2**i for i, name in enumerate(FEATURE_STRIDES)}
        self.out_strides = dict(FEATURE_STRIDES)
        self._init_weights()
        self._freeze(freeze_at)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _freeze(self, freeze_at: int) -> None:
        if freeze_at >= 1:
            self.bn1 = FrozenBatchNorm2d.convert(self.bn1)
            self.conv1.requires_grad_(False)
            self.bn1.requires_grad_(False)
        for i in range(1, freeze_at):
            stage = FrozenBatchNorm2d.convert(getattr(self, f"layer{i}"))
            stage.requires_grad_(False)

    def forward_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))  # B x 64 x H/4 x W/4
        out = {}
        for i, name in enumerate(FEATURE_STRIDES):
            x = getattr(self, f"layer{i + 1}")(x)
            out[name] = x
        return out


class ResNet50(ResNet):
    """ResNet-50 (23.5 M parameters without the classifier); arguments as :class:`ResNet` minus ``depth``."""

    def __init__(
        self,
        *,
        norm: NormName = "FrozenBN",
        freeze_at: int = 0,
    ) -> None:
        super().__init__(depth=50, norm=norm, freeze_at=freeze_at)


@register_model
def resnet50(*, norm: NormName = "FrozenBN", freeze_at: int = 0) -> ResNet:
    """ResNet-50 backbone (res2..res5); a torchvision ImageNet file loads with ``checkpoint=`` (its ``fc.*`` is ignored)."""
    return ResNet50(norm=norm, freeze_at=freeze_at)
