"""HRSAM's Cycle-scan module and the two HRSAM++ variants built on it.

Huang et al., "HRSAM: Efficient Interactive Segmentation in High-Resolution Images", §3.5 (Cycle-scan, Eq. 9-10, Fig. 7), §3.6 and
supp. D.2 (multi-scale fusion, Fig. 8). A selective SSM (Mamba, Gu & Dao 2023) scans the
flattened (raster-order) token sequence *repeated R = 3 times*, so tokens late in the first
copy pass their information to tokens early in the next: every token sees every other one at
linear cost and with a unidirectional scan. The R outputs are split and merged by summation.

- :class:`CycleScan`: the HRSAM module (one before the last block of every stage).
- :class:`PerScaleCycleScan`: HRSAM++'s per-scale module, each scale cycled and scanned on its
  own with shared weights.
- :class:`MultiScaleCycleScan`: HRSAM++'s fusion module, one cycle-scan over all scales' tokens
  concatenated (supp. D.2: "the image tokens from both scales are concatenated and processed by
  an additional Cycle-scan module configured identically").

Where the paper is silent, we follow the authors' code (``class Mamba`` in
YouHuang67/High-Resolution-Segment-Anything, ``models/backbones/hrsam.py`` and
``models/backbones/hrsam_plusplus.py``):

- Mamba's block **without** the depthwise conv1d and **without** channel expansion (the inner
  width is ``dim``); the paper's "hidden dimension of 32" (supp. D.2) is the state size ``N``.
- ``LN → Linear(C, 2C) → SiLU`` on both halves ``x, z``; ``x_proj`` gives ``(Δ, B, C)`` per token
  with a **full-rank** ``Δ`` projection (``dt_rank="auto"``; an int restores Mamba's low-rank
  ``dt_proj``); one ``B``/``C`` shared by all channels (a single group); ``softplus(Δ + dt_bias)``.
- The R outputs are merged with learnable per-channel weights initialised to one (the paper's
  sum at init). Each copy includes the ``D u`` skip, so the skip counts R times, as in the code.
- Output ``x + out_proj(z ⊙ LN(y))`` (pre-norm residual block; the ``LN(y)`` is VMamba's).
- The per-scale variant restarts the scan at each scale (separate scans, not one scan over
  ``[s1 s1 s1 s2 s2 s2]``).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segblocks.ops._checks import (
    check_finite_float,
    check_int,
    check_int_sequence,
    check_module_dtype,
    check_positive_int,
    check_tensor,
)
from segblocks.ops.selective_scan import selective_scan

__all__ = ["CycleScan", "MultiScaleCycleScan", "PerScaleCycleScan"]


class CycleScan(nn.Module):
    """Cycle-scan, HRSAM §3.5 / Fig. 7: one selective scan over the sequence repeated ``R`` times.

    For input tokens ``x`` (raster order) with ``u, z = SiLU(Linear(LN(x)))``::

        y^(1..R) = SSM([u, u, ..., u])        (one scan over R·L tokens, Eq. 10)
        y = Σ_r w_r ⊙ y^(r)                    (per-channel w_r, initialised to 1 = the paper's sum)
        out = x + out_proj(z ⊙ LN(y))

    Shapes: ``x`` (B, L, C) → (B, L, C). ``split`` (lengths summing to L) scans each segment
    separately (HRSAM++ per-scale use); see :class:`PerScaleCycleScan`.

    Args:
        dim: channels C (the SSM is applied channel-wise, no expansion).
        d_state: SSM state size N (32 in HRSAM, supp. D.2).
        repeats: R, the number of cycles (3 in the paper).
        dt_rank: ``"auto"`` for the authors' full-rank Δ projection (C → C), or an int r < C for
            Mamba's low-rank ``x_proj`` (C → r) + ``dt_proj`` (r → C).
        dt_min, dt_max, dt_init_floor: Mamba's Δ init: ``softplus(dt_bias) = dt`` with
            ``dt ~ logU(dt_min, dt_max)`` clamped to ``>= dt_init_floor``.
        dt_scale: the Δ-projection weights start as ``U(±dt_scale / sqrt(rank))``.
        backend: selective-scan backend (see :func:`segblocks.ops.selective_scan.selective_scan`).
    """

    def __init__(
        self,
        *,
        dim: int,
        d_state: int = 32,
        repeats: int = 3,
        dt_rank: int | str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_scale: float = 1.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        dim = check_positive_int(dim, "dim", owner=owner)
        d_state = check_positive_int(d_state, "d_state", owner=owner)
        repeats = check_positive_int(repeats, "repeats", owner=owner)
        if isinstance(dt_rank, str):
            if dt_rank != "auto":
                raise ValueError(f"{owner}: dt_rank must be 'auto' or an int in [1, {dim}], got {dt_rank!r}")
            dt_rank = dim
        dt_rank = check_int(dt_rank, "dt_rank ('auto' or an int)", owner=owner)  # True would mean rank 1
        if not 1 <= dt_rank <= dim:
            raise ValueError(f"{owner}: dt_rank must be 'auto' or an int in [1, {dim}], got {dt_rank!r}")
        dt_min, dt_max = (check_finite_float(v, n, owner=owner) for v, n in ((dt_min, "dt_min"), (dt_max, "dt_max")))
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"{owner}: need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        self.dim, self.d_state, self.repeats, self.dt_rank = dim, d_state, repeats, dt_rank
        self.backend = backend

        self.in_norm = nn.LayerNorm(dim)
        self.in_proj = nn.Linear(dim, 2 * dim)
        self.x_proj = nn.Linear(dim, dt_rank + 2 * d_state)  # → (Δ or its low-rank code, B, C)
        self.dt_proj = nn.Identity() if dt_rank == dim else nn.Linear(dt_rank, dim, bias=False)
        self.dt_bias = nn.Parameter(torch.empty(dim))  # the scan's delta_bias
        self.A_log = nn.Parameter(torch.empty(dim, d_state))
        self.D = nn.Parameter(torch.empty(dim))
        self.merge_weight = nn.Parameter(torch.empty(dim, repeats))
        self.out_norm = nn.LayerNorm(dim)
        self.out_proj = nn.Linear(dim, dim)
        # Mamba keeps the SSM's A and D out of weight decay; optimisers may read this tag
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self._dt_init = (dt_min, dt_max, dt_init_floor, dt_scale)
        self._reset_ssm_parameters()

    @torch.no_grad()
    def _reset_ssm_parameters(self) -> None:
        """Mamba's SSM init (S4D-real ``A = -(1..N)``, ``D = 1``, Δ init) and merge weights of one."""
        dt_min, dt_max, floor, scale = self._dt_init
        bound = scale * self.dt_rank**-0.5
        dt_weight = self.x_proj.weight[: self.dim] if self.dt_rank == self.dim else self.dt_proj.weight
        nn.init.uniform_(dt_weight, -bound, bound)
        nn.init.zeros_(self.x_proj.bias)
        log_dt = torch.rand(self.dim) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        dt = log_dt.exp().clamp(min=floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt)
        self.A_log.copy_(torch.arange(1, self.d_state + 1, dtype=torch.float32).log().expand(self.dim, -1))
        self.D.fill_(1.0)
        self.merge_weight.fill_(1.0)

    def _scan(self, u: torch.Tensor, dt: torch.Tensor, Bs: torch.Tensor, Cs: torch.Tensor) -> torch.Tensor:
        """Cycle-scan one sequence: (B, L, C), (B, L, C), (B, L, N), (B, L, N) → (B, L, C)."""
        R, length = self.repeats, u.shape[1]

        def cycle(t: torch.Tensor) -> torch.Tensor:
            return t.transpose(1, 2).repeat(1, 1, R)  # B x ch x RL, the whole sequence R times

        y = selective_scan(
            cycle(u), cycle(dt), -self.A_log.exp(), cycle(Bs), cycle(Cs), self.D,
            delta_bias=self.dt_bias, delta_softplus=True, backend=self.backend,
        )  # B x C x RL
        y = y.unflatten(-1, (R, length))  # B x C x R x L
        return torch.einsum("bcrl,cr->blc", y, self.merge_weight.to(y.dtype))  # B x L x C

    def forward(self, x: torch.Tensor, split: Sequence[int] | None = None) -> torch.Tensor:
        """
        Args:
            x: (B, L, C) tokens in raster order (several scales concatenated if ``split``).
            split: lengths of consecutive segments scanned separately (must sum to L), or None
                for one scan over all L tokens.
        Returns:
            (B, L, C).
        """
        owner = type(self).__name__
        _, length, _ = check_tensor(x, "x", owner=owner, shape=("B", "L", ("C", self.dim)))
        check_module_dtype(x, self, owner=owner)
        split = [length] if split is None else list(check_int_sequence(split, "split", owner=owner, minimum=0))
        if sum(split) != length:
            raise ValueError(f"{owner}: split {split} must be non-negative lengths summing to L={length}")
        u, z = F.silu(self.in_proj(self.in_norm(x))).chunk(2, dim=-1)  # B x L x C each
        dt_code, Bs, Cs = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = self.dt_proj(dt_code)  # B x L x C, before bias and softplus
        y = torch.cat(
            [self._scan(*parts) for parts in zip(*(t.split(split, dim=1) for t in (u, dt, Bs, Cs)))], dim=1
        )  # B x L x C
        return x + self.out_proj(z * self.out_norm(y))


def _check_scales(name: str, xs: Sequence[torch.Tensor]) -> list[int]:
    if isinstance(xs, torch.Tensor) or len(xs) == 0:
        raise ValueError(f"{name}: expected a non-empty list of (B, L_i, C) tensors, got {type(xs).__name__}")
    ref = xs[0]
    for i, t in enumerate(xs):
        check_tensor(t, f"scale {i}", owner=name, shape=("B", "L_i", "C"))
        if t.dtype != ref.dtype:
            raise TypeError(f"{name}: every scale must have dtype {ref.dtype} like scale 0, scale {i} is {t.dtype}")
        if t.dim() != 3 or t.shape[0] != ref.shape[0] or t.shape[2] != ref.shape[2]:
            raise ValueError(
                f"{name}: scale {i} must be (B, L_i, C) with B={ref.shape[0]}, C={ref.shape[2]} like scale 0, "
                f"got {tuple(t.shape)}"
            )
    return [t.shape[1] for t in xs]


class PerScaleCycleScan(CycleScan):
    """HRSAM++ per-scale Cycle-scan (§3.6, Fig. 8): every scale cycle-scanned on its own.

    One set of weights; the projections run on all tokens at once and a separate scan (from a
    zero state) runs per scale, as the authors' ``split=`` path does (``class Mamba`` in
    YouHuang67/High-Resolution-Segment-Anything, ``models/backbones/hrsam_plusplus.py``).
    Shapes: list of (B, L_i, C) → list of (B, L_i, C). Constructor as :class:`CycleScan`.
    """

    def forward(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:  # type: ignore[override]
        lengths = _check_scales("PerScaleCycleScan", xs)
        return list(super().forward(torch.cat(list(xs), dim=1), split=lengths).split(lengths, dim=1))


class MultiScaleCycleScan(CycleScan):
    """HRSAM++ multi-scale fusion Cycle-scan (§3.6, supp. D.2): one scan over all scales.

    The scales are concatenated in the given order (HRSAM++: the original-resolution tokens
    first, then the 512² anchor map's, each in raster order), the concatenation
    ``[s1 s2 … s1 s2 …]`` is cycled R times and scanned once, and the result is split back.
    Shapes: list of (B, L_i, C) → list of (B, L_i, C). Constructor as :class:`CycleScan`.
    """

    def forward(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:  # type: ignore[override]
        lengths = _check_scales("MultiScaleCycleScan", xs)
        return list(super().forward(torch.cat(list(xs), dim=1)).split(lengths, dim=1))
