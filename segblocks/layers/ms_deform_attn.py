"""Multi-scale deformable attention module (Deformable DETR, Zhu et al. 2021, §4.1, Eq. 3).

Used as the self-attention of Mask2Former's pixel-decoder encoder. The sampling core is
:func:`segblocks.ops.ms_deform_attn.ms_deform_attn` (Triton on CUDA, grid_sample elsewhere).
Level shapes are Python ``(H_l, W_l)`` pairs (as ``spatial_shapes_list`` in HF transformers'
Mask2Former): no host synchronisation and no ``torch.compile`` graph break in the forward pass.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from segblocks.ops._checks import check_module_dtype, check_positive_int, check_same, check_tensor
from segblocks.ops.ms_deform_attn import LevelShapes, level_shapes, ms_deform_attn

__all__ = ["MSDeformAttn"]


class MSDeformAttn(nn.Module):
    """MSDeformAttn (Eq. 3): per head ``m``, ``W_m sum_l sum_k A_mlqk W'_m x^l(p_l + dp_mlqk)``.

    Offsets ``dp`` and weights ``A`` are linear functions of the query; ``A`` is a softmax over
    the ``L * P`` samples of a head. Offsets are in pixels of each level: the location is
    ``reference + offset / (W_l, H_l)``.

    Args:
        d_model: channels ``C``; must be divisible by ``n_heads``.
        n_levels: feature levels ``L``.
        n_heads: heads ``M``.
        n_points: sampling points ``P`` per head and level.
        backend: backend of the sampling core (``"auto"``, ``"triton"``, ``"pytorch"``).
    """

    def __init__(self, *, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4, backend: str = "auto") -> None:
        super().__init__()
        d_model = check_positive_int(d_model, "d_model", owner="MSDeformAttn")
        n_levels = check_positive_int(n_levels, "n_levels", owner="MSDeformAttn")
        n_heads = check_positive_int(n_heads, "n_heads", owner="MSDeformAttn")
        n_points = check_positive_int(n_points, "n_points", owner="MSDeformAttn")
        if d_model % n_heads != 0:
            raise ValueError(f"MSDeformAttn: d_model={d_model} must be divisible by n_heads={n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.backend = backend
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Deformable DETR's init (authors' code; the paper does not state it).

        Offsets start on a ring: head ``m`` looks in direction ``2 pi m / M``, scaled so the
        larger of ``|cos|, |sin|`` is 1, and point ``k`` (1-based) lies ``k`` pixels out; every
        level gets the same pattern. Attention weights start uniform (zero logits).
        """
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.n_heads, dtype=torch.float32) * (2 * math.pi / self.n_heads)
        direction = torch.stack((theta.cos(), theta.sin()), -1)  # M x 2
        direction = direction / direction.abs().amax(-1, keepdim=True)
        scale = torch.arange(1, self.n_points + 1, dtype=torch.float32)  # P
        bias = direction[:, None, None, :] * scale[None, None, :, None]  # M x 1 x P x 2
        bias = bias.expand(-1, self.n_levels, -1, -1)  # M x L x P x 2
        self.sampling_offsets.bias.copy_(bias.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def _check(self, query, reference_points, value_input, spatial_shapes, padding_mask) -> LevelShapes:
        C, L, owner = self.d_model, self.n_levels, "MSDeformAttn"
        B, Lq, _ = check_tensor(query, "query", owner=owner, shape=("B", "Lq", C))
        check_tensor(value_input, "value_input", owner=owner, shape=(B, "S", C))
        check_tensor(reference_points, "reference_points", owner=owner, shape=(B, Lq, L, 2))
        shapes = level_shapes(spatial_shapes, owner=owner)
        if len(shapes) != L:
            raise ValueError(f"MSDeformAttn: spatial_shapes must give n_levels={L} (H, W) pairs, got {list(shapes)}")
        check_same({"query": query, "value_input": value_input}, owner=owner)
        check_same({"query": query, "reference_points": reference_points}, owner=owner, dtype=False)
        check_module_dtype(query, self, "query", owner=owner)
        S = value_input.shape[1]
        total = sum(h * w for h, w in shapes)
        if S != total:
            raise ValueError(f"MSDeformAttn: value_input has S={S} tokens but spatial_shapes {list(shapes)} sum to {total}")
        if padding_mask is not None and (padding_mask.shape != (B, S) or padding_mask.dtype != torch.bool):
            raise ValueError(
                f"MSDeformAttn: padding_mask must be bool ({B}, {S}), got {padding_mask.dtype} {tuple(padding_mask.shape)}"
            )
        return shapes

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value_input: torch.Tensor,
        spatial_shapes: Sequence[tuple[int, int]] | torch.Tensor,
        level_start_index: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from every query to ``L * P`` sampled points per head.

        Args:
            query: ``(B, Lq, C)`` (content + positional embedding).
            reference_points: ``(B, Lq, L, 2)`` normalized ``(x, y)`` in ``[0, 1]`` per level.
            value_input: ``(B, S, C)`` flattened multi-scale features, ``S = sum_l H_l W_l``.
            spatial_shapes: ``[(H_l, W_l), ...]`` Python ints (no host sync); an ``(L, 2)``
                integer tensor (Deformable DETR API) is accepted and read with ``.tolist()``.
            level_start_index: ``None`` (derived from the shapes) or the ``(L,)`` integer offset
                of each level in ``S`` (Deformable DETR API; checked when on the CPU).
            padding_mask: ``(B, S)`` bool, True at padded tokens (their values are zeroed), or None.

        Returns:
            ``(B, Lq, C)``.
        """
        shapes = self._check(query, reference_points, value_input, spatial_shapes, padding_mask)
        B, Lq, _ = query.shape
        S = value_input.shape[1]
        M, L, P = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(value_input)  # B x S x C
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(B, S, M, self.d_model // M)  # B x S x M x D
        offsets = self.sampling_offsets(query).view(B, Lq, M, L, P, 2)  # B x Lq x M x L x P x 2
        weights = self.attention_weights(query).view(B, Lq, M, L * P).softmax(-1)  # B x Lq x M x LP
        weights = weights.view(B, Lq, M, L, P)  # B x Lq x M x L x P
        # L x 2 as (W, H), matching (x, y); built from Python ints (a constant under torch.compile)
        normalizer = torch.tensor([[w, h] for h, w in shapes], dtype=offsets.dtype, device=offsets.device)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        out = ms_deform_attn(value, shapes, level_start_index, locations, weights, backend=self.backend)  # B x Lq x C
        return self.output_proj(out)
