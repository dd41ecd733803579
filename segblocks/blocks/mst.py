"""MST: adaptive multi-scale tokens guided interactive segmentation (Xu et al., "MST: Adaptive
Multi-Scale Tokens Guided Interactive Segmentation", §III; authors' code hahamyt/mst,
``isegm/model/modeling/patch_embed.py``, ``adaptive_vit.py``, ``models.py``).

Blocks (each a standalone ``nn.Module`` with a shape contract):

* :class:`AdaptivePatchEmbed` — one learnable base patch kernel, resized to the other patch sizes
  by the FlexiViT pseudo-inverse resize (Beyer et al., "FlexiViT", CVPR 2023, §3.4), position
  embeddings resized per scale (§III-B "scale adaptive patch and position embedding").
* :class:`TopKTokenSelector` — Eq. 2-5: click kernel, similarity scores, top-k with a
  straight-through selection matrix.
* :class:`MultiScaleTokenBlock` — Fig. 4: scale tokens cross-attend to the base tokens (scaled
  cross-attention with the two-expert output projection), top-k selection, fusion of the small
  and large selections, base tokens cross-attend to the selection, then a standard ViT block.

Paper vs. authors' code (the defaults follow the paper; the code's choices are one argument away):

============================  =======================  ==========================================
item                          paper                    authors' code (main / 448 branch)
============================  =======================  ==========================================
patch sizes                   8, 16, 28 (§III)         8, 16, **32** (``p_sz28 = [32, 32]``)
k                             ``N // 12`` (§III-B)     ``N // 16`` (``N // 8`` on mst-224)
kernel (Eq. 2)                mean of clicked tokens   self-attention pooled, L2-normalised
score (Eq. 3)                 ``sigmoid(cos)`` as      ``(cos + 1) / 2``
                              printed; the text's
                              "maps to [0, 1]" is
                              ``(cos + 1) / 2``
scale use                     the scale with the       small ← γ·CrossAttn(small, large), base
                              higher mean top-k        attends to the small selection
                              score (§III-B)
============================  =======================  ==========================================

The score default is ``(cos + 1) / 2`` (what both the text's [0, 1] range and the code give);
``score="sigmoid"`` is the formula as printed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segblocks.layers.mlp import Mlp
from segblocks.ops._checks import check_int, check_int_sequence, check_module_dtype, check_tensor

__all__ = [
    "CODE_PATCH_SIZES",
    "PAPER_PATCH_SIZES",
    "AdaptivePatchEmbed",
    "MoEProjection",
    "MultiScaleTokenBlock",
    "ScaleTokenUpdate",
    "TokenCrossAttention",
    "TokenSelection",
    "TopKTokenSelector",
    "ViTBlock",
    "click_token_index",
    "pi_resize_kernel",
    "pi_resize_matrix",
    "resize_matrix",
]

#: Tiny / base / large patch sizes of the paper (§III: "8×8, 16×16 and 28×28").
PAPER_PATCH_SIZES = (8, 16, 28)
#: The sizes the authors' code actually uses (hahamyt/mst, ``adaptive_vit.py``: ``p_sz28 = [32, 32]``).
CODE_PATCH_SIZES = (8, 16, 32)


# ----------------------------------------------------------------------------- PI-resize
def resize_matrix(
    old: tuple[int, int], new: tuple[int, int], *, mode: str = "bicubic", antialias: bool = True,
    dtype: torch.dtype = torch.float64, device: torch.device | str | None = None,
) -> torch.Tensor:
    """The linear map ``B`` of ``F.interpolate`` from ``old`` to ``new`` (FlexiViT §3.4).

    Returns:
        ``(new_h·new_w, old_h·old_w)``: ``resize(x).flatten() == B @ x.flatten()``.
    """
    n_old = old[0] * old[1]
    basis = torch.eye(n_old, dtype=dtype, device=device).reshape(n_old, 1, *old)  # n_old x 1 x oh x ow
    out = F.interpolate(basis, size=tuple(new), mode=mode, antialias=antialias, align_corners=False)
    return out.reshape(n_old, -1).t()  # n_new x n_old


def pi_resize_matrix(old: tuple[int, int], new: tuple[int, int], **kwargs) -> torch.Tensor:
    """FlexiViT's PI-resize: ``P = pinv(Bᵀ)``, ``(n_new, n_old)``.

    The resized kernel ``ŵ = P w`` solves ``min ‖Bᵀ ŵ − w‖`` (least squares, minimum norm), so for
    upsampling (``Bᵀ`` has full row rank) ``⟨B x, ŵ⟩ = ⟨x, w⟩`` for every patch ``x``.
    """
    return torch.linalg.pinv(resize_matrix(old, new, **kwargs).t())


def pi_resize_kernel(weight: torch.Tensor, new: tuple[int, int], *, matrix: torch.Tensor | None = None) -> torch.Tensor:
    """Resize a conv kernel ``(O, I, h, w)`` to ``(O, I, new_h, new_w)`` by PI-resize (per (O, I) slice)."""
    check_tensor(weight, "weight", owner="pi_resize_kernel", shape=(None, None, None, None))
    o, i, h, w = weight.shape
    if (h, w) == tuple(new):
        return weight
    if matrix is None:
        matrix = pi_resize_matrix((h, w), tuple(new)).to(weight.dtype)
    flat = weight.reshape(o * i, h * w)  # (O·I) x n_old
    return (flat @ matrix.t().to(weight)).reshape(o, i, *new)  # O x I x new_h x new_w


class AdaptivePatchEmbed(nn.Module):
    """One base patch kernel for every patch size (MST §III-B, Fig. 3 "Adaptive Patch Embedding").

    The ``base_patch_size`` kernel (``proj.weight``, the only weights; key names as the authors'
    ``FlexiPatchEmbed``) is PI-resized to the requested size (:func:`pi_resize_matrix`, cached per
    size in float64 and cast); bias shared. :meth:`position_embedding` resizes a stored absolute
    embedding to a scale's grid (bicubic with antialiasing, as the authors' ``resize_abs_pos_embed``).

    Args:
        in_chans, embed_dim: input channels and token width ``C``.
        base_patch_size: side of the stored kernel (16).
        patch_sizes: sizes :meth:`forward` accepts (:data:`PAPER_PATCH_SIZES`; the authors' code
            uses :data:`CODE_PATCH_SIZES`, 32 instead of 28).

    Shapes:
        x: (B, in_chans, H, W) with ``H, W`` multiples of ``patch_size`` -> (B, H/p, W/p, C).
    """

    def __init__(
        self, *, in_chans: int = 3, embed_dim: int, base_patch_size: int = 16,
        patch_sizes: Sequence[int] = PAPER_PATCH_SIZES,
    ) -> None:
        super().__init__()
        check_int(in_chans, "in_chans", owner="AdaptivePatchEmbed", minimum=1)
        check_int(embed_dim, "embed_dim", owner="AdaptivePatchEmbed", minimum=1)
        check_int(base_patch_size, "base_patch_size", owner="AdaptivePatchEmbed", minimum=1)
        self.patch_sizes = check_int_sequence(patch_sizes, "patch_sizes", owner="AdaptivePatchEmbed", minimum=1)
        self.base_patch_size = base_patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=base_patch_size, stride=base_patch_size)
        self._pinv: dict[int, torch.Tensor] = {}  # patch size -> float64 P (not state: derived)

    def kernel(self, patch_size: int) -> torch.Tensor:
        """The ``(C, in_chans, p, p)`` kernel of ``patch_size`` (the stored one for the base size)."""
        p = self._check_size(patch_size)
        if p == self.base_patch_size:
            return self.proj.weight
        if p not in self._pinv:
            b = self.base_patch_size
            self._pinv[p] = pi_resize_matrix((b, b), (p, p))
        return pi_resize_kernel(self.proj.weight, (p, p), matrix=self._pinv[p].to(self.proj.weight.device))

    def forward(self, x: torch.Tensor, patch_size: int | None = None) -> torch.Tensor:
        p = self.base_patch_size if patch_size is None else self._check_size(patch_size)
        check_tensor(x, "x", owner="AdaptivePatchEmbed", shape=("B", self.proj.in_channels, "H", "W"))
        check_module_dtype(x, self, owner="AdaptivePatchEmbed")
        h, w = x.shape[-2:]
        if h % p or w % p:
            raise ValueError(f"AdaptivePatchEmbed: height and width must be multiples of the patch size {p}; got {h}x{w}")
        y = F.conv2d(x, self.kernel(p), self.proj.bias, stride=p)  # B x C x H/p x W/p
        return y.permute(0, 2, 3, 1)  # B x H/p x W/p x C

    @staticmethod
    def position_embedding(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Resize ``(1, Gh, Gw, C)`` to ``(1, h, w, C)`` (bicubic, antialiased; itself if equal)."""
        check_tensor(pos_embed, "pos_embed", owner="AdaptivePatchEmbed", shape=(1, None, None, None))
        if tuple(pos_embed.shape[1:3]) == tuple(grid):
            return pos_embed
        x = pos_embed.permute(0, 3, 1, 2)  # 1 x C x Gh x Gw
        x = F.interpolate(x, size=tuple(grid), mode="bicubic", antialias=True, align_corners=False)
        return x.permute(0, 2, 3, 1)  # 1 x h x w x C

    def _check_size(self, patch_size: int) -> int:
        p = check_int(patch_size, "patch_size", owner="AdaptivePatchEmbed", minimum=1)
        if p not in self.patch_sizes:
            raise ValueError(f"AdaptivePatchEmbed: patch_size must be one of {self.patch_sizes}; got {p}")
        return p


