"""HRSAM's local attention: Flexible Local Attention with KV-only padding and 2-D RoPE, Flash Swin.

Huang et al., "HRSAM: Efficient Interactive Segmentation in High-Resolution Images". Flexible Local Attention (FLA, §3.2, Eq. 2-4)
turns any window partition into one block-diagonal attention call: reorder the tokens with an
index map ``I`` so every window is a contiguous segment (Eq. 2-3), attend within segments
(Eq. 4, ``varlen_attention``), reorder back with ``I^-1``. Flash Swin (§3.3, Eq. 5-8, App. A
Eq. 11-15) is FLA with Swin's (shifted) windows: a shifted window map pads ``(k - s) % k``
virtual tokens on the top/left and drops them from the queries, so boundary windows are simply
shorter segments and no ``O(N^2)`` shift mask is needed. KV-only padding (§3.4, App. B Eq.
16-17) gives every window exactly ``k^2`` keys/values: the virtual positions point at one
learnable pad token appended to the sequence; queries stay the real tokens only. Multi-scale
inputs (HRSAM++, §3.6, App. C Eq. 19) are windowed per scale and share the pad token.

Where the paper is silent we follow the authors' code (YouHuang67/High-Resolution-Segment-Anything,
``models/backbones/hrsam.py``, and the same attention in YouHuang67/inter2former,
``inter2former/backbones/hrsam_no_ssm.py``): the pad token is a ``zeros(1, C)`` parameter
appended to the (already normalised) tokens *before* ``qkv``, so the pad key/value are learned
projections; RoPE (:mod:`segblocks.layers.rope`) rotates queries and keys by their
*padded-grid* coordinates (top/left padding included, pads at their own positions).

A scale that fits in one window: ``shift_single_window=True`` (default) shifts it like every
other scale, as HRSAM's App. A Listing 1 and its code do; ``False`` keeps it one unshifted
window, the rule of Inter2Former's backbone (see :mod:`segblocks.ops.fla_mapping`). The index
maps come from :mod:`segblocks.ops.fla_mapping`.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segblocks.layers.rope import VisionRotaryEmbedding2d, apply_rope_2d, rope_2d_tables
from segblocks.ops._checks import check_int, check_int_pairs, check_module_dtype, check_tensor
from segblocks.ops.fla_mapping import FLAMapping, multi_scale_kv_padding_mapping, multi_scale_mapping
from segblocks.ops.varlen_attention import SeqLens, varlen_attention
from segblocks.ops.varlen_attention.grouped import group_segments, permute_rows

__all__ = ["FlashSwinAttention", "FlexibleLocalAttention"]


def _check_shapes(shapes: Sequence[tuple[int, int]], n: int, owner: str) -> tuple[tuple[int, int], ...]:
    shapes = check_int_pairs(shapes, "shapes", owner=owner, minimum=1)
    total = sum(h * w for h, w in shapes)
    if total != n:
        raise ValueError(f"{owner}: shapes {shapes} hold {total} tokens but x has N={n}")
    return shapes


class _WindowOrder(NamedTuple):
    """An FLA mapping with its windows sorted by shape (equal ``(Lq, Lkv)`` adjacent).

    The attention is the same (windows are independent); the order lets the ``grouped``
    varlen backend batch each shape without a permutation of its own, and it is composed into
    the one token gather the block does anyway (tokens, not ``q``/``k``/``v``, are reordered).

    Attributes:
        q_indices, inv_indices: ``(N,)`` token order -> window order and back (permutations).
        q_coords: ``(N, 2)`` padded-grid coordinates of the queries in window order.
        kv_local: ``(Nkv,)`` rows of ``cat([tokens in window order, pad])`` per key slot (pad
            slots -> ``N``), or None without KV-only padding (the keys are the queries).
        kv_coords: ``(Nkv, 2)`` or None.
        seqlens: the reordered :class:`SeqLens`.
    """

    q_indices: torch.Tensor
    inv_indices: torch.Tensor
    q_coords: torch.Tensor
    kv_local: torch.Tensor | None
    kv_coords: torch.Tensor | None
    seqlens: SeqLens


#: Window orders per geometry (FLA mapping arguments + device), at most ``_ORDERS_MAX`` entries.
#: Dynamo inlines ``functools.lru_cache`` functions (retracing the mapping construction), but
#: reads a hit in a plain dict as constants, so a compiled block has no graph break once the
#: geometry has been seen by one eager call.
_ORDERS: dict = {}
_ORDERS_MAX = 64


def _window_order(m: FLAMapping) -> _WindowOrder:
    """``m`` with its windows grouped by shape; cached on ``m.seqlens`` (``m`` itself is cached)."""

    def build() -> _WindowOrder:
        g = group_segments(m.seqlens)
        q_indices = m.q_indices[g.q_rows]  # N
        inv = torch.empty_like(q_indices)
        inv[q_indices] = torch.arange(q_indices.numel(), device=q_indices.device)
        kv_local = kv_coords = None
        if m.kv_indices is not None:
            position = torch.cat([inv, inv.new_full((1,), m.num_tokens)])  # token (pad = N) -> window-order row
            kv_local = position[m.kv_indices[g.kv_rows]]  # Nkv
            kv_coords = m.kv_coords[g.kv_rows]  # Nkv x 2
        return _WindowOrder(q_indices, inv, m.q_coords[g.q_rows], kv_local, kv_coords, g.seqlens)

    return m.seqlens.cached("flash_swin_window_order", build)


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
        shift_single_window: also shift a scale that fits in one window (``h, w <= k``): True as
            HRSAM's Listing 1 and code; False keeps it one window (Inter2Former's code).
        kv_padding: KV-only padding with a learnable pad token (§3.4).
        rope: 2-D RoPE on queries and keys (§3.1; authors' layout, ``theta = 1e4``, positions
            x 0.5).
        qkv_bias: bias of the ``qkv`` projection.
        backend: ``varlen_attention`` backend (``"auto"``, ``"xformers"``, ``"triton"``,
            ``"flex"``, ``"grouped"``, ``"padded"``, ``"sdpa"``, ``"reference"``); may be changed on
            the instance.

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
        shift_single_window: bool = True,
        kv_padding: bool = True,
        rope: bool = True,
        qkv_bias: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        dim = check_int(dim, "dim", owner=owner)
        num_heads = check_int(num_heads, "num_heads", owner=owner)
        if dim < 1 or num_heads < 1 or dim % num_heads:
            raise ValueError(f"{owner}: dim ({dim}) must be a positive multiple of num_heads ({num_heads})")
        window_size = check_int(window_size, "window_size", owner=owner)
        if window_size < 1:
            raise ValueError(f"{owner}: window_size must be >= 1, got {window_size}")
        shift = check_int(shift, "shift", owner=owner)
        if not 0 <= shift < window_size:
            raise ValueError(f"{owner}: shift must be in [0, window_size) = [0, {window_size}), got {shift}")
        if not isinstance(shift_single_window, bool):
            raise TypeError(f"{owner}: shift_single_window must be a bool, got {shift_single_window!r}")
        self.shift_single_window = shift_single_window
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
        owner = type(self).__name__
        b, n, c = check_tensor(x, "x", owner=owner, shape=("B", "N", ("C", self.dim)))
        check_module_dtype(x, self, owner=owner)
        shapes = _check_shapes(shapes, n, owner)
        if b == 0:
            return self.proj(x)  # no samples: nothing attends, keep the graph and dtype
        key = (self.kv_padding, shapes, self.window_size, self.shift, b, self.shift_single_window, x.device)
        o = _ORDERS.get(key)  # a plain dict: under torch.compile a warm entry is read as constants
        if o is None:
            make = multi_scale_kv_padding_mapping if self.kv_padding else multi_scale_mapping
            m = make(
                shapes, self.window_size, self.shift, batch=b, shift_single_window=self.shift_single_window,
                device=x.device,
            )
            if len(_ORDERS) >= _ORDERS_MAX:
                _ORDERS.clear()
            o = _ORDERS[key] = _window_order(m)
        # One gather of the C-wide tokens into window order (Eq. 2, windows grouped by shape)
        # instead of three of q, k, v: the projections act per token, so they commute with it.
        tokens = permute_rows(x.reshape(b * n, c), o.q_indices, o.inv_indices)  # BN x C, window order
        heads = (self.num_heads, self.head_dim)
        if self.kv_padding:
            # queries from the real tokens, keys/values also from the pad token (Eq. 16-17); the
            # weight is split rather than the output sliced, whose backward would zero-fill it
            w_q, w_kv = self.qkv.weight.split([c, 2 * c])
            b_q, b_kv = (None, None) if self.qkv.bias is None else self.qkv.bias.split([c, 2 * c])
            q = F.linear(tokens, w_q, b_q).view(b * n, *heads)  # Nq x H x D
            kv = F.linear(torch.cat([tokens, self.pad_token.to(x.dtype)]), w_kv, b_kv)  # (BN + 1) x 2C, pad at row BN
            k, v = kv.view(-1, 2, *heads).index_select(0, o.kv_local).unbind(1)  # each Nkv x H x D
            kv_coords = o.kv_coords
        else:
            q, k, v = self.qkv(tokens).view(b * n, 3, *heads).unbind(1)  # each Nq x H x D; keys = queries' tokens
            kv_coords = o.q_coords
        if self.rope is not None:
            # tables cached with the window order (plain dict, see _ORDERS): RoPE's own cache
            # keys on id(coords), which Dynamo cannot guard on for these constant tensors
            dtype = torch.promote_types(q.dtype, torch.float32)
            tkey = (key, dtype, self.rope.head_dim, self.rope.theta, self.rope.scale)
            tables = _ORDERS.get(tkey)
            if tables is None:
                with torch.inference_mode(False):
                    tables = _ORDERS[tkey] = (
                        rope_2d_tables(o.q_coords, self.head_dim, theta=self.rope.theta, scale=self.rope.scale, dtype=dtype),
                        rope_2d_tables(kv_coords, self.head_dim, theta=self.rope.theta, scale=self.rope.scale, dtype=dtype),
                    )
            q, k = apply_rope_2d(q, *tables[0]), apply_rope_2d(k, *tables[1])
        out = varlen_attention(q, k, v, o.seqlens, backend=self.backend)  # Nq x H x D
        out = self.proj(out.reshape(b * n, c))  # BN x C, window order
        return permute_rows(out, o.inv_indices, o.q_indices).reshape(b, n, c)  # back to token order: B x N x C

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}, shift={self.shift}, "
            f"shift_single_window={self.shift_single_window}, "
            f"kv_padding={self.kv_padding}, rope={self.rope is not None}, backend={self.backend!r}"
        )


class FlashSwinAttention(FlexibleLocalAttention):
    """Flash Swin (HRSAM §3.3): FLA over Swin's plain (``s = 0``) or shifted (``s = k/2``) windows.

    With ``kv_padding=False, rope=False`` it computes the same as classic shifted-window
    attention (Swin's cyclic shift + attention mask, zero padding to a multiple of ``k`` excluded
    from the keys, no relative-position bias): for any grid larger than one window, real tokens
    are grouped identically (window boundaries at ``y, x = s mod k``) — see
    ``tests/test_hrsam_attention.py``. A grid that fits in one window is shifted too by default
    (HRSAM's Listing 1); with ``shift_single_window=False`` (Inter2Former's code) it is one
    unshifted window, i.e. it matches Swin with ``shift = 0`` there. HRSAM itself uses it with
    KV-only padding and RoPE (the defaults).

    HRSAM alternates the shift across an encoder's blocks (Fig. 2: "Alternating Flash Swin
    modules apply shifts of 0 and 8 tokens"; authors' code: even blocks 0, odd blocks ``k/2``)::

        attns = [FlashSwinAttention(dim=768, num_heads=12, window_size=16, shift=0 if i % 2 == 0 else None)
                 for i in range(12)]

    Args:
        shift: ``None`` (default) for the shifted window ``k // 2`` or ``0`` for plain windows.
        dim, num_heads, window_size, shift_single_window, kv_padding, rope, qkv_bias, backend: as
            in :class:`FlexibleLocalAttention`.
    """

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        window_size: int,
        shift: int | None = None,
        shift_single_window: bool = True,
        kv_padding: bool = True,
        rope: bool = True,
        qkv_bias: bool = True,
        backend: str = "auto",
    ) -> None:
        window_size = check_int(window_size, "window_size", owner="FlashSwinAttention")
        if window_size < 1:
            raise ValueError(f"FlashSwinAttention: window_size must be >= 1, got {window_size}")
        shift = window_size // 2 if shift is None else check_int(shift, "shift", owner="FlashSwinAttention")
        if shift not in (0, window_size // 2):
            raise ValueError(f"Flash Swin shift must be None, 0 or window_size // 2 = {window_size // 2}, got {shift}")
        super().__init__(
            dim=dim,
            num_heads=num_heads,
            window_size=window_size,
            shift=shift,
            shift_single_window=shift_single_window,
            kv_padding=kv_padding,
            rope=rope,
            qkv_bias=qkv_bias,
            backend=backend,
        )
