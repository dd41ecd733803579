"""HRSAM Cycle-scan modules against a naive float64 re-implementation written here: explicit
layer norms and linears, an explicit per-token recurrence over the R-times repeated sequence,
and the repeat-and-merge by hand. Also init, gradients, batch independence, odd lengths, the
HRSAM++ per-scale / multi-scale bookkeeping and bad inputs.
"""
import math

import pytest
import torch

from segblocks.blocks.hrsam_cyclescan import CycleScan, MultiScaleCycleScan, PerScaleCycleScan

DIM, STATE = 6, 3


def layer_norm(x, norm):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def linear(x, layer):
    out = x @ layer.weight.T
    return out if layer.bias is None else out + layer.bias


def silu(x):
    return x * torch.sigmoid(x)


def naive_cycle_scan(m, x, plain_sum=False):
    """One sequence x: (L, C) → (L, C), token by token over the repeated sequence."""
    C, N, R = m.dim, m.d_state, m.repeats
    length = x.shape[0]
    xz = silu(linear(layer_norm(x, m.in_norm), m.in_proj))
    u, z = xz[:, :C], xz[:, C:]
    code = linear(u, m.x_proj)
    dt_code, Bs, Cs = code[:, : m.dt_rank], code[:, m.dt_rank : m.dt_rank + N], code[:, m.dt_rank + N :]
    dt = dt_code if m.dt_rank == C else dt_code @ m.dt_proj.weight.T
    dt = torch.log1p(torch.exp(dt + m.dt_bias))  # softplus
    A = -torch.exp(m.A_log)  # C x N
    h = torch.zeros(C, N, dtype=x.dtype)
    segments = []
    for r in range(R):
        ys = []
        for t in range(length):  # token t of copy r is token r·L + t of the cycled sequence
            h = torch.exp(dt[t, :, None] * A) * h + (dt[t] * u[t])[:, None] * Bs[t]
            ys.append(h @ Cs[t] + m.D * u[t])
        segments.append(torch.stack(ys) if ys else x.new_zeros(0, C))
    if plain_sum:
        y = segments[0]
        for seg in segments[1:]:
            y = y + seg
    else:
        y = sum(m.merge_weight[:, r] * segments[r] for r in range(R))
    return x + linear(z * layer_norm(y, m.out_norm), m.out_proj)


def naive_batch(m, x, split=None, plain_sum=False):
    split = [x.shape[1]] if split is None else split
    out = []
    for sample in x:
        out.append(torch.cat([naive_cycle_scan(m, seg, plain_sum) for seg in sample.split(split)], dim=0))
    return torch.stack(out)


def make(cls=CycleScan, **kwargs):
    m = cls(dim=DIM, d_state=STATE, **kwargs).double()
    with torch.no_grad():  # non-trivial LN/bias values so they are actually exercised
        for norm in (m.in_norm, m.out_norm):
            norm.weight.normal_(1.0, 0.2)
            norm.bias.normal_(0.0, 0.2)
    return m


