"""Modulated deformable convolution v2 (DCNv2) with backend dispatch.

Deformable ConvNets v2 (Zhu et al., "Deformable ConvNets v2: More Deformable, Better Results",
CVPR 2019), Eq. 3: ``y(p) = Σ_k w_k · x(p + p_k + Δp_k) · Δm_k`` with bilinear sampling and zeros
outside the map; FocSAM's refine block uses it as the residual convolution of its MSA module
(FocSAM §3.2, Eq. 5; ``DeformLayer`` in YouHuang67/focsam ``focsam/refine_heads/focus_refiner.py``,
which calls mmcv's ``ModulatedDeformConv2d``). No torchvision and no mmcv are needed.

The op is a deformable im2col followed by a grouped GEMM (mmcv's algorithm). The im2col has two
backends, tried in order by ``backend="auto"``; the GEMM (and so the weight and bias gradients)
is torch's in both:

========  ==================================================  ===========================
name      where                                               dtypes
========  ==================================================  ===========================
triton    CUDA; CPU only under ``TRITON_INTERPRET=1`` and     fp32, fp16 (+ bf16 on CUDA)
          only when named (the interpreter is for testing)
pytorch   any device (one ``F.grid_sample`` per deform group) all floating
========  ==================================================  ===========================

Layouts follow mmcv / torchvision, so an offset convolution trained with either loads:
``offset`` ``(B, 2·G_d·K, Ho, Wo)``, channel ``g·2K + 2k`` = Δy and ``g·2K + 2k + 1`` = Δx of
kernel point ``k = i·KW + j``; ``mask`` ``(B, G_d·K, Ho, Wo)``.
"""
from __future__ import annotations

import torch

from segblocks.ops._checks import check_int, check_tensor
from segblocks.ops._dispatch import Backend, dispatch, explain, triton_check
from segblocks.ops.deform_conv.naive import (
    _columns_to_output,
    deform_im2col_pytorch,
    modulated_deform_conv2d_pytorch,
)

__all__ = [
    "DEFORM_CONV_BACKENDS",
    "explain_deform_conv",
    "modulated_deform_conv2d",
    "modulated_deform_conv2d_pytorch",
]

_OP = "modulated_deform_conv2d"


DEFORM_CONV_BACKENDS: tuple[Backend, ...] = (
    Backend(
        name="triton",
        loader="segblocks_kernels.deform_conv:deform_im2col_triton",
        dtypes=frozenset({torch.float32, torch.float16, torch.bfloat16}),
        check=triton_check,
    ),
    Backend(name="pytorch", loader=deform_im2col_pytorch),
)


def _pair(value, name: str, minimum: int) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{_OP}: {name} must be an int or an (h, w) pair, got {value!r}")
        return (check_int(value[0], name, owner=_OP, minimum=minimum), check_int(value[1], name, owner=_OP, minimum=minimum))
    v = check_int(value, name, owner=_OP, minimum=minimum)
    return v, v


def _validate(input, offset, mask, weight, bias, stride, padding, dilation, groups):
    B, C, H, W = check_tensor(input, "input", owner=_OP, shape=("B", "C", "H", "W"))
    Cout, Cg, KH, KW = check_tensor(weight, "weight", owner=_OP, shape=("C_out", "C/groups", "KH", "KW"))
    stride = _pair(stride, "stride", 1)
    padding = _pair(padding, "padding", 0)
    dilation = _pair(dilation, "dilation", 1)
    groups = check_int(groups, "groups", owner=_OP, minimum=1)
    if C % groups or Cout % groups or Cg != C // groups:
        raise ValueError(
            f"{_OP}: weight must be (C_out, C/groups={C // groups if C % groups == 0 else '?'}, KH, KW) with C={C} "
            f"and C_out divisible by groups={groups}, got weight {tuple(weight.shape)}"
        )
    K = KH * KW
    Ho = (H + 2 * padding[0] - dilation[0] * (KH - 1) - 1) // stride[0] + 1
    Wo = (W + 2 * padding[1] - dilation[1] * (KW - 1) - 1) // stride[1] + 1
    if Ho < 1 or Wo < 1:
        raise ValueError(f"{_OP}: a {H}x{W} input is smaller than the {KH}x{KW} kernel with padding {padding}, dilation {dilation}")
    check_tensor(offset, "offset", owner=_OP, ndim=4)
    check_tensor(mask, "mask", owner=_OP, ndim=4)
    if offset.shape[0] != B or offset.shape[1] % (2 * K) or tuple(offset.shape[2:]) != (Ho, Wo):
        raise ValueError(
            f"{_OP}: offset must be (B={B}, 2*G_d*K with K={K}, Ho={Ho}, Wo={Wo}), got {tuple(offset.shape)}"
        )
    Gd = offset.shape[1] // (2 * K)
    if Gd == 0 or C % Gd:
        raise ValueError(f"{_OP}: offset gives {Gd} deform groups, which must be >= 1 and divide C={C}")
    if tuple(mask.shape) != (B, Gd * K, Ho, Wo):
        raise ValueError(f"{_OP}: mask must be (B, G_d*K, Ho, Wo) = {(B, Gd * K, Ho, Wo)}, got {tuple(mask.shape)}")
    if bias is not None:
        check_tensor(bias, "bias", owner=_OP, shape=(("C_out", Cout),))
    devices = {t.device for t in (input, offset, mask, weight)}
    if len(devices) > 1:
        raise ValueError(f"{_OP}: input, offset, mask and weight must be on one device, got {devices}")
    return stride, padding, dilation, groups, (KH, KW), (Ho, Wo)


def explain_deform_conv(
    input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, *, backend: str = "auto"
) -> dict[str, list[str]]:
    """Why each im2col backend would (empty list) or would not run these inputs."""
    return explain(_OP, DEFORM_CONV_BACKENDS, (input, offset, mask), requested=backend)


def modulated_deform_conv2d(
    input: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    backend: str = "auto",
) -> torch.Tensor:
    """Modulated deformable convolution (DCNv2 Eq. 3), differentiable in every tensor argument.

    Args:
        input: ``(B, C, H, W)``.
        offset: ``(B, 2·G_d·K, Ho, Wo)`` (Δy, Δx) per kernel point and deform group ``G_d``.
        mask: ``(B, G_d·K, Ho, Wo)`` modulation scalars (FocSAM: a sigmoid).
        weight: ``(C_out, C / groups, KH, KW)``; ``K = KH·KW``.
        bias: optional ``(C_out,)``.
        stride, padding, dilation: ints or ``(h, w)`` pairs, as in ``nn.Conv2d``.
        groups: convolution groups.
        backend: ``"auto"`` or a name in :data:`DEFORM_CONV_BACKENDS` (the im2col part).

    Returns:
        ``(B, C_out, Ho, Wo)`` in ``input.dtype`` (float32 accumulation for half inputs).

    Raises:
        TypeError / ValueError: malformed inputs (metadata only, no host synchronisation).
        segblocks.ops._dispatch.BackendUnavailable: the named backend cannot run them.
    """
    stride, padding, dilation, groups, ksize, out_hw = _validate(
        input, offset, mask, weight, bias, stride, padding, dilation, groups
    )
    im2col = dispatch(_OP, DEFORM_CONV_BACKENDS, (input, offset, mask), backend, requested=backend)
    cols = im2col(input, offset, mask, ksize, stride, padding, dilation)  # B x C x K x Ho·Wo
    return _columns_to_output(cols, weight, bias, groups, out_hw).to(input.dtype)
