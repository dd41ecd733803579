"""Swin Transformer backbone (Liu et al., "Swin Transformer: Hierarchical Vision Transformer using
Shifted Windows", ICCV 2021).

Patch partition + linear embedding (§3.1), blocks pairing window attention (W-MSA) and
shifted-window attention (SW-MSA) (§3.2, Eq. 3), relative position bias (Eq. 4), cyclic shift with an
attention mask for the batched shifted windows (§3.2 "Efficient batch computation"), and patch
merging between stages (§3.1). The dense-prediction details follow the authors' detection code, which
Mask2Former uses: inputs are zero-padded to multiples of the patch size, window size and 2 (so any
H, W works), and each stage output gets its own LayerNorm (``norm0``..``norm3``).

Parameter names match the official checkpoints (``patch_embed.proj``,
``layers.{i}.blocks.{j}.attn.relative_position_bias_table``, ``layers.{i}.downsample.reduction``, ...).
Their image-size-specific ``attn_mask`` buffers are ignored (the mask is derived per input); the
classifier's ``norm``/``head`` keys are reported as unexpected.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segblocks.layers.drop_path import DropPath
from segblocks.layers.mlp import Mlp
from segblocks.layers.patch_embed import PatchEmbed
from segblocks.layers.window import window_partition, window_unpartition

from segblocks.models._registry import register_model

from .base import FEATURE_STRIDES, Backbone

__all__ = [
    "relative_position_index",
    "shifted_window_mask",
    "WindowAttention",
    "SwinBlock",
    "PatchMerging",
    "SwinTransformer",
    "swin_tiny",
    "swin_small",
]

PATCH_SIZE = 4  # res2 is at stride 4


def relative_position_index(window_size: int) -> torch.Tensor:
    """Index into the (2M−1)² bias table for every (query, key) pair of a window (Eq. 4).

    For tokens at (yq, xq) and (yk, xk): ``(yq − yk + M − 1) · (2M − 1) + (xq − xk + M − 1)``,
    the ordering of the official tables. Returns (M², M²) int64.
    """
    m = window_size
    coords = torch.stack(torch.meshgrid(torch.arange(m), torch.arange(m), indexing="ij")).flatten(1)  # 2 x M²
    rel = coords[:, :, None] - coords[:, None, :]  # 2 x M² x M² (query − key)
    return (rel[0] + m - 1) * (2 * m - 1) + (rel[1] + m - 1)


def shifted_window_mask(hp: int, wp: int, window_size: int, shift: int, device=None) -> torch.Tensor:
    """Which tokens may attend to each other inside the windows of a cyclically shifted map (§3.2).

    Rolling the padded (Hp, Wp) map by −shift moves the first ``shift`` rows/columns to the end, so
    the last window row/column mixes tokens that were not adjacent in the image. Attention is allowed
    only between tokens with the same wrapped-around status along both axes (the sub-windows of the
    paper's Fig. 4).

    Returns:
        (nW, M², M²) bool, True where the query (dim 1) may attend to the key (dim 2).
    """
    wrapped_rows = torch.arange(hp, device=device) >= hp - shift  # Hp
    wrapped_cols = torch.arange(wp, device=device) >= wp - shift  # Wp
    labels = wrapped_rows[:, None].long() * 2 + wrapped_cols[None, :].long()  # Hp x Wp
    windows = window_partition(labels[None, :, :, None], window_size)[0, :, :, 0]  # nW x M²
    return windows[:, :, None] == windows[:, None, :]  # nW x M² x M²


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with relative position bias (Eq. 4).

    ``Attention(Q, K, V) = SoftMax(QKᵀ/√d + B) V`` where B (M² × M²) is gathered from a learned
    table B̂ of shape ((2M−1)², heads) by :func:`relative_position_index`.

    Args:
        dim: channels C.
        num_heads: heads h (C must be divisible by h).
        window_size: window side M.

    Forward: windows (B, nW, M², C), optional mask (nW, M², M²) bool (True = may attend)
    → (B, nW, M², C).
    """

    def __init__(self, *, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"WindowAttention: dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.window_size = window_size
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # persistent: the official checkpoints store it (same values)
        self.register_buffer("relative_position_index", relative_position_index(window_size))

    def forward(self, windows: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, nw, n, c = windows.shape
        h = self.num_heads
        qkv = self.qkv(windows).reshape(b, nw, n, 3, h, c // h)  # B x nW x N x 3 x h x d
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # each B x nW x h x N x d
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # N² x h
        bias = bias.view(n, n, h).permute(2, 0, 1)  # h x N x N
        if mask is not None:
            bias = torch.where(mask[:, None], bias, float("-inf"))  # nW x h x N x N
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))  # B x nW x h x N x d
        return self.proj(out.transpose(2, 3).reshape(b, nw, n, c))  # B x nW x N x C


class SwinBlock(nn.Module):
    """Swin Transformer block, Eq. (3): ``ẑ = (S)W-MSA(LN(z)) + z``, ``z' = MLP(LN(ẑ)) + ẑ``.

    Args:
        dim: channels C.
        num_heads: attention heads.
        window_size: window side M.
        shift_size: 0 for W-MSA, M // 2 for SW-MSA.
        mlp_ratio: MLP hidden size / C.
        drop_path: stochastic-depth probability of both residual branches.

    Forward: x (B, H, W, C) → (B, H, W, C). The normalized map is zero-padded on the bottom/right
    to multiples of M; as in the authors' code the padded tokens remain visible as keys (only the
    shift mask restricts attention).
    """

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int = 0,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"SwinBlock: shift_size must be in [0, {window_size}), got {shift_size}")
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim=dim, num_heads=num_heads, window_size=window_size)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio))  # fc1 / fc2 as in the checkpoints

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self._window_attention(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def _window_attention(self, x: torch.Tensor) -> torch.Tensor:
        _, height, width, _ = x.shape
        m, s = self.window_size, self.shift_size
        x = F.pad(x, (0, 0, 0, -width % m, 0, -height % m))  # B x Hp x Wp x C
        hp, wp = x.shape[1:3]
        mask = None
        if s:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
            mask = shifted_window_mask(hp, wp, m, s, device=x.device)
        out = window_unpartition(self.attn(window_partition(x, m), mask), m, (hp, wp))  # B x Hp x Wp x C
        if s:
            out = torch.roll(out, shifts=(s, s), dims=(1, 2))
        return out[:, :height, :width]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "attn_mask", None)  # classification checkpoints cache it for 224×224
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class PatchMerging(nn.Module):
    """Concatenate each 2×2 neighbourhood (4C), LayerNorm, project to 2C without bias (§3.1).

    Odd sizes are zero-padded on the bottom/right (authors' detection code). Concatenation order
    (0,0), (1,0), (0,1), (1,1) as (row, col) offsets, matching the official ``reduction`` weights.

    Forward: x (B, H, W, C) → (B, ceil(H/2), ceil(W/2), 2C).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))  # B x 2h x 2w x C
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)  # B x h x w x 4C
        return self.reduction(self.norm(x))


class _SwinStage(nn.Module):
    """Blocks alternating W-MSA and SW-MSA, then optional patch merging (``layers.{i}`` in checkpoints).

    Forward: x (B, H, W, C) → (stage output (B, H, W, C), merged (B, H/2, W/2, 2C) or None).
    """

    def __init__(
        self, *, dim: int, num_heads: int, window_size: int, mlp_ratio: float, drop_path: Sequence[float], merge: bool
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim=dim,
                num_heads=num_heads,
                window_size=window_size,
                shift_size=0 if j % 2 == 0 else window_size // 2,
                mlp_ratio=mlp_ratio,
                drop_path=p,
            )
            for j, p in enumerate(drop_path)
        )
        self.downsample = PatchMerging(dim) if merge else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        for block in self.blocks:
            x = block(x)
        return x, None if self.downsample is None else self.downsample(x)


class SwinTransformer(Backbone):
    """Swin Transformer backbone returning res2..res5 with C, 2C, 4C, 8C channels.

    Defaults are Swin-T (§3.3: C = 96, layer numbers {2, 2, 6, 2}, heads 3/6/12/24, window 7,
    patch 4) with Mask2Former's drop-path rate 0.3 for Swin-T.

    Args:
        embed_dim: channels C of the first stage.
        depths: blocks per stage (4 stages).
        num_heads: attention heads per stage.
        window_size: window side M.
        mlp_ratio: MLP hidden size / channels.
        drop_path_rate: stochastic depth, increasing linearly from 0 over all blocks to this value.

    Weights: ``swin_tiny(checkpoint=...)`` (official classification files; detectron2-converted
    Mask2Former files with ``checkpoint_prefix="backbone."``).

    Forward: images (B, 3, H, W) → ``{"res2": (B, C, H/4, W/4), ..., "res5": (B, 8C, H/32, W/32)}`` (ceil).
    """

    #: The classification head and its final norm (official ImageNet files) are not part of the backbone.
    checkpoint_ignore_keys = ("head.*", "norm.*")

    def __init__(
        self,
        *,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.3,
    ) -> None:
        super().__init__()
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(f"SwinTransformer: depths and num_heads need 4 stages, got {depths} and {num_heads}")
        if window_size < 1:
            raise ValueError(f"SwinTransformer: window_size must be ≥ 1, got {window_size}")
        # patch partition + linear embedding + LN, zero-padding H, W to multiples of 4 (authors' detection code)
        self.patch_embed = PatchEmbed(patch_size=PATCH_SIZE, in_chans=3, embed_dim=embed_dim, norm=nn.LayerNorm(embed_dim), pad=True)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            start = sum(depths[:i])
            self.layers.append(
                _SwinStage(
                    dim=embed_dim * 2**i,
                    num_heads=heads,
                    window_size=window_size,
                    mlp_ratio=mlp_ratio,
                    drop_path=rates[start : start + depth],
                    merge=i < 3,
                )
            )
        for i in range(4):
            self.add_module(f"norm{i}", nn.LayerNorm(embed_dim * 2**i))
        self.out_channels = {name: embed_dim * 2**i for i, name in enumerate(FEATURE_STRIDES)}
        self.out_strides = dict(FEATURE_STRIDES)
        self.apply(_init_weights)

    def forward_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.patch_embed(images)  # B x H/4 x W/4 x C
        out = {}
        for i, (name, stage) in enumerate(zip(FEATURE_STRIDES, self.layers)):
            feature, x = stage(x)
            out[name] = getattr(self, f"norm{i}")(feature).permute(0, 3, 1, 2).contiguous()  # B x C_i x h x w
        return out


def _init_weights(module: nn.Module) -> None:
    # truncated-normal linear weights, as the authors initialise Swin
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


@register_model
def swin_tiny(**kwargs) -> SwinTransformer:
    """Swin-T (C = 96, depths 2/2/6/2, heads 3/6/12/24, window 7); ``kwargs`` override any argument."""
    return SwinTransformer(**{"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24), **kwargs})


@register_model
def swin_small(**kwargs) -> SwinTransformer:
    """Swin-S (C = 96, depths 2/2/18/2, heads 3/6/12/24, window 7); ``kwargs`` override any argument."""
    return SwinTransformer(**{"embed_dim": 96, "depths": (2, 2, 18, 2), "num_heads": (3, 6, 12, 24), **kwargs})
