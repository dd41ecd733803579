"""Image backbones producing Mask2Former's res2..res5 feature maps (strides 4, 8, 16, 32).

Registered models: ``resnet50``, ``swin_tiny``, ``swin_small``, ``tiny_backbone``
(:func:`segblocks.models.create_model`).
"""
from .base import FEATURE_STRIDES, Backbone
from .resnet import FrozenBatchNorm2d, ResNet, ResNet50, resnet50
from .swin import SwinTransformer, swin_small, swin_tiny
from .timm_backbone import TimmBackbone
from .tiny import TinyBackbone, tiny_backbone

__all__ = [
    "FEATURE_STRIDES",
    "Backbone",
    "FrozenBatchNorm2d",
    "ResNet",
    "ResNet50",
    "SwinTransformer",
    "TimmBackbone",
    "TinyBackbone",
    "resnet50",
    "swin_small",
    "swin_tiny",
    "tiny_backbone",
]