@pytest.mark.parametrize("length", [1, 7, 13])
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_matches_naive(length, backend):
    m = make(backend=backend)
    x = torch.randn(2, length, DIM, dtype=torch.float64)
    torch.testing.assert_close(m(x), naive_batch(m, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("repeats,dt_rank", [(1, "auto"), (2, 2), (4, "auto")])
def test_other_repeats_and_low_rank_dt(repeats, dt_rank):
    m = make(repeats=repeats, dt_rank=dt_rank)
    with torch.no_grad():
        m.merge_weight.normal_()
    x = torch.randn(2, 5, DIM, dtype=torch.float64)
    torch.testing.assert_close(m(x), naive_batch(m, x), rtol=1e-10, atol=1e-10)


def test_init():
    m = CycleScan(dim=DIM, d_state=STATE, dt_min=0.01, dt_max=0.05)
    assert torch.equal(-m.A_log.exp(), -torch.arange(1.0, STATE + 1).expand(DIM, -1))  # S4D-real
    assert torch.equal(m.D, torch.ones(DIM)) and torch.equal(m.merge_weight, torch.ones(DIM, 3))
    dt = torch.nn.functional.softplus(m.dt_bias)
    assert ((dt > 0.01 - 1e-6) & (dt < 0.05 + 1e-6)).all()
    assert m.x_proj.weight[:DIM].abs().max() <= DIM**-0.5 and torch.equal(m.x_proj.bias, torch.zeros(DIM + 2 * STATE))
    assert isinstance(m.dt_proj, torch.nn.Identity)
    assert m.A_log._no_weight_decay and m.D._no_weight_decay
    low = CycleScan(dim=DIM, d_state=STATE, dt_rank=2)
    assert low.x_proj.out_features == 2 + 2 * STATE and low.dt_proj.weight.abs().max() <= 2**-0.5


def test_unit_merge_weights_sum_the_repeats():
    """At init the merge is the paper's plain sum of the R segments (§3.5)."""
    m = make()
    assert torch.equal(m.merge_weight, torch.ones_like(m.merge_weight))
    x = torch.randn(2, 6, DIM, dtype=torch.float64)
    torch.testing.assert_close(m(x), naive_batch(m, x, plain_sum=True), rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        m.merge_weight[:, 1] = 0.5
    assert not torch.allclose(m(x), naive_batch(m, x, plain_sum=True))


def test_later_repeats_see_the_whole_sequence():
    """Cycling makes the first token depend on the last one (a plain causal scan cannot)."""
    m = make()
    x = torch.randn(1, 9, DIM, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(m(x)[0, 0].sum(), x)
    assert grad[0, -1].abs().sum() > 0
    plain = make(repeats=1)
    (grad,) = torch.autograd.grad(plain(x)[0, 0].sum(), x)
    assert grad[0, 1:].abs().sum() == 0


def test_gradients_reach_every_parameter():
    m = make()
    x = torch.randn(2, 7, DIM, dtype=torch.float64, requires_grad=True)
    m(x).pow(2).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_batch_independence():
    m = make()
    x = torch.randn(3, 8, DIM, dtype=torch.float64)
    out = m(x)
    for i in range(3):
        torch.testing.assert_close(out[i : i + 1], m(x[i : i + 1]))


def test_float32_and_empty():
    m = CycleScan(dim=DIM, d_state=STATE)
    out = m(torch.randn(2, 5, DIM))
    assert out.dtype == torch.float32 and out.shape == (2, 5, DIM)
    assert m(torch.randn(2, 0, DIM)).shape == (2, 0, DIM)


def test_split_scans_segments_separately():
    m = make()
    x = torch.randn(2, 11, DIM, dtype=torch.float64)
    torch.testing.assert_close(m(x, split=[4, 7]), naive_batch(m, x, [4, 7]), rtol=1e-10, atol=1e-10)
    assert not torch.allclose(m(x, split=[4, 7]), m(x))


def test_per_scale_and_multi_scale_bookkeeping():
    """HRSAM++: per-scale = each scale on its own; multi-scale = one scan over [s1; s2] split back."""
    s1 = torch.randn(2, 12, DIM, dtype=torch.float64)  # e.g. the full-resolution 3x4 tokens
    s2 = torch.randn(2, 5, DIM, dtype=torch.float64)  # the anchor map's tokens
    per = make(PerScaleCycleScan)
    out1, out2 = per([s1, s2])
    torch.testing.assert_close(out1, naive_batch(per, s1), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out2, naive_batch(per, s2), rtol=1e-10, atol=1e-10)

    multi = make(MultiScaleCycleScan)
    out1, out2 = multi([s1, s2])
    fused = naive_batch(multi, torch.cat([s1, s2], dim=1))
    torch.testing.assert_close(out1, fused[:, :12], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out2, fused[:, 12:], rtol=1e-10, atol=1e-10)
    # scale order matters for the fused scan
    swapped2, swapped1 = multi([s2, s1])
    assert not torch.allclose(swapped1, out1)
    (single,) = multi([s1])
    torch.testing.assert_close(single, naive_batch(multi, s1), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda m: m(torch.randn(2, 5, DIM + 1)), r"x must be \(B, L, C=6\)"),
        (lambda m: m(torch.randn(5, DIM)), r"x must be \(B, L, C=6\)"),
        (lambda m: m(torch.randn(2, 5, DIM), split=[2, 2]), "summing to L=5"),
        (lambda m: m(torch.randn(2, 5, DIM), split=[6, -1]), "non-negative"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call(CycleScan(dim=DIM, d_state=STATE))


def test_bad_scale_lists_and_config():
    multi = MultiScaleCycleScan(dim=DIM, d_state=STATE)
    with pytest.raises(ValueError, match="non-empty list"):
        multi([])
    with pytest.raises(ValueError, match="scale 1 must be"):
        multi([torch.randn(2, 4, DIM), torch.randn(3, 4, DIM)])
    with pytest.raises(ValueError, match="dt_rank"):
        CycleScan(dim=DIM, dt_rank=DIM + 1)
    with pytest.raises(ValueError, match="dt_min"):
        CycleScan(dim=DIM, dt_min=0.2, dt_max=0.1)
    with pytest.raises(ValueError, match=">= 1"):
        CycleScan(dim=DIM, repeats=0)
    assert math.isclose(CycleScan(dim=DIM).merge_weight.sum().item(), DIM * 3)
