"""Varlen block-diagonal attention: every backend against a float64 per-segment oracle, the
mask description, gradients, dispatch refusals and input validation.

On CPU the Triton backend runs under TRITON_INTERPRET=1 (set by conftest), so shapes are tiny.
"""
import pytest
import torch

from segblocks.ops._dispatch import BackendUnavailable
from segblocks.ops.varlen_attention import (
    VARLEN_ATTENTION_BACKENDS,
    SeqLens,
    explain_varlen_attention,
    varlen_attention,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (q_seqlens, kv_seqlens): equal lengths; ragged with empty and length-1 query segments and a
# 20-query segment (two 16-row interpreter blocks); KV-only padding (every key segment k*k = 9).
CASES = {
    "square": ([3, 1, 5], None),
    "ragged": ([2, 0, 20, 1, 4], [3, 5, 35, 1, 2]),
    "kv_padding": ([4, 9, 1], [9, 9, 9]),
}


def oracle(q, k, v, q_lens, kv_lens, scale):
    """float64 softmax attention, one segment and one head at a time (no mask machinery)."""
    kv_lens = q_lens if kv_lens is None else kv_lens
    q, k, v = q.double(), k.double(), v.double()
    rows, q0, k0 = [], 0, 0
    for nq, nk in zip(q_lens, kv_lens):
        for i in range(q0, q0 + nq):
            heads = []
            for h in range(q.shape[1]):
                scores = torch.stack([scale * torch.dot(q[i, h], k[j, h]) for j in range(k0, k0 + nk)])
                heads.append(torch.softmax(scores, 0) @ v[k0:k0 + nk, h])
            rows.append(torch.stack(heads))
        q0, k0 = q0 + nq, k0 + nk
    return torch.stack(rows) if rows else q.new_zeros(0, *q.shape[1:])


def make_inputs(q_lens, kv_lens, *, H=2, D=5, dtype=torch.float32, device=DEVICE, grad=False):
    nkv = sum(q_lens if kv_lens is None else kv_lens)
    q = torch.randn(sum(q_lens), H, D, dtype=torch.float64).to(device, dtype)
    k = torch.randn(nkv, H, D, dtype=torch.float64).to(device, dtype)
    v = torch.randn(nkv, H, D, dtype=torch.float64).to(device, dtype)
    return [t.requires_grad_(grad) for t in (q, k, v)]


def check_grads(out, expected, q, k, v, tol):
    grad_out = torch.randn_like(expected)
    got = torch.autograd.grad(out, (q, k, v), grad_out.to(out.dtype))
    want = torch.autograd.grad(expected, (q, k, v), grad_out)
    for name, g, e in zip("qkv", got, want):
        assert g.dtype == q.dtype, name
        assert e.abs().sum() > 0, name  # not vacuous
        torch.testing.assert_close(g.double(), e.double(), atol=tol, rtol=tol, msg=lambda m: f"d{name}: {m}")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend,dtype", [
    ("reference", torch.float64), ("sdpa", torch.float64), ("sdpa", torch.float32), ("triton", torch.float32),
    ("padded", torch.float64), ("padded", torch.float32), ("grouped", torch.float64), ("grouped", torch.float32),
])
def test_forward_and_grads_match_oracle(backend, dtype, case):
    q_lens, kv_lens = CASES[case]
    q, k, v = make_inputs(q_lens, kv_lens, dtype=dtype, grad=True)
    out = varlen_attention(q, k, v, q_lens, kv_lens, scale=0.3, backend=backend)
    expected = oracle(q, k, v, q_lens, kv_lens, 0.3)
    assert out.dtype == dtype and out.shape == q.shape
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(out.double(), expected, atol=tol, rtol=tol)
    check_grads(out, expected, q, k, v, tol * 5)


def test_default_scale_and_head_dim_power_of_two():
    q_lens, kv_lens = [5, 3], [2, 7]
    q, k, v = make_inputs(q_lens, kv_lens, H=3, D=8)
    expected = oracle(q, k, v, q_lens, kv_lens, 8 ** -0.5)
    for backend in ("sdpa", "padded", "triton"):
        out = varlen_attention(q, k, v, q_lens, kv_lens, backend=backend)
        torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=2e-5)


