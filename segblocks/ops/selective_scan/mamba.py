"""mamba-ssm's fused CUDA selective scan (the ``mamba`` backend), imported on first call.

``mamba_ssm`` is optional and never imported by ``import segblocks``; the dispatcher refuses
this backend with a reason when it is not installed, off CUDA, or given float64 inputs. The
kernel wants ``A``, ``D`` and ``delta_bias`` in float32 and ``delta``/``B``/``C``/``z`` in the
dtype of ``u``; this wrapper casts them so callers may mix dtypes as with the other backends.
"""
from __future__ import annotations

import torch

__all__ = ["selective_scan_mamba"]


def selective_scan_mamba(
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
    """``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` with dtype normalisation.

    Shapes as in :func:`segblocks.ops.selective_scan.selective_scan`; returns ``(B, D, L)`` in
    ``u.dtype`` (the kernel accumulates in float32).
    """
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.float()

    def _like_u(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(u.dtype)

    return selective_scan_fn(
        u, _like_u(delta), _f32(A), _like_u(B), _like_u(C), _f32(D), _like_u(z), _f32(delta_bias),
        delta_softplus=delta_softplus,
    )
