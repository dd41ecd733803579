"""The backbone contract shared by every image backbone in segblocks.

A backbone maps normalized images (B, 3, H, W) to the four feature maps a Mask2Former-style model
consumes, named as in detectron2: ``res2``..``res5`` at strides 4, 8, 16 and 32, each of size
``ceil(H / stride) x ceil(W / stride)`` so any H, W ≥ 32 works without padding by the caller.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from segblocks.models.checkpoint import CheckpointReport, load_checkpoint

__all__ = ["FEATURE_STRIDES", "Backbone"]

FEATURE_STRIDES: dict[str, int] = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


class Backbone(nn.Module):
    """Base class: images (B, 3, H, W) → ``{"res2": (B, C2, H/4, W/4), ..., "res5": (B, C5, H/32, W/32)}``.

    Subclasses set ``out_channels`` (``{"res2": C2, ...}``) and ``out_strides`` in ``__init__``,
    implement :meth:`forward_features`. Weights load with the library's one convention: the
    registered entry functions (``create_model("resnet50", checkpoint=...)``) or
    :meth:`load_checkpoint`.
    """

    out_channels: dict[str, int]
    out_strides: dict[str, int]

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Args: images: (B, 3, H, W) floating point, already normalized.

        Returns:
            ``{name: (B, out_channels[name], ceil(H / s), ceil(W / s))}`` with ``s = out_strides[name]``.
        """
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"{type(self).__name__}: expected a tensor of images, got {type(images).__name__}")
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{type(self).__name__}: expected images (B, 3, H, W), got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"{type(self).__name__}: expected floating-point (normalized) images, got {images.dtype}")
        return self.forward_features(images)

    def forward_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Backbone-specific body of :meth:`forward` (inputs already validated)."""
        raise NotImplementedError

    def load_checkpoint(self, path: str | os.PathLike, *, prefix: str = "", strict: bool = True) -> CheckpointReport:
        """Load a local state-dict file; see :func:`segblocks.models.checkpoint.load_checkpoint`."""
        return load_checkpoint(self, path, prefix=prefix, strict=strict)