def test_triton_fp16_forward_and_grads():
    q_lens, kv_lens = CASES["ragged"]
    q, k, v = make_inputs(q_lens, kv_lens, dtype=torch.float16, grad=True)
    out = varlen_attention(q, k, v, q_lens, kv_lens, backend="triton")
    expected = oracle(q, k, v, q_lens, kv_lens, 5 ** -0.5)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.double(), expected, atol=3e-3, rtol=3e-3)
    check_grads(out, expected, q, k, v, 1e-2)


@pytest.mark.filterwarnings("ignore::UserWarning")  # eager FlexAttention on CPU suggests torch.compile
def test_flex_forward_no_grad():
    pytest.importorskip("torch.nn.attention.flex_attention", reason="FlexAttention needs torch >= 2.5")
    q_lens, kv_lens = CASES["ragged"]
    q, k, v = make_inputs(q_lens, kv_lens, grad=True)  # requires_grad, but grad mode is off below
    with torch.no_grad():
        out = varlen_attention(q, k, v, q_lens, kv_lens, scale=0.7, backend="flex")
    torch.testing.assert_close(out.double(), oracle(q, k, v, q_lens, kv_lens, 0.7), atol=2e-5, rtol=2e-5)


@pytest.mark.skipif(DEVICE != "cpu", reason="CPU refusal")
def test_cpu_refusals_and_auto_choice():
    q, k, v = make_inputs([3, 2], None, grad=True)
    reasons = explain_varlen_attention(q, k, v, [3, 2])
    assert any("backward" in r for r in reasons["flex"])
    assert any("device=cpu" in r or "not installed" in r for r in reasons["xformers"])
    assert any("only used when asked" in r for r in reasons["triton"])
    assert reasons["grouped"] == [] and reasons["padded"] == [] and reasons["sdpa"] == []
    with pytest.raises(BackendUnavailable, match="backward"):
        varlen_attention(q, k, v, [3, 2], backend="flex")
    with pytest.raises(BackendUnavailable, match="xformers"):
        varlen_attention(q, k, v, [3, 2], backend="xformers")
    with torch.no_grad():  # no-grad inference still defaults to sdpa on CPU, flex only by name
        assert explain_varlen_attention(q, k, v, [3, 2])["flex"] != []
        assert explain_varlen_attention(q, k, v, [3, 2], backend="flex")["flex"] == []
    assert explain_varlen_attention(q, k, v, [3, 2], backend="triton")["triton"] == []
    reasons = explain_varlen_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), [3, 2], backend="triton")
    assert any("bfloat16" in r for r in reasons["triton"])
    big = torch.zeros(5, 1, 256)
    assert any("D=256" in r for r in explain_varlen_attention(big, big, big, [5])["triton"])


def test_seqlens_description_and_materialize():
    s = SeqLens.from_seqlens([2, 0, 3], [1, 4, 2])
    assert s.q_start_py == (0, 2, 2, 5) and s.kv_start_py == (0, 1, 5, 7)
    assert s.q_start.tolist() == [0, 2, 2, 5] and s.q_start.dtype == torch.int32
    assert (s.max_q_seqlen, s.max_kv_seqlen, s.num_segments, s.total_q, s.total_kv) == (3, 4, 3, 5, 7)
    expected = torch.zeros(5, 7, dtype=torch.bool)
    expected[0:2, 0:1] = True
    expected[2:5, 5:7] = True
    assert torch.equal(s.materialize(), expected)
    assert SeqLens.from_seqlens([2, 3]).kv_seqlens == (2, 3)
    assert s.to("cpu") is s


def test_prebuilt_seqlens_and_empty_queries():
    q, k, v = make_inputs([4, 2], [3, 5])
    s = SeqLens.from_seqlens([4, 2], [3, 5])
    expected = oracle(q, k, v, [4, 2], [3, 5], 5 ** -0.5)
    torch.testing.assert_close(varlen_attention(q, k, v, s, backend="sdpa").double(), expected, atol=2e-5, rtol=2e-5)
    with pytest.raises(ValueError, match="kv_seqlens=None"):
        varlen_attention(q, k, v, s, [3, 5])
    q0 = q[:0]
    for backend in ("sdpa", "padded", "grouped", "reference", "triton"):
        assert varlen_attention(q0, k, v, [0, 0], [3, 5], backend=backend).shape == (0, 2, 5)


