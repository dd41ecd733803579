"""Registered Mask2Former and PRO-SCALE models (whole models: backbone, pixel decoder, transformer decoder).

Full-size presets follow Mask2Former (Cheng et al., CVPR 2022, §4: d = 256, 8 heads, 100 queries,
9 decoder layers, 6-layer deformable encoder over res5..res3, 3×3 conv pixel embedding) and
PRO-SCALE (Aich et al., ICLR 2025, Table 1 / supp. A: the same model with the progressive encoder
(p1, p2, p3), TRC and LPE). ``*_tiny`` are the CPU demo sizes of ``recipes/pro_scale.yaml`` and
``recipes/mask2former.yaml`` (not from the papers). ``num_classes`` defaults to COCO panoptic's
133; backbones start from their initialisation (load ImageNet weights into the backbone with
``create_model("resnet50", checkpoint=...)`` and pass it as ``backbone=``).
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from segblocks.blocks.proscale import ProgressiveScaleEncoder
from segblocks.models._registry import register_model
from segblocks.models.backbones import resnet50, swin_small, swin_tiny, tiny_backbone
from segblocks.models.mask2former.model import Mask2Former, mask2former_from_parts
from segblocks.models.mask2former.pixel_decoder import MSDeformPixelDecoder

__all__ = [
    "mask2former_r50",
    "mask2former_swin_s",
    "mask2former_swin_t",
    "mask2former_tiny",
    "proscale_r50_111",
    "proscale_r50_222",
    "proscale_r50_333",
    "proscale_swin_t_333",
    "proscale_tiny",
]

_M2F_ENCODER = (0, 0, 6)  # one stage over res5 + res4 + res3 = Mask2Former's 6-layer encoder


def _full(backbone: nn.Module, *, layers: Sequence[int], proscale: bool, num_classes: int) -> Mask2Former:
    encoder = ProgressiveScaleEncoder(
        layers_per_stage=tuple(layers), d_model=256, n_heads=8, n_points=4, d_ffn=1024, token_recalibration=proscale
    )
    pixel_decoder = MSDeformPixelDecoder(
        in_channels=backbone.out_channels, encoder=encoder, pixel_embedding="lpe" if proscale else "conv",
        conv_dim=256, mask_dim=256,
    )
    return mask2former_from_parts(backbone=backbone, pixel_decoder=pixel_decoder, num_classes=num_classes)


def _tiny(backbone: nn.Module | None, *, layers: Sequence[int], proscale: bool, num_classes: int) -> Mask2Former:
    backbone = backbone if backbone is not None else tiny_backbone()
    encoder = ProgressiveScaleEncoder(
        layers_per_stage=tuple(layers), d_model=64, n_heads=4, n_points=4, d_ffn=256, token_recalibration=proscale
    )
    pixel_decoder = MSDeformPixelDecoder(
        in_channels=backbone.out_channels, encoder=encoder, pixel_embedding="lpe" if proscale else "conv",
        conv_dim=64, mask_dim=64,
    )
    return mask2former_from_parts(
        backbone=backbone, pixel_decoder=pixel_decoder, num_classes=num_classes, num_queries=16, dec_layers=6,
        hidden_dim=64, nheads=4, dim_feedforward=256,
    )


@register_model
def mask2former_r50(*, num_classes: int = 133, backbone: nn.Module | None = None) -> Mask2Former:
    """Mask2Former R50 (Cheng et al. §4): 6-layer deformable encoder, 3×3 conv pixel embedding."""
    return _full(backbone or resnet50(), layers=_M2F_ENCODER, proscale=False, num_classes=num_classes)


@register_model
def mask2former_swin_t(*, num_classes: int = 133, backbone: nn.Module | None = None) -> Mask2Former:
    """Mask2Former Swin-T (Cheng et al. §4)."""
    return _full(backbone or swin_tiny(), layers=_M2F_ENCODER, proscale=False, num_classes=num_classes)


@register_model
def mask2former_swin_s(*, num_classes: int = 133, backbone: nn.Module | None = None) -> Mask2Former:
    """Mask2Former Swin-S (Cheng et al. §4)."""
    return _full(backbone or swin_small(), layers=_M2F_ENCODER, proscale=False, num_classes=num_classes)


@register_model
def proscale_r50_111(*, num_classes: int = 133, backbone: nn.Module | None = None) -> Mask2Former:
    """PRO-SCALE (1,1,1) + TRC + LPE, R50 (PRO-SCALE Table 1)."""
    return _full(backbone or resnet50(), layers=(1, 1, 1), proscale=True, num_classes=num_classes)


@register_model
def proscale_r50_222(*, num_classes: int = 133, backbone: nn.Module | None = None) -> Mask2Former:
    """PRO-SCALE (2,2,2) + TRC + LPE, R50 (PRO-SCALE Table 1)."""
    return _full(backbone or resnet50(), layers=(2, 2, 2), proscale=True, num_classes=num_classes)


@register_model
def proscale_r50_333(*, num_classes: int = 133, backbone: nn.Module | None = None) -> Mask2Former:
    """PRO-SCALE (3,3,3) + TRC + LPE, R50 (PRO-SCALE Table 1; the authors' COCO config)."""
    return _full(backbone or resnet50(), layers=(3, 3, 3), proscale=True, num_classes=num_classes)


@register_model
def proscale_swin_t_333(*, num_classes: int = 133, backbone: nn.Module | None = None) -> Mask2Former:
    """PRO-SCALE (3,3,3) + TRC + LPE, Swin-T (PRO-SCALE Table 1)."""
    return _full(backbone or swin_tiny(), layers=(3, 3, 3), proscale=True, num_classes=num_classes)


@register_model
def proscale_tiny(*, num_classes: int = 133, backbone: nn.Module | None = None) -> Mask2Former:
    """The CPU demo of ``recipes/pro_scale.yaml``: tiny backbone, 64-d (3,3,3) + TRC + LPE, 16 queries, 6 layers."""
    return _tiny(backbone, layers=(3, 3, 3), proscale=True, num_classes=num_classes)


@register_model
def mask2former_tiny(*, num_classes: int = 133, backbone: nn.Module | None = None) -> Mask2Former:
    """The CPU demo of ``recipes/mask2former.yaml``: as :func:`proscale_tiny` with Mask2Former's encoder and conv embedding."""
    return _tiny(backbone, layers=_M2F_ENCODER, proscale=False, num_classes=num_classes)
