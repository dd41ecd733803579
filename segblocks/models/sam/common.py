"""Small layers shared by the SAM image encoder, prompt encoder and mask decoder.

Parameter names (``weight``/``bias``, ``lin1``/``lin2``, ``layers.{i}``) match the official
Segment Anything checkpoints so they load without renaming.
"""
from __future__ import annotations

from typing import Type

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LayerNorm2d", "MLP", "MLPBlock"]


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dimension of a channels-first map.

    Args:
        num_channels: ``C``.
        eps: variance epsilon (SAM uses 1e-6).

    Shapes:
        x: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, *, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # B x H x W x C
        x = F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # B x C x H x W


class MLPBlock(nn.Module):
    """Two-layer feed-forward block ``lin2(act(lin1(x)))`` of the transformers.

    Args:
        embedding_dim: input and output channels.
        mlp_dim: hidden channels.
        act: activation class (GELU in the image encoder, ReLU in the two-way transformer).

    Shapes:
        x: (..., embedding_dim) -> (..., embedding_dim).
    """

    def __init__(self, *, embedding_dim: int, mlp_dim: int, act: Type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (hypernetwork and IoU heads, SAM App. A).

    Args:
        input_dim, hidden_dim, output_dim: channel sizes.
        num_layers: number of linear layers (>= 1).

    Shapes:
        x: (..., input_dim) -> (..., output_dim).
    """

    def __init__(self, *, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1; got {num_layers}")
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x
