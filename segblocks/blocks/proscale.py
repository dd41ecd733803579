"""PRO-SCALE blocks: progressive token-length encoder, TRC and LPE.

Aich et al., "Progressive Token Length Scaling in Transformer Encoders for Efficient Universal
Segmentation" (ICLR 2025), §3.1 and supp. A. Notation: the paper's backbone features
{s1, s2, s3, s4} are res2..res5 (strides 4, 8, 16, 32). The encoder works on the projected
tokens of s2..s4 (res3..res5); s1 (res2) only feeds the pixel embedding.

- :class:`ProgressiveScaleEncoder` (PRO-SCALE, Eq. 1-3): stage k runs p_k deformable layers over
  the k coarsest levels, concatenating the next finer level's raw tokens before each new stage.
  ``layers_per_stage=(0, 0, 6), token_recalibration=False`` is exactly Mask2Former's 6-layer
  encoder over all three levels, so both encoders are one mechanism. The defaults are the paper's
  full model: (3, 3, 3) with TRC.
- :class:`TokenRecalibration` (TRC, Eq. 4): ŝ_i = s_i ⊗ sigmoid(ε·φ(s2)), applied to s4 and s3.
- :class:`LightPixelEmbedding` (LPE, §3.1.2): max-pool → GroupNorm → ReLU in place of M2F's 3×3
  output conv on res2 (avg-pool option from supp. Table T3).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segblocks.layers.ms_deform_attn import MSDeformAttn
from segblocks.layers.position_encoding import PositionEmbeddingSine
from segblocks.ops._checks import (
    check_finite_float,
    check_int_pairs,
    check_int_sequence,
    check_module_dtype,
    check_positive_int,
    check_same,
    check_tensor,
)

__all__ = [
    "DeformableEncoderLayer",
    "LightPixelEmbedding",
    "PROSCALE_PRESETS",
    "ProgressiveScaleEncoder",
    "TokenRecalibration",
]

#: (p1, p2, p3) configurations of the paper's Table 1; "m2f" is the Mask2Former baseline.
PROSCALE_PRESETS: dict[str, tuple[int, int, int]] = {
    "1-1-1": (1, 1, 1),
    "2-2-2": (2, 2, 2),
    "3-3-3": (3, 3, 3),
    "m2f": (0, 0, 6),
}


class TokenRecalibration(nn.Module):
    """TRC, PRO-SCALE Eq. 4: ``ŝ_i = s_i ⊗ sigmoid(ε · φ(resize(s2, size(s_i))))``.

    φ is a linear channel reduction C → 1, so the gate is one scalar per token. Because bilinear
    resizing is linear with weights summing to one, it commutes with the affine φ: we apply φ at
    the guide's resolution and resize the 1-channel map, which is equal to the paper's order and
    C times cheaper.

    Layout note: the authors' code views the (B, L, C) guide tokens as (B, C, H, W) with a bare
    ``.view`` (no permute), which scrambles channels and positions. We permute to the true
    (B, C, H, W) layout, as the paper's Fig. 4 describes.

    Args:
        dim: token channels C.
        temperature: ε (0.1 in the paper, Table 4).
    """

    def __init__(self, *, dim: int = 256, temperature: float = 0.1) -> None:
        super().__init__()
        dim = check_positive_int(dim, "dim", owner="TokenRecalibration")
        # a NaN/inf ε would make every gate NaN (or 0/1) and silently poison the output
        self.temperature = check_finite_float(temperature, "temperature", owner="TokenRecalibration")
        self.dim = dim
        self.proj = nn.Linear(dim, 1)

    def forward(
        self,
        tokens: torch.Tensor,
        size: tuple[int, int],
        guide: torch.Tensor,
        guide_size: tuple[int, int],
    ) -> torch.Tensor:
        """
        Args:
            tokens: s_i, (B, H*W, C).
            size: (H, W) of ``tokens``.
            guide: s2 tokens, (B, H2*W2, C).
            guide_size: (H2, W2) of ``guide``.
        Returns:
            ŝ_i, (B, H*W, C).
        """
        owner = "TokenRecalibration"
        b, n, c = check_tensor(tokens, "tokens", owner=owner, shape=("B", "H*W", ("C", self.dim)))
        check_tensor(guide, "guide", owner=owner, shape=("B", "H2*W2", ("C", self.dim)))
        check_same({"tokens": tokens, "guide": guide}, owner=owner)
        check_module_dtype(guide, self, "guide", owner=owner)
        (h, w), (h2, w2) = check_int_pairs([size, guide_size], "size / guide_size", owner=owner, minimum=0)
        if n != h * w or guide.shape != (b, h2 * w2, c):
            raise ValueError(
                f"TokenRecalibration: expected tokens (B, {h}*{w}, C) and guide (B, {h2}*{w2}, C) with equal B, C; "
                f"got {tuple(tokens.shape)} and {tuple(guide.shape)}"
            )
        if b == 0 or n == 0:
            return tokens * self.proj(guide).sum()  # nothing to gate (empty batch or level); keeps the graph
        if h2 * w2 == 0:
            raise ValueError(f"{owner}: the guide must hold tokens to gate {h}x{w} tokens, got guide_size {(h2, w2)}")
        logit = self.proj(guide).transpose(1, 2).reshape(b, 1, h2, w2)  # B x 1 x H2 x W2
        logit = F.interpolate(logit, size=(h, w), mode="bilinear", align_corners=False)
        gate = torch.sigmoid(self.temperature * logit).flatten(2).transpose(1, 2)  # B x HW x 1
        return tokens * gate


class LightPixelEmbedding(nn.Module):
    """LPE, PRO-SCALE §3.1.2: parameter-light per-pixel embedding.

    ``pool(k=3, s=1, p=1) → GroupNorm(32) → ReLU`` replaces Mask2Former's 3×3 output conv on the
    res2 FPN level; the lateral 1×1 conv before it is kept (authors' code). Max pooling is the
    paper's choice; ``pool="avg"`` is the supp. Table T3 ablation.

    Shapes: (B, C, H, W) → (B, C, H, W).
    """

    def __init__(self, *, channels: int = 256, kernel_size: int = 3, pool: str = "max", num_groups: int = 32) -> None:
        super().__init__()
        owner = "LightPixelEmbedding"
        channels = check_positive_int(channels, "channels", owner=owner)
        kernel_size = check_positive_int(kernel_size, "kernel_size", owner=owner)
        num_groups = check_positive_int(num_groups, "num_groups", owner=owner)
        if pool not in ("max", "avg"):
            raise ValueError(f"LightPixelEmbedding: pool must be 'max' or 'avg', got {pool!r}")
        if kernel_size % 2 != 1:
            raise ValueError(f"LightPixelEmbedding: kernel_size must be odd to keep the size, got {kernel_size}")
        if channels % num_groups:
            raise ValueError(f"LightPixelEmbedding: channels={channels} must be divisible by num_groups={num_groups}")
        self.channels = channels
        pool_cls = nn.MaxPool2d if pool == "max" else nn.AvgPool2d
        kwargs = {} if pool == "max" else {"count_include_pad": False}
        self.pool = pool_cls(kernel_size, stride=1, padding=kernel_size // 2, **kwargs)
        self.norm = nn.GroupNorm(num_groups, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, C, H, W); a batched map is required (GroupNorm would read an
        unbatched (C, H, W) map's channels as the batch)."""
        owner = "LightPixelEmbedding"
        b, _, h, w = check_tensor(x, "x", owner=owner, shape=("B", ("C", self.channels), "H", "W"))
        check_module_dtype(x, self, owner=owner)
        if b == 0 or h == 0 or w == 0:
            return x * self.norm.weight.sum() * 0  # empty map: empty output, graph kept
        return F.relu(self.norm(self.pool(x)))


class DeformableEncoderLayer(nn.Module):
    """Deformable-DETR encoder layer (post-norm): MSDeformAttn self-attention + FFN.

    Shapes: src, pos (B, S, C); reference_points (B, S, L, 2) → (B, S, C).
    """

    def __init__(
        self,
        *,
        d_model: int = 256,
        d_ffn: int = 1024,
        n_levels: int = 3,
        n_heads: int = 8,
        n_points: int = 4,
        dropout: float = 0.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        d_ffn = check_positive_int(d_ffn, "d_ffn", owner="DeformableEncoderLayer")
        dropout = check_finite_float(dropout, "dropout", owner="DeformableEncoderLayer")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"DeformableEncoderLayer: dropout must be in [0, 1), got {dropout}")
        self.self_attn = MSDeformAttn(
            d_model=d_model, n_levels=n_levels, n_heads=n_heads, n_points=n_points, backend=backend
        )
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: Sequence[tuple[int, int]] | torch.Tensor,
        level_start_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``spatial_shapes``: Python ``(H_l, W_l)`` pairs (no host sync; see :class:`MSDeformAttn`)."""
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index, None)
        src = self.norm1(src + self.dropout(attn))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout(ffn))


def _reference_points(shapes: Sequence[tuple[int, int]], batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Normalised pixel-centre reference points of every token, repeated for every level.

    Returns (B, S, L, 2) as (x, y) in [0, 1]; S = Σ H_l W_l. No padding masks are used (as in
    Mask2Former), so the valid ratios are all one.
    """
    points = []
    for h, w in shapes:
        ys, xs = torch.meshgrid(
            (torch.arange(h, device=device, dtype=dtype) + 0.5) / h,
            (torch.arange(w, device=device, dtype=dtype) + 0.5) / w,
            indexing="ij",
        )
        points.append(torch.stack((xs, ys), -1).reshape(-1, 2))  # HW x 2
    ref = torch.cat(points, 0)  # S x 2
    return ref[None, :, None, :].expand(batch, -1, len(shapes), -1)  # B x S x L x 2


class ProgressiveScaleEncoder(nn.Module):
    """PRO-SCALE transformer encoder, Eq. 1-3 (and Mask2Former's encoder as a special case).

    Levels are ordered coarse → fine (res5, res4, res3 = the paper's s4, s3, s2). Stage k
    (k = 1..L) processes the concatenation of the previous stage's output with the raw tokens of
    level k, using ``layers_per_stage[k-1]`` deformable layers with k levels:

        P1 = C(ŝ4) → s',   P2 = C(s', ŝ3) → s'',   P3 = C(s'', s2) → s'''      (Eq. 1-3)

    Each stage's layers are independent (no weight sharing, like the authors' deep copies). A
    stage with 0 layers only concatenates, so ``(0, 0, 6)`` with ``token_recalibration=False``
    is Mask2Former's encoder. ``ProgressiveScaleEncoder()`` is the paper's full PRO-SCALE encoder:
    (3, 3, 3) stages with TRC.

    Positional encoding: 2-D sine embedding of each level plus a learned level embedding
    (Deformable DETR), added to the queries inside every layer.

    Args:
        layers_per_stage: (p1, p2, p3), one entry per level, or a preset name from
            ``PROSCALE_PRESETS`` ("1-1-1", "2-2-2", "3-3-3", "m2f").
        d_model: token channels C (256).
        n_heads, n_points, d_ffn, dropout: deformable layer settings (8, 4, 1024, 0.0).
        token_recalibration: apply a :class:`TokenRecalibration` to every level but the finest,
            guided by the finest level's raw tokens (one shared instance, as in the authors' code,
            abhishekaich27/proscale-pytorch ``mask2former/modeling/pixel_decoder/proscale.py``).
            On by default: the paper's full model (Table 1 "PRO-SCALE (3,3,3)" with TRC, §3.1.1,
            ε = 0.1 from Table 4, and the authors' ``configs/*_proscale_3_3_3_coco.yaml``);
            ``False`` is the without-TRC ablation (Table 3).
        trc_temperature: TRC's ε (0.1, finite).
        backend: MSDeformAttn backend ("auto", "pytorch", "triton").
    """

    def __init__(
        self,
        *,
        layers_per_stage: Sequence[int] | str = (3, 3, 3),
        d_model: int = 256,
        n_heads: int = 8,
        n_points: int = 4,
        d_ffn: int = 1024,
        dropout: float = 0.0,
        token_recalibration: bool = True,
        trc_temperature: float = 0.1,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        owner = "ProgressiveScaleEncoder"
        if isinstance(layers_per_stage, str):
            if layers_per_stage not in PROSCALE_PRESETS:
                raise ValueError(f"unknown PRO-SCALE preset {layers_per_stage!r}; expected one of {sorted(PROSCALE_PRESETS)}")
            layers_per_stage = PROSCALE_PRESETS[layers_per_stage]
        layers_per_stage = check_int_sequence(layers_per_stage, "layers_per_stage", owner=owner, minimum=0)
        if not layers_per_stage or sum(layers_per_stage) == 0:
            raise ValueError(f"layers_per_stage must be non-negative with at least one layer, got {layers_per_stage}")
        d_model = check_positive_int(d_model, "d_model", owner=owner)
        if d_model % 4:
            raise ValueError(
                f"{owner}: d_model={d_model} must be a multiple of 4 (the sine position encoding gives d_model/2 "
                "channels per axis, an even number)"
            )
        n_heads = check_positive_int(n_heads, "n_heads", owner=owner)
        if d_model % n_heads:
            raise ValueError(f"{owner}: d_model={d_model} must be divisible by n_heads={n_heads}")
        check_positive_int(n_points, "n_points", owner=owner)
        if not isinstance(token_recalibration, bool):
            raise TypeError(f"{owner}: token_recalibration must be a bool, got {token_recalibration!r}")
        trc_temperature = check_finite_float(trc_temperature, "trc_temperature", owner=owner)
        self.layers_per_stage = layers_per_stage
        self.num_levels = len(layers_per_stage)
        self.stages = nn.ModuleList(
            nn.ModuleList(
                DeformableEncoderLayer(
                    d_model=d_model, d_ffn=d_ffn, n_levels=k + 1, n_heads=n_heads,
                    n_points=n_points, dropout=dropout, backend=backend,
                )
                for _ in range(p)
            )
            for k, p in enumerate(layers_per_stage)
        )
        self.level_embed = nn.Parameter(torch.empty(self.num_levels, d_model))
        self.pos_embed = PositionEmbeddingSine(num_pos_feats=d_model // 2, normalize=True)
        self.token_recalibration = TokenRecalibration(dim=d_model, temperature=trc_temperature) if token_recalibration else None
        self.d_model = d_model
        self._reset_parameters()

    @torch.no_grad()
    def _reset_parameters(self) -> None:
        # Mask2Former's encoder init (authors' code): Xavier-uniform for every matrix, then each
        # MSDeformAttn's own init, and N(0, 1) level embeddings.
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        nn.init.normal_(self.level_embed)

    def _check_features(self, features: Sequence[torch.Tensor]) -> None:
        owner = "ProgressiveScaleEncoder"
        if isinstance(features, torch.Tensor) or len(features) != self.num_levels:
            got = "a tensor" if isinstance(features, torch.Tensor) else f"{len(features)}"
            raise ValueError(
                f"{owner}: expected a list of {self.num_levels} feature levels (coarse → fine), got {got}"
            )
        ref = features[0]
        for lvl, f in enumerate(features):
            check_tensor(
                f, f"features[{lvl}]", owner=owner,
                shape=(("B", ref.shape[0]) if lvl else "B", ("C", self.d_model), "H", "W"),
            )
            if f.shape[-2] == 0 or f.shape[-1] == 0:
                raise ValueError(
                    f"{owner}: features[{lvl}] has an empty {tuple(f.shape[-2:])} map; every level needs H, W >= 1 "
                    "(deformable attention samples every level)"
                )
        check_same({f"features[{lvl}]": f for lvl, f in enumerate(features)}, owner=owner)
        check_module_dtype(ref, self, "features", owner=owner)
        shapes = [tuple(f.shape[-2:]) for f in features]
        if any(a[0] > b[0] or a[1] > b[1] for a, b in zip(shapes, shapes[1:])):
            raise ValueError(
                f"{owner}: levels must be ordered coarse → fine (res5, res4, res3: sizes non-decreasing), "
                f"got sizes {shapes}"
            )

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """
        Args:
            features: L maps (B, C, H_l, W_l), coarse → fine, same dtype and device; every
                ``H_l, W_l >= 1`` and sizes non-decreasing. ``B = 0`` gives empty outputs.
        Returns:
            L encoded maps with the same shapes, coarse → fine.
        """
        self._check_features(features)
        shapes = [tuple(f.shape[-2:]) for f in features]
        batch = features[0].shape[0]
        if batch == 0:
            zero = self.level_embed.sum() * 0  # empty batch: empty maps, graph kept
            return [f + zero.to(f.dtype) for f in features]
        tokens = [f.flatten(2).transpose(1, 2) for f in features]  # L x (B x HW x C)
        pos = [
            (self.pos_embed(f).flatten(2).transpose(1, 2) + self.level_embed[lvl]).to(f.dtype)  # B x HW x C
            for lvl, f in enumerate(features)
        ]
        if self.token_recalibration is not None:
            guide, guide_size = tokens[-1], shapes[-1]
            tokens = [self.token_recalibration(t, s, guide, guide_size) for t, s in zip(tokens[:-1], shapes[:-1])] + [guide]

        src = tokens[0].new_zeros(batch, 0, tokens[0].shape[-1])  # B x 0 x C
        for k, layers in enumerate(self.stages):
            src = torch.cat((src, tokens[k]), 1)  # B x Σ_{l≤k} H_l W_l x C
            if len(layers) == 0:
                continue
            stage_shapes = shapes[: k + 1]
            stage_pos = torch.cat(pos[: k + 1], 1)
            ref = _reference_points(stage_shapes, batch, src.device, src.dtype)
            for layer in layers:
                # level shapes as Python ints: nothing is read back from a tensor per layer
                src = layer(src, stage_pos, ref, stage_shapes)

        out, start = [], 0
        for (h, w) in shapes:
            out.append(src[:, start : start + h * w].transpose(1, 2).reshape(batch, -1, h, w))  # B x C x H x W
            start += h * w
        return out
