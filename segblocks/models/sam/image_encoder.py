"""SAM's image encoder: a plain ViT with windowed and global attention and a 256-d neck.

Segment Anything (Kirillov et al., ICCV 2023), §3 "Image encoder" and App. A: an MAE-pretrained
ViT on 16×16 patches whose blocks use 14×14 window attention except four evenly spaced global
blocks (ViTDet-style), with absolute and decomposed relative position embeddings (MViTv2), followed
by a 1×1 conv → LN → 3×3 conv → LN neck to 256 channels at stride 16.

Unlike the authors' code, which only accepts a 1024×1024 input because the learned absolute
embedding is added at its stored 64×64 size, any ``H, W`` multiple of 16 is accepted: the
absolute embedding is resized bicubically to the input grid and the relative tables linearly to
the needed length (the latter as in the authors' code). Checkpoints whose tables were stored at
another grid load through a pre-hook that applies the same resizing.

Details that follow the authors' code rather than the paper:

* the relative bias is ``q · R`` with the *unscaled* query added to the already scaled logits
  ``q kᵀ / √d`` (MViTv2 writes the bias inside the scaling);
* windowed blocks zero-pad the normalized tokens to a multiple of the window and let the pad
  tokens take part as keys;
* LayerNorm eps 1e-6 and no dropout / drop-path.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segblocks.layers.mlp import MLPBlock
from segblocks.layers.norm import LayerNorm2d
from segblocks.layers.patch_embed import PatchEmbed
from segblocks.layers.window import window_partition, window_unpartition

__all__ = [
    "Attention",
    "Block",
    "ViTImageEncoder",
    "decomposed_rel_pos_bias",
    "resize_pos_embed",
    "resize_rel_pos",
]


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], *, mode: str = "bicubic") -> torch.Tensor:
    """Resize a stored absolute position embedding to another token grid.

    Args:
        pos_embed: (1, Gh, Gw, C) channels-last embedding.
        grid: target ``(h, w)``.
        mode: interpolation; bicubic for SAM, bilinear for HRSAM (authors' code).

    Returns:
        (1, h, w, C); ``pos_embed`` itself when the grid already matches.
    """
    if tuple(pos_embed.shape[1:3]) == tuple(grid):
        return pos_embed
    x = pos_embed.permute(0, 3, 1, 2)  # 1 x C x Gh x Gw
    x = F.interpolate(x, size=tuple(grid), mode=mode, align_corners=False)
    return x.permute(0, 2, 3, 1)  # 1 x h x w x C


def resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """Resize a relative position table to ``length`` offsets (linear, as in the authors' code).

    Args:
        table: (L, head_dim), entry ``k`` is offset ``k - (L - 1) / 2``.
        length: target ``2 * size - 1``.

    Returns:
        (length, head_dim); ``table`` itself when the length already matches.
    """
    if table.shape[0] == length:
        return table
    x = table.t().unsqueeze(0)  # 1 x head_dim x L
    x = F.interpolate(x, size=length, mode="linear", align_corners=False)
    return x.squeeze(0).t()  # length x head_dim


def _rel_pos_lookup(table: torch.Tensor, size: int) -> torch.Tensor:
    """Table entry for every (query, key) pair along one axis of length ``size``: (size, size, head_dim)."""
    table = resize_rel_pos(table, 2 * size - 1)
    idx = torch.arange(size, device=table.device)
    offsets = idx[:, None] - idx[None, :] + size - 1  # size x size, query − key shifted to >= 0
    return table[offsets]


def decomposed_rel_pos_bias(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """Decomposed relative position bias of MViTv2 (used by SAM's ViT, App. A).

    ``bias[(qy, qx), (ky, kx)] = q · R_h[qy − ky] + q · R_w[qx − kx]`` with the unscaled query.

    Args:
        q: (B, heads, h·w, head_dim) queries, row-major over the grid.
        rel_pos_h, rel_pos_w: (Lh, head_dim), (Lw, head_dim) tables (resized to 2h−1 / 2w−1).
        grid: ``(h, w)``.

    Returns:
        (B, heads, h·w, h·w) additive attention bias.
    """
    h, w = grid
    b, n_heads, _, d = q.shape
    r_q = q.reshape(b, n_heads, h, w, d)  # B x heads x h x w x d
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, _rel_pos_lookup(rel_pos_h, h))  # B x heads x h x w x h
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, _rel_pos_lookup(rel_pos_w, w))  # B x heads x h x w x w
    bias = rel_h[..., :, None] + rel_w[..., None, :]  # B x heads x h x w x h x w
    return bias.reshape(b, n_heads, h * w, h * w)


class Attention(nn.Module):
    """Multi-head self-attention over a token grid with an optional decomposed relative bias.

    Args:
        dim: channels ``C``.
        num_heads: heads (``C`` divisible by it).
        use_rel_pos: add the decomposed relative position bias.
        rel_pos_size: grid side the relative tables are stored for (window size, or the
            pretraining grid for global blocks); tables have ``2 * rel_pos_size - 1`` rows.

    Shapes:
        x: (B, h, w, C) -> (B, h, w, C).
    """

    def __init__(self, *, dim: int, num_heads: int, use_rel_pos: bool, rel_pos_size: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim must be divisible by num_heads; got dim={dim}, num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            head_dim = dim // num_heads
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, c // self.num_heads)  # B x N x 3 x heads x d
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each B x heads x N x d
        bias = decomposed_rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w)) if self.use_rel_pos else None
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # B x heads x N x d
        x = x.transpose(1, 2).reshape(b, h, w, c)  # B x h x w x C
        return self.proj(x)


class Block(nn.Module):
    """Pre-norm transformer block with window (``window_size > 0``) or global attention.

    Args:
        dim, num_heads, mlp_ratio: width, heads and MLP expansion.
        window_size: window side ``M``; 0 for global attention.
        use_rel_pos: see :class:`Attention`.
        rel_pos_size: table size for global blocks (ignored by windowed ones, which use ``M``).

    Shapes:
        x: (B, h, w, C) -> (B, h, w, C).
    """

    def __init__(
        self, *, dim: int, num_heads: int, mlp_ratio: float, window_size: int, use_rel_pos: bool, rel_pos_size: int
    ) -> None:
        super().__init__()
        if window_size < 0:
            raise ValueError(f"window_size must be >= 0 (0 = global attention); got {window_size}")
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(
            dim=dim, num_heads=num_heads, use_rel_pos=use_rel_pos, rel_pos_size=window_size or rel_pos_size
        )
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(embedding_dim=dim, mlp_dim=int(dim * mlp_ratio), act=nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size:
            x = self._window_attention(x)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))

    def _window_attention(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        m = self.window_size
        windows = window_partition(x, m)  # B x nW x M² x C, zero tokens pad the bottom/right
        n_win = windows.shape[1]
        windows = self.attn(windows.reshape(b * n_win, m, m, c))  # (B·nW) x M x M x C
        return window_unpartition(windows.reshape(b, n_win, m * m, c), m, (h, w))  # B x h x w x C


class ViTImageEncoder(nn.Module):
    """SAM's ViT image encoder (SAM §3, App. A), for any input size that is a multiple of 16.

    Args:
        img_size: input side the absolute embedding was trained at; sets the default
            ``pretrain_grid`` (``img_size // patch_size``).
        patch_size: patch side, the output stride.
        in_chans: input channels.
        embed_dim, depth, num_heads, mlp_ratio: ViT width, blocks, heads, MLP expansion.
        out_chans: neck output channels (256 in SAM).
        window_size: window side of the non-global blocks.
        global_attn_indexes: indices of the global-attention blocks.
        use_rel_pos: add decomposed relative position biases.
        pretrain_grid: token grid side at which ``pos_embed`` and the global blocks' relative
            tables are stored (64 for the official 1024-px checkpoints).

    Shapes:
        x: (B, in_chans, H, W), ``H, W`` multiples of ``patch_size`` ->
        (B, out_chans, H / patch_size, W / patch_size).
    """

    def __init__(
        self,
        *,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        window_size: int = 14,
        global_attn_indexes: Sequence[int] = (2, 5, 8, 11),
        use_rel_pos: bool = True,
        pretrain_grid: int | None = None,
    ) -> None:
        super().__init__()
        bad = [i for i in global_attn_indexes if not 0 <= i < depth]
        if bad:
            raise ValueError(f"global_attn_indexes must lie in [0, {depth}); got {list(global_attn_indexes)}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.out_chans = out_chans
        grid = pretrain_grid if pretrain_grid is not None else img_size // patch_size
        if grid <= 0:
            raise ValueError(f"pretrain grid must be positive; got {grid} (img_size={img_size}, patch={patch_size})")
        self.patch_embed = PatchEmbed(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        # Official checkpoints store zeros here and rely on pretraining; a small random init
        # lets the encoder be trained from scratch.
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                window_size=0 if i in global_attn_indexes else window_size,
                use_rel_pos=use_rel_pos,
                rel_pos_size=grid,
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(num_channels=out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(num_channels=out_chans),
        )
        self.register_load_state_dict_pre_hook(_resize_tables_on_load)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected images (B, {self.in_chans}, H, W); got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size or h == 0 or w == 0:
            raise ValueError(f"image height and width must be positive multiples of {self.patch_size}; got {h}x{w}")
        x = self.patch_embed(x)  # B x h x w x C
        x = x + resize_pos_embed(self.pos_embed, x.shape[1:3])
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))  # B x out_chans x h x w


def _resize_tables_on_load(module: ViTImageEncoder, state_dict, prefix, *args) -> None:
    """Load-state-dict pre-hook: resize ``pos_embed`` and relative tables stored at another grid."""
    key = prefix + "pos_embed"
    if key in state_dict and state_dict[key].shape != module.pos_embed.shape:
        state_dict[key] = resize_pos_embed(state_dict[key], module.pos_embed.shape[1:3])
    for i, block in enumerate(module.blocks):
        if not block.attn.use_rel_pos:
            continue
        for name in ("rel_pos_h", "rel_pos_w"):
            key = f"{prefix}blocks.{i}.attn.{name}"
            own = getattr(block.attn, name)
            if key in state_dict and state_dict[key].shape[0] != own.shape[0]:
                state_dict[key] = resize_rel_pos(state_dict[key], own.shape[0])