# ----------------------------------------------------------------------------- selector (Eq. 2-5)
def click_token_index(
    coords: torch.Tensor, labels: torch.Tensor, *, patch_size: int, grid: tuple[int, int]
) -> torch.Tensor:
    """Token index ``pos(i)`` of Eq. 2 for every positive click, -1 elsewhere.

    Args:
        coords: ``(B, P, 2)`` integer ``(y, x)`` pixels of the model input.
        labels: ``(B, P)`` 1 positive / 0 negative / -1 padding.
        patch_size: side of the tokens the index refers to.
        grid: ``(h, w)`` token grid; clicks outside it count as absent.

    Returns:
        ``(B, P)`` int64 row-major indices ``(y // p) · w + x // p`` of positive clicks; -1 for
        negative, padding and outside clicks.
    """
    check_tensor(coords, "coords", owner="click_token_index", shape=("B", "P", 2), dtype="integer")
    check_tensor(labels, "labels", owner="click_token_index", shape=("B", "P"), dtype="integer")
    p = check_int(patch_size, "patch_size", owner="click_token_index", minimum=1)
    ty, tx = coords[..., 0].div(p, rounding_mode="floor"), coords[..., 1].div(p, rounding_mode="floor")  # B x P
    inside = (ty >= 0) & (ty < grid[0]) & (tx >= 0) & (tx < grid[1])
    idx = ty * grid[1] + tx
    return torch.where((labels == 1) & inside, idx, torch.full_like(idx, -1)).long()


