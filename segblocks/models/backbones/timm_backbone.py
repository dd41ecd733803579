"""Any timm model with a ``features_only`` mode as a res2..res5 backbone (optional extra ``segblocks[timm]``).

timm is imported when the backbone is built, never by ``import segblocks``.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .base import FEATURE_STRIDES, Backbone
from segblocks.models.checkpoint import resolve_checkpoint_path

__all__ = ["TimmBackbone"]

_NAME_BY_STRIDE = {stride: name for name, stride in FEATURE_STRIDES.items()}


def _import_timm():
    try:
        import timm
    except ImportError as err:
        raise ImportError("TimmBackbone needs the optional dependency timm: pip install 'segblocks[timm]'") from err
    return timm


class TimmBackbone(Backbone):
    """Wrap ``timm.create_model(model_name, features_only=True, out_indices=...)``.

    The selected features must have reductions exactly 4, 8, 16 and 32 (e.g. ResNets, ConvNeXt,
    Swin, EfficientNet with ``out_indices=(1, 2, 3, 4)``); they become res2..res5.

    Args:
        model_name: timm model name, e.g. ``"resnet50"`` or ``"convnext_tiny"``.
        pretrained: let timm load its pretrained weights (timm's own hub/cache; segblocks
            downloads nothing itself).
        checkpoint: local weights file in the original timm model's format; it is passed to timm
            as ``pretrained_cfg_overlay=dict(file=...)``, so timm adapts it to the features-only model
            and reports key mismatches itself.
        out_indices: feature indices requested from timm.

    Forward: images (B, 3, H, W) → ``{"res2": (B, C2, H/4, W/4), ..., "res5": (B, C5, H/32, W/32)}``.

    Raises:
        ImportError: timm is not installed.
        ValueError: the selected features are not at strides 4, 8, 16, 32.
    """

    def __init__(
        self,
        *,
        model_name: str,
        pretrained: bool = False,
        checkpoint: str | None = None,
        out_indices: Sequence[int] = (0, 1, 2, 3),
    ) -> None:
        super().__init__()
        timm = _import_timm()
        kwargs = {}
        if checkpoint is not None:
            kwargs["pretrained_cfg_overlay"] = {"file": str(resolve_checkpoint_path(checkpoint))}
        self.body = timm.create_model(
            model_name,
            features_only=True,
            out_indices=tuple(out_indices),
            pretrained=pretrained or checkpoint is not None,
            **kwargs,
        )
        strides = list(self.body.feature_info.reduction())
        if sorted(strides) != sorted(FEATURE_STRIDES.values()):
            raise ValueError(
                f"TimmBackbone: {model_name} with out_indices={tuple(out_indices)} gives feature strides "
                f"{strides}; expected 4, 8, 16, 32 (choose other out_indices)"
            )
        self._names = [_NAME_BY_STRIDE[s] for s in strides]
        channels = dict(zip(self._names, self.body.feature_info.channels()))
        self.out_channels = {name: int(channels[name]) for name in FEATURE_STRIDES}
        self.out_strides = dict(FEATURE_STRIDES)

    def forward_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for name, x in zip(self._names, self.body(images)):
            channels = self.out_channels[name]
            if x.shape[1] != channels and x.shape[-1] == channels:
                x = x.permute(0, 3, 1, 2).contiguous()  # some timm transformers return B x h x w x C
            out[name] = x
        return {name: out[name] for name in FEATURE_STRIDES}
