"""Stochastic depth ("drop path") for residual branches.

Huang et al., "Deep Networks with Stochastic Depth" (ECCV 2016), in the per-sample form used by
ViT-style models (timm's ``drop_path``; Swin, MAE and HRSAM all use it on both residual branches of
a block): during training the whole branch output of a sample is zeroed with probability ``p`` and
the kept samples are scaled by ``1 / (1 - p)``, so ``E[drop_path(x)] = x``; identity in evaluation.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["DropPath", "drop_path"]


def _check_p(p: float) -> float:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"drop path probability p must be in [0, 1), got {p}")
    return float(p)


def drop_path(x: torch.Tensor, p: float = 0.0, training: bool = False) -> torch.Tensor:
    """Drop the residual branch ``x`` per sample (dimension 0) with probability ``p``.

    Args:
        x: ``(B, ...)`` branch output.
        p: drop probability in ``[0, 1)``.
        training: identity when False (or when ``p == 0``).

    Returns:
        ``(B, ...)``: ``x * keep / (1 - p)`` with ``keep ~ Bernoulli(1 - p)`` drawn once per sample.
    """
    p = _check_p(p)
    if not training or p == 0.0:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - p)  # B x 1 x ... x 1
    return x * keep / (1.0 - p)


class DropPath(nn.Module):
    """Module form of :func:`drop_path`; follows ``self.training``.

    Args:
        p: drop probability in ``[0, 1)``.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = _check_p(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