# Layouts the padded backend treats specially: every segment full (plain reshapes, no mask),
# equal key lengths but an empty query segment with keys (gather, no mask), a single segment.
PADDED_LAYOUTS = {
    "uniform": ([4, 4, 4], [6, 6, 6]),
    "empty_query_with_keys": ([0, 3, 3], [5, 3, 3]),
    "single": ([7], [2]),
    "length_one": ([1, 1, 1], [1, 4, 2]),
}


@pytest.mark.parametrize("case", PADDED_LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_padded_layouts_match_oracle(case, dtype):
    q_lens, kv_lens = PADDED_LAYOUTS[case]
    q, k, v = make_inputs(q_lens, kv_lens, H=3, D=4, dtype=dtype, grad=True)
    out = varlen_attention(q, k, v, q_lens, kv_lens, scale=0.6, backend="padded")
    expected = oracle(q, k, v, q_lens, kv_lens, 0.6)
    assert out.dtype == dtype and out.shape == q.shape
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(out.double(), expected, atol=tol, rtol=tol)
    check_grads(out, expected, q, k, v, tol * 5)


# Layouts of the grouped backend: windows whose shapes interleave (permutations needed), an empty
# query segment whose keys must be skipped, length-1 segments, a single shape already in order,
# and a "batch" of two samples with different window counts and lengths.
GROUPED_LAYOUTS = {
    "interleaved": ([4, 2, 4, 2, 1], [4, 3, 4, 3, 1]),
    "empty_query_with_keys": ([3, 0, 3, 1], [2, 5, 2, 1]),
    "length_one": ([1, 1, 1], [1, 3, 1]),
    "in_order": ([5, 5, 5], [5, 5, 5]),
    "batch_of_two_sizes": ([4, 2, 4, 2, 4, 4, 4, 2, 1], [4, 4, 4, 4, 4, 4, 4, 4, 4]),
}


@pytest.mark.parametrize("case", GROUPED_LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_grouped_layouts_match_oracle(case, dtype):
    q_lens, kv_lens = GROUPED_LAYOUTS[case]
    q, k, v = make_inputs(q_lens, kv_lens, H=3, D=4, dtype=dtype, grad=True)
    out = varlen_attention(q, k, v, q_lens, kv_lens, scale=0.6, backend="grouped")
    expected = oracle(q, k, v, q_lens, kv_lens, 0.6)
    assert out.dtype == dtype and out.shape == q.shape
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(out.double(), expected, atol=tol, rtol=tol)
    check_grads(out, expected, q, k, v, tol * 5)


def test_group_layout_from_python_ints_and_cached():
    from segblocks.ops.varlen_attention.grouped import group_layout, group_segments

    s = SeqLens.from_seqlens([4, 2, 0, 4, 2], [4, 3, 6, 4, 3])
    layout = group_layout(s)
    assert layout.shapes == ((2, 4, 4), (2, 2, 3))  # (count, Lq, Lkv) in order of first appearance
    assert layout.q_perm.tolist() == [0, 1, 2, 3, 6, 7, 8, 9, 4, 5, 10, 11]
    assert layout.kv_split == (8, 6, 6)  # the 6 keys of the empty query segment go to the unused tail
    assert sorted(layout.kv_perm.tolist()) == list(range(20))  # a full permutation
    assert torch.equal(layout.q_perm[layout.q_inv], torch.arange(12))
    assert group_layout(s) is layout  # cached on the description
    g = group_segments(s)
    assert g.seqlens.q_seqlens == (4, 4, 2, 2) and g.seqlens.kv_seqlens == (4, 4, 3, 3)
    assert g.kv_rows.tolist() == [0, 1, 2, 3, 13, 14, 15, 16, 4, 5, 6, 17, 18, 19]
    # reordering the segments gives the same attention, row for row
    q, k, v = make_inputs([4, 2, 0, 4, 2], [4, 3, 6, 4, 3])
    want = oracle(q, k, v, [4, 2, 0, 4, 2], [4, 3, 6, 4, 3], 0.5)[g.q_rows]
    got = varlen_attention(q[g.q_rows], k[g.kv_rows], v[g.kv_rows], g.seqlens, scale=0.5, backend="grouped")
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=2e-5)
    assert group_layout(g.seqlens).q_perm is None and group_layout(g.seqlens).kv_perm is None  # already grouped


def test_permute_rows_gradient_is_inverse_gather():
    from segblocks.ops.varlen_attention.grouped import permute_rows

    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    inv = torch.argsort(perm)
    assert permute_rows(x, None, None) is x
    torch.testing.assert_close(permute_rows(x, perm, inv), x[perm])
    assert torch.autograd.gradcheck(lambda t: permute_rows(t, perm, inv), (x,))
    assert torch.autograd.gradgradcheck(lambda t: permute_rows(t, perm, inv) ** 2, (x,))


def auto_choice(reasons):
    """The backend auto dispatch runs: the first auto-eligible one without refusals."""
    return next(b.name for b in VARLEN_ATTENTION_BACKENDS if b.auto and not reasons[b.name])


@pytest.mark.skipif(DEVICE != "cpu", reason="CPU auto choice")
def test_auto_prefers_grouped_then_padded_for_windows_and_explains_dense_fallback():
    # KV-padded windows (HRSAM §3.4): 4 windows of k*k = 9 keys with 9, 3, 3, 1 queries.
    q_lens, kv_lens = [9, 3, 3, 1], [9, 9, 9, 9]
    q, k, v = make_inputs(q_lens, kv_lens)
    assert auto_choice(explain_varlen_attention(q, k, v, q_lens, kv_lens)) == "grouped"
    # Many distinct shapes: grouped refuses (one SDPA call per shape), padded takes over.
    from segblocks.ops.varlen_attention import GROUPED_MAX_SHAPES

    q_lens = list(range(1, GROUPED_MAX_SHAPES + 2))
    kv_lens = [GROUPED_MAX_SHAPES + 1] * len(q_lens)
    q, k, v = make_inputs(q_lens, kv_lens)
    reasons = explain_varlen_attention(q, k, v, q_lens, kv_lens)
    assert reasons["grouped"] == [
        f"{GROUPED_MAX_SHAPES + 1} distinct segment shapes > GROUPED_MAX_SHAPES = {GROUPED_MAX_SHAPES} "
        "(one SDPA call per shape)"
    ]
    assert auto_choice(reasons) == "padded"
    assert explain_varlen_attention(q, k, v, q_lens, kv_lens, backend="grouped")["grouped"] == []  # by name: runs
    # Very unequal segments: the 5 x 8 x 8 padded batch is larger than the 12 x 12 dense mask.
    q_lens, kv_lens = [1, 1, 1, 1, 8], [8, 1, 1, 1, 1]
    q, k, v = make_inputs(q_lens, kv_lens, grad=True)
    reasons = explain_varlen_attention(q, k, v, q_lens, kv_lens)
    reasons["grouped"] = ["pretend: too many shapes"]  # 2 shapes here; check the padded -> sdpa step
    assert reasons["padded"] == ["padded batch larger than dense mask: S*Lq_max*Lkv_max = 5*8*8 = 320 > Nq*Nkv = 12*12 = 144"]
    assert auto_choice(reasons) == "sdpa"
    assert explain_varlen_attention(q, k, v, q_lens, kv_lens, backend="padded")["padded"] == []  # by name: runs
    out = varlen_attention(q, k, v, q_lens, kv_lens, backend="padded")
    expected = oracle(q, k, v, q_lens, kv_lens, 5 ** -0.5)
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=2e-5)
    check_grads(out, expected, q, k, v, 1e-4)


