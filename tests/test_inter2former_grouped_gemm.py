"""grouped_gemm backends against a per-row float64 loop; Triton kernel under TRITON_INTERPRET=1."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from segblocks.ops.grouped_gemm import grouped_gemm, sort_by_group


def naive(x, groups, weight, bias):
    return torch.stack([weight[g] @ x[i] + bias[g] for i, g in enumerate(groups.tolist())])


@pytest.mark.parametrize("backend", ["bmm", "loop"])
def test_grouped_gemm_matches_row_loop(backend):
    torch.manual_seed(0)
    groups = torch.tensor([3, 0, 3, 3, 1, 0, 4, 3, 1])  # expert 2 empty
    order, offsets = sort_by_group(groups, 5)
    assert offsets.tolist() == [0, 2, 4, 4, 8, 9] and groups[order].tolist() == sorted(groups.tolist())
    x = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 7, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    out = grouped_gemm(x[order], offsets, w, b, backend=backend)
    ref = naive(x[order], groups[order], w, b)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    for a, c in zip(torch.autograd.grad((out * g).sum(), (x, w, b)), torch.autograd.grad((ref * g).sum(), (x, w, b))):
        torch.testing.assert_close(a, c)
    assert grouped_gemm(x[:0], torch.zeros(6, dtype=torch.long), w, b, backend=backend).shape == (0, 7)


def test_auto_choice_weighs_padding_and_explains():
    from segblocks.ops.grouped_gemm import explain_grouped_gemm

    x, w = torch.randn(40, 6), torch.randn(4, 5, 6)
    balanced = torch.tensor([0, 10, 20, 30, 40])
    skewed = torch.tensor([0, 37, 38, 39, 40])  # padded batch 4 * 37 rows for 40
    assert explain_grouped_gemm(x, balanced, w)["bmm"] == []
    (reason,) = explain_grouped_gemm(x, skewed, w)["bmm"]
    assert "adds 27.0 rows per group > max_pad_rows=8" in reason  # 37 - 40 / 4
    assert explain_grouped_gemm(x, skewed, w, max_pad_rows=30)["bmm"] == []
    assert explain_grouped_gemm(x, skewed, w, backend="bmm")["bmm"] == []  # by name: runs
    for offsets in (balanced, skewed):
        groups = torch.repeat_interleave(torch.arange(4), offsets.diff())
        torch.testing.assert_close(grouped_gemm(x, offsets, w), naive(x, groups, w, torch.zeros(4, 5)))


def test_module_probe_is_cached():
    from segblocks.ops._dispatch import module_available

    module_available.cache_clear()
    module_available("triton"), module_available("triton")
    assert module_available.cache_info().hits >= 1


def test_grouped_gemm_rejects_bad_offsets():
    with pytest.raises(ValueError, match="offsets must rise"):
        grouped_gemm(torch.randn(4, 3), torch.tensor([0, 3, 2]), torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match=r"weight must be \(E, N, K=3\)"):
        grouped_gemm(torch.randn(4, 3), torch.tensor([0, 2, 4]), torch.randn(2, 5, 4))


_TRITON_SCRIPT = r"""
import torch
from segblocks.ops.grouped_gemm import grouped_gemm, sort_by_group
torch.manual_seed(0)
groups = torch.randint(0, 6, (53,)); groups[groups == 2] = 5
order, offsets = sort_by_group(groups, 6)
x = torch.randn(53, 40, requires_grad=True); w = torch.randn(6, 24, 40, requires_grad=True); b = torch.randn(6, 24, requires_grad=True)
xs = x[order]
xr = x[order]
ref = torch.stack([w[g].double() @ xr[i].double() + b[g].double() for i, g in enumerate(groups[order].tolist())])
out = grouped_gemm(xs, offsets, w, b, backend="triton")
torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)
g = torch.randn(53, 24)
got = torch.autograd.grad((out * g).sum(), (x, w, b))
exp = torch.autograd.grad((ref * g.double()).sum(), (x, w, b))
for a, c in zip(got, exp):
    torch.testing.assert_close(a.double(), c.double(), rtol=1e-4, atol=1e-3)
