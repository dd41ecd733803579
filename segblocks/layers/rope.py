"""2-D rotary position embedding (RoPE, Su et al. [79]) for vision tokens, as used by HRSAM.

HRSAM (Huang et al., "HRSAM: Efficient Interactive Segmentation in High-Resolution Images",
§3.1) replaces SAM's relative-position bias by RoPE so that attention needs no
``O(N^2)`` bias and can run as block-diagonal attention (§3.2). The paper gives no formula; the
layout below is the authors' (EVA02-style ``VisionRotaryEmbedding`` in
YouHuang67/High-Resolution-Segment-Anything, ``models/backbones/hrsam.py``, and
YouHuang67/inter2former, ``inter2former/backbones/hrsam_no_ssm.py``):

* a head of ``D`` channels is split in two halves: the first ``D/2`` channels rotate with the
  token's row ``y``, the last ``D/2`` with its column ``x``;
* inside a half, channel pairs ``(2i, 2i+1)`` share the frequency
  ``f_i = theta^(-2i / (D/2))``, ``i < D/4`` (interleaved pairs);
* the angle of a pair is ``scale * pos * f_i`` with ``scale = 0.5`` (the authors' ``pt/ft`` =
  7/14 for a 224-px, patch-16 pre-training grid);
* each pair ``(a, b)`` becomes ``(a cos + b sin, b cos - a sin)`` — the authors' ``rotate_half``
  sends ``x[2i] <- x[2i+1], x[2i+1] <- -x[2i]``, i.e. a rotation by ``-angle``. Queries and keys
  use the same convention, so scores depend on relative positions only; the sign matters only for
  loading the authors' weights.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

__all__ = ["VisionRotaryEmbedding2d", "apply_rope_2d", "rope_2d_tables"]


def _check_head_dim(head_dim: int) -> None:
    if head_dim < 4 or head_dim % 4:
        raise ValueError(f"2-D RoPE needs a head dim divisible by 4 (two axes x channel pairs), got {head_dim}")


def rope_2d_tables(
    coords: torch.Tensor,
    head_dim: int,
    *,
    theta: float = 10000.0,
    scale: float = 0.5,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables of the 2-D RoPE for token positions ``coords``.

    Args:
        coords: ``(N, 2)`` integer or float ``(y, x)`` positions.
        head_dim: channels ``D`` per head (divisible by 4).
        theta: frequency base.
        scale: positions are multiplied by it (0.5 in HRSAM).
        dtype: floating dtype of the tables.

    Returns:
        ``cos, sin``: each ``(N, D)`` on ``coords.device``, laid out as described in the module
        docstring (``y`` pairs, then ``x`` pairs).
    """
    _check_head_dim(head_dim)
    if coords.dim() != 2 or coords.shape[1] != 2:
        raise ValueError(f"coords must be (N, 2) (y, x) positions, got shape {tuple(coords.shape)}")
    half = head_dim // 2
    inv_freq = theta ** (-torch.arange(0, half, 2, device=coords.device, dtype=dtype) / half)  # D/4
    angles = (coords.to(dtype) * scale)[:, :, None] * inv_freq  # N x 2 x D/4
    angles = angles.repeat_interleave(2, dim=-1).flatten(1)  # N x D (pairs share a frequency)
    return angles.cos(), angles.sin()


def apply_rope_2d(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate every channel pair of ``x`` by its token's angle: ``x cos + rotate_half(x) sin``.

    Args:
        x: ``(N, ..., D)``, e.g. packed ``(N, H, D)`` queries or keys.
        cos, sin: ``(N, D)`` from :func:`rope_2d_tables`.

    Returns:
        Same shape and dtype as ``x``; computed in the tables' dtype (at least float32).
    """
    if cos.shape != sin.shape or cos.dim() != 2 or x.shape[0] != cos.shape[0] or x.shape[-1] != cos.shape[1]:
        raise ValueError(
            f"apply_rope_2d: expected x (N, ..., D) with cos/sin (N, D), got x {tuple(x.shape)}, "
            f"cos {tuple(cos.shape)}, sin {tuple(sin.shape)}"
        )
    view = (cos.shape[0],) + (1,) * (x.dim() - 2) + (cos.shape[1],)
    xc = x.to(torch.promote_types(x.dtype, cos.dtype))
    rotated = torch.stack((xc[..., 1::2], -xc[..., 0::2]), dim=-1).flatten(-2)  # N x ... x D, authors' rotate_half
    return (xc * cos.view(view) + rotated * sin.view(view)).to(x.dtype)


class VisionRotaryEmbedding2d(nn.Module):
    """2-D RoPE with cached tables (see the module docstring for the layout).

    Tables are cached per ``coords`` tensor *object* and dtype (a few entries, like the authors'
    per-shape cache): index mappings such as :class:`segblocks.ops.fla_mapping.FLAMapping` hand
    out the same, never modified, coordinate tensors for the same geometry. Do not modify a
    ``coords`` tensor in place after passing it here.

    Args:
        head_dim: channels ``D`` per head (divisible by 4).
        theta: frequency base (1e4).
        scale: position scale (0.5, see module docstring).
        cache_size: number of cached tables.

    Forward: ``x`` ``(N, ..., D)``, ``coords`` ``(N, 2)`` ``(y, x)`` → same shape and dtype as ``x``.
    """

    def __init__(self, *, head_dim: int, theta: float = 10000.0, scale: float = 0.5, cache_size: int = 8) -> None:
        super().__init__()
        _check_head_dim(head_dim)
        self.head_dim = head_dim
        self.theta = float(theta)
        self.scale = float(scale)
        self.cache_size = cache_size
        # (id(coords), dtype) -> (coords, cos, sin); holding coords keeps its id from being reused.
        self._cache: OrderedDict = OrderedDict()

    def tables(self, coords: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)``, each ``(N, D)`` in ``dtype`` (cached, see class docstring)."""
        key = (id(coords), dtype)
        hit = self._cache.get(key)
        if hit is not None and hit[0] is coords:
            self._cache.move_to_end(key)
            return hit[1], hit[2]
        # Normal (not inference) tensors even when first built under torch.inference_mode():
        # a cached inference tensor would break a later training step that saves it for backward.
        with torch.inference_mode(False):
            cos, sin = rope_2d_tables(coords, self.head_dim, theta=self.theta, scale=self.scale, dtype=dtype)
        self._cache[key] = (coords, cos, sin)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return cos, sin

    def forward(self, x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        cos, sin = self.tables(coords, torch.promote_types(x.dtype, torch.float32))
        return apply_rope_2d(x, cos, sin)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, theta={self.theta:g}, scale={self.scale:g}"