@pytest.mark.parametrize("backend", ["auto", "grouped", "padded", "sdpa"])
def test_inference_mode_then_training_on_same_seqlens(backend):
    """Caches filled under inference_mode (Lightning's sanity check) must not break training."""
    q_lens, kv_lens = [2, 0, 5, 1], [3, 2, 4, 4]
    with torch.inference_mode():
        s = SeqLens.from_seqlens(q_lens, kv_lens, device=DEVICE)
        varlen_attention(*make_inputs(q_lens, kv_lens), s, backend=backend)
    assert not any(t.is_inference() for t in (s.q_start, s.kv_start, *s.segment_ids()))
    q, k, v = make_inputs(q_lens, kv_lens, grad=True)
    out = varlen_attention(q, k, v, s, backend=backend)
    check_grads(out, oracle(q, k, v, q_lens, kv_lens, 5 ** -0.5), q, k, v, 1e-4)


@pytest.mark.parametrize(
    "q_shape,kv_shape,q_lens,kv_lens,match",
    [
        ((5, 2, 4), (6, 2, 4), [2, 2], [3, 3], "q_seqlens sum to 4 but q has Nq=5"),
        ((5, 2, 4), (6, 2, 4), [2, 3], [3, 4], "kv_seqlens sum to 7 but k, v have Nkv=6"),
        ((5, 2, 4), (6, 2, 4), [2, 3], [6], "same number of segments, got 2 and 1"),
        ((5, 2, 4), (6, 2, 4), [2, 3], [6, 0], "non-empty key segment"),
        ((5, 2, 4), (5, 2, 4), [2, -1, 4], None, "non-negative"),
        ((5, 2, 4), (6, 2, 8), [5], [6], "same H and D"),
        ((5, 2, 4), (6, 3, 4), [5], [6], "same H and D"),
        ((5, 8), (6, 8), [5], [6], r"q must be \(N, H, D\)"),
    ],
)
def test_bad_inputs(q_shape, kv_shape, q_lens, kv_lens, match):
    q, k = torch.zeros(q_shape), torch.zeros(kv_shape)
    with pytest.raises(ValueError, match=match):
        varlen_attention(q, k, k, q_lens, kv_lens)


