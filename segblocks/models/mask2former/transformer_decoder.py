"""Mask2Former transformer decoder with masked attention (Cheng et al., CVPR 2022, §3.2).

Each layer refines the ``N`` query features by (§3.2.4 order) masked cross-attention to one
feature level, self-attention among queries, and an FFN. Masked attention (Eq. 2-3) lets a query
attend only to pixels where the mask predicted *before* this layer is foreground
(``sigmoid >= 0.5``), the prediction being resized to the level's resolution. Layers visit the
levels round robin, low to high resolution (§3.2.2). Mask predictions are
``MLP(LN(X)) · mask_features`` and are produced from the learnable query features before the
first layer (§3.2.4, "query features") and after every layer, each used for deep supervision.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segblocks.layers.mlp import MLPHead
from segblocks.layers.position_encoding import PositionEmbeddingSine
from segblocks.ops._checks import check_module_dtype, check_positive_int, check_same, check_tensor

__all__ = ["MultiScaleMaskedTransformerDecoder", "masked_attention_mask"]


def masked_attention_mask(mask_logits: torch.Tensor, size: tuple[int, int], num_heads: int) -> torch.Tensor:
    """Boolean attention mask of masked attention (Mask2Former Eq. 3).

    A query may attend to a pixel where its bilinearly resized (``align_corners=False``) mask
    probability is ``>= 0.5``. Queries whose mask is empty at this resolution would have no key
    at all, so they attend everywhere instead (authors' code; the paper leaves this open).

    Args:
        mask_logits: (B, Q, H, W) predicted mask logits.
        size: ``(h, w)`` of the feature level attended to.
        num_heads: attention heads; the mask is repeated per head.

    Returns:
        (B·num_heads, Q, h·w) bool, True = not allowed (``nn.MultiheadAttention`` convention),
        detached from the graph.
    """
    resized = F.interpolate(mask_logits.detach(), size=size, mode="bilinear", align_corners=False)
    blocked = (resized.sigmoid() < 0.5).flatten(2)  # B x Q x hw
    blocked = blocked & ~blocked.all(-1, keepdim=True)
    return blocked.repeat_interleave(num_heads, dim=0)  # (B·heads) x Q x hw, batch-major


class _CrossAttentionLayer(nn.Module):
    """Masked cross-attention of queries to a memory; ``pos`` is added to keys, not values."""

    def __init__(self, *, dim: int, nheads: int, pre_norm: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, nheads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.pre_norm = pre_norm

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        *,
        attn_mask: torch.Tensor,
        pos: torch.Tensor,
        query_pos: torch.Tensor,
    ) -> torch.Tensor:
        x = self.norm(tgt) if self.pre_norm else tgt
        out = self.attn(x + query_pos, memory + pos, memory, attn_mask=attn_mask, need_weights=False)[0]
        return tgt + out if self.pre_norm else self.norm(tgt + out)


class _SelfAttentionLayer(nn.Module):
    """Self-attention among queries, with the query positional embedding on queries and keys."""

    def __init__(self, *, dim: int, nheads: int, pre_norm: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, nheads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.pre_norm = pre_norm

    def forward(self, tgt: torch.Tensor, *, query_pos: torch.Tensor) -> torch.Tensor:
        x = self.norm(tgt) if self.pre_norm else tgt
        qk = x + query_pos
        out = self.attn(qk, qk, x, need_weights=False)[0]
        return tgt + out if self.pre_norm else self.norm(tgt + out)


class _FFNLayer(nn.Module):
    """Linear-ReLU-Linear feed-forward block with a residual connection."""

    def __init__(self, *, dim: int, hidden: int, pre_norm: bool) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)
        self.pre_norm = pre_norm

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        x = self.norm(tgt) if self.pre_norm else tgt
        out = self.linear2(F.relu(self.linear1(x)))
        return tgt + out if self.pre_norm else self.norm(tgt + out)


class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Mask2Former's transformer decoder and class/mask prediction heads.

    Args:
        in_channels: channels of the multi-scale features from the pixel decoder.
        hidden_dim: query/attention width (divisible by ``nheads`` and by 4 for the sine
            positional embedding).
        num_classes: number of real classes ``K``; the class head predicts ``K + 1``
            (last = "no object").
        num_queries: number of object queries ``N``.
        nheads: attention heads.
        dim_feedforward: FFN hidden width.
        dec_layers: number of decoder layers (Mask2Former: 9 = 3 rounds over 3 levels).
        pre_norm: LayerNorm before each sub-layer instead of after (post-norm by default).
        mask_dim: channels of the per-pixel embeddings ``mask_features``.
        num_feature_levels: number of feature levels visited round robin.
    """

    def __init__(
        self,
        *,
        in_channels: int = 256,
        hidden_dim: int = 256,
        num_classes: int,
        num_queries: int = 100,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        dec_layers: int = 9,
        pre_norm: bool = False,
        mask_dim: int = 256,
        num_feature_levels: int = 3,
    ) -> None:
        super().__init__()
        owner = "MultiScaleMaskedTransformerDecoder"
        sizes = dict(
            in_channels=in_channels, hidden_dim=hidden_dim, num_classes=num_classes, num_queries=num_queries,
            nheads=nheads, dim_feedforward=dim_feedforward, dec_layers=dec_layers, mask_dim=mask_dim,
            num_feature_levels=num_feature_levels,
        )
        for name, value in sizes.items():  # positive ints: True, 2.5 or 0 would fail far from here
            sizes[name] = check_positive_int(value, name, owner=owner)
        in_channels, hidden_dim, num_classes = sizes["in_channels"], sizes["hidden_dim"], sizes["num_classes"]
        num_queries, nheads, dim_feedforward = sizes["num_queries"], sizes["nheads"], sizes["dim_feedforward"]
        dec_layers, mask_dim, num_feature_levels = sizes["dec_layers"], sizes["mask_dim"], sizes["num_feature_levels"]
        if hidden_dim % nheads or hidden_dim % 4:
            raise ValueError(f"hidden_dim must be divisible by nheads={nheads} and by 4, got {hidden_dim}")
        self.in_channels = in_channels
        self.mask_dim = mask_dim
        self.nheads = nheads
        self.num_feature_levels = num_feature_levels
        self.pe_layer = PositionEmbeddingSine(num_pos_feats=hidden_dim // 2, normalize=True)
        self.cross_layers = nn.ModuleList(
            _CrossAttentionLayer(dim=hidden_dim, nheads=nheads, pre_norm=pre_norm) for _ in range(dec_layers)
        )
        self.self_layers = nn.ModuleList(
            _SelfAttentionLayer(dim=hidden_dim, nheads=nheads, pre_norm=pre_norm) for _ in range(dec_layers)
        )
        self.ffn_layers = nn.ModuleList(
            _FFNLayer(dim=hidden_dim, hidden=dim_feedforward, pre_norm=pre_norm) for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Parameter(torch.empty(num_queries, hidden_dim))
        self.query_embed = nn.Parameter(torch.empty(num_queries, hidden_dim))
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, hidden_dim))
        self.input_proj = nn.ModuleList(
            nn.Conv2d(in_channels, hidden_dim, kernel_size=1) if in_channels != hidden_dim else nn.Identity()
            for _ in range(num_feature_levels)
        )
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLPHead(input_dim=hidden_dim, hidden_dim=hidden_dim, output_dim=mask_dim, num_layers=3)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Authors' code: Xavier-uniform attention/FFN matrices, N(0, 1) embeddings, Xavier
        # 1x1 projections with zero bias.
        for layers in (self.cross_layers, self.self_layers, self.ffn_layers):
            for p in layers.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        for p in (self.query_feat, self.query_embed, self.level_embed):
            nn.init.normal_(p)
        for proj in self.input_proj:
            if isinstance(proj, nn.Conv2d):
                nn.init.xavier_uniform_(proj.weight)
                nn.init.zeros_(proj.bias)

    def forward(
        self, features: Sequence[torch.Tensor], mask_features: torch.Tensor
    ) -> dict[str, torch.Tensor | list[dict[str, torch.Tensor]]]:
        """Decode queries into class logits and mask logits.

        Args:
            features: ``num_feature_levels`` maps (B, in_channels, H_i, W_i), low to high
                resolution (res5, res4, res3).
            mask_features: (B, mask_dim, H4, W4) per-pixel embeddings.

        Returns:
            ``pred_logits`` (B, Q, K+1), ``pred_masks`` (B, Q, H4, W4) from the last layer, and
            ``aux_outputs``: ``dec_layers`` dicts with the same keys, the predictions made before
            each layer (the first from the learnable query features).
        """
        self._check_inputs(features, mask_features)
        b = mask_features.shape[0]
        if b == 0:  # empty batch: empty predictions of the documented shapes, graph kept
            zero = self.query_feat.sum() * 0
            logits = mask_features.new_zeros(0, self.query_feat.shape[0], self.class_embed.out_features) + zero
            masks = mask_features.new_zeros(0, self.query_feat.shape[0], *mask_features.shape[-2:]) + zero
            aux = [{"pred_logits": logits, "pred_masks": masks} for _ in range(len(self.cross_layers))]
            return {"pred_logits": logits, "pred_masks": masks, "aux_outputs": aux}
        memories, positions, sizes = [], [], []
        for i, x in enumerate(features):
            sizes.append(tuple(x.shape[-2:]))
            positions.append(self.pe_layer(x).flatten(2).transpose(1, 2))  # B x HW x C
            src = self.input_proj[i](x).flatten(2).transpose(1, 2)  # B x HW x C
            memories.append(src + self.level_embed[i])
        query_pos = self.query_embed[None].expand(b, -1, -1)  # B x Q x C
        tgt = self.query_feat[None].expand(b, -1, -1)  # B x Q x C

        logits, masks, attn_mask = self._predict(tgt, mask_features, sizes[0])
        all_logits, all_masks = [logits], [masks]
        for i, (cross, self_attn, ffn) in enumerate(zip(self.cross_layers, self.self_layers, self.ffn_layers)):
            level = i % self.num_feature_levels
            tgt = cross(tgt, memories[level], attn_mask=attn_mask, pos=positions[level], query_pos=query_pos)
            tgt = ffn(self_attn(tgt, query_pos=query_pos))
            logits, masks, attn_mask = self._predict(
                tgt, mask_features, sizes[(i + 1) % self.num_feature_levels]
            )
            all_logits.append(logits)
            all_masks.append(masks)
        return {
            "pred_logits": all_logits[-1],
            "pred_masks": all_masks[-1],
            "aux_outputs": [{"pred_logits": c, "pred_masks": m} for c, m in zip(all_logits[:-1], all_masks[:-1])],
        }

    def _predict(
        self, tgt: torch.Tensor, mask_features: torch.Tensor, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Heads on queries (B, Q, C): class logits, mask logits and the next attention mask."""
        x = self.decoder_norm(tgt)
        logits = self.class_embed(x)  # B x Q x (K+1)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(x), mask_features)  # B x Q x H4 x W4
        return logits, masks, masked_attention_mask(masks, size, self.nheads)

    def _check_inputs(self, features: Sequence[torch.Tensor], mask_features: torch.Tensor) -> None:
        owner = "MultiScaleMaskedTransformerDecoder"
        if isinstance(features, torch.Tensor) or len(features) != self.num_feature_levels:
            got = "a tensor" if isinstance(features, torch.Tensor) else len(features)
            raise ValueError(f"expected {self.num_feature_levels} feature levels, got {got}")
        check_tensor(mask_features, "mask_features", owner=owner, shape=("B", self.mask_dim, "H", "W"))
        for i, x in enumerate(features):
            check_tensor(x, f"features[{i}]", owner=owner, ndim=4)
            if x.shape[0] != mask_features.shape[0] or x.shape[1] != self.in_channels:
                raise ValueError(
                    f"features[{i}] must be (B={mask_features.shape[0]}, {self.in_channels}, H, W), "
                    f"got {tuple(x.shape)}"
                )
            if x.shape[-2] == 0 or x.shape[-1] == 0:
                raise ValueError(f"{owner}: features[{i}] has an empty {tuple(x.shape[-2:])} map; need H, W >= 1")
        check_same({"mask_features": mask_features, **{f"features[{i}]": x for i, x in enumerate(features)}}, owner=owner)
        check_module_dtype(mask_features, self, "mask_features", owner=owner)
