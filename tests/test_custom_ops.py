"""The Triton kernels as ``torch.library`` custom ops (``torch.ops.segblocks.*``).

For each op (MSDA, varlen attention, grouped GEMM, DCNv2 im2col): values and gradients against a
float64 oracle written here, ``torch.library.opcheck`` (schema, fake tensor, autograd
registration, AOT dispatch), the fake implementation's shapes and dtypes under
``FakeTensorMode``, and ``torch.compile(backend="aot_eager", fullgraph=True)`` through the op
(no graph break; values and gradients as eager). On CPU the kernels run under
``TRITON_INTERPRET=1`` (set by conftest), so every size is tiny.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
F32 = torch.float32


def _load(name: str):
    """Import the kernel module (this registers its ops) and return it."""
    import importlib

    return importlib.import_module(f"segblocks_kernels.{name}")


# --------------------------------------------------------------------------------------------
# float64 oracles
# --------------------------------------------------------------------------------------------


def msda_oracle(value, shapes, loc, attn):
    """Per level ``F.grid_sample`` (bilinear, zeros, align_corners=False) then the weighted sum."""
    value, loc, attn = value.double(), loc.double(), attn.double()
    B, _, M, D = value.shape
    Lq, P = loc.shape[1], loc.shape[4]
    out = value.new_zeros(B, Lq, M, D)
    start = 0
    for lvl, (h, w) in enumerate(shapes):
        for m in range(M):
            img = value[:, start : start + h * w, m].transpose(1, 2).reshape(B, D, h, w)  # B x D x H x W
            grid = 2 * loc[:, :, m, lvl] - 1  # B x Lq x P x 2
            s = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # B x D x Lq x P
            out[:, :, m] += (s * attn[:, None, :, m, lvl]).sum(-1).transpose(1, 2)  # B x Lq x D
        start += h * w
    return out.reshape(B, Lq, M * D)


def varlen_oracle(q, k, v, q_lens, kv_lens, scale):
    q, k, v = q.double(), k.double(), v.double()
    outs, qs, ks = [], 0, 0
    for a, b in zip(q_lens, kv_lens):
        if a:
            logits = torch.einsum("qhd,khd->hqk", q[qs : qs + a], k[ks : ks + b]) * scale  # H x a x b
            outs.append(torch.einsum("hqk,khd->qhd", logits.softmax(-1), v[ks : ks + b]))  # a x H x D
        qs, ks = qs + a, ks + b
    return torch.cat(outs)


def gemm_oracle(x, offsets, weight, bias):
    x, weight, bias = x.double(), weight.double(), bias.double()
    bounds = offsets.tolist()
    return torch.cat([x[s:t] @ weight[e].T + bias[e] for e, (s, t) in enumerate(zip(bounds, bounds[1:]))])


def im2col_oracle(x, offset, mask, kernel_size, stride, padding, dilation):
    """mmcv layout, one deform group: offsets ``(y, x)`` per kernel point; columns ``(B, C, K, Ho*Wo)``."""
    x, offset, mask = x.double(), offset.double(), mask.double()
    B, C, H, W = x.shape
    Ho, Wo = offset.shape[-2:]
    kh, kw = kernel_size
    ys = torch.arange(Ho, dtype=torch.float64)[:, None] * stride[0] - padding[0]  # Ho x 1
    xs = torch.arange(Wo, dtype=torch.float64)[None, :] * stride[1] - padding[1]  # 1 x Wo
    cols = []
    for i in range(kh):
        for j in range(kw):
            k = i * kw + j
            py = ys + i * dilation[0] + offset[:, 2 * k]  # B x Ho x Wo (pixel rows)
            px = xs + j * dilation[1] + offset[:, 2 * k + 1]
            grid = torch.stack(((2 * px + 1) / W - 1, (2 * py + 1) / H - 1), -1)  # B x Ho x Wo x 2
            s = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # B x C x Ho x Wo
            cols.append((s * mask[:, k : k + 1]).flatten(2))  # B x C x L
    return torch.stack(cols, 2)  # B x C x K x L


# --------------------------------------------------------------------------------------------
# inputs: (op, args, oracle, differentiable arg positions)
# --------------------------------------------------------------------------------------------


def _msda():
    _load("ms_deform_attn")
    shapes = [(3, 4), (2, 2)]
    S = sum(h * w for h, w in shapes)
    value = torch.randn(2, S, 2, 4, device=DEVICE)
    loc = torch.rand(2, 3, 2, 2, 2, 2, device=DEVICE) * 1.2 - 0.1  # some points outside the map
    attn = torch.rand(2, 3, 2, 2, 2, device=DEVICE)
    flat = [v for hw in shapes for v in hw]
    return torch.ops.segblocks.ms_deform_attn, (value, flat, loc, attn), lambda a: msda_oracle(a[0], shapes, a[2], a[3]), (0, 2, 3)


def _varlen():
    mod = _load("varlen_attention")
    from segblocks.ops.varlen_attention import SeqLens

    q_lens, kv_lens = [3, 0, 5], [2, 4, 6]
    seqlens = SeqLens.from_seqlens(q_lens, kv_lens, device=DEVICE)
    q = torch.randn(8, 2, 16, device=DEVICE)
    k, v = torch.randn(12, 2, 16, device=DEVICE), torch.randn(12, 2, 16, device=DEVICE)
    cfg = mod._config(16, q.dtype)
    q_seg, q_row = mod._block_table(seqlens, "q", cfg["BLOCK_M"], q.device)
    kv_seg, kv_row = mod._block_table(seqlens, "kv", cfg["BLOCK_N"], q.device)
    args = (q, k, v, seqlens.q_start, seqlens.kv_start, q_seg, q_row, kv_seg, kv_row, 0.25)
    return torch.ops.segblocks.varlen_attention, args, lambda a: varlen_oracle(*a[:3], q_lens, kv_lens, 0.25), (0, 1, 2)


def _gemm():
    _load("grouped_gemm")
    offsets = torch.tensor([0, 3, 3, 7], device=DEVICE)  # an empty expert in the middle
    x, w, b = torch.randn(7, 5, device=DEVICE), torch.randn(3, 6, 5, device=DEVICE), torch.randn(3, 6, device=DEVICE)
    return torch.ops.segblocks.grouped_gemm, (x, offsets, w, b), lambda a: gemm_oracle(*a), (0, 2, 3)


def _im2col():
    _load("deform_conv")
    x = torch.randn(1, 3, 5, 6, device=DEVICE)
    offset = torch.randn(1, 18, 5, 6, device=DEVICE) * 1.5
    mask = torch.rand(1, 9, 5, 6, device=DEVICE)
    conf = ([3, 3], [1, 1], [1, 1], [1, 1])
    return torch.ops.segblocks.deform_im2col, (x, offset, mask, *conf), lambda a: im2col_oracle(*a), (0, 1, 2)


OPS = {"ms_deform_attn": _msda, "varlen_attention": _varlen, "grouped_gemm": _gemm, "deform_im2col": _im2col}


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out  # varlen also returns its log-sum-exp


def _with_grad(args, positions):
    return tuple(a.detach().clone().requires_grad_() if i in positions else a for i, a in enumerate(args))


@pytest.mark.parametrize("name", list(OPS))
def test_values_and_gradients_match_oracle(name):
    op, args, oracle, positions = OPS[name]()
    args = _with_grad(args, positions)
    args64 = tuple(a.detach().double().requires_grad_() if i in positions else a for i, a in enumerate(args))
    out, want = _first(op(*args)), oracle(args64)
    assert out.dtype == (torch.float32 if name == "deform_im2col" else args[0].dtype)  # im2col columns are fp32
    torch.testing.assert_close(out.double(), want, atol=1e-4, rtol=1e-4)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [args[i] for i in positions], g)
    want_grads = torch.autograd.grad(want, [args64[i] for i in positions], g.double())
    for i, a, b in zip(positions, grads, want_grads):
        torch.testing.assert_close(a.double(), b, atol=1e-4, rtol=1e-4, msg=f"gradient of input {i}")


@pytest.mark.parametrize("name", list(OPS))
def test_opcheck(name):
    op, args, _, positions = OPS[name]()
    args = _with_grad(args, positions)
    results = torch.library.opcheck(op, args)  # raises on the first failing check
    assert results and set(results.values()) == {"SUCCESS"}, results


@pytest.mark.parametrize("name", list(OPS))
def test_fake_impl_shapes_and_dtypes(name):
    from torch._subclasses.fake_tensor import FakeTensorMode

    op, args, _, _ = OPS[name]()
    real = op(*args)
    real = real if isinstance(real, tuple) else (real,)
    with FakeTensorMode() as mode:
        fake_args = tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)
        fake = op(*fake_args)
    fake = fake if isinstance(fake, tuple) else (fake,)
    assert [(f.shape, f.dtype) for f in fake] == [(r.shape, r.dtype) for r in real]


@pytest.mark.parametrize("name", list(OPS))
def test_compile_fullgraph_through_the_op(name):
    op, args, _, positions = OPS[name]()

    def fn(*a):
        return _first(op(*a)).sin()

    eager_args, compiled_args = _with_grad(args, positions), _with_grad(args, positions)
    want = fn(*eager_args)
    torch._dynamo.reset()
    got = torch.compile(fn, backend="aot_eager", fullgraph=True)(*compiled_args)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(want)
    for i, a, b in zip(positions, torch.autograd.grad(got, [compiled_args[i] for i in positions], g),
                       torch.autograd.grad(want, [eager_args[i] for i in positions], g)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=f"gradient of input {i}")


def test_public_ms_deform_attn_compiles_without_breaks_on_triton():
    """The dispatching function with Python level shapes and backend='triton': one graph."""
    from segblocks.ops.ms_deform_attn import ms_deform_attn

    shapes = [(3, 4), (2, 2)]
    value = torch.randn(1, 16, 2, 4, device=DEVICE)
    loc, attn = torch.rand(1, 3, 2, 2, 2, 2, device=DEVICE), torch.rand(1, 3, 2, 2, 2, device=DEVICE)

    def fn(v, lo, a):
        return ms_deform_attn(v, shapes, None, lo, a, backend="triton")

    want = fn(value, loc, attn)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(fn)(value, loc, attn)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons
    torch.testing.assert_close(torch.compile(fn, backend="aot_eager", fullgraph=True)(value, loc, attn), want)


def test_ops_are_registered_only_when_a_triton_backend_is_loaded():
    code = (
        "import torch, sys, segblocks, segblocks.ops.ms_deform_attn, segblocks.ops.varlen_attention\n"
        "assert 'triton' not in sys.modules\n"
        "assert not hasattr(torch.ops.segblocks, 'ms_deform_attn')\n"
        "import segblocks_kernels.ms_deform_attn\n"
        "assert hasattr(torch.ops.segblocks, 'ms_deform_attn')\n"
    )
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr


def test_export_keeps_the_op_as_one_node():
    """``torch.export`` of a module calling the MSDA op: one ``segblocks.ms_deform_attn`` node, same values."""
    op, args, _, _ = _msda()
    value, flat, loc, attn = args

    class Core(torch.nn.Module):
        def forward(self, v, lo, a):
            return op(v, flat, lo, a)

    exported = torch.export.export(Core(), (value, loc, attn))
    targets = [str(n.target) for n in exported.graph.nodes if n.op == "call_function"]
    assert targets.count("segblocks.ms_deform_attn.default") == 1, targets
    torch.testing.assert_close(exported.module()(value, loc, attn), op(*args))


@pytest.mark.parametrize("op", ["ms_deform_attn", "varlen_attention", "grouped_gemm", "modulated_deform_conv2d"])
def test_one_shared_triton_check_explains_every_op(op, monkeypatch):
    """Every Triton backend refuses the interpreter under auto and bf16 with the same shared reasons."""
    from segblocks.ops._dispatch import triton_check
    from segblocks.ops.deform_conv import DEFORM_CONV_BACKENDS
    from segblocks.ops.grouped_gemm import GROUPED_GEMM_BACKENDS
    from segblocks.ops.ms_deform_attn import MS_DEFORM_ATTN_BACKENDS
    from segblocks.ops.varlen_attention import VARLEN_ATTENTION_BACKENDS

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    backends = {"ms_deform_attn": MS_DEFORM_ATTN_BACKENDS, "varlen_attention": VARLEN_ATTENTION_BACKENDS,
                "grouped_gemm": GROUPED_GEMM_BACKENDS, "modulated_deform_conv2d": DEFORM_CONV_BACKENDS}[op]
    (triton,) = [b for b in backends if b.name == "triton"]
    x = torch.randn(4, 2, 8)
    kw = {"seqlens": None} if op == "varlen_attention" else {}
    assert triton.not_supported_reasons([x], requested="auto", **kw) == triton_check(x, requested="auto")
    assert "only used when asked" in triton.not_supported_reasons([x], requested="auto", **kw)[0]
    assert triton.not_supported_reasons([x], requested="triton", **kw) == []
    bf16 = triton.not_supported_reasons([x.bfloat16()], requested="triton", **kw)
    assert bf16 == ["dtype=['torch.bfloat16'] is not run by the Triton interpreter on cpu (fp32/fp16 only)"]
