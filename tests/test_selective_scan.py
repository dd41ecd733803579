"""Selective scan: every backend against a float64 loop oracle (values and gradients), odd
lengths, grouped B/C, delta_softplus on/off, stability with strong decays, dtypes, empty
inputs, dispatcher refusals and input validation.
"""
import pytest
import torch

from segblocks.ops._dispatch import BackendUnavailable, dispatch, module_available
from segblocks.ops.selective_scan import (
    SELECTIVE_SCAN_BACKENDS,
    explain_selective_scan,
    selective_scan,
    selective_scan_chunked,
)

HAS_MAMBA = module_available("mamba_ssm") and torch.cuda.is_available()


def oracle(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """One (sample, channel) at a time, one token at a time, in float64."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    batch, channels, length = u.shape
    grouped = B.dim() == 4
    per_group = channels // B.shape[1] if grouped else channels
    out = []
    for b in range(batch):
        rows = []
        for d in range(channels):
            g = d // per_group
            h = torch.zeros(A.shape[1], dtype=torch.float64)
            ys = []
            for t in range(length):
                dt = delta[b, d, t] + (delta_bias[d].double() if delta_bias is not None else 0.0)
                if delta_softplus:
                    dt = torch.log1p(torch.exp(dt))
                Bt = B[b, g, :, t] if grouped else B[b, :, t]
                Ct = C[b, g, :, t] if grouped else C[b, :, t]
                h = torch.exp(dt * A[d]) * h + dt * Bt * u[b, d, t]
                y = (Ct * h).sum()
                if D is not None:
                    y = y + D[d].double() * u[b, d, t]
                if z is not None:
                    zt = z[b, d, t].double()
                    y = y * zt * torch.sigmoid(zt)
                ys.append(y)
            rows.append(torch.stack(ys) if ys else torch.zeros(0, dtype=torch.float64))
        out.append(torch.stack(rows))
    return torch.stack(out)


def make_inputs(*, batch=2, channels=4, state=3, length=7, groups=None, dtype=torch.float64, full=True, softplus=True):
    """Random inputs; without softplus, delta stays positive so the recurrence decays."""
    bc_shape = (batch, state, length) if groups is None else (batch, groups, state, length)
    delta = torch.randn(batch, channels, length) if softplus else torch.rand(batch, channels, length) * 0.5
    inputs = {
        "u": torch.randn(batch, channels, length),
        "delta": delta,
        "A": -torch.rand(channels, state) * 3 - 0.1,
        "B": torch.randn(bc_shape),
        "C": torch.randn(bc_shape),
    }
    if full:
        inputs.update(D=torch.randn(channels), z=torch.randn(batch, channels, length))
        inputs["delta_bias"] = torch.randn(channels) * 0.3
    return {k: v.to(dtype).requires_grad_() for k, v in inputs.items()}


CASES = [  # (length, chunk_size, groups, softplus, full)
    (1, None, None, True, True),
    (1, 16, 2, False, False),
    (7, None, 2, True, True),
    (7, 16, None, False, True),
    (33, 16, 4, True, True),
    (33, 64, None, True, False),
    (130, 16, 2, False, True),
    (130, 64, None, True, True),
    (130, None, 1, True, True),
]


@pytest.mark.parametrize("length,chunk,groups,softplus,full", CASES)
def test_chunked_matches_oracle_values_and_grads(length, chunk, groups, softplus, full):
    inputs = make_inputs(length=length, groups=groups, softplus=softplus, full=full)
    expected = oracle(**inputs, delta_softplus=softplus)
    out = selective_scan_chunked(**inputs, delta_softplus=softplus, chunk_size=chunk)
    assert out.shape == expected.shape and out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    grad = torch.randn_like(expected)
    names = list(inputs)
    got = torch.autograd.grad(out, [inputs[n] for n in names], grad)
    want = torch.autograd.grad(expected, [inputs[n] for n in names], grad)
    for n, g, w in zip(names, got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9, msg=f"gradient w.r.t. {n}")


@pytest.mark.parametrize("length,groups,softplus", [(1, None, False), (9, 2, True)])
def test_reference_backend_matches_oracle(length, groups, softplus):
    inputs = make_inputs(length=length, groups=groups, softplus=softplus)
    expected = oracle(**inputs, delta_softplus=softplus)
    out = selective_scan(**inputs, delta_softplus=softplus, backend="reference")
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    got = torch.autograd.grad(out.sum(), [inputs["A"], inputs["B"]])
    want = torch.autograd.grad(expected.sum(), [inputs["A"], inputs["B"]])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)


def test_batch_elements_are_independent():
    inputs = {k: v.detach() for k, v in make_inputs(batch=3, length=20, groups=2).items()}
    out = selective_scan(**inputs, delta_softplus=True)
    per_sample = {k: (v[1:2] if v.dim() >= 3 else v) for k, v in inputs.items()}
    torch.testing.assert_close(out[1:2], selective_scan(**per_sample, delta_softplus=True))
    assert not torch.allclose(out[0], out[1])


def test_strong_decay_is_stable_in_float32():
    """Δ·|A| up to ~600 per token: the closed form with exp(-cumsum) would overflow float32."""
    inputs = make_inputs(length=40, state=32, full=False, dtype=torch.float32)
    with torch.no_grad():
        inputs["delta"].uniform_(5.0, 20.0)
        inputs["A"].copy_(-torch.arange(1, 33.0).expand(4, 32))
    expected = oracle(**inputs)
    for chunk in (None, 8, 40):
        out = selective_scan_chunked(**inputs, chunk_size=chunk)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-5)
        grads = torch.autograd.grad(out.sum(), [inputs["delta"], inputs["A"]])
        assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_inputs_keep_dtype(dtype):
    inputs = {k: v.detach() for k, v in make_inputs(length=17, groups=2).items()}
    cast = {k: v.to(dtype) for k, v in inputs.items()}
    out = selective_scan(**cast, delta_softplus=True)
    assert out.dtype == dtype
    tol = {torch.float32: 1e-5, torch.float16: 3e-2, torch.bfloat16: 2e-1}[dtype]
    # compare with the oracle on the rounded inputs: only the output rounding differs
    expected = oracle(**{k: v.double() for k, v in cast.items()}, delta_softplus=True)
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)


def test_mixed_float32_parameters_with_float64_inputs_compute_in_float64():
    inputs = {k: v.detach() for k, v in make_inputs(length=5).items()}
    inputs["A"] = inputs["A"].float()
    out = selective_scan(**inputs, delta_softplus=True)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, oracle(**inputs, delta_softplus=True), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", ["chunked", "reference"])
def test_empty_inputs(backend):
    inputs = make_inputs(length=0, groups=2)
    out = selective_scan(**inputs, delta_softplus=True, backend=backend)
    assert out.shape == (2, 4, 0)
    out.sum().backward()
    assert inputs["u"].grad.shape == (2, 4, 0)
    empty_batch = {k: (v.detach()[:0] if v.dim() >= 3 else v.detach()) for k, v in make_inputs(length=5).items()}
    assert selective_scan(**empty_batch, backend=backend).shape == (0, 4, 5)


def test_auto_picks_chunked_on_cpu_and_never_the_reference():
    tensors = tuple(v.detach() for v in make_inputs(full=False).values())
    assert dispatch("selective_scan", SELECTIVE_SCAN_BACKENDS, tensors) is selective_scan_chunked
    reasons = explain_selective_scan(*tensors)
    assert reasons["chunked"] == [] and reasons["reference"] == []
    assert reasons["mamba"]  # CPU tensors (and float64) are refused


@pytest.mark.skipif(module_available("mamba_ssm"), reason="checks the refusal when mamba_ssm is absent")
def test_mamba_refusal_is_explained():
    inputs = {k: v.detach().float() for k, v in make_inputs().items()}
    with pytest.raises(BackendUnavailable, match="`mamba` is not supported because: mamba_ssm is not installed"):
        selective_scan(**inputs, backend="mamba")
    assert "mamba_ssm is not installed" in explain_selective_scan(*inputs.values())["mamba"]


def test_mamba_refuses_float64_and_cpu_with_reasons():
    reasons = explain_selective_scan(*(v.detach() for v in make_inputs().values()))["mamba"]
    assert any("float64" in r for r in reasons)
    assert any("device=cpu" in r for r in reasons) or torch.cuda.is_available()


def test_unknown_backend_and_bad_chunk_size():
    inputs = {k: v.detach() for k, v in make_inputs().items()}
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        selective_scan(**inputs, backend="fast")
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        selective_scan_chunked(**inputs, chunk_size=0)


@pytest.mark.parametrize(
    "change,error,match",
    [
        ({"u": torch.randn(2, 4)}, ValueError, r"u must be \(B, D, L\)"),
        ({"delta": torch.randn(2, 4, 6)}, ValueError, "delta must be"),
        ({"A": torch.randn(5, 3)}, ValueError, r"A must be \(D, N\) with D=4"),
        ({"B": torch.randn(2, 4, 7)}, ValueError, r"B must be \(B, N, L\)"),
        ({"C": torch.randn(2, 3, 3, 7)}, ValueError, "G=3 groups, which must divide D=4"),
        ({"D": torch.randn(3)}, ValueError, r"D must be \(D,\)"),
        ({"z": torch.randn(1, 4, 7)}, ValueError, "z must be"),
        ({"delta_bias": torch.randn(4, 1)}, ValueError, "delta_bias must be"),
        ({"u": torch.ones(2, 4, 7, dtype=torch.long)}, TypeError, "u must be a real floating tensor"),
        ({"A": torch.randn(4, 3, dtype=torch.complex64)}, TypeError, "A must be a real floating tensor"),
        ({"B": torch.randn(2, 3, 7).numpy()}, TypeError, "B must be a tensor"),
    ],
)
def test_bad_inputs(change, error, match):
    inputs = {k: v.detach() for k, v in make_inputs().items()}
    inputs.update(change)
    with pytest.raises(error, match=match):
        selective_scan(**inputs)


@pytest.mark.skipif(not HAS_MAMBA, reason="needs mamba_ssm and CUDA")
@pytest.mark.parametrize("groups", [None, 2])
def test_mamba_backend_matches_oracle(groups):
    inputs = make_inputs(length=65, groups=groups, dtype=torch.float32)
    expected = oracle(**inputs, delta_softplus=True)
    cuda = {k: v.detach().cuda().requires_grad_() for k, v in inputs.items()}
    out = selective_scan(**cuda, delta_softplus=True, backend="mamba")
    torch.testing.assert_close(out.double().cpu(), expected, rtol=1e-4, atol=1e-4)
    got = torch.autograd.grad(out.sum(), [cuda["u"], cuda["B"]])
    want = torch.autograd.grad(expected.sum(), [inputs["u"], inputs["B"]])
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double().cpu(), w, rtol=1e-3, atol=1e-3)


def test_non_contiguous_inputs():
    """(B, L, D) tensors transposed to (B, D, L), with L a multiple of the chunk (no padding copy)."""
    u, delta, z = (torch.randn(2, 9, 4, dtype=torch.float64).transpose(1, 2) for _ in range(3))
    B, C = (torch.randn(2, 9, 3, dtype=torch.float64).transpose(1, 2) for _ in range(2))
    A = -torch.rand(4, 3, dtype=torch.float64)
    expected = oracle(u, delta, A, B, C, z=z, delta_softplus=True)
    for chunk in (3, 9):
        out = selective_scan_chunked(u, delta, A, B, C, z=z, delta_softplus=True, chunk_size=chunk)
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
