"""Registered Inter2Former presets: the paper's ViT-B model and a CPU-trainable tiny one."""
from __future__ import annotations

from segblocks.blocks.inter2former import (
    CannyNet,
    DynamicHybridAttention,
    DynamicLocalUpsampling,
    DynamicPromptEmbedding,
    HybridMoE,
)
from segblocks.models._registry import register_model
from segblocks.models.inter2former.encoder import Inter2FormerEncoder
from segblocks.models.inter2former.model import Inter2Former, Inter2FormerBlock, Inter2FormerNeck

__all__ = ["build_inter2former", "inter2former_tiny", "inter2former_vit_b"]


def build_inter2former(
    *,
    encoder: dict,
    embed_dim: int = 256,
    depth: int = 2,
    num_heads: int = 8,
    downscale: int = 8,
    code_size: int = 8,
    mlp_ratio: float = 2.0,
    num_experts: int | None = None,
    ref_dims: tuple[int, ...] = (32, 64, 128, 256),
    edge_dims: tuple[int, ...] = (4, 16, 64, 256),
    edge_blocks_per_stage: int = 2,
    dlu_threshold: float = -2.0,
    crop_norm: bool = True,
    attn_backend: str = "auto",
    moe_backend: str = "auto",
    bias_lr: float = 1e-3,
    max_update_steps: int = 100_000,
) -> Inter2Former:
    """Assemble :class:`Inter2Former` from sizes (defaults: the authors' ``configs/inter2former.py``).

    ``num_experts=None`` uses ``downscale`` experts, as the authors' neck.
    """
    experts = num_experts or downscale
    blocks = [
        Inter2FormerBlock(
            attn=DynamicHybridAttention(embed_dim=embed_dim, num_heads=num_heads, downscale=downscale,
                                        code_size=code_size, backend=attn_backend),
            ffn=HybridMoE(embed_dim=embed_dim, hidden_dim=int(mlp_ratio * embed_dim), num_experts=experts,
                          bias_lr=bias_lr, max_update_steps=max_update_steps, backend=moe_backend),
        )
        for _ in range(depth)
    ]
    return Inter2Former(
        backbone=Inter2FormerEncoder(**{"out_chans": embed_dim, **encoder}),
        edge_detector=CannyNet(dims=edge_dims, blocks_per_stage=edge_blocks_per_stage),
        neck=Inter2FormerNeck(dpe=DynamicPromptEmbedding(embed_dim=embed_dim, dims=ref_dims), blocks=blocks),
        decode_head=DynamicLocalUpsampling(embed_dim=embed_dim, threshold=dlu_threshold, crop_norm=crop_norm),
    )


@register_model
def inter2former_vit_b(**kwargs) -> Inter2Former:
    """Inter2Former-ViT-B (§4.1; authors' ``configs/inter2former.py``): HRSAM++ ViT-B encoder without
    Cycle-scan (window 16, 256² anchor scale, no drop path), 256-d decoder with 2 DHA/HMoE layers
    (32-d single-head attention, 8-bit BSQ, 8 experts of width 64), CannyNet (4, 16, 64, 256), DLU."""
    encoder = dict(drop_path_rate=0.0, anchor_size=256, **kwargs.pop("encoder", {}))
    return build_inter2former(encoder=encoder, **kwargs)


@register_model
def inter2former_tiny(**kwargs) -> Inter2Former:
    """Small CPU Inter2Former (not from the paper) for 128-256 px inputs: 64-d encoder (4 stages x 2
    blocks, window 4, 64² anchor = one 4x4-token window), 64-d decoder (2 layers, 32-d single-head
    attention, 8-bit BSQ, 4 experts of width 32), CannyNet (1, 4, 16, 64)."""
    encoder = dict(embed_dim=64, num_heads=2, blocks_per_stage=2, window_size=4, pos_embed_grid=8,
                   drop_path_rate=0.0, anchor_size=64, **kwargs.pop("encoder", {}))
    sizes = dict(embed_dim=64, num_heads=2, downscale=2, num_experts=4, ref_dims=(8, 16, 32, 64),
                 edge_dims=(1, 4, 16, 64))
    return build_inter2former(encoder=encoder, **{**sizes, **kwargs})