# HMoE's triton path: w1/w2 stacked into one grouped GEMM, then w3, inverse permutation
from segblocks.blocks.inter2former import HybridMoE
m = HybridMoE(embed_dim=16, hidden_dim=32, num_experts=4, backend="triton").eval()
xe, ae = torch.randn(37, 16), torch.randint(0, 4, (37,))
torch.testing.assert_close(m.experts(xe, ae), m.experts_vanilla(xe, ae), rtol=1e-4, atol=1e-4)
print("ok")
"""


def test_triton_grouped_gemm_under_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", _TRITON_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("max_pad_rows", [0, 8, 30])
def test_cpu_auto_choice_follows_the_padding(dtype, grad, max_pad_rows):
    # On CPU, auto picks the padded batch while it adds at most max_pad_rows rows per group
    # (L_max - M / E, counted here by hand), whatever the dtype or autograd state.
    from segblocks.ops.grouped_gemm import select_grouped_gemm_backend

    x = torch.randn(40, 6, dtype=dtype, requires_grad=grad)
    w, b = torch.randn(4, 5, 6, dtype=dtype), torch.randn(4, 5, dtype=dtype)
    for counts, padding in ((torch.tensor([10, 10, 10, 10]), 0), (torch.tensor([37, 1, 1, 1]), 27),
                            (torch.tensor([0, 0, 40, 0]), 30)):
        want = "bmm" if padding <= max_pad_rows else "loop"
        assert select_grouped_gemm_backend(x, w, b, counts=counts, max_pad_rows=max_pad_rows).name == want
        # the caller's L_max gives the same choice without reading counts
        assert select_grouped_gemm_backend(x, w, b, max_count=int(counts.max()), max_pad_rows=max_pad_rows).name == want


def test_remembered_choice_equals_a_fresh_choice(monkeypatch):
    # select_grouped_gemm_backend remembers its choice per key; over every input its backend
    # checks read (input and weight dtypes, bias or none, autograd, triton installed,
    # TRITON_INTERPRET, padding, requested backend), in an order that revisits each key after the
    # others, it answers what a fresh dispatch answers (or raises the same refusal).
    from segblocks.ops import _dispatch
    from segblocks.ops.grouped_gemm import GROUPED_GEMM_BACKENDS, select_grouped_gemm_backend

    def fresh(x, w, b, L, backend):
        rows = L - x.shape[0] / w.shape[0]
        tensors = (x, w) if b is None else (x, w, b)
        return _dispatch._select("grouped_gemm", GROUPED_GEMM_BACKENDS, tensors, backend,
                                 {"requested": backend, "pad_rows": rows, "max_pad_rows": 8})

    def answer(fn, *args):
        try:
            return fn(*args).name
        except _dispatch.BackendUnavailable as err:
            return str(err)

    installed = _dispatch.module_available("triton")
    monkeypatch.setattr(_dispatch, "_CHOICES", {})
    f32, f64, bf16 = torch.float32, torch.float64, torch.bfloat16
    cases = [(xd, wd, bias, grad, triton, interpret, L, backend)
             for xd, wd in ((f32, f32), (f64, f64), (bf16, bf16), (f32, bf16), (f32, f64))
             for bias in (True, False) for grad in (False, True) for triton in (installed, False)
             for interpret in ("1", None) for L in (10, 40) for backend in ("auto", "triton", "bmm", "loop")]
    seen = set()
    for xd, wd, bias, grad, triton, interpret, L, backend in cases + cases[::-1]:
        if interpret is None:
            monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        else:
            monkeypatch.setenv("TRITON_INTERPRET", interpret)
        monkeypatch.setattr(_dispatch, "module_available", lambda name, t=triton: t if name == "triton" else True)
        x = torch.randn(40, 6, dtype=xd, requires_grad=grad)
        w, b = torch.randn(4, 5, 6, dtype=wd), torch.randn(4, 5, dtype=wd) if bias else None
        got = answer(lambda: select_grouped_gemm_backend(x, w, b, max_count=L, backend=backend))
        assert got == answer(fresh, x, w, b, L, backend), (xd, wd, bias, grad, triton, interpret, L, backend)
        seen.add(got)
    assert {"bmm", "loop", "triton"} <= seen  # every backend chosen somewhere in the grid
