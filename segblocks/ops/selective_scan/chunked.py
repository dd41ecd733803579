"""Chunked selective scan in pure PyTorch (the ``chunked`` backend, the default off mamba-ssm).

Same recurrence as :func:`~segblocks.ops.selective_scan.naive.selective_scan_reference`
(``h_t = Ā_t ⊙ h_{t-1} + Δ_t B_t u_t`` with ``Ā_t = exp(Δ_t A)``), but with ``≈ 2·sqrt(L)``
Python steps instead of ``L``, each on a tensor ``L / T`` times larger, and the same
``O(B·D·L·N)`` work as the loop:

1. Cut the sequence into ``n_c`` chunks of ``T`` tokens (the tail is padded with identity
   steps: ``log Ā = 0``, input 0) and run the recurrence from a zero state inside **all chunks
   at once** (``T`` steps on ``(B, D, n_c, N)``): ``h^loc``.
2. Carry between chunks (``n_c`` steps on ``(B, D, N)``): ``H_c = P_c ⊙ H_{c-1} + h^loc_{c,T}``
   where ``P_c`` is the chunk's total decay.
3. Fix-up: ``h_t = h^loc_t + exp(S_t) ⊙ H_{c-1}``, with ``S_t`` the log-space cumulative sum of
   ``Δ A`` from the chunk start to ``t`` (inclusive).

Stability trick: the state is never divided by a decay. The tempting closed form
``h_t = exp(S_t) Σ_s exp(-S_s) b_s`` needs ``exp(-S_s)``, which overflows float32 as soon as
a chunk decays by more than ``e^88`` (``T Δ |A| > 88``: a handful of tokens with ``A = -32``).
Here every exponential is of ``Δ A`` or of its forward cumulative sum ``S_t``, i.e. a product
of the step decays the recurrence itself applies; with ``A < 0`` and ``Δ > 0`` (as in Mamba)
all exponents are ``≤ 0``, and with other signs no value exceeds what the loop computes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from segblocks.ops.selective_scan.naive import compute_dtype, expand_groups

__all__ = ["selective_scan_chunked"]


def selective_scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    *,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Selective scan by chunks (see the module docstring for the algorithm).

    Args:
        u, delta: ``(B, D, L)``; ``z``: ``(B, D, L)`` or None.
        A: ``(D, N)`` real.
        B, C: ``(B, N, L)`` or grouped ``(B, G, N, L)`` with ``G | D``.
        D, delta_bias: ``(D,)`` or None.
        delta_softplus: apply ``softplus`` to ``delta + delta_bias``.
        chunk_size: tokens per chunk ``T``; None picks ``ceil(sqrt(L))``, which minimises the
            number of Python steps ``T + L / T``.

    Returns:
        ``(B, D, L)`` in ``u.dtype``, accumulated in float32 (float64 for float64 inputs).
    """
    ct = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    batch, channels, length = u.shape
    state = A.shape[1]
    dtype_in = u.dtype
    u, delta, A = u.to(ct), delta.to(ct), A.to(ct)
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    T = chunk_size if chunk_size is not None else max(1, math.isqrt(max(length - 1, 0)) + 1)
    n_chunks = -(-length // T)
    pad = n_chunks * T - length

    log_decay = delta[..., None] * A[:, None, :]  # B x D x L x N, log Ā_t
    drive = (delta * u)[..., None] * expand_groups(B.to(ct), channels)  # B x D x L x N, Δ_t B_t u_t
    # identity steps in the padded tail: Ā = exp(0) = 1, no input
    log_decay = F.pad(log_decay, (0, 0, 0, pad)).view(batch, channels, n_chunks, T, state)  # B x D x nc x T x N
    drive = F.pad(drive, (0, 0, 0, pad)).view(batch, channels, n_chunks, T, state)  # B x D x nc x T x N

    # 1. every chunk from a zero state, all chunks in parallel
    decay = log_decay.exp()
    h = drive.new_zeros(batch, channels, n_chunks, state)  # B x D x nc x N
    local = []
    for t in range(T):
        h = decay[:, :, :, t] * h + drive[:, :, :, t]
        local.append(h)
    h_local = torch.stack(local, dim=3)  # B x D x nc x T x N

    # 2. sequential carry of the state entering each chunk
    cum_decay = log_decay.cumsum(dim=3).exp()  # B x D x nc x T x N, exp(S_t) = Ā_1 ⋯ Ā_t in the chunk
    carry = drive.new_zeros(batch, channels, state)  # B x D x N
    carries = []
    for c in range(n_chunks):
        carries.append(carry)
        carry = cum_decay[:, :, c, -1] * carry + h_local[:, :, c, -1]
    h_in = torch.stack(carries, dim=2) if carries else h.new_zeros(batch, channels, 0, state)  # B x D x nc x N

    # 3. add the carried state's decayed contribution and read out
    h_full = h_local + cum_decay * h_in[:, :, :, None]  # B x D x nc x T x N
    h_full = h_full.view(batch, channels, n_chunks * T, state)[:, :, :length]  # B x D x L x N
    y = (h_full * expand_groups(C.to(ct), channels)).sum(-1)  # B x D x L
    if D is not None:
        y = y + u * D.to(ct)[:, None]
    if z is not None:
        y = y * F.silu(z.to(ct))
    return y.to(dtype_in)