@dataclass(frozen=True, eq=False)
class TokenSelection:
    """Output of :class:`TopKTokenSelector` (``k`` selected out of ``N`` scale tokens).

    Attributes:
        selection: ``(B, k, N)`` straight-through matrix ``S`` of Eq. 5: forward exactly one-hot
            rows (zero rows for samples without a positive click); gradient ``∂S/∂s = one_hot``.
        index: ``(B, k)`` int64 selected token indices (descending score).
        scores: ``(B, N)`` similarity scores ``s_j`` (Eq. 3); 0 for samples without a positive click.
        topk_scores: ``(B, k)`` the selected scores.
        kernel: ``(B, C)`` ``f_kernel`` (Eq. 2); 0 for samples without a positive click.
        has_click: ``(B,)`` bool, the sample has a positive click.
    """

    selection: torch.Tensor
    index: torch.Tensor
    scores: torch.Tensor
    topk_scores: torch.Tensor
    kernel: torch.Tensor
    has_click: torch.Tensor

    def gather(self, tokens: torch.Tensor) -> torch.Tensor:
        """Eq. 5, ``f^k = S f``: ``(B, N, C) -> (B, k, C)``."""
        return torch.einsum("bkn,bnc->bkc", self.selection.to(tokens.dtype), tokens)


