"""Sequential selective scan: a Python loop over the sequence (the ``reference`` backend).

Mamba (Gu & Dao, 2023), Alg. 2 / Eq. 2a-2b with the simplified ZOH discretisation that
mamba-ssm uses: ``Ā_t = exp(Δ_t A)`` and ``B̄_t x_t = Δ_t B_t x_t`` (HRSAM §3.5, Eq. 10 states
the exact ZOH ``B̄``; like the authors' kernel, every backend here uses the Euler form). One step
per token makes it slow but obviously correct; it is the oracle the faster backends are
checked against and is never picked by ``backend="auto"``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["compute_dtype", "expand_groups", "selective_scan_reference"]


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 if any input is float64, else float32 (half inputs accumulate in float32)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def expand_groups(BC: torch.Tensor, channels: int) -> torch.Tensor:
    """Per-channel view of input-dependent ``B``/``C``: ``(B, N, L)`` or ``(B, G, N, L)`` → ``(B, D, L, N)``.

    Channel ``d`` uses group ``d // (D / G)`` (mamba-ssm's ``"B G N L -> B (G H) N L"``).
    """
    if BC.dim() == 3:
        return BC.transpose(1, 2).unsqueeze(1).expand(-1, channels, -1, -1)  # B x D x L x N
    groups = BC.shape[1]
    return BC.transpose(2, 3).repeat_interleave(channels // groups, dim=1)  # B x D x L x N


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """``h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t``, ``y_t = C_t h_t + D u_t``, ``out = y ⊙ silu(z)``.

    Args:
        u, delta: ``(B, D, L)``; ``z``: ``(B, D, L)`` or None.
        A: ``(D, N)`` real.
        B, C: ``(B, N, L)`` or grouped ``(B, G, N, L)`` with ``G | D``.
        D, delta_bias: ``(D,)`` or None.
        delta_softplus: apply ``softplus`` to ``delta + delta_bias``.

    Returns:
        ``(B, D, L)`` in ``u.dtype``, accumulated in float32 (float64 for float64 inputs).
    """
    ct = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    batch, channels, _ = u.shape
    dtype_in = u.dtype
    u, delta, A = u.to(ct), delta.to(ct), A.to(ct)
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    Bx = expand_groups(B.to(ct), channels)  # B x D x L x N
    Cx = expand_groups(C.to(ct), channels)  # B x D x L x N
    h = u.new_zeros(batch, channels, A.shape[1])  # B x D x N
    ys = []
    # unbind once: indexing step t of a full tensor would cost a full-size zero gradient per step
    for dt_t, du_t, B_t, C_t in zip(delta.unbind(-1), (delta * u).unbind(-1), Bx.unbind(2), Cx.unbind(2)):
        h = torch.exp(dt_t[..., None] * A) * h + du_t[..., None] * B_t  # B x D x N
        ys.append((h * C_t).sum(-1))  # B x D
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(batch, channels, 0)  # B x D x L
    if D is not None:
        y = y + u * D.to(ct)[:, None]
    if z is not None:
        y = y * F.silu(z.to(ct))
    return y.to(dtype_in)