def test_bad_dtypes_and_backend_name():
    q = torch.zeros(3, 1, 4)
    with pytest.raises(TypeError, match="share a dtype"):
        varlen_attention(q, q.double(), q, [3])
    with pytest.raises(TypeError, match="floating point"):
        varlen_attention(q.long(), q, q, [3])
    with pytest.raises(ValueError, match="unknown backend"):
        varlen_attention(q, q, q, [3], backend="cutlass")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["auto", "triton", "xformers", "flex", "padded", "sdpa"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_backends(backend, dtype):
    if backend == "xformers":
        pytest.importorskip("xformers")
    q_lens, kv_lens = CASES["ragged"]
    q, k, v = make_inputs(q_lens, kv_lens, H=2, D=64, dtype=dtype, grad=True)
    out = varlen_attention(q, k, v, q_lens, kv_lens, backend=backend)
    expected = oracle(q, k, v, q_lens, kv_lens, 64 ** -0.5)
    tol = 2e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out.double(), expected, atol=tol, rtol=tol)
    check_grads(out, expected, q, k, v, tol * 5)


def test_op_subpackages_are_not_shadowed_by_their_functions():
    """``segblocks.ops`` must not bind ``varlen_attention`` & co. to the functions: that would
    replace the subpackages and break ``import segblocks.ops.varlen_attention.naive``."""
    import subprocess
    import sys

    code = """
import types
import segblocks, segblocks.ops
import segblocks.ops.varlen_attention.naive, segblocks.ops.varlen_attention.padded, segblocks.ops.varlen_attention.sdpa
import segblocks.ops.selective_scan.chunked, segblocks.ops.selective_scan.naive
import segblocks.ops.ms_deform_attn.naive
for name in ("varlen_attention", "selective_scan", "ms_deform_attn"):
    pkg = getattr(segblocks.ops, name)
    assert isinstance(pkg, types.ModuleType), (name, pkg)
    assert callable(getattr(pkg, name)) and getattr(segblocks, name) is getattr(pkg, name), name
assert segblocks.ops.varlen_attention.naive.varlen_attention_reference
from segblocks.ops.varlen_attention import varlen_attention, SeqLens
from segblocks.ops import SeqLens as S2, explain_varlen_attention
assert S2 is SeqLens
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
