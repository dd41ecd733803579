"""Triton forward and backward kernels of the modulated deformable im2col (DCNv2).

Deformable ConvNets v2 (Zhu et al., CVPR 2019), Eq. 3, computed as mmcv's
``ModulatedDeformConv2d`` computes it: deformable im2col (this file) followed by a grouped GEMM
with the weight (done by torch in ``segblocks.ops.deform_conv``, whose autograd gives the weight
and bias gradients). Same semantics as ``segblocks.ops.deform_conv.naive.deform_im2col_pytorch``:
bilinear sampling with zeros outside the map, offsets ``(y, x)`` interleaved per kernel point
(mmcv / torchvision layout), columns ``(B, C, K, Ho·Wo)`` in float32.

Layout: one program per ``BLOCK_P`` output positions of one ``(batch, deform group, kernel
point)``; it loops over the group's channels in ``BLOCK_C`` tiles, so the backward reduces the
offset and mask gradients over channels in registers (plain stores, deterministic) and scatters
only the input gradient with ``tl.atomic_add`` into a float32 buffer (not bitwise deterministic
on CUDA). Accumulation is float32 whatever the input dtype. Under ``TRITON_INTERPRET=1`` (the CPU
tests) the tile sizes are fixed small.

The launches are ``torch.library`` custom ops, ``segblocks::deform_im2col`` and
``segblocks::deform_im2col_backward``, registered when this module is imported (when the Triton
backend is first loaded; ``import segblocks`` never imports triton), with fake implementations
and an autograd formula: ``torch.compile`` traces through them and ``torch.export`` keeps them
as nodes.
"""
from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

__all__ = ["deform_im2col_triton"]


def _blocks() -> tuple[int, int]:
    if os.environ.get("TRITON_INTERPRET") == "1":
        return 16, 8
    return 64, 32


@triton.jit
def _corner(x_ptr, chan_base, yi, xi, H, W, tile_ok):
    """Input tile at integer pixel ``(yi, xi)`` per position (zeros outside) and its offsets/mask."""
    inside = (yi >= 0) & (yi < H) & (xi >= 0) & (xi < W)
    pix = tl.where(inside, yi * W + xi, 0)  # clamped so masked lanes still point in-bounds
    offs = chan_base[None, :] + pix[:, None]
    ok = tile_ok & inside[:, None]
    return tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32), offs, ok


@triton.jit
def _position(off_ptr, mask_ptr, b, g, k, p, p_ok, G, K, L, Wo, H, W, SH, SW, PH, PW, DH, DW, KW: tl.constexpr):
    """Sampling position of kernel point ``k`` at output positions ``p``: corners, fractions, mask."""
    off_base = ((b * G + g) * 2 * K + 2 * k) * L
    dy = tl.load(off_ptr + off_base + p, mask=p_ok, other=0.0).to(tl.float32)
    dx = tl.load(off_ptr + off_base + L + p, mask=p_ok, other=0.0).to(tl.float32)
    m = tl.load(mask_ptr + ((b * G + g) * K + k) * L + p, mask=p_ok, other=0.0).to(tl.float32)
    ho = p // Wo
    wo = p % Wo
    i = k // KW
    j = k % KW
    y = (ho * SH - PH + i * DH).to(tl.float32) + dy
    x = (wo * SW - PW + j * DW).to(tl.float32) + dx
    # Far-away samples: beyond [-1, size] every corner is outside; the clamp keeps the int cast safe.
    y = tl.minimum(tl.maximum(y, -2.0), H.to(tl.float32) + 1.0)
    x = tl.minimum(tl.maximum(x, -2.0), W.to(tl.float32) + 1.0)
    y0 = tl.floor(y)
    x0 = tl.floor(x)
    return y0.to(tl.int64), x0.to(tl.int64), y - y0, x - x0, m


