"""HRSAM's local attention: Flexible Local Attention with KV-only padding and 2-D RoPE, Flash Swin.

Huang et al., "HRSAM / HRSAM++" (seed 002). Flexible Local Attention (FLA, §3.2, Eq. 2-4)
turns any window partition into one block-diagonal attention call: reorder the tokens with an
index map ``I`` so every window is a contiguous segment (Eq. 2-3), attend within segments
(Eq. 4, ``varlen_attention``), reorder back with ``I^-1``. Flash Swin (§3.3, Eq. 5-8, App. A
Eq. 11-15) is FLA with Swin's (shifted) windows: a shifted window map pads ``(k - s) % k``
virtual tokens on the top/left and drops them from the queries, so boundary windows are simply
shorter segments and no ``O(N^2)`` shift mask is needed. KV-only padding (§3.4, App. B Eq.
16-17) gives every window exactly ``k^2`` keys/values: the virtual positions point at one
learnable pad token appended to the sequence; queries stay the real tokens only. Multi-scale
inputs (HRSAM++, §3.6, App. C Eq. 19) are windowed per scale and share the pad token.

Where the paper is silent we follow the authors' code (project notes official_code_facts
§1.2, §2.2): the pad token is a ``zeros(1, C)`` parameter appended to the (already
normalised) tokens *before* ``qkv``, so the pad key/value are learned projections; RoPE
(:mod:`segblocks.layers.rope`) rotates queries and keys by their *padded-grid* coordinates
(top/left padding included, pads at their own positions); a scale that fits in one window is
never shifted. The index maps come from :mod:`segblocks.ops.fla_mapping`.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from segblocks.layers.rope import VisionRotaryEmbedding2d
from segblocks.ops.fla_mapping import multi_scale_kv_padding_mapping, multi_scale_mapping
from segblocks.ops.varlen_attention import varlen_attention

__all__ = ["FlashSwinAttention", "FlexibleLocalAttention"]


def _check_shapes(shapes: Sequence[tuple[int, int]], n: int) -> tuple[tuple[int, int], ...]:
    try:
        shapes = tuple((int(h), int(w)) for h, w in shapes)
    except (TypeError, ValueError):
        raise ValueError(f"shapes must be a sequence of (h, w) pairs, got {shapes!r}") from None
    if not shapes or any(h < 1 or w < 1 for h, w in shapes):
        raise ValueError(f"shapes must be a non-empty sequence of (h, w) with h, w >= 1, got {shapes}")
    total = sum(h * w for h, w in shapes)
    if total != n:
        raise ValueError(f"shapes {shapes} hold {total} tokens but x has N={n}")
    return shapes


class FlexibleLocalAttention(nn.Module):
    """Shifted-window multi-head attention under FLA with optional KV-only padding and 2-D RoPE.

    For the tokens ``X`` of every window ``i`` (Eq. 3) with ``Q, K, V = X W_qkv``::

        Y^i = softmax(RoPE(Q^i) RoPE(K^i)^T / sqrt(d)) V^i      (Eq. 1 per window, Eq. 4)

    where ``Q^i`` are the window's real tokens and ``K^i, V^i`` are either the same tokens
    (plain block-diagonal attention) or, with KV-only padding, all ``k^2`` window positions, the
    virtual ones being the projected pad token (§3.4, Eq. 16-17). The output is reordered back
    (``I^-1``) and projected.

    Args:
        dim: channels ``C``.
        num_heads: heads (``C`` divisible by it; with RoPE the head dim must be divisible by 4).
        window_size: window side ``k``.
        shift: shift ``s`` in ``[0, k)``; top/left padding ``(k - s) % k`` (Eq. 7-8).
        kv_padding: KV-only padding with a learnable pad token (§3.4).
        rope: 2-D RoPE on queries and keys (§3.1; authors' layout, ``theta = 1e4``, positions
            x 0.5).
        qkv_bias: bias of the ``qkv`` projection.
        backend: ``varlen_attention`` backend (``"auto"``, ``"xformers"``, ``"triton"``,
            ``"flex"``, ``"padded"``, ``"sdpa"``, ``"reference"``); may be changed on the instance.

    Forward:
        x: ``(B, N, C)`` tokens, per sample the scales one after the other, each row-major.
        shapes: ``[(h_1, w_1), ...]`` token grid per scale, ``N = sum(h_l * w_l)``.
        Returns ``(B, N, C)``.
    """

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        window_size: int,
        shift: int = 0,
        kv_padding: bool = True,
        rope: bool = True,
        qkv_bias: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if dim < 1 or num_heads < 1 or dim % num_heads:
            raise ValueError(f"dim ({dim}) must be a positive multiple of num_heads ({num_heads})")
        if window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {window_size}")
        if not 0 <= shift < window_size:
            raise ValueError(f"shift must be in [0, window_size) = [0, {window_size}), got {shift}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = window_size
        self.shift = shift
        self.backend = backend
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        # Authors' init: zeros, i.e. the pad key/value start as the qkv bias.
        self.pad_token = nn.Parameter(torch.zeros(1, dim)) if kv_padding else None
        self.rope = VisionRotaryEmbedding2d(head_dim=self.head_dim) if rope else None

    @property
    def kv_padding(self) -> bool:
        return self.pad_token is not None

    def forward(self, x: torch.Tensor, shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating point tensor, got {getattr(x, 'dtype', type(x))}")
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be (B, N, C={self.dim}), got shape {tuple(x.shape)}")
        b, n, c = x.shape
        shapes = _check_shapes(shapes, n)
        if b == 0:
            return self.proj(x)  # no samples: nothing attends, keep the graph and dtype
        make = multi_scale_kv_padding_mapping if self.kv_padding else multi_scale_mapping
        m = make(shapes, self.window_size, self.shift, batch=b, device=x.device)
        tokens = x.reshape(b * n, c)  # BN x C, global index b * N + offset + y * w + x
        if self.kv_padding:
            tokens = torch.cat([tokens, self.pad_token.to(x.dtype)])  # (BN + 1) x C, pad at index BN
        q, k, v = self.qkv(tokens).reshape(-1, 3, self.num_heads, self.head_dim).unbind(1)  # each T x H x D
        kv_indices, kv_coords = (m.kv_indices, m.kv_coords) if self.kv_padding else (m.q_indices, m.q_coords)
        q, k, v = q[m.q_indices], k[kv_indices], v[kv_indices]  # window order: Nq / Nkv x H x D
        if self.rope is not None:
            q, k = self.rope(q, m.q_coords), self.rope(k, kv_coords)
        out = varlen_attention(q, k, v, m.seqlens, backend=self.backend)  # Nq x H x D
        out = out[m.inv_indices].reshape(b, n, c)  # back to token order: B x N x C
        return self.proj(out)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}, shift={self.shift}, "
            f"kv_padding={self.kv_padding}, rope={self.rope is not None}, backend={self.backend!r}"
        )


class FlashSwinAttention(FlexibleLocalAttention):
    """Flash Swin (HRSAM §3.3): FLA over Swin's plain (``s = 0``) or shifted (``s = k/2``) windows.

    With ``kv_padding=False, rope=False`` it computes the same as classic shifted-window
    attention (Swin's cyclic shift + attention mask, zero padding to a multiple of ``k`` excluded
    from the keys, no relative-position bias): for any grid larger than one window, real tokens
    are grouped identically (window boundaries at ``y, x = s mod k``) — see
    ``tests/test_hrsam_attention.py``. A grid that fits in one window is not shifted (authors'
    code), i.e. it matches Swin with ``shift = 0`` there. HRSAM itself uses it with KV-only
    padding and RoPE (the defaults).

    HRSAM alternates the shift across an encoder's blocks (Fig. 2: "Alternating Flash Swin
    modules apply shifts of 0 and 8 tokens"; authors' code: even blocks 0, odd blocks ``k/2``)::

        attns = [FlashSwinAttention(dim=768, num_heads=12, window_size=16, shift=0 if i % 2 == 0 else None)
                 for i in range(12)]

    Args:
        shift: ``None`` (default) for the shifted window ``k // 2`` or ``0`` for plain windows.
        dim, num_heads, window_size, kv_padding, rope, qkv_bias, backend: as in
            :class:`FlexibleLocalAttention`.
    """

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        window_size: int,
        shift: int | None = None,
        kv_padding: bool = True,
        rope: bool = True,
        qkv_bias: bool = True,
        backend: str = "auto",
    ) -> None:
        if window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {window_size}")
        shift = window_size // 2 if shift is None else shift
        if shift not in (0, window_size // 2):
            raise ValueError(f"Flash Swin shift must be None, 0 or window_size // 2 = {window_size // 2}, got {shift}")
        super().__init__(
            dim=dim,
            num_heads=num_heads,
            window_size=window_size,
            shift=shift,
            kv_padding=kv_padding,
            rope=rope,
            qkv_bias=qkv_bias,
            backend=backend,
        )
