"""Selective scan (Mamba's S6 recurrence) with backend dispatch.

Mamba (Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", 2023),
§3.2 / Alg. 2, used by HRSAM's Cycle-scan (HRSAM §3.5, Eq. 9-10). Per channel ``d`` and state
``n``, with input-dependent ``Δ``, ``B``, ``C``:

    h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t,    y_t = C_t · h_t + D u_t,    out = y ⊙ silu(z)

with ``Δ = softplus(delta + delta_bias)`` when ``delta_softplus`` (else ``delta + delta_bias``).
Shapes and semantics are mamba-ssm's ``selective_scan_fn`` / ``selective_scan_ref`` (real
``A`` and input-dependent ``B``/``C`` only).

Backends, tried in order by ``backend="auto"``:

=========  =================================================  ==========================
name       where                                              dtypes
=========  =================================================  ==========================
mamba      CUDA with ``mamba_ssm`` installed (fused kernel)   fp32, fp16, bf16
chunked    any device; ``≈ 2·sqrt(L)`` Python steps           all floating
reference  any device; one Python step per token; only when   all floating
           named (the oracle)
=========  =================================================  ==========================
"""
from __future__ import annotations

import torch

from segblocks.ops._dispatch import Backend, dispatch, explain
from segblocks.ops.selective_scan.chunked import selective_scan_chunked
from segblocks.ops.selective_scan.naive import selective_scan_reference

__all__ = [
    "SELECTIVE_SCAN_BACKENDS",
    "explain_selective_scan",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_reference",
]

_MAMBA_MAX_STATE = 256  # the CUDA kernel keeps the state in registers


def _mamba_check(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, *tensors: torch.Tensor) -> list[str]:
    if A.shape[1] > _MAMBA_MAX_STATE:
        return [f"state size N={A.shape[1]} > {_MAMBA_MAX_STATE}"]
    return []


SELECTIVE_SCAN_BACKENDS: tuple[Backend, ...] = (
    Backend(
        name="mamba",
        loader="segblocks.ops.selective_scan.mamba:selective_scan_mamba",
        devices=frozenset({"cuda"}),
        dtypes=frozenset({torch.float32, torch.float16, torch.bfloat16}),
        requires=("mamba_ssm",),
        check=_mamba_check,
    ),
    Backend(name="chunked", loader=selective_scan_chunked),
    Backend(name="reference", loader=selective_scan_reference, auto=False),
)


def _validate(u, delta, A, B, C, D, z, delta_bias) -> None:
    named = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}
    for name, t in named.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"selective_scan: {name} must be a tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"selective_scan: {name} must be a real floating tensor, got {t.dtype}")
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (B, D, L), got shape {tuple(u.shape)}")
    batch, channels, length = u.shape
    for name, t in (("delta", delta), ("z", z)):
        if t is not None and t.shape != u.shape:
            raise ValueError(f"selective_scan: {name} must be (B, D, L) = {tuple(u.shape)}, got {tuple(t.shape)}")
    if A.dim() != 2 or A.shape[0] != channels or A.shape[1] == 0:
        raise ValueError(f"selective_scan: A must be (D, N) with D={channels}, N >= 1, got {tuple(A.shape)}")
    state = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 3 and t.shape == (batch, state, length):
            continue
        if t.dim() == 4 and t.shape[0] == batch and t.shape[2:] == (state, length) and t.shape[1] >= 1:
            if channels % t.shape[1]:
                raise ValueError(f"selective_scan: {name} has G={t.shape[1]} groups, which must divide D={channels}")
            continue
        raise ValueError(
            f"selective_scan: {name} must be (B, N, L) = {(batch, state, length)} or (B, G, N, L) = "
            f"{(batch, 'G', state, length)}, got {tuple(t.shape)}"
        )
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (channels,):
            raise ValueError(f"selective_scan: {name} must be (D,) = ({channels},), got {tuple(t.shape)}")
    devices = {t.device for t in named.values() if t is not None}
    if len(devices) > 1:
        raise ValueError(f"selective_scan: all inputs must be on one device, got {sorted(map(str, devices))}")


def _tensors(u, delta, A, B, C, D, z, delta_bias) -> tuple[torch.Tensor, ...]:
    return tuple(t for t in (u, delta, A, B, C, D, z, delta_bias) if t is not None)


def explain_selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
) -> dict[str, list[str]]:
    """Why each backend would (empty list) or would not run these inputs."""
    return explain("selective_scan", SELECTIVE_SCAN_BACKENDS, _tensors(u, delta, A, B, C, D, z, delta_bias))


def selective_scan(
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
    backend: str = "auto",
) -> torch.Tensor:
    """Selective scan (Mamba §3.2, Alg. 2) over ``L`` for every batch element and channel.

    Args:
        u: ``(B, D, L)`` input sequence.
        delta: ``(B, D, L)`` time step before bias/softplus.
        A: ``(D, N)`` real state matrix (diagonal per channel; Mamba uses ``A < 0``).
        B, C: ``(B, N, L)`` shared by all channels, or grouped ``(B, G, N, L)`` where channel
            ``d`` reads group ``d // (D / G)``.
        D: ``(D,)`` skip connection, or None.
        z: ``(B, D, L)`` gate (``out *= silu(z)``), or None.
        delta_bias: ``(D,)`` added to ``delta``, or None.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        backend: ``"auto"`` or a name in :data:`SELECTIVE_SCAN_BACKENDS`.

    Returns:
        ``(B, D, L)`` in ``u.dtype`` (accumulated in float32, float64 for float64 inputs).

    Raises:
        TypeError / ValueError: malformed inputs.
        segblocks.ops._dispatch.BackendUnavailable: no backend (or not the named one) can run
            them; the message lists every refusal (see :func:`explain_selective_scan`).
    """
    _validate(u, delta, A, B, C, D, z, delta_bias)
    fn = dispatch("selective_scan", SELECTIVE_SCAN_BACKENDS, _tensors(u, delta, A, B, C, D, z, delta_bias), backend)
    return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
