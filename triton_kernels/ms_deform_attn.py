"""Triton forward and backward kernels for the multi-scale deformable attention core.

Replaces the hand-compiled ``MultiScaleDeformableAttention`` CUDA extension of Deformable DETR /
Mask2Former with kernels that Triton compiles on first use. Same semantics as
``segblocks.ops.ms_deform_attn.naive`` (bilinear, zero padding, ``align_corners=False``).

Layout: one program per block of ``BLOCK_Q`` flattened (batch, query) rows and one head; it
keeps a ``BLOCK_Q x next_pow2(D)`` tile and loops over levels and points (unrolled), gathering
the four bilinear corners of every sample with masked pointer arithmetic. Accumulation is in
float32 whatever the input dtypes. The backward recomputes the corners, reduces over ``D`` for
the location and weight gradients, and scatters the value gradient with ``tl.atomic_add`` into
a float32 buffer (so the value gradient is not bitwise deterministic on CUDA).

Under ``TRITON_INTERPRET=1`` (CPU tests) autotuning is collapsed to one config, because
benchmarking configs needs a GPU driver.
"""
from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

__all__ = ["MSDeformAttnFunction", "ms_deform_attn_triton"]


def _configs() -> list[triton.Config]:
    if os.environ.get("TRITON_INTERPRET") == "1":
        return [triton.Config({"BLOCK_Q": 16}, num_warps=1)]
    return [triton.Config({"BLOCK_Q": bq}, num_warps=w) for bq in (16, 32, 64) for w in (2, 4)]


@triton.jit
def _corner(value_ptr, tok_base, xi, yi, h, w, m, M, D, d, tile_ok):
    """Value tile at integer pixel ``(xi, yi)`` (zeros outside the map) and its offsets/mask."""
    inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    tok = tok_base + tl.where(inside, yi * w + xi, 0)  # clamped so masked lanes still point in-bounds
    offs = (tok * M + m)[:, None] * D + d[None, :]
    ok = tile_ok & inside[:, None]
    return tl.load(value_ptr + offs, mask=ok, other=0.0).to(tl.float32), offs, ok


@triton.jit
def _pixel(loc_ptr, lp, row_ok, h, w):
    """Pixel coordinates ``(x0, y0)`` of the top-left corner and fractional parts ``(fx, fy)``."""
    wf = w.to(tl.float32)
    hf = h.to(tl.float32)
    # align_corners=False: pixel centres sit at (i + 0.5) / W. Clamping keeps the int cast safe
    # for far-away points without changing anything: beyond [-1, W] all four corners are outside.
    x = tl.load(loc_ptr + 2 * lp, mask=row_ok, other=0.0).to(tl.float32) * wf - 0.5
    y = tl.load(loc_ptr + 2 * lp + 1, mask=row_ok, other=0.0).to(tl.float32) * hf - 0.5
    x = tl.minimum(tl.maximum(x, -2.0), wf + 1.0)
    y = tl.minimum(tl.maximum(y, -2.0), hf + 1.0)
    x0 = tl.floor(x)
    y0 = tl.floor(y)
    return x0.to(tl.int64), y0.to(tl.int64), x - x0, y - y0


@triton.autotune(configs=_configs(), key=["M", "L", "P", "BLOCK_D"])
@triton.jit
def _fwd_kernel(
    value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, out_ptr,
    R, Lq, S, M, D,
    L: tl.constexpr, P: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)).to(tl.int64)  # flattened (b, q)
    m = tl.program_id(1)
    row_ok = rows < R
    d = tl.arange(0, BLOCK_D)
    tile_ok = row_ok[:, None] & (d < D)[None, :]
    batch_tok = (rows // Lq) * S
    acc = tl.zeros([BLOCK_Q, BLOCK_D], dtype=tl.float32)
    for lvl in tl.static_range(L):
        h = tl.load(shapes_ptr + 2 * lvl)
        w = tl.load(shapes_ptr + 2 * lvl + 1)
        tok_base = batch_tok + tl.load(starts_ptr + lvl)
        for p in tl.static_range(P):
            lp = ((rows * M + m) * L + lvl) * P + p  # index into (B, Lq, M, L, P)
            a = tl.load(attn_ptr + lp, mask=row_ok, other=0.0).to(tl.float32)
            x0, y0, fx, fy = _pixel(loc_ptr, lp, row_ok, h, w)
            v00, _, _ = _corner(value_ptr, tok_base, x0, y0, h, w, m, M, D, d, tile_ok)
            v10, _, _ = _corner(value_ptr, tok_base, x0 + 1, y0, h, w, m, M, D, d, tile_ok)
            v01, _, _ = _corner(value_ptr, tok_base, x0, y0 + 1, h, w, m, M, D, d, tile_ok)
            v11, _, _ = _corner(value_ptr, tok_base, x0 + 1, y0 + 1, h, w, m, M, D, d, tile_ok)
            fx2 = fx[:, None]
            fy2 = fy[:, None]
            sample = (1 - fy2) * ((1 - fx2) * v00 + fx2 * v10) + fy2 * ((1 - fx2) * v01 + fx2 * v11)
            acc += a[:, None] * sample
    out_offs = (rows * M + m)[:, None] * D + d[None, :]
    tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=tile_ok)


