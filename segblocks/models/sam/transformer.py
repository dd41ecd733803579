"""SAM's two-way transformer: prompt tokens and image embedding attend to each other.

Segment Anything App. A ("Lightweight mask decoder"): each layer runs (1) self-attention on the
tokens, (2) cross-attention tokens → image, (3) a point-wise MLP on the tokens and
(4) cross-attention image → tokens, each followed by a residual and LayerNorm; a final
tokens → image attention follows the last layer. Image positional encodings are added to the
image embedding, and the original prompt tokens (with their positional encodings) to the
tokens, whenever they enter an attention layer as queries or keys (never as values).
Cross-attention projects to half the width (``attention_downsample_rate=2``).

As in the authors' code: the first layer's self-attention adds neither the prompt tokens (they
*are* the queries) nor a residual; the MLP uses ReLU; no dropout (the paper mentions 0.1 in
training). Added here: ``token_valid`` keeps batch-padding tokens out of attention as keys.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segblocks.layers.mlp import MLPBlock

__all__ = ["Attention", "TwoWayAttentionBlock", "TwoWayTransformer"]


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections to ``embedding_dim / downsample_rate``.

    Args:
        embedding_dim: input/output channels ``C``.
        num_heads: heads; ``C / downsample_rate`` must be divisible by it.
        downsample_rate: internal width reduction.

    Shapes:
        q: (B, Nq, C); k, v: (B, Nk, C); key_valid: optional (B, Nk) bool, False = ignore.
        Output: (B, Nq, C).
    """

    def __init__(self, *, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        inner = embedding_dim // downsample_rate
        if embedding_dim % downsample_rate or inner % num_heads:
            raise ValueError(
                f"embedding_dim / downsample_rate must be an integer divisible by num_heads; "
                f"got embedding_dim={embedding_dim}, downsample_rate={downsample_rate}, num_heads={num_heads}"
            )
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embedding_dim, inner)
        self.k_proj = nn.Linear(embedding_dim, inner)
        self.v_proj = nn.Linear(embedding_dim, inner)
        self.out_proj = nn.Linear(inner, embedding_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)  # B x heads x N x d

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        mask = None if key_valid is None else key_valid[:, None, None, :]  # B x 1 x 1 x Nk
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # B x heads x Nq x d
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))  # B x Nq x C


class TwoWayAttentionBlock(nn.Module):
    """One two-way layer: token self-attention, tokens → image, MLP, image → tokens.

    Args:
        embedding_dim, num_heads, mlp_dim: width, heads and MLP hidden width.
        attention_downsample_rate: width reduction of the two cross-attentions.
        skip_first_layer_pe: first layer: self-attention without prompt PE and residual.
    """

    def __init__(
        self,
        *,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim=embedding_dim, num_heads=num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(
            embedding_dim=embedding_dim, num_heads=num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim=embedding_dim, mlp_dim=mlp_dim, act=nn.ReLU)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(
            embedding_dim=embedding_dim, num_heads=num_heads, downsample_rate=attention_downsample_rate
        )
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        token_valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update tokens and image embedding.

        Args:
            queries: (B, N, C) tokens; query_pe: (B, N, C) the original prompt tokens.
            keys: (B, hw, C) image embedding; key_pe: (1 or B, hw, C) its positional encoding.
            token_valid: optional (B, N) bool, False for tokens no one may attend to.

        Returns:
            Updated ``(queries, keys)`` with the input shapes.
        """
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries, token_valid)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries, token_valid)
        queries = self.norm1(queries)

        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries, token_valid))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Stack of :class:`TwoWayAttentionBlock` plus a final tokens → image attention (SAM App. A).

    Args:
        depth: number of two-way layers (SAM: 2).
        embedding_dim: width ``C`` (SAM: 256).
        num_heads: attention heads (SAM: 8).
        mlp_dim: token MLP hidden width (SAM: 2048).
        attention_downsample_rate: cross-attention width reduction (SAM: 2).
    """

    def __init__(
        self,
        *,
        depth: int = 2,
        embedding_dim: int = 256,
        num_heads: int = 8,
        mlp_dim: int = 2048,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=i == 0,
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim=embedding_dim, num_heads=num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        point_embedding: torch.Tensor,
        token_valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the two-way transformer.

        Args:
            image_embedding: (B, C, h, w).
            image_pe: (1 or B, C, h, w) positional encoding of the image grid.
            point_embedding: (B, N, C) tokens (output tokens followed by prompt tokens).
            token_valid: optional (B, N) bool; False tokens are never attended to.

        Returns:
            ``(tokens, image)``: (B, N, C) updated tokens and (B, h·w, C) updated image embedding.
        """
        keys = image_embedding.flatten(2).transpose(1, 2)  # B x hw x C
        key_pe = image_pe.flatten(2).transpose(1, 2)  # (1|B) x hw x C
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe, token_valid)
        attn = self.final_attn_token_to_image(queries + point_embedding, keys + key_pe, keys)
        return self.norm_final_attn(queries + attn), keys