class TopKTokenSelector(nn.Module):
    """Similarity-based differentiable top-k token selection (MST §III-B, Eq. 2-5). No weights.

    1. Eq. 2: ``f_kernel`` = mean of the base tokens at the positive clicks (``kernel="mean"``) or
       the authors' self-attention pooling + L2 normalisation (``kernel="attention"``:
       ``normalize(mean_i softmax(T Tᵀ/√C) T)``, ``T`` the clicked tokens).
    2. Eq. 3: ``s_j = (cos(f_kernel, f_j) + 1) / 2`` (``score="affine"``) or ``sigmoid(cos)``.
    3. Eq. 4-5: top-``k`` scores, ``k = N // ratio`` (paper 12; the code 16, mst-224 8) or a fixed
       ``k``; ``S`` = one-hot rows with a straight-through estimator: forward ``one_hot``, gradient
       as if ``S = one_hot · s`` (the authors' binarisation).

    Samples without a positive click get zero scores, a zero kernel and an all-zero ``S``.

    Args:
        ratio: ``k = N // ratio`` (ignored when ``k`` is given).
        k: fixed number of selected tokens.
        kernel: ``"mean"`` (paper) or ``"attention"`` (code).
        score: ``"affine"`` or ``"sigmoid"`` (see the module docstring).

    Shapes:
        base_tokens (B, N_b, C), scale_tokens (B, N, C), click_index (B, P) int64 (-1 = none)
        -> :class:`TokenSelection`.
    """

    def __init__(
        self, *, ratio: int = 12, k: int | None = None, kernel: Literal["mean", "attention"] = "mean",
        score: Literal["affine", "sigmoid"] = "affine",
    ) -> None:
        super().__init__()
        self.ratio = check_int(ratio, "ratio", owner="TopKTokenSelector", minimum=1)
        self.k = None if k is None else check_int(k, "k", owner="TopKTokenSelector", minimum=1)
        if kernel not in ("mean", "attention"):
            raise ValueError(f"TopKTokenSelector: kernel must be 'mean' or 'attention'; got {kernel!r}")
        if score not in ("affine", "sigmoid"):
            raise ValueError(f"TopKTokenSelector: score must be 'affine' or 'sigmoid'; got {score!r}")
        self.kernel_mode, self.score_mode = kernel, score

    def num_selected(self, n: int) -> int:
        """``k`` for ``n`` scale tokens (ValueError when the grid is smaller than ``k``)."""
        k = self.k if self.k is not None else n // self.ratio
        if k < 1 or k > n:
            raise ValueError(
                f"TopKTokenSelector: a grid of {n} tokens gives k = {k} (need 1 <= k <= {n}; "
                f"{'k' if self.k is not None else f'k = N // {self.ratio}'}); use a larger input or a smaller ratio/k"
            )
        return k

    def click_kernel(self, base_tokens: torch.Tensor, click_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 2: ``(B, C)`` kernel and ``(B,)`` has-click mask."""
        valid = click_index >= 0  # B x P
        ids = click_index.clamp(min=0)
        tokens = torch.gather(base_tokens, 1, ids[..., None].expand(-1, -1, base_tokens.shape[-1]))  # B x P x C
        has = valid.any(1)
        w = valid.to(base_tokens.dtype)  # B x P
        if self.kernel_mode == "mean":
            kernel = (tokens * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp(min=1)  # B x C
        else:
            logits = tokens @ tokens.transpose(1, 2) / math.sqrt(tokens.shape[-1])  # B x P x P
            logits = logits.masked_fill(~valid[:, None, :], float("-inf"))
            attn = torch.nan_to_num(logits.softmax(-1))  # rows of samples without clicks are all -inf
            pooled = attn @ tokens  # B x P x C
            kernel = (pooled * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp(min=1)  # B x C
            kernel = F.normalize(kernel, dim=-1)
        return kernel * has[:, None].to(kernel.dtype), has

    def forward(self, base_tokens: torch.Tensor, scale_tokens: torch.Tensor, click_index: torch.Tensor) -> TokenSelection:
        check_tensor(base_tokens, "base_tokens", owner="TopKTokenSelector", shape=("B", None, "C"))
        check_tensor(scale_tokens, "scale_tokens", owner="TopKTokenSelector", shape=("B", None, "C"))
        check_tensor(click_index, "click_index", owner="TopKTokenSelector", shape=("B", None), dtype="integer")
        if base_tokens.shape[0] != scale_tokens.shape[0] or base_tokens.shape[0] != click_index.shape[0] \
                or base_tokens.shape[-1] != scale_tokens.shape[-1]:
            raise ValueError(
                f"TopKTokenSelector: base_tokens (B, N_b, C), scale_tokens (B, N, C) and click_index (B, P) must "
                f"share B and C; got {tuple(base_tokens.shape)}, {tuple(scale_tokens.shape)}, {tuple(click_index.shape)}"
            )
        B, N, _ = scale_tokens.shape
        k = self.num_selected(N)
        kernel, has = self.click_kernel(base_tokens, click_index)  # B x C, B
        cos = F.cosine_similarity(scale_tokens, kernel[:, None, :], dim=-1)  # B x N
        scores = (cos + 1) / 2 if self.score_mode == "affine" else torch.sigmoid(cos)
        scores = scores * has[:, None].to(scores.dtype)
        topk_scores, index = scores.topk(k, dim=-1)  # B x k
        one_hot = F.one_hot(index, N).to(scores.dtype)  # B x k x N
        soft = one_hot * topk_scores[..., None]
        selection = (soft + (one_hot - soft).detach()) * has[:, None, None].to(scores.dtype)  # straight-through
        return TokenSelection(selection=selection, index=index, scores=scores, topk_scores=topk_scores,
                              kernel=kernel, has_click=has)


# ----------------------------------------------------------------------------- attention pieces
class MoEProjection(nn.Module):
    """Two-expert output projection of the scaled cross-attention (authors' ``MoEMlp``): the small
    (tiny) tokens go through ``expert_s``, the large ones through ``expert_l`` (each
    Linear → GELU → Linear, hidden ``hidden_dim``).

    Shapes:
        x: (B, N, C), expert 0 (small) or 1 (large) -> (B, N, C).
    """

    def __init__(self, *, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.expert_s = nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, dim))
        self.expert_l = nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, dim))

    def forward(self, x: torch.Tensor, expert: int) -> torch.Tensor:
        if expert not in (0, 1):
            raise ValueError(f"MoEProjection: expert must be 0 (small) or 1 (large); got {expert!r}")
        return (self.expert_s if expert == 0 else self.expert_l)(x)


class TokenCrossAttention(nn.Module):
    """Multi-head cross-attention ``x ← Attn(q(x), kv(y))`` with optional spatial reduction of ``y``
    (PVT/SegFormer "scaled" attention: a ``sr_ratio`` strided conv + LayerNorm on the ``y`` grid,
    MST Fig. 4 "Scaled Cross Attention") and an optional key mask. Key names as the authors'
    ``CrossAttention`` / ``MoECrossAttention`` (``q``, ``kv``, ``proj``, ``sr``, ``norm``).

    Args:
        dim, num_heads: width and heads.
        qkv_bias: biases of ``q`` and ``kv`` (the authors: none).
        sr_ratio: spatial reduction of ``y`` (1: none).
        moe_hidden: hidden width of a :class:`MoEProjection` output projection (None: a Linear).

    Shapes:
        x (B, N, C), y (B, M, C) [(B, h·w, C) with ``y_grid=(h, w)`` when ``sr_ratio > 1``],
        key_mask (B, M) bool (True = attend; every row needs one True) -> (B, N, C).
    """

    def __init__(
        self, *, dim: int, num_heads: int, qkv_bias: bool = False, sr_ratio: int = 1, moe_hidden: int | None = None
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"TokenCrossAttention: dim must be divisible by num_heads; got {dim}, {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim) if moe_hidden is None else MoEProjection(dim=dim, hidden_dim=moe_hidden)
        self.sr_ratio = check_int(sr_ratio, "sr_ratio", owner="TokenCrossAttention", minimum=1)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, *, y_grid: tuple[int, int] | None = None,
        key_mask: torch.Tensor | None = None, expert: int | None = None,
    ) -> torch.Tensor:
        B, N, C = x.shape
        if self.sr_ratio > 1:
            if y_grid is None or y_grid[0] * y_grid[1] != y.shape[1]:
                raise ValueError(f"TokenCrossAttention: sr_ratio > 1 needs y_grid (h, w) with h·w = {y.shape[1]}; got {y_grid}")
            g = y.transpose(1, 2).reshape(B, C, *y_grid)  # B x C x h x w
            y = self.norm(self.sr(g).flatten(2).transpose(1, 2))  # B x M' x C
        d = C // self.num_heads
        q = self.q(x).reshape(B, N, self.num_heads, d).transpose(1, 2)  # B x heads x N x d
        k, v = self.kv(y).reshape(B, y.shape[1], 2, self.num_heads, d).permute(2, 0, 3, 1, 4).unbind(0)  # B x heads x M x d
        mask = None if key_mask is None else key_mask[:, None, None, :]  # B x 1 x 1 x M
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # B x heads x N x d
        out = out.transpose(1, 2).reshape(B, N, C)  # B x N x C
        return self.proj(out) if isinstance(self.proj, nn.Linear) else self.proj(out, expert)


class _SelfAttention(nn.Module):
    """ViT multi-head self-attention with the timm / SimpleClick key names (``qkv``, ``proj``)."""

    def __init__(self, *, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"ViTBlock: dim must be divisible by num_heads; got {dim}, {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # B x heads x N x d
        return self.proj(out.transpose(1, 2).reshape(B, N, C))  # B x N x C


class ViTBlock(nn.Module):
    """Pre-norm ViT block (Dosovitskiy et al., ICLR 2021, Eq. 2-3), SimpleClick / MAE key names
    (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``), LN eps 1e-6.

    Shapes:
        x: (B, N, C) -> (B, N, C).
    """

    def __init__(self, *, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True) -> None:
        super().__init__()
        check_int(dim, "dim", owner=type(self).__name__, minimum=1)
        check_int(num_heads, "num_heads", owner=type(self).__name__, minimum=1)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _SelfAttention(dim=dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio))

    def vit_forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", owner=type(self).__name__, shape=("B", "N", self.norm1.normalized_shape[0]))
        return self.vit_forward(x)


class ScaleTokenUpdate(nn.Module):
    """Scale tokens attend to the base tokens before scoring (Fig. 4 "Scaled Cross Attention";
    the authors' ``ScoreBlock`` weights, shared by both scales, experts apart)::

        f_j ← f_j + CrossAttn_sr(LN1(f_j), LN2(f_b); expert_j);   f_j ← f_j + MLP(LN3(f_j))

    Shapes:
        base (B, h·w, C) with ``base_grid = (h, w)``, tokens (B, N, C), expert 0/1 -> (B, N, C).
    """

    def __init__(self, *, dim: int, num_heads: int = 4, sr_ratio: int = 4, mlp_hidden: int | None = None) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.cross_attn = TokenCrossAttention(dim=dim, num_heads=num_heads, sr_ratio=sr_ratio, moe_hidden=dim)
        self.cross_mlp = Mlp(in_features=dim, hidden_features=mlp_hidden or dim)

    def forward(self, base: torch.Tensor, base_grid: tuple[int, int], tokens: torch.Tensor, expert: int) -> torch.Tensor:
        tokens = tokens + self.cross_attn(self.norm1(tokens), self.norm2(base), y_grid=base_grid, expert=expert)
        return tokens + self.cross_mlp(self.norm3(tokens))


# ----------------------------------------------------------------------------- MST block (Fig. 4)
class MultiScaleTokenBlock(ViTBlock):
    """MST block (Fig. 4): multi-scale token selection and fusion around a standard ViT block.

    With base tokens ``f_b`` (16 px) and the small / large scale tokens ``f_t``, ``f_l`` with their
    position embeddings ``p_t``, ``p_l``:

    1. ``f_j ← ScaleTokenUpdate(f_b, f_j)`` for ``j ∈ {t, l}`` (returned: the next MST block uses them);
    2. ``S_j`` = :class:`TopKTokenSelector` on ``f_j`` (Eq. 2-5); selected ``g_j = S_j f_j + S_j p_j``;
    3. fusion (``fusion``):

       * ``"code"`` (authors): ``g = g_t + γ ⊙ CrossAttn(LN6 g_t, LN7 g_l)`` (2 heads), then
         ``f_b ← f_b + γ₂ ⊙ CrossAttn(LN3 f_b, LN4 g)`` (4 heads);
       * ``"paper"`` (§III-B): per sample the scale with the higher mean top-k score;
         ``f_b ← f_b + γ₂ ⊙ CrossAttn(LN3 f_b, LN4 g_chosen)`` (masked attention over
         ``[g_t, g_l]``);

       samples without a positive click keep ``f_b`` unchanged here (the authors instead attend
       to an all-zero selection);
    4. the ViT block (``norm1``/``attn``/``norm2``/``mlp``).

    Key names follow the authors' ``Block(use_score=True)`` (``score.*``, ``norm3``, ``norm4``,
    ``score_cross_attn``, ``norm6``, ``norm7``, ``score_l_s``, ``gamma``, ``gamma2``).

    Args:
        dim, num_heads, mlp_ratio, qkv_bias: the ViT block.
        selector: the :class:`TopKTokenSelector` (default: the paper's).
        fusion: ``"paper"`` or ``"code"`` (see above).
        sr_ratio: spatial reduction of the base tokens in step 1 (4 in the 448 code; 1 on mst-224).
        gamma_init: initial ``γ``, ``γ₂`` (1 in the 448 code; 0 on mst-224).

    Shapes:
        x (B, h, w, C) base tokens; scales = ((f_t (B, N_t, C), p_t (1 or B, N_t, C)),
        (f_l (B, N_l, C), p_l)); click_index (B, P) int64 base-token indices of positive clicks
        (-1 = none; :func:`click_token_index`) -> (x (B, h, w, C), updated scales, aux dict with
        ``selection_t``/``selection_l`` (:class:`TokenSelection`) and ``selected_t``/``selected_l``
        (B, k_j, C)).
    """

    def __init__(
        self, *, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
        selector: TopKTokenSelector | None = None, fusion: Literal["paper", "code"] = "paper", sr_ratio: int = 4,
        gamma_init: float = 1.0, score_heads: int = 4, base_heads: int = 4, fuse_heads: int = 2,
    ) -> None:
        super().__init__(dim=dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias)
        if fusion not in ("paper", "code"):
            raise ValueError(f"MultiScaleTokenBlock: fusion must be 'paper' or 'code'; got {fusion!r}")
        self.fusion = fusion
        self.selector = selector if selector is not None else TopKTokenSelector()
        self.score = ScaleTokenUpdate(dim=dim, num_heads=score_heads, sr_ratio=sr_ratio)
        self.norm3, self.norm4 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.score_cross_attn = TokenCrossAttention(dim=dim, num_heads=base_heads)
        if fusion == "code":
            self.norm6, self.norm7 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
            self.score_l_s = TokenCrossAttention(dim=dim, num_heads=fuse_heads)
            self.gamma = nn.Parameter(torch.full((1, 1, dim), float(gamma_init)))
        self.gamma2 = nn.Parameter(torch.full((1, 1, dim), float(gamma_init)))

    def forward(self, x: torch.Tensor, scales: Sequence, click_index: torch.Tensor):
        C = self.norm1.normalized_shape[0]
        check_tensor(x, "x", owner="MultiScaleTokenBlock", shape=("B", "h", "w", C))
        check_module_dtype(x, self, owner="MultiScaleTokenBlock")
        if len(scales) != 2:
            raise ValueError(f"MultiScaleTokenBlock: scales must be ((tokens_t, pos_t), (tokens_l, pos_l)); got {len(scales)} entries")
        B, h, w, _ = x.shape
        for name, (tok, pos) in zip(("small", "large"), scales):
            check_tensor(tok, f"{name} tokens", owner="MultiScaleTokenBlock", shape=(B, None, C))
            check_tensor(pos, f"{name} position embedding", owner="MultiScaleTokenBlock", shape=(None, tok.shape[1], C))
        base = x.reshape(B, h * w, C)  # B x N_b x C
        new_scales, selected, sels = [], [], []
        for expert, (tok, pos) in enumerate(scales):
            tok = self.score(base, (h, w), tok, expert)  # B x N_j x C
            sel = self.selector(base, tok, click_index)
            selected.append(sel.gather(tok) + sel.gather(pos.expand(B, -1, -1)))  # B x k_j x C
            new_scales.append((tok, pos))
            sels.append(sel)
        has = sels[0].has_click[:, None, None].to(x.dtype)  # B x 1 x 1
        if self.fusion == "code":
            g = selected[0] + self.score_l_s(self.norm6(selected[0]), self.norm7(selected[1])) * self.gamma
            upd = self.score_cross_attn(self.norm3(base), self.norm4(g))
        else:
            small_wins = sels[0].topk_scores.mean(1) >= sels[1].topk_scores.mean(1)  # B
            keys = torch.cat(selected, 1)  # B x (k_t + k_l) x C
            k_t, k_l = selected[0].shape[1], selected[1].shape[1]
            key_mask = torch.cat([small_wins[:, None].expand(B, k_t), ~small_wins[:, None].expand(B, k_l)], 1)
            upd = self.score_cross_attn(self.norm3(base), self.norm4(keys), key_mask=key_mask)
        base = base + upd * self.gamma2 * has
        out = self.vit_forward(base).reshape(B, h, w, C)  # B x h x w x C
        aux = {"selection_t": sels[0], "selection_l": sels[1], "selected_t": selected[0], "selected_l": selected[1]}
        return out, new_scales, aux
