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

The launches are ``torch.library`` custom ops, ``segblocks::ms_deform_attn`` and
``segblocks::ms_deform_attn_backward``, registered when this module is imported (i.e. when the
Triton backend is first loaded; ``import segblocks`` never imports triton). Each has a fake
implementation (output shapes and dtypes without running anything) and the forward has an
autograd formula, so ``torch.compile`` traces through them without a graph break and
``torch.export`` keeps them as single nodes. Level shapes are a flat Python int list
``[H_0, W_0, H_1, W_1, ...]``; their device tensors are cached per shapes and device.
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Sequence

import torch
import triton
import triton.language as tl

__all__ = ["ms_deform_attn_triton"]


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


@functools.lru_cache(maxsize=64)
def _level_tensors(shapes: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L, 2)`` shapes and ``(L,)`` level starts as int64 on ``device`` (one copy per shapes/device)."""
    hw = torch.tensor(shapes, dtype=torch.int64).view(-1, 2)  # L x 2
    sizes = hw.prod(1)
    starts = torch.cat((sizes.new_zeros(1), sizes.cumsum(0)[:-1]))  # L
    return hw.to(device), starts.to(device)


def _grid(B: int, Lq: int, M: int):
    return lambda meta: (triton.cdiv(B * Lq, meta["BLOCK_Q"]), M)


@torch.library.custom_op("segblocks::ms_deform_attn", mutates_args=())
def _msda_forward(value: torch.Tensor, shapes: Sequence[int], loc: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    value, loc, attn = value.contiguous(), loc.contiguous(), attn.contiguous()
    B, S, M, D = value.shape
    _, Lq, _, L, P, _ = loc.shape
    out = value.new_zeros(B, Lq, M * D)  # B x Lq x MD, the kernel writes it as (B, Lq, M, D)
    if B * Lq > 0 and D > 0:
        hw, starts = _level_tensors(tuple(shapes), value.device)
        with _device_ctx(value):
            _fwd_kernel[_grid(B, Lq, M)](
                value, hw, starts, loc, attn, out,
                B * Lq, Lq, S, M, D,
                L=L, P=P, BLOCK_D=triton.next_power_of_2(D),
            )
    return out


@_msda_forward.register_fake
def _(value, shapes, loc, attn):
    B, _, M, D = value.shape
    return value.new_empty(B, loc.shape[1], M * D)


@torch.library.custom_op("segblocks::ms_deform_attn_backward", mutates_args=())
def _msda_backward(
    grad_out: torch.Tensor, value: torch.Tensor, shapes: Sequence[int], loc: torch.Tensor, attn: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    value, loc, attn, grad_out = value.contiguous(), loc.contiguous(), attn.contiguous(), grad_out.contiguous()
    B, S, M, D = value.shape
    _, Lq, _, L, P, _ = loc.shape
    grad_value = torch.zeros(value.shape, device=value.device, dtype=torch.float32)  # atomics in fp32
    grad_loc = torch.zeros(loc.shape, device=loc.device, dtype=torch.float32)
    grad_attn = torch.zeros(attn.shape, device=attn.device, dtype=torch.float32)
    if B * Lq > 0 and D > 0:
        hw, starts = _level_tensors(tuple(shapes), value.device)
        with _device_ctx(value):
            _bwd_kernel[_grid(B, Lq, M)](
                value, hw, starts, loc, attn, grad_out,
                grad_value, grad_loc, grad_attn,
                B * Lq, Lq, S, M, D,
                L=L, P=P, BLOCK_D=triton.next_power_of_2(D),
            )
    return grad_value.to(value.dtype), grad_loc.to(loc.dtype), grad_attn.to(attn.dtype)


@_msda_backward.register_fake
def _(grad_out, value, shapes, loc, attn):
    return value.new_empty(value.shape), loc.new_empty(loc.shape), attn.new_empty(attn.shape)


def _setup_context(ctx, inputs, output):
    value, shapes, loc, attn = inputs
    ctx.save_for_backward(value, loc, attn)
    ctx.shapes = shapes


def _backward(ctx, grad_out):
    value, loc, attn = ctx.saved_tensors
    grad_value, grad_loc, grad_attn = _msda_backward(grad_out, value, ctx.shapes, loc, attn)
    return grad_value, None, grad_loc, grad_attn


_msda_forward.register_autograd(_backward, setup_context=_setup_context)


def ms_deform_attn_triton(
    value: torch.Tensor,
    spatial_shapes: Sequence[Sequence[int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Triton multi-scale deformable attention core; arguments as ``ms_deform_attn_pytorch``.

    Args:
        value: ``(B, S, M, D)``.
        spatial_shapes: ``((H_l, W_l), ...)`` Python ints.
        sampling_locations: ``(B, Lq, M, L, P, 2)`` normalized ``(x, y)``.
        attention_weights: ``(B, Lq, M, L, P)``.

    Returns:
        ``(B, Lq, M * D)`` in ``value.dtype`` (``torch.ops.segblocks.ms_deform_attn``).
    """
    flat = [v for hw in spatial_shapes for v in hw]  # H_0, W_0, H_1, W_1, ...
    return torch.ops.segblocks.ms_deform_attn(value, flat, sampling_locations, attention_weights)
