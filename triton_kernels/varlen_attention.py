"""Triton flash-attention kernels for varlen block-diagonal attention (forward and backward).

Same semantics as ``segblocks.ops.varlen_attention.naive``: packed ``q (Nq, H, D)``,
``k, v (Nkv, H, D)``; query segment ``i`` attends to key segment ``i`` only. The algorithm is
FlashAttention-2's (online softmax in base 2, log-sum-exp stored for the backward), restricted to
the diagonal blocks so the masked area is never visited (HRSAM §3.2, Fig. 3 right).

Layout: a query segment is cut into blocks of ``BLOCK_M`` rows that never straddle two segments.
A precomputed block table (``segment id, first row`` per block, cached on the ``SeqLens``) maps
every program of the grid ``(query blocks, heads)`` to its segment; the program then loops over
that segment's keys only, ``BLOCK_N`` at a time. The backward is two deterministic kernels, no
atomics: one program per (key block, head) accumulates ``dK, dV`` over the segment's queries,
one per (query block, head) accumulates ``dQ`` over its keys; ``delta = rowsum(dO * O)`` is
computed by PyTorch. Head dims up to 128 are padded to a power of two (at least 16, the
``tl.dot`` minimum) with masks. Accumulation is float32; float32 inputs use IEEE dots (no TF32).

Block sizes are fixed per dtype and head dim (no autotuning: the block tables depend on
``BLOCK_M``/``BLOCK_N``): 64 (32 for ``D > 64``) in half precision, 32 (16) in float32 so that
shared memory fits consumer GPUs. Under ``TRITON_INTERPRET=1`` (the CPU tests) blocks are 16
wide to keep the sequential interpreter fast.
No ``tl.make_block_ptr`` (removed in Triton 3.9): plain pointer arithmetic.

The launches are ``torch.library`` custom ops, ``segblocks::varlen_attention`` (returns the
output and the log-sum-exp) and ``segblocks::varlen_attention_backward``, registered when this
module is imported (when the Triton backend is first loaded; ``import segblocks`` never imports
triton), with fake implementations and an autograd formula: ``torch.compile`` traces through
them and ``torch.export`` keeps them as nodes. The block tables are op inputs (built on the host
from the ``SeqLens``' Python starts and cached on it), so the ops take tensors and floats only.
"""
from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

__all__ = ["varlen_attention_triton"]

_LOG2E = 1.4426950408889634


