"""Dynamic Local Upsampling (DLU), Inter2Former §3.7, Eq. 21-24 and §3.8.

A light MLP gives coarse logits at the token grid (Eq. 21); the box of tokens with logit
``> threshold`` (-2.0) is cropped (Eq. 22) and upsampled ×16 by four ×2 stages fused with the
CannyNet edge features (Eq. 23); outside the box the output is a constant background logit
(-100; Eq. 24 writes 0 for the mask). Training (§3.8) upsamples the whole map and returns both
the full-resolution and the coarse logits, each supervised with NFL.

From the authors' code (YouHuang67/inter2former, ``inter2former/decode_heads/dlu.py``):

* ``Upsample2x(C)``: ``GroupNorm(1, C) → bicubic ×2 → + edge feature (C channels) → Conv3x3(C →
  C/4) → SiLU`` (no SiLU after the last stage): 256 → 64 → 16 → 4 → 1 channels;
* the coarse MLP ``mlp`` is ``1x1`` convolutions ``256 → 64 → 16 → 4 → 1`` with SiLU between, on
  the **detached** tokens (it does not train the decoder);
* the box is the bounding box of ``coarse > -2`` on the token grid (no further expansion; the
  stored ``expand_ratio = 1.4`` is never used), the whole grid when empty; one box per sample.

``crop_norm``: the authors' local path computes each stage's GroupNorm statistics **on the crop**,
while training normalises over the full map, a train/inference discrepancy. ``crop_norm=True``
(default) reproduces it; ``crop_norm=False`` uses the full-map statistics of every stage (it
runs the full-map stages once to get them, so it costs as much as full upsampling: a diagnostic
to measure the discrepancy, not a fast path).

Static shapes (:meth:`DynamicLocalUpsampling.forward_static`, for ``torch.export`` / ONNX): the
stages run on the whole map with the box as masks that reproduce the crop exactly, stage by stage:

* GroupNorm statistics over the box only (:meth:`Upsample2x.statistics` with a mask) when
  ``crop_norm``; the full-map ones otherwise, as the local path;
* bicubic ×2 clamps its taps to the crop, so the features outside the box are replaced by the
  nearest in-box feature (:func:`clamp_to_box`: replicate padding) before interpolating — the
  box offsets are integers at every stage, so the source positions and cubic weights are the
  crop's;
* the 3x3 convolution sees zeros outside the box (``pad_mask``), as the crop's zero padding;
* the output is the background logit outside the box.

It costs the full upsampling (speed, not correctness).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segblocks.blocks.inter2former.dpe import box_mask
from segblocks.ops._checks import check_finite_float, check_int, check_module_dtype, check_tensor

__all__ = ["DynamicLocalUpsampling", "SimMLP", "Upsample2x", "clamp_to_box", "logit_boxes"]

_Stats = tuple[torch.Tensor, torch.Tensor]


class Upsample2x(nn.Module):
    """One DLU stage: ``GN(1, C) → bicubic ×2 → + edge → Conv3x3(C → C/4) [→ SiLU]``.

    Forward: ``x`` ``(B, C, h, w)``, ``edge`` ``(B, C, 2h, 2w)`` → ``(B, C/4, 2h, 2w)``. ``stats``
    optionally replaces the GroupNorm statistics by given per-sample ``(mean, var)`` ``(B,)``;
    ``pad_mask`` ``(B, 1, 2h, 2w)`` bool optionally zeroes the convolution input outside it (a
    crop's zero padding on the whole map, see the module docstring).
    """

    def __init__(self, *, channels: int, out_channels: int | None = None, act: bool = True) -> None:
        super().__init__()
        out_channels = out_channels or max(round(channels / 4), 1)
        self.norm = nn.GroupNorm(1, channels)
        self.conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.act = act

    def statistics(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> _Stats:
        """GroupNorm(1) statistics ``(mean, biased var)``, each ``(B,)``.

        ``mask`` ``(B, 1, h, w)`` bool: over the pixels inside it only (a crop's statistics).
        """
        if mask is None:
            flat = x.flatten(1)
            return flat.mean(1), flat.var(1, unbiased=False)
        m = mask.to(x.dtype)  # B x 1 x h x w
        n = m.sum((1, 2, 3)) * x.shape[1]  # B
        mean = (x * m).sum((1, 2, 3)) / n
        return mean, ((x - mean.view(-1, 1, 1, 1)) ** 2 * m).sum((1, 2, 3)) / n

    def forward(self, x: torch.Tensor, edge: torch.Tensor, stats: _Stats | None = None,
                pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        if stats is None:
            x = self.norm(x)
        else:
            mean, var = stats
            x = (x - mean.view(-1, 1, 1, 1)) / torch.sqrt(var.view(-1, 1, 1, 1) + self.norm.eps)
            x = x * self.norm.weight.view(1, -1, 1, 1) + self.norm.bias.view(1, -1, 1, 1)
        x = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False) + edge  # B x C x 2h x 2w
        if pad_mask is not None:
            x = x * pad_mask
        x = self.conv(x)
        return F.silu(x) if self.act else x


class SimMLP(nn.Module):
    """``1x1`` convolutions with SiLU between them (DLU's coarse localisation MLP, Eq. 21)."""

    def __init__(self, *, in_chans: int, dims: Sequence[int]) -> None:
        super().__init__()
        chans = (in_chans, *dims)
        self.layers = nn.ModuleList(nn.Conv2d(a, b, 1) for a, b in zip(chans[:-1], chans[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.silu(x)
        return x


def logit_boxes(coarse: torch.Tensor, threshold: float) -> torch.Tensor:
    """``(B, 1, h, w)`` coarse logits → ``(B, 4)`` int64 token boxes ``(y0, x0, y1, x1)`` of ``> threshold`` (whole grid if none)."""
    B, _, h, w = coarse.shape
    m = coarse[:, 0] > threshold  # B x h x w
    rows, cols = m.any(2), m.any(1)
    ar_h, ar_w = torch.arange(h, device=m.device), torch.arange(w, device=m.device)
    y0 = torch.where(rows, ar_h, h).min(1).values
    y1 = torch.where(rows, ar_h, -1).max(1).values + 1
    x0 = torch.where(cols, ar_w, w).min(1).values
    x1 = torch.where(cols, ar_w, -1).max(1).values + 1
    boxes = torch.stack([y0, x0, y1, x1], 1)
    full = torch.tensor([0, 0, h, w], device=m.device)
    return torch.where(rows.any(1)[:, None], boxes, full)


def clamp_to_box(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Replicate padding of each sample's box over the whole map: pixel ``(i, j)`` takes
    ``x[clamp(i, y0, y1 - 1), clamp(j, x0, x1 - 1)]``.

    Args:
        x: ``(B, C, h, w)``.
        boxes: ``(B, 4)`` int64 ``(y0, x0, y1, x1)`` in pixels of ``x``, non-empty.
    """
    B, C, h, w = x.shape
    ys = torch.minimum(torch.maximum(torch.arange(h, device=x.device), boxes[:, 0:1]), boxes[:, 2:3] - 1)  # B x h
    xs = torch.minimum(torch.maximum(torch.arange(w, device=x.device), boxes[:, 1:2]), boxes[:, 3:4] - 1)  # B x w
    x = x.gather(2, ys[:, None, :, None].expand(B, C, h, w))  # B x C x h x w, rows clamped
    return x.gather(3, xs[:, None, None, :].expand(B, C, h, w))  # columns clamped


class DynamicLocalUpsampling(nn.Module):
    """DLU (Eq. 21-24): coarse MLP, box, edge-guided ×16 upsampling inside the box only.

    Args:
        embed_dim: token width ``d`` (256); the stages map ``d → d/4 → d/16 → d/64 → 1``.
        num_upsamplers: ×2 stages (4, total ×16).
        threshold: coarse-logit threshold of the box (-2.0).
        background: logit written outside the box (-100.0).
        crop_norm: GroupNorm statistics on the crop (True, authors) or of the full map (False).
        local: None (default): full upsampling in training mode, local in eval mode (the
            authors' train/eval heads); True/False force the local ("DLU") or full ("Non-DLU")
            path.

    Forward:
        x: ``(B, d, h, w)`` refined tokens ``F_R``.
        edges: CannyNet features coarse to fine, ``edges[j]`` ``(B, d / 4^j, 2^(j+1) h, 2^(j+1) w)``.
        Returns ``logits`` ``(B, 1, 16h, 16w)`` and the coarse logits ``(B, 1, h, w)``.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 256,
        num_upsamplers: int = 4,
        threshold: float = -2.0,
        background: float = -100.0,
        crop_norm: bool = True,
        local: bool | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        d = check_int(embed_dim, "embed_dim", owner=owner, minimum=1)
        n = check_int(num_upsamplers, "num_upsamplers", owner=owner, minimum=1)
        chans = [d // 4 ** i for i in range(n)] + [1]
        if any(c < 1 for c in chans[:-1]) or d % 4 ** (n - 1):
            raise ValueError(f"{owner}: embed_dim ({d}) must be divisible by 4^(num_upsamplers - 1) = {4 ** (n - 1)}")
        self.embed_dim, self.channels = d, tuple(chans)
        self.threshold = check_finite_float(threshold, "threshold", owner=owner)
        self.background = check_finite_float(background, "background", owner=owner)
        self.crop_norm = bool(crop_norm)
        self.local = local
        self.mlp = SimMLP(in_chans=d, dims=[max(d // 4 ** (i + 1), 1) for i in range(n - 1)] + [1])
        self.upsamplers = nn.ModuleList(
            Upsample2x(channels=chans[i], out_channels=chans[i + 1], act=i < n - 1) for i in range(n)
        )

    @property
    def scale(self) -> int:
        return 2 ** len(self.upsamplers)

    def _check(self, x: torch.Tensor, edges: Sequence[torch.Tensor]) -> None:
        owner = type(self).__name__
        B, _, h, w = check_tensor(x, "x", owner=owner, shape=("B", ("d", self.embed_dim), "h", "w"))
        check_module_dtype(x, self, owner=owner)
        if not isinstance(edges, (list, tuple)) or len(edges) != len(self.upsamplers):
            raise ValueError(f"{owner}: edges must be a list of {len(self.upsamplers)} feature maps (coarse to fine)")
        for j, e in enumerate(edges):
            want = (B, self.channels[j], h * 2 ** (j + 1), w * 2 ** (j + 1))
            check_tensor(e, f"edges[{j}]", owner=owner, shape=("B", ("C", want[1]), "H", "W"))
            if tuple(e.shape) != want:
                raise ValueError(f"{owner}: edges[{j}] must be {want} for x {tuple(x.shape)}; got {tuple(e.shape)}")

    def upsample(self, x: torch.Tensor, edges: Sequence[torch.Tensor], stats: Sequence[_Stats] | None = None,
                 record: list | None = None) -> torch.Tensor:
        """``Up(F, {F^e})`` of Eq. 24 on a whole map (or crop): ``(B, d, h, w)`` → ``(B, 1, 16h, 16w)``."""
        for j, (up, edge) in enumerate(zip(self.upsamplers, edges)):
            if record is not None:
                record.append(up.statistics(x))
            x = up(x, edge, None if stats is None else stats[j])
        return x

    def _coarse_and_stats(self, x, edges) -> tuple[torch.Tensor, bool, list[_Stats] | None]:
        """Checks, the coarse logits (Eq. 21), whether to upsample locally, and the full-map
        GroupNorm statistics when ``crop_norm=False`` (None: each crop's own)."""
        self._check(x, edges)
        coarse = self.mlp(x.detach())  # B x 1 x h x w, Eq. 21
        local = ((not self.training) if self.local is None else self.local) and x.shape[0] > 0
        stats = None
        if local and not self.crop_norm:
            stats = []
            self.upsample(x, edges, record=stats)
        return coarse, local, stats

    def forward(self, x: torch.Tensor, edges: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        coarse, local, stats = self._coarse_and_stats(x, edges)
        if not local:
            return self.upsample(x, edges), coarse
        B, _, h, w = x.shape
        s = self.scale
        out = x.new_full((B, 1, h * s, w * s), self.background)  # Eq. 24 canvas
        for b, (y0, x0, y1, x1) in enumerate(logit_boxes(coarse, self.threshold).tolist()):
            crop = x[b:b + 1, :, y0:y1, x0:x1]  # 1 x d x hB x wB, Eq. 22
            crop_edges = [e[b:b + 1, :, y0 * 2 ** (j + 1):y1 * 2 ** (j + 1), x0 * 2 ** (j + 1):x1 * 2 ** (j + 1)]
                          for j, e in enumerate(edges)]
            st = None if stats is None else [(m[b:b + 1], v[b:b + 1]) for m, v in stats]
            out[b:b + 1, :, y0 * s:y1 * s, x0 * s:x1 * s] = self.upsample(crop, crop_edges, st)
        return out, coarse

    def forward_static(self, x: torch.Tensor, edges: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` with static shapes (module docstring), for ``torch.export`` / ONNX: same outputs."""
        coarse, local, stats = self._coarse_and_stats(x, edges)
        if not local:
            return self.upsample(x, edges), coarse
        B, _, h, w = x.shape
        boxes = logit_boxes(coarse, self.threshold)  # B x 4 tokens, Eq. 22
        f = 1  # scale of the current stage input
        for j, (up, edge) in enumerate(zip(self.upsamplers, edges)):
            st = stats[j] if stats is not None else up.statistics(x, box_mask(boxes * f, h * f, w * f))
            x = up(clamp_to_box(x, boxes * f), edge, st, pad_mask=box_mask(boxes * 2 * f, h * 2 * f, w * 2 * f))
            f *= 2
        inside = box_mask(boxes * f, h * f, w * f)  # B x 1 x H x W
        return torch.where(inside, x, torch.full_like(x, self.background)), coarse  # Eq. 24

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, threshold={self.threshold}, crop_norm={self.crop_norm}, local={self.local}"
