"""Triton grouped GEMM for HMoE's sorted expert execution (Inter2Former §3.6, Eq. 19-20).

Rows are sorted by expert; expert ``e`` owns rows ``offsets[e]:offsets[e + 1]``. The launch grid
is ``(tiles, cdiv(N, BLOCK_N))`` where the host builds a tile table (expert id and first row of
every ``BLOCK_M``-row tile of every non-empty expert), so one launch serves all experts and no
program idles on an empty expert — the GPU counterpart of the authors' CPU C++ extension
(YouHuang67/inter2former, ``inter2former/cpp_extension/fast_moe/fast_moe_linear.cpp``). Each
program accumulates ``x_tile @ W[e]^T`` over ``K`` in float32 and adds ``bias[e]``.

Backward: ``dx`` is the same kernel with the transposed weights; ``dW[e] = dy_e^T x_e`` and
``db[e] = Σ dy_e`` are reduced per expert in PyTorch (a padded ``bmm``).

Under ``TRITON_INTERPRET=1`` (CPU tests) one small configuration is used.

The launches are ``torch.library`` custom ops, ``segblocks::grouped_gemm`` and
``segblocks::grouped_gemm_backward``, registered when this module is imported (when the Triton
backend is first loaded; ``import segblocks`` never imports triton), with fake implementations
and an autograd formula: ``torch.compile`` traces through them and ``torch.export`` keeps them
as nodes (the tile table's host read of ``offsets`` happens inside the op, out of the graph).
"""
from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch
import triton
import triton.language as tl

__all__ = ["grouped_gemm_triton"]


def _blocks() -> tuple[int, int, int]:
    if os.environ.get("TRITON_INTERPRET") == "1":
        return 16, 16, 16
    return 64, 64, 32


@triton.jit
def _grouped_gemm_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, tile_expert_ptr, tile_row_ptr, offsets_ptr,
    N, K,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    tile = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(tile_expert_ptr + tile).to(tl.int64)
    row0 = tl.load(tile_row_ptr + tile).to(tl.int64)
    row_end = tl.load(offsets_ptr + e + 1).to(tl.int64)
    rows = row0 + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < row_end
    col_ok = cols < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        a = tl.load(x_ptr + rows[:, None] * K + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptr + e * N * K + cols[:, None] * K + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        acc += tl.dot(a.to(tl.float32), tl.trans(w.to(tl.float32)))
    if HAS_BIAS:
        bias = tl.load(b_ptr + e * N + cols, mask=col_ok, other=0.0).to(tl.float32)
        acc += bias[None, :]
    tl.store(out_ptr + rows[:, None] * N + cols[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


def _device_ctx(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _tiles(offsets: torch.Tensor, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Expert id and first row of every ``block_m``-row tile (host-side table, one sync)."""
    bounds = offsets.tolist()
    experts, rows = [], []
    for e in range(len(bounds) - 1):
        for r in range(bounds[e], bounds[e + 1], block_m):
            experts.append(e)
            rows.append(r)
    dev = offsets.device
    return torch.tensor(experts, dtype=torch.int32, device=dev), torch.tensor(rows, dtype=torch.int32, device=dev)


def _launch(x: torch.Tensor, offsets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    M, K = x.shape
    E, N, _ = weight.shape
    out = x.new_empty(M, N)
    if M == 0 or N == 0:
        return out
    if K == 0:
        return out.zero_() if bias is None else out.copy_(bias[torch.searchsorted(offsets[1:], torch.arange(M, device=x.device), right=True)])
    bm, bn, bk = _blocks()
    tile_expert, tile_row = _tiles(offsets, bm)
    with _device_ctx(x):
        _grouped_gemm_kernel[(tile_expert.numel(), triton.cdiv(N, bn))](
            x, weight, bias if bias is not None else x, out, tile_expert, tile_row, offsets,
            N, K, HAS_BIAS=bias is not None, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
        )
    return out


@torch.library.custom_op("segblocks::grouped_gemm", mutates_args=())
def _gg_forward(x: torch.Tensor, offsets: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    bias = bias.contiguous() if bias is not None else None
    return _launch(x.contiguous(), offsets.contiguous(), weight.contiguous(), bias)


@_gg_forward.register_fake
def _(x, offsets, weight, bias):
    return x.new_empty(x.shape[0], weight.shape[1])


@torch.library.custom_op("segblocks::grouped_gemm_backward", mutates_args=())
def _gg_backward(
    grad_out: torch.Tensor, x: torch.Tensor, offsets: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dW, db)``; ``db`` is returned even without a bias (the autograd formula drops it)."""
    from segblocks.ops.grouped_gemm.naive import group_rows

    x, offsets, weight, grad_out = x.contiguous(), offsets.contiguous(), weight.contiguous(), grad_out.contiguous()
    E, N, K = weight.shape
    grad_x = _launch(grad_out, offsets, weight.transpose(1, 2).contiguous(), None)  # M x K
    group, slot, L = group_rows(offsets)
    flat = group * L + slot  # M
    gy = grad_out.new_zeros(E * L, N).index_copy(0, flat, grad_out).view(E, L, N)  # E x L x N
    gx = x.new_zeros(E * L, K).index_copy(0, flat, x).view(E, L, K)  # E x L x K
    grad_w = torch.bmm(gy.transpose(1, 2).float(), gx.float()).to(weight.dtype)  # E x N x K
    grad_b = gy.float().sum(1).to(weight.dtype)  # E x N
    return grad_x, grad_w, grad_b


@_gg_backward.register_fake
def _(grad_out, x, offsets, weight):
    E, N, K = weight.shape
    return x.new_empty(x.shape[0], K), weight.new_empty(E, N, K), weight.new_empty(E, N)


def _setup_context(ctx, inputs, output):
    x, offsets, weight, bias = inputs
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, offsets, weight)


def _backward(ctx, grad_out):
    x, offsets, weight = ctx.saved_tensors
    grad_x, grad_w, grad_b = _gg_backward(grad_out, x, offsets, weight)
    return grad_x, None, grad_w, grad_b if ctx.has_bias else None


_gg_forward.register_autograd(_backward, setup_context=_setup_context)


def grouped_gemm_triton(
    x: torch.Tensor, offsets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Triton grouped GEMM: ``(M, K)`` sorted rows, ``(E + 1,)`` offsets, ``(E, N, K)``, ``(E, N)`` → ``(M, N)``.

    Runs ``torch.ops.segblocks.grouped_gemm`` (differentiable w.r.t. ``x``, ``weight``, ``bias``).
    """
    return torch.ops.segblocks.grouped_gemm(x, offsets, weight, bias)