@triton.autotune(configs=_configs(), key=["M", "L", "P", "BLOCK_D"], reset_to_zero=["grad_value_ptr"])
@triton.jit
def _bwd_kernel(
    value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, grad_out_ptr,
    grad_value_ptr, grad_loc_ptr, grad_attn_ptr,
    R, Lq, S, M, D,
    L: tl.constexpr, P: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)).to(tl.int64)
    m = tl.program_id(1)
    row_ok = rows < R
    d = tl.arange(0, BLOCK_D)
    tile_ok = row_ok[:, None] & (d < D)[None, :]
    batch_tok = (rows // Lq) * S
    g = tl.load(grad_out_ptr + (rows * M + m)[:, None] * D + d[None, :], mask=tile_ok, other=0.0).to(tl.float32)
    for lvl in tl.static_range(L):
        h = tl.load(shapes_ptr + 2 * lvl)
        w = tl.load(shapes_ptr + 2 * lvl + 1)
        tok_base = batch_tok + tl.load(starts_ptr + lvl)
        for p in tl.static_range(P):
            lp = ((rows * M + m) * L + lvl) * P + p
            a = tl.load(attn_ptr + lp, mask=row_ok, other=0.0).to(tl.float32)
            x0, y0, fx, fy = _pixel(loc_ptr, lp, row_ok, h, w)
            v00, o00, k00 = _corner(value_ptr, tok_base, x0, y0, h, w, m, M, D, d, tile_ok)
            v10, o10, k10 = _corner(value_ptr, tok_base, x0 + 1, y0, h, w, m, M, D, d, tile_ok)
            v01, o01, k01 = _corner(value_ptr, tok_base, x0, y0 + 1, h, w, m, M, D, d, tile_ok)
            v11, o11, k11 = _corner(value_ptr, tok_base, x0 + 1, y0 + 1, h, w, m, M, D, d, tile_ok)
            fx2 = fx[:, None]
            fy2 = fy[:, None]
            sample = (1 - fy2) * ((1 - fx2) * v00 + fx2 * v10) + fy2 * ((1 - fx2) * v01 + fx2 * v11)
            tl.store(grad_attn_ptr + lp, tl.sum(g * sample, axis=1), mask=row_ok)
            # d sample / d pixel-x and / d pixel-y, then the chain rule through x = loc_x * W - 0.5.
            dx = tl.sum(g * ((1 - fy2) * (v10 - v00) + fy2 * (v11 - v01)), axis=1)
            dy = tl.sum(g * ((1 - fx2) * (v01 - v00) + fx2 * (v11 - v10)), axis=1)
            tl.store(grad_loc_ptr + 2 * lp, a * dx * w.to(tl.float32), mask=row_ok)
            tl.store(grad_loc_ptr + 2 * lp + 1, a * dy * h.to(tl.float32), mask=row_ok)
            ga = a[:, None] * g
            tl.atomic_add(grad_value_ptr + o00, (1 - fx2) * (1 - fy2) * ga, mask=k00)
            tl.atomic_add(grad_value_ptr + o10, fx2 * (1 - fy2) * ga, mask=k10)
            tl.atomic_add(grad_value_ptr + o01, (1 - fx2) * fy2 * ga, mask=k01)
            tl.atomic_add(grad_value_ptr + o11, fx2 * fy2 * ga, mask=k11)


def _device_ctx(t: torch.Tensor):
    # Triton launches on torch's current CUDA device, which may differ from the tensors'.
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


class MSDeformAttnFunction(torch.autograd.Function):
    """Autograd wrapper: differentiable w.r.t. value, sampling locations and attention weights."""

    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        value = value.contiguous()
        shapes = spatial_shapes.to(device=value.device, dtype=torch.int64).contiguous()
        starts = level_start_index.to(device=value.device, dtype=torch.int64).contiguous()
        loc = sampling_locations.contiguous()
        attn = attention_weights.contiguous()
        B, S, M, D = value.shape
        _, Lq, _, L, P, _ = loc.shape
        out = value.new_zeros(B, Lq, M, D)
        if B * Lq > 0 and D > 0:
            with _device_ctx(value):
                _fwd_kernel[lambda meta: (triton.cdiv(B * Lq, meta["BLOCK_Q"]), M)](
                    value, shapes, starts, loc, attn, out,
                    B * Lq, Lq, S, M, D,
                    L=L, P=P, BLOCK_D=triton.next_power_of_2(D),
                )
        ctx.save_for_backward(value, shapes, starts, loc, attn)
        return out.view(B, Lq, M * D)  # B x Lq x MD

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        value, shapes, starts, loc, attn = ctx.saved_tensors
        B, S, M, D = value.shape
        _, Lq, _, L, P, _ = loc.shape
        grad_out = grad_out.contiguous()
        grad_value = torch.zeros(value.shape, device=value.device, dtype=torch.float32)  # atomics in fp32
        grad_loc = torch.zeros(loc.shape, device=loc.device, dtype=torch.float32)
        grad_attn = torch.zeros(attn.shape, device=attn.device, dtype=torch.float32)
        if B * Lq > 0 and D > 0:
            with _device_ctx(value):
                _bwd_kernel[lambda meta: (triton.cdiv(B * Lq, meta["BLOCK_Q"]), M)](
                    value, shapes, starts, loc, attn, grad_out,
                    grad_value, grad_loc, grad_attn,
                    B * Lq, Lq, S, M, D,
                    L=L, P=P, BLOCK_D=triton.next_power_of_2(D),
                )
        return grad_value.to(value.dtype), None, None, grad_loc.to(loc.dtype), grad_attn.to(attn.dtype)


def ms_deform_attn_triton(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Triton multi-scale deformable attention core; shapes as in ``ms_deform_attn_pytorch``.

    Args:
        value: ``(B, S, M, D)``.
        spatial_shapes: ``(L, 2)`` integer ``[H_l, W_l]``.
        level_start_index: ``(L,)``.
        sampling_locations: ``(B, Lq, M, L, P, 2)`` normalized ``(x, y)``.
        attention_weights: ``(B, Lq, M, L, P)``.

    Returns:
        ``(B, Lq, M * D)`` in ``value.dtype``.
    """
    return MSDeformAttnFunction.apply(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