@triton.jit
def _fwd_kernel(
    Q, K, V, O, LSE, q_start, kv_start, blk_seg, blk_row,
    H, D, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    h = tl.program_id(1)
    seg = tl.load(blk_seg + pid)
    q_hi = tl.load(q_start + seg + 1)
    kv_lo = tl.load(kv_start + seg)
    kv_hi = tl.load(kv_start + seg + 1)
    stride = H * D  # packed (N, H, D), contiguous
    rows = (tl.load(blk_row + pid) + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = rows < q_hi
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    tile_ok = row_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + rows[:, None] * stride + h * D + d[None, :], mask=tile_ok, other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # Every step holds at least one real key (the loop stops at kv_hi), so m_i is finite after it.
    for start in range(kv_lo, kv_hi, BLOCK_N):
        cols = (start + tl.arange(0, BLOCK_N)).to(tl.int64)
        col_ok = cols < kv_hi
        kt = tl.load(K + cols[None, :] * stride + h * D + d[:, None], mask=d_ok[:, None] & col_ok[None, :], other=0.0)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale  # BLOCK_M x BLOCK_N, log2 units
        s = tl.where(col_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + cols[:, None] * stride + h * D + d[None, :], mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    acc = acc / l_i[:, None]
    tl.store(O + rows[:, None] * stride + h * D + d[None, :], acc.to(O.dtype.element_ty), mask=tile_ok)
    tl.store(LSE + rows * H + h, m_i + tl.log2(l_i), mask=row_ok)


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, q_start, kv_start, blk_seg, blk_row,
    H, D, qk_scale, sm_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    h = tl.program_id(1)
    seg = tl.load(blk_seg + pid)
    kv_hi = tl.load(kv_start + seg + 1)
    q_lo = tl.load(q_start + seg)
    q_hi = tl.load(q_start + seg + 1)
    stride = H * D
    cols = (tl.load(blk_row + pid) + tl.arange(0, BLOCK_N)).to(tl.int64)
    col_ok = cols < kv_hi
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    tile_ok = col_ok[:, None] & d_ok[None, :]
    k = tl.load(K + cols[:, None] * stride + h * D + d[None, :], mask=tile_ok, other=0.0)  # BLOCK_N x BLOCK_D
    v = tl.load(V + cols[:, None] * stride + h * D + d[None, :], mask=tile_ok, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    # A key segment without queries gets zero gradients (the loop does not run).
    for start in range(q_lo, q_hi, BLOCK_M):
        rows = (start + tl.arange(0, BLOCK_M)).to(tl.int64)
        row_ok = rows < q_hi
        q_ok = row_ok[:, None] & d_ok[None, :]
        q = tl.load(Q + rows[:, None] * stride + h * D + d[None, :], mask=q_ok, other=0.0)  # BLOCK_M x BLOCK_D
        do = tl.load(DO + rows[:, None] * stride + h * D + d[None, :], mask=q_ok, other=0.0)
        lse = tl.load(LSE + rows * H + h, mask=row_ok, other=0.0)
        delta = tl.load(DELTA + rows * H + h, mask=row_ok, other=0.0)
        st = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale  # BLOCK_N x BLOCK_M
        pt = tl.where(col_ok[:, None] & row_ok[None, :], tl.exp2(st - lse[None, :]), 0.0)
        dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)  # BLOCK_N x BLOCK_M
        dst = pt * (dpt - delta[None, :])
        dk += tl.dot(dst.to(q.dtype), q, input_precision=PRECISION)
    tl.store(DK + cols[:, None] * stride + h * D + d[None, :], (dk * sm_scale).to(DK.dtype.element_ty), mask=tile_ok)
    tl.store(DV + cols[:, None] * stride + h * D + d[None, :], dv.to(DV.dtype.element_ty), mask=tile_ok)


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, q_start, kv_start, blk_seg, blk_row,
    H, D, qk_scale, sm_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    h = tl.program_id(1)
    seg = tl.load(blk_seg + pid)
    q_hi = tl.load(q_start + seg + 1)
    kv_lo = tl.load(kv_start + seg)
    kv_hi = tl.load(kv_start + seg + 1)
    stride = H * D
    rows = (tl.load(blk_row + pid) + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = rows < q_hi
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    tile_ok = row_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + rows[:, None] * stride + h * D + d[None, :], mask=tile_ok, other=0.0)
    do = tl.load(DO + rows[:, None] * stride + h * D + d[None, :], mask=tile_ok, other=0.0)
    lse = tl.load(LSE + rows * H + h, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + rows * H + h, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(kv_lo, kv_hi, BLOCK_N):
        cols = (start + tl.arange(0, BLOCK_N)).to(tl.int64)
        col_ok = cols < kv_hi
        kv_ok = col_ok[:, None] & d_ok[None, :]
        k = tl.load(K + cols[:, None] * stride + h * D + d[None, :], mask=kv_ok, other=0.0)  # BLOCK_N x BLOCK_D
        v = tl.load(V + cols[:, None] * stride + h * D + d[None, :], mask=kv_ok, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # BLOCK_M x BLOCK_N
        p = tl.where(row_ok[:, None] & col_ok[None, :], tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    tl.store(DQ + rows[:, None] * stride + h * D + d[None, :], (dq * sm_scale).to(DQ.dtype.element_ty), mask=tile_ok)


def _config(head_dim: int, dtype: torch.dtype) -> dict:
    block_d = max(16, triton.next_power_of_2(head_dim))
    if os.environ.get("TRITON_INTERPRET") == "1":
        return {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_D": block_d, "num_warps": 1, "num_stages": 1}
    if dtype == torch.float32:
        # fp32 tiles are twice as large: smaller blocks and no software pipelining keep shared
        # memory under ~64 KB (sm_86 allows 99 KB per block, sm_75 64 KB).
        return {"BLOCK_M": 32 if block_d <= 64 else 16, "BLOCK_N": 32 if block_d <= 64 else 16,
                "BLOCK_D": block_d, "num_warps": 4, "num_stages": 1}
    block = 64 if block_d <= 64 else 32
    return {"BLOCK_M": block, "BLOCK_N": block, "BLOCK_D": block_d, "num_warps": 4, "num_stages": 2}


def _block_table(seqlens, side: str, block: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(segment id, first row)`` of every ``block``-row tile of the ``side`` ("q"/"kv") segments."""
    def build():
        starts = seqlens.q_start_py if side == "q" else seqlens.kv_start_py
        seg, row = [], []
        for i, (lo, hi) in enumerate(zip(starts, starts[1:])):
            for r in range(lo, hi, block):
                seg.append(i)
                row.append(r)
        return torch.tensor(seg, dtype=torch.int32, device=device), torch.tensor(row, dtype=torch.int32, device=device)

    return seqlens.cached(("triton_blocks", side, block, device), build)


def _device_ctx(t: torch.Tensor):
    # Triton launches on torch's current CUDA device, which may differ from the tensors'.
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # only fp32 dots look at it


@torch.library.custom_op("segblocks::varlen_attention", mutates_args=())
def _varlen_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_start: torch.Tensor, kv_start: torch.Tensor,
    q_seg: torch.Tensor, q_row: torch.Tensor, kv_seg: torch.Tensor, kv_row: torch.Tensor, scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    # kv_seg / kv_row (the key-side block table) are only read by the backward; they are inputs
    # so that the autograd formula gets them without rebuilding them from device tensors.
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    Nq, H, D = q.shape
    cfg = _config(D, q.dtype)
    out = torch.empty_like(q)
    lse = torch.empty(Nq, H, device=q.device, dtype=torch.float32)  # log2-sum-exp of scaled logits
    if q_seg.numel() > 0 and H > 0:
        with _device_ctx(q):
            _fwd_kernel[(q_seg.numel(), H)](
                q, k, v, out, lse, q_start, kv_start, q_seg, q_row,
                H, D, scale * _LOG2E,
                PRECISION=_precision(q.dtype), **cfg,
            )
    return out, lse


@_varlen_forward.register_fake
def _(q, k, v, q_start, kv_start, q_seg, q_row, kv_seg, kv_row, scale):
    Nq, H, D = q.shape
    return q.new_empty(Nq, H, D), q.new_empty(Nq, H, dtype=torch.float32)


@torch.library.custom_op("segblocks::varlen_attention_backward", mutates_args=())
def _varlen_backward(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    q_start: torch.Tensor, kv_start: torch.Tensor, q_seg: torch.Tensor, q_row: torch.Tensor,
    kv_seg: torch.Tensor, kv_row: torch.Tensor, scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v, out, grad_out = q.contiguous(), k.contiguous(), v.contiguous(), out.contiguous(), grad_out.contiguous()
    Nq, H, D = q.shape
    cfg = _config(D, q.dtype)
    precision = _precision(q.dtype)
    delta = (grad_out.float() * out.float()).sum(-1)  # Nq x H, rowsum(dO * O)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    with _device_ctx(q):
        if kv_seg.numel() > 0 and H > 0:
            _bwd_dkdv_kernel[(kv_seg.numel(), H)](
                q, k, v, grad_out, lse, delta, dk, dv, q_start, kv_start, kv_seg, kv_row,
                H, D, scale * _LOG2E, scale, PRECISION=precision, **cfg,
            )
        if q_seg.numel() > 0 and H > 0:
            _bwd_dq_kernel[(q_seg.numel(), H)](
                q, k, v, grad_out, lse, delta, dq, q_start, kv_start, q_seg, q_row,
                H, D, scale * _LOG2E, scale, PRECISION=precision, **cfg,
            )
    return dq, dk, dv


@_varlen_backward.register_fake
def _(grad_out, q, k, v, out, lse, q_start, kv_start, q_seg, q_row, kv_seg, kv_row, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, q_start, kv_start, q_seg, q_row, kv_seg, kv_row, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, q_start, kv_start, q_seg, q_row, kv_seg, kv_row)
    ctx.scale = scale


def _backward(ctx, grad_out, grad_lse):
    # grad_lse is None or unused: the log-sum-exp is an internal output (never differentiated)
    q, k, v, out, lse, q_start, kv_start, q_seg, q_row, kv_seg, kv_row = ctx.saved_tensors
    dq, dk, dv = _varlen_backward(grad_out, q, k, v, out, lse, q_start, kv_start, q_seg, q_row, kv_seg, kv_row, ctx.scale)
    return dq, dk, dv, None, None, None, None, None, None, None


def varlen_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seqlens, scale: float) -> torch.Tensor:
    """Triton varlen block-diagonal attention; shapes as in ``varlen_attention_reference``.

    Args:
        q: ``(Nq, H, D)``; k, v: ``(Nkv, H, D)``, ``D <= 128``.
        seqlens: ``segblocks.ops.varlen_attention.SeqLens`` on ``q.device`` (the block tables
            are built from its Python starts and cached on it).
        scale: logit scale.

    Returns:
        ``(Nq, H, D)`` in ``q.dtype`` (``torch.ops.segblocks.varlen_attention``).
    """
    cfg = _config(q.shape[-1], q.dtype)
    q_seg, q_row = _block_table(seqlens, "q", cfg["BLOCK_M"], q.device)
    kv_seg, kv_row = _block_table(seqlens, "kv", cfg["BLOCK_N"], q.device)
    out, _ = torch.ops.segblocks.varlen_attention(
        q, k, v, seqlens.q_start, seqlens.kv_start, q_seg, q_row, kv_seg, kv_row, float(scale)
    )
    return out


_varlen_forward.register_autograd(_backward, setup_context=_setup_context)