@triton.jit
def _fwd_kernel(
    x_ptr, off_ptr, mask_ptr, col_ptr,
    C, H, W, Wo, L, G, Cg, SH, SW, PH, PW, DH, DW,
    K: tl.constexpr, KW: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(1).to(tl.int64)  # flattened (b, g, k)
    k = pid % K
    g = (pid // K) % G
    b = pid // (K * G)
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < L
    y0, x0, fy, fx, m = _position(off_ptr, mask_ptr, b, g, k, p, p_ok, G, K, L, Wo, H, W, SH, SW, PH, PW, DH, DW, KW)
    fy2 = fy[:, None]
    fx2 = fx[:, None]
    for c0 in range(0, Cg, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < Cg
        chan = (b * C + g * Cg + c).to(tl.int64)  # BLOCK_C
        tile_ok = p_ok[:, None] & c_ok[None, :]
        chan_base = chan * H * W
        v00, _, _ = _corner(x_ptr, chan_base, y0, x0, H, W, tile_ok)
        v01, _, _ = _corner(x_ptr, chan_base, y0, x0 + 1, H, W, tile_ok)
        v10, _, _ = _corner(x_ptr, chan_base, y0 + 1, x0, H, W, tile_ok)
        v11, _, _ = _corner(x_ptr, chan_base, y0 + 1, x0 + 1, H, W, tile_ok)
        val = (1 - fy2) * ((1 - fx2) * v00 + fx2 * v01) + fy2 * ((1 - fx2) * v10 + fx2 * v11)
        col_offs = (chan * K + k)[None, :] * L + p[:, None]
        tl.store(col_ptr + col_offs, m[:, None] * val, mask=tile_ok)


@triton.jit
def _bwd_kernel(
    x_ptr, off_ptr, mask_ptr, grad_col_ptr, grad_x_ptr, grad_off_ptr, grad_mask_ptr,
    C, H, W, Wo, L, G, Cg, SH, SW, PH, PW, DH, DW,
    K: tl.constexpr, KW: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(1).to(tl.int64)
    k = pid % K
    g = (pid // K) % G
    b = pid // (K * G)
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < L
    y0, x0, fy, fx, m = _position(off_ptr, mask_ptr, b, g, k, p, p_ok, G, K, L, Wo, H, W, SH, SW, PH, PW, DH, DW, KW)
    fy2 = fy[:, None]
    fx2 = fx[:, None]
    acc_m = tl.zeros([BLOCK_P], dtype=tl.float32)
    acc_dy = tl.zeros([BLOCK_P], dtype=tl.float32)
    acc_dx = tl.zeros([BLOCK_P], dtype=tl.float32)
    for c0 in range(0, Cg, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < Cg
        chan = (b * C + g * Cg + c).to(tl.int64)
        tile_ok = p_ok[:, None] & c_ok[None, :]
        chan_base = chan * H * W
        gc = tl.load(grad_col_ptr + (chan * K + k)[None, :] * L + p[:, None], mask=tile_ok, other=0.0).to(tl.float32)
        v00, o00, k00 = _corner(x_ptr, chan_base, y0, x0, H, W, tile_ok)
        v01, o01, k01 = _corner(x_ptr, chan_base, y0, x0 + 1, H, W, tile_ok)
        v10, o10, k10 = _corner(x_ptr, chan_base, y0 + 1, x0, H, W, tile_ok)
        v11, o11, k11 = _corner(x_ptr, chan_base, y0 + 1, x0 + 1, H, W, tile_ok)
        val = (1 - fy2) * ((1 - fx2) * v00 + fx2 * v01) + fy2 * ((1 - fx2) * v10 + fx2 * v11)
        acc_m += tl.sum(gc * val, axis=1)
        acc_dy += tl.sum(gc * ((1 - fx2) * (v10 - v00) + fx2 * (v11 - v01)), axis=1)
        acc_dx += tl.sum(gc * ((1 - fy2) * (v01 - v00) + fy2 * (v11 - v10)), axis=1)
        gv = gc * m[:, None]
        tl.atomic_add(grad_x_ptr + o00, (1 - fy2) * (1 - fx2) * gv, mask=k00)
        tl.atomic_add(grad_x_ptr + o01, (1 - fy2) * fx2 * gv, mask=k01)
        tl.atomic_add(grad_x_ptr + o10, fy2 * (1 - fx2) * gv, mask=k10)
        tl.atomic_add(grad_x_ptr + o11, fy2 * fx2 * gv, mask=k11)
    off_base = ((b * G + g) * 2 * K + 2 * k) * L
    tl.store(grad_off_ptr + off_base + p, m * acc_dy, mask=p_ok)
    tl.store(grad_off_ptr + off_base + L + p, m * acc_dx, mask=p_ok)
    tl.store(grad_mask_ptr + ((b * G + g) * K + k) * L + p, acc_m, mask=p_ok)


def _device_ctx(t: torch.Tensor):
    # Triton launches on torch's current CUDA device, which may differ from the tensors'.
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _launch_args(x, offset, mask, kernel_size, stride, padding, dilation):
    B, C, H, W = x.shape
    Ho, Wo = offset.shape[-2:]
    K = kernel_size[0] * kernel_size[1]
    G = mask.shape[1] // K
    return B, C, H, W, Ho, Wo, K, G


@torch.library.custom_op("segblocks::deform_im2col", mutates_args=())
def _im2col_forward(
    x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor,
    kernel_size: list[int], stride: list[int], padding: list[int], dilation: list[int],
) -> torch.Tensor:
    """Float32 columns ``(B, C, K, Ho·Wo)``."""
    x, offset, mask = x.contiguous(), offset.contiguous(), mask.contiguous()
    B, C, H, W, Ho, Wo, K, G = _launch_args(x, offset, mask, kernel_size, stride, padding, dilation)
    L = Ho * Wo
    cols = torch.zeros(B, C, K, L, device=x.device, dtype=torch.float32)
    bp, bc = _blocks()
    if B * C * L > 0:
        with _device_ctx(x):
            _fwd_kernel[(triton.cdiv(L, bp), B * G * K)](
                x, offset, mask, cols, C, H, W, Wo, L, G, C // G,
                stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
                K=K, KW=kernel_size[1], BLOCK_P=bp, BLOCK_C=bc,
            )
    return cols


@_im2col_forward.register_fake
def _(x, offset, mask, kernel_size, stride, padding, dilation):
    B, C = x.shape[:2]
    Ho, Wo = offset.shape[-2:]
    return x.new_empty(B, C, kernel_size[0] * kernel_size[1], Ho * Wo, dtype=torch.float32)


@torch.library.custom_op("segblocks::deform_im2col_backward", mutates_args=())
def _im2col_backward(
    grad_cols: torch.Tensor, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor,
    kernel_size: list[int], stride: list[int], padding: list[int], dilation: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, offset, mask, grad_cols = x.contiguous(), offset.contiguous(), mask.contiguous(), grad_cols.contiguous()
    B, C, H, W, Ho, Wo, K, G = _launch_args(x, offset, mask, kernel_size, stride, padding, dilation)
    L = Ho * Wo
    grad_x = torch.zeros(x.shape, device=x.device, dtype=torch.float32)  # atomics in fp32
    grad_off = torch.zeros(offset.shape, device=x.device, dtype=torch.float32)
    grad_mask = torch.zeros(mask.shape, device=x.device, dtype=torch.float32)
    bp, bc = _blocks()
    if B * C * L > 0:
        with _device_ctx(x):
            _bwd_kernel[(triton.cdiv(L, bp), B * G * K)](
                x, offset, mask, grad_cols, grad_x, grad_off, grad_mask, C, H, W, Wo, L, G, C // G,
                stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
                K=K, KW=kernel_size[1], BLOCK_P=bp, BLOCK_C=bc,
            )
    return grad_x.to(x.dtype), grad_off.to(offset.dtype), grad_mask.to(mask.dtype)


@_im2col_backward.register_fake
def _(grad_cols, x, offset, mask, kernel_size, stride, padding, dilation):
    return x.new_empty(x.shape), offset.new_empty(offset.shape), mask.new_empty(mask.shape)


def _setup_context(ctx, inputs, output):
    x, offset, mask, *conf = inputs
    ctx.save_for_backward(x, offset, mask)
    ctx.conf = conf


def _backward(ctx, grad_cols):
    x, offset, mask = ctx.saved_tensors
    grad_x, grad_off, grad_mask = _im2col_backward(grad_cols, x, offset, mask, *ctx.conf)
    return grad_x, grad_off, grad_mask, None, None, None, None


_im2col_forward.register_autograd(_backward, setup_context=_setup_context)


def deform_im2col_triton(
    input: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> torch.Tensor:
    """Triton modulated deformable im2col; arguments and result as ``deform_im2col_pytorch``.

    Runs ``torch.ops.segblocks.deform_im2col`` (differentiable w.r.t. input, offset and mask).
    """
    return torch.ops.segblocks.deform_im2col(
        input, offset, mask, [int(v) for v in kernel_size], [int(v) for v in stride],
        [int(v) for v in padding], [int(v) for v in dilation],
    )
