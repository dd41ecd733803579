"""Image backbones producing Mask2Former's res2..res5 feature maps (strides 4, 8, 16, 32)."""
from .base import FEATURE_STRIDES, Backbone
from .checkpoint import load_checkpoint, read_state_dict
from .resnet import FrozenBatchNorm2d, ResNet, ResNet50
from .swin import SwinTransformer, swin_small, swin_tiny
from .timm_backbone import TimmBackbone
from .tiny import TinyBackbone

__all__ = [
    "FEATURE_STRIDES",
    "Backbone",
    "FrozenBatchNorm2d",
    "ResNet",
    "ResNet50",
    "SwinTransformer",
    "TimmBackbone",
    "TinyBackbone",
    "load_checkpoint",
    "read_state_dict",
    "swin_small",
    "swin_tiny",
]
