"""Dynamic Hybrid Attention (DHA), Inter2Former §3.4, Eq. 5-6 (and BSQA, §3.5).

The queries of a sample are split by the edge map (Eq. 5): edge tokens ``Q_FA`` get full softmax
attention over **all** keys of their sample with 2-D RoPE (Eq. 6, RoPE as in §4.1), the other
tokens ``Q_BSQ`` get :class:`~segblocks.blocks.inter2former.bsqa.BSQAttention` over the same
(un-rotated) keys and values. One output projection follows.

Sizes follow the authors' code (YouHuang67/inter2former, ``inter2former/necks/dpe_dha_hmoe.py``,
``Block`` / ``FullAttention``): the attention runs at a reduced width ``embed_dim / downscale``
(256 → 32) with ``num_heads / downscale`` heads (8 / 8 = 1; ``downscale`` is clamped to
``num_heads``): ``qkv_proj = Linear(256, 96)``, ``o_proj = Linear(32, 256)``. RoPE: the layout of
:mod:`segblocks.layers.rope` (θ = 10⁴, positions = token-grid coordinates × 0.5). Train and
inference differ only inside BSQA (softmax over quantized keys vs. the exact code-table form);
the authors' train path also runs BSQA on the edge tokens and then overwrites them (γ = 1), which
is the same forward and the same gradients as skipping them, as done here.

:meth:`DynamicHybridAttention.forward_static` is the static-shape path for ``torch.export`` / ONNX:
it runs both attentions for **every** query (dense per-sample full attention with RoPE, and
:meth:`~segblocks.blocks.inter2former.bsqa.BSQAttention.forward_dense`) and picks each query's
result with the ``(B, L)`` edge mask. Queries do not interact, so it equals the sparse forward; it
costs the full ``O(L²)`` attention of every query (speed, not correctness).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from segblocks.blocks.inter2former.bsqa import BSQAttention
from segblocks.blocks.inter2former.selection import EdgeTokenSelection
from segblocks.layers.rope import VisionRotaryEmbedding2d, apply_rope_2d, rope_2d_tables
from segblocks.ops._checks import check_int, check_module_dtype, check_tensor
from segblocks.ops.varlen_attention import SeqLens, varlen_attention

__all__ = ["DynamicHybridAttention", "grid_coords"]


def grid_coords(h: int, w: int, batch: int = 1, device=None) -> torch.Tensor:
    """``(batch*h*w, 2)`` int64 row-major ``(y, x)`` of a token grid, repeated per sample.

    Cached per arguments (so RoPE's per-object table cache hits); built with inference mode off.
    """
    return _grid_coords(int(h), int(w), int(batch), torch.device(device if device is not None else "cpu"))


@functools.lru_cache(maxsize=16)
def _grid_coords(h: int, w: int, batch: int, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False):
        ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        return torch.stack([ys, xs], -1).reshape(-1, 2).repeat(batch, 1)  # (batch hw) x 2


class DynamicHybridAttention(nn.Module):
    """DHA (Eq. 5-6): full attention with RoPE for edge tokens, BSQ attention for the rest.

    Args:
        embed_dim: token width ``d`` (256).
        num_heads: nominal heads (8).
        downscale: attention width ``d / downscale`` and heads ``num_heads / downscale`` (8 → 32-d, 1 head).
        code_size, beta: BSQA bits and commitment weight (8, 0.25).
        rope: RoPE on the full-attention path (True).
        backend: ``varlen_attention`` backend.

    Forward:
        x: ``(B, L, d)`` tokens, ``L = h * w`` row-major.
        grid: ``(h, w)``.
        selection: :class:`~segblocks.blocks.inter2former.selection.EdgeTokenSelection` of the batch
            (empty and all-selected both allowed).
        Returns ``(B, L, d)`` (the attention branch, before the residual) and the BSQ loss.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 256,
        num_heads: int = 8,
        downscale: int = 8,
        code_size: int = 8,
        beta: float = 0.25,
        rope: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        embed_dim = check_int(embed_dim, "embed_dim", owner=owner, minimum=1)
        num_heads = check_int(num_heads, "num_heads", owner=owner, minimum=1)
        downscale = min(check_int(downscale, "downscale", owner=owner, minimum=1), num_heads)
        if embed_dim % downscale or num_heads % downscale or (embed_dim // downscale) % (num_heads // downscale):
            raise ValueError(f"{owner}: embed_dim ({embed_dim}) and num_heads ({num_heads}) must be divisible by downscale ({downscale})")
        self.embed_dim = embed_dim
        self.attn_dim = embed_dim // downscale
        self.num_heads = num_heads // downscale
        self.head_dim = self.attn_dim // self.num_heads
        self.backend = backend
        self.qkv_proj = nn.Linear(embed_dim, 3 * self.attn_dim)
        self.o_proj = nn.Linear(self.attn_dim, embed_dim)
        self.rope = VisionRotaryEmbedding2d(head_dim=self.head_dim) if rope else None
        self.bsqa = BSQAttention(head_dim=self.head_dim, code_size=code_size, beta=beta, backend=backend)

    def forward(
        self, x: torch.Tensor, grid: tuple[int, int], selection: EdgeTokenSelection
    ) -> tuple[torch.Tensor, torch.Tensor]:
        owner = type(self).__name__
        B, L, C = check_tensor(x, "x", owner=owner, shape=("B", "L", ("C", self.embed_dim)))
        check_module_dtype(x, self, owner=owner)
        h, w = (check_int(v, "grid", owner=owner, minimum=1) for v in grid)
        if h * w != L:
            raise ValueError(f"{owner}: grid {h}x{w} holds {h * w} tokens but x has L={L}")
        if not isinstance(selection, EdgeTokenSelection) or tuple(selection.mask.shape) != (B, L):
            got = tuple(selection.mask.shape) if isinstance(selection, EdgeTokenSelection) else type(selection).__name__
            raise ValueError(f"{owner}: selection must be a EdgeTokenSelection over ({B}, {L}) tokens; got {got}")
        heads = (self.num_heads, self.head_dim)
        qkv = self.qkv_proj(x.reshape(B * L, C)).view(B * L, 3, *heads)  # BL x 3 x H x D
        q, k, v = qkv.unbind(1)  # each BL x H x D
        out = x.new_zeros(B * L, *heads)  # BL x H x D
        # BSQ path (Eq. 7-14) for the non-edge queries, over all keys of their sample (no RoPE)
        out_bsq, loss = self.bsqa(q[selection.inv_idxs], k, v, selection.inv_lengths, (L,) * B)
        out = out.index_copy(0, selection.inv_idxs, out_bsq)
        # full attention (Eq. 6) with RoPE for the edge queries, over all keys of their sample
        if selection.idxs.numel():
            coords = grid_coords(h, w, B, x.device)  # BL x 2
            q_fa, k_fa = q[selection.idxs], k
            if self.rope is not None:
                q_fa, k_fa = self.rope(q_fa, coords[selection.idxs]), self.rope(k, coords)
            seqlens = SeqLens.from_seqlens(selection.lengths, (L,) * B, device=x.device)
            out = out.index_copy(0, selection.idxs, varlen_attention(q_fa, k_fa, v, seqlens, backend=self.backend))
        return self.o_proj(out.reshape(B * L, self.attn_dim)).view(B, L, C), loss

    def forward_static(
        self, x: torch.Tensor, grid: tuple[int, int], mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` with static shapes (module docstring): ``mask`` ``(B, L)`` bool edge tokens.

        Same outputs as ``forward(x, grid, EdgeTokenSelection.from_mask(mask))``. No cache is used
        (the RoPE tables are rebuilt), so it can be traced by ``torch.export``.
        """
        owner = type(self).__name__
        B, L, C = check_tensor(x, "x", owner=owner, shape=("B", "L", ("C", self.embed_dim)))
        check_tensor(mask, "mask", owner=owner, shape=(("B", B), ("L", L)), dtype="bool")
        check_module_dtype(x, self, owner=owner)
        h, w = (check_int(v, "grid", owner=owner, minimum=1) for v in grid)
        if h * w != L:
            raise ValueError(f"{owner}: grid {h}x{w} holds {h * w} tokens but x has L={L}")
        q, k, v = self.qkv_proj(x).view(B, L, 3, self.num_heads, self.head_dim).unbind(2)  # each B x L x H x D
        out_bsq, loss = self.bsqa.forward_dense(q, k, v)  # B x L x H x D, Eq. 7-14 for every query
        if self.rope is not None:  # Eq. 6 with RoPE on every query and key
            ys, xs = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
            cos, sin = rope_2d_tables(torch.stack([ys, xs], -1).reshape(L, 2), self.head_dim, theta=self.rope.theta,
                                      scale=self.rope.scale, dtype=torch.promote_types(x.dtype, torch.float32))
            q, k = (apply_rope_2d(t.transpose(0, 1), cos, sin).transpose(0, 1) for t in (q, k))  # B x L x H x D
        out_fa = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # B x H x L x D
        out = torch.where(mask[:, :, None, None], out_fa.transpose(1, 2), out_bsq)  # B x L x H x D, Eq. 5
        return self.o_proj(out.reshape(B, L, self.attn_dim)), loss

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, attn_dim={self.attn_dim}, num_heads={self.num_heads}"
