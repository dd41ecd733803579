"""Pure-PyTorch modulated deformable convolution v2 (no compiled code, no torchvision, no mmcv).

Deformable ConvNets v2 (Zhu et al., "Deformable ConvNets v2: More Deformable, Better Results",
CVPR 2019), Eq. 3: ``y(p) = Σ_k w_k · x(p + p_k + Δp_k) · Δm_k``, with ``x(·)`` read by bilinear
interpolation (zero outside the map). Implemented as mmcv's ``ModulatedDeformConv2d`` does it
(the op FocSAM's code uses, YouHuang67/focsam ``focsam/refine_heads/focus_refiner.py``): a
*deformable im2col* builds the columns ``Δm_k · x(p + p_k + Δp_k)`` (here one ``F.grid_sample``
per deform group, ``align_corners=False`` on pixel centres) and a grouped matrix product with the
weight finishes the convolution. Autograd differentiates everything (input, offsets, mask,
weight, bias).

Layouts (those of mmcv and torchvision, so offset convolutions trained with either load):
``offset`` ``(B, 2·G_d·K, Ho, Wo)`` with channel ``g·2K + 2k`` the **y** (row) and
``g·2K + 2k + 1`` the **x** (column) displacement of kernel point ``k = i·KW + j`` of deform
group ``g``; ``mask`` ``(B, G_d·K, Ho, Wo)`` with channel ``g·K + k``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["deform_im2col_pytorch", "modulated_deform_conv2d_pytorch", "sampling_grid"]


def sampling_grid(
    offset: torch.Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Absolute sampling positions ``p_0 + p_k + Δp_k`` in input pixels (DCNv2 Eq. 3).

    Args:
        offset: ``(B, 2·G_d·K, Ho, Wo)`` (y, x) pairs per kernel point.

    Returns:
        ``py``, ``px``: ``(B, G_d, K, Ho, Wo)`` row and column of every sample.
    """
    B, _, Ho, Wo = offset.shape
    KH, KW = kernel_size
    K = KH * KW
    off = offset.view(B, offset.shape[1] // (2 * K), K, 2, Ho, Wo)  # B x G_d x K x 2 x Ho x Wo
    dev, dt = offset.device, offset.dtype
    ki = torch.arange(KH, device=dev, dtype=dt).repeat_interleave(KW) * dilation[0]  # K
    kj = torch.arange(KW, device=dev, dtype=dt).repeat(KH) * dilation[1]  # K
    oy = torch.arange(Ho, device=dev, dtype=dt) * stride[0] - padding[0]  # Ho
    ox = torch.arange(Wo, device=dev, dtype=dt) * stride[1] - padding[1]  # Wo
    py = off[:, :, :, 0] + (ki.view(K, 1, 1) + oy.view(1, Ho, 1))  # B x G_d x K x Ho x Wo
    px = off[:, :, :, 1] + (kj.view(K, 1, 1) + ox.view(1, 1, Wo))  # B x G_d x K x Ho x Wo
    return py, px


def deform_im2col_pytorch(
    input: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> torch.Tensor:
    """Modulated deformable columns ``Δm_k · x(p_0 + p_k + Δp_k)`` (bilinear, zeros outside).

    Args:
        input: ``(B, C, H, W)``.
        offset: ``(B, 2·G_d·K, Ho, Wo)``.
        mask: ``(B, G_d·K, Ho, Wo)``.

    Returns:
        ``(B, C, K, Ho·Wo)`` in the compute dtype (float32 for half inputs).
    """
    B, C, H, W = input.shape
    _, _, Ho, Wo = offset.shape
    K = kernel_size[0] * kernel_size[1]
    G = mask.shape[1] // K
    compute = torch.promote_types(input.dtype, torch.float32)
    py, px = sampling_grid(offset.to(compute), kernel_size, stride, padding, dilation)  # B x G x K x Ho x Wo
    # grid_sample(align_corners=False) puts pixel i at normalized (2i + 1) / size - 1.
    gx = (2 * px + 1) / W - 1
    gy = (2 * py + 1) / H - 1
    grid = torch.stack((gx, gy), dim=-1).view(B * G, K * Ho, Wo, 2)  # BG x KHo x Wo x 2
    x = input.to(compute).reshape(B * G, C // G, H, W)  # BG x C/G x H x W
    cols = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # BG x C/G x KHo x Wo
    cols = cols.view(B, G, C // G, K, Ho * Wo) * mask.to(compute).view(B, G, 1, K, Ho * Wo)  # B x G x C/G x K x L
    return cols.view(B, C, K, Ho * Wo)


def modulated_deform_conv2d_pytorch(
    input: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
) -> torch.Tensor:
    """Modulated deformable convolution (DCNv2 Eq. 3) by grid-sample im2col + grouped matmul.

    Shapes as in :func:`segblocks.ops.deform_conv.modulated_deform_conv2d` (inputs validated
    there). Half inputs are computed in float32; the output has ``input.dtype``.
    """
    B, C, _, _ = input.shape
    Cout, _, KH, KW = weight.shape
    Ho, Wo = offset.shape[-2:]
    cols = deform_im2col_pytorch(input, offset, mask, (KH, KW), stride, padding, dilation)  # B x C x K x L
    return _columns_to_output(cols, weight, bias, groups, (Ho, Wo)).to(input.dtype)


def _columns_to_output(
    cols: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int, out_hw: tuple[int, int]
) -> torch.Tensor:
    """Grouped GEMM ``W_g · cols_g`` (+ bias): ``cols`` (B, C, K, L) → (B, Cout, Ho, Wo)."""
    B, C, K, L = cols.shape
    Cout = weight.shape[0]
    cols = cols.reshape(B, groups, (C // groups) * K, L)  # B x G x (C/G)K x L
    w = weight.to(cols.dtype).reshape(groups, Cout // groups, (C // groups) * K)  # G x Cout/G x (C/G)K
    out = torch.einsum("gok,bgkl->bgol", w, cols).reshape(B, Cout, *out_hw)  # B x Cout x Ho x Wo
    if bias is not None:
        out = out + bias.to(out.dtype).view(1, Cout, 1, 1)
    return out
