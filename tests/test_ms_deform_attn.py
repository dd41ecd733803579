"""Multi-scale deformable attention: the op's backends against a float64 loop oracle, the
dispatcher's refusals, and the MSDeformAttn module (init, semantics, padding, errors).

On CPU the Triton backend runs under TRITON_INTERPRET=1 (set by conftest), so shapes are tiny.
"""
import math

import pytest
import torch

from segblocks.layers.ms_deform_attn import MSDeformAttn
from segblocks.ops._dispatch import BackendUnavailable
from segblocks.ops.ms_deform_attn import MS_DEFORM_ATTN_BACKENDS, explain_ms_deform_attn, ms_deform_attn

SHAPES = [(5, 7), (3, 2), (1, 1)]  # odd sizes, a 1x1 level
BACKENDS = [b.name for b in MS_DEFORM_ATTN_BACKENDS]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def oracle(value, shapes, loc, attn):
    """Bilinear sampling with zero padding, align_corners=False, one sample at a time (float64).

    Differentiable: the corner weights are built from ``loc`` with tensor ops, floor is constant.
    """
    value, loc, attn = value.double(), loc.double(), attn.double()
    B, _, M, D = value.shape
    _, Lq, _, _, P, _ = loc.shape
    rows = []
    for b in range(B):
        for q in range(Lq):
            for m in range(M):
                acc = value.new_zeros(D)
                start = 0
                for lvl, (h, w) in enumerate(shapes):
                    for p in range(P):
                        x = loc[b, q, m, lvl, p, 0] * w - 0.5
                        y = loc[b, q, m, lvl, p, 1] * h - 0.5
                        x0, y0 = math.floor(x.item()), math.floor(y.item())
                        fx, fy = x - x0, y - y0
                        corners = ((x0, y0, (1 - fx) * (1 - fy)), (x0 + 1, y0, fx * (1 - fy)),
                                   (x0, y0 + 1, (1 - fx) * fy), (x0 + 1, y0 + 1, fx * fy))
                        for xi, yi, weight in corners:
                            if 0 <= xi < w and 0 <= yi < h:
                                acc = acc + attn[b, q, m, lvl, p] * weight * value[b, start + yi * w + xi, m]
                    start += h * w
                rows.append(acc)
    return torch.stack(rows).view(B, Lq, M * D)


def make_inputs(*, B=2, Lq=9, M=2, D=3, P=2, shapes=SHAPES, dtype=torch.float32, device=DEVICE):
    S = sum(h * w for h, w in shapes)
    spatial_shapes = torch.tensor(shapes, dtype=torch.long, device=device)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat((sizes.new_zeros(1), sizes.cumsum(0)[:-1]))
    value = torch.randn(B, S, M, D, device=device).to(dtype)
    loc = (torch.rand(B, Lq, M, len(shapes), P, 2, device=device) * 1.6 - 0.3).to(dtype)  # some outside [0, 1]
    attn = torch.rand(B, Lq, M, len(shapes), P, device=device).to(dtype)
    return value, spatial_shapes, level_start_index, loc, attn


@pytest.mark.parametrize("backend,dtype", [("pytorch", torch.float64), ("pytorch", torch.float32), ("triton", torch.float32)])
def test_forward_and_grads_match_oracle(backend, dtype):
    value, shapes, starts, loc, attn = make_inputs(dtype=dtype)
    value.requires_grad_()
    loc.requires_grad_()
    attn.requires_grad_()
    out = ms_deform_attn(value, shapes, starts, loc, attn, backend=backend)
    expected = oracle(value, SHAPES, loc, attn)
    assert out.dtype == dtype and out.shape == (2, 9, 6)  # 18 rows: two interpreter blocks of 16
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out.double(), expected, atol=tol, rtol=tol)

    grad_out = torch.randn_like(expected)
    got = torch.autograd.grad(out, (value, loc, attn), grad_out.to(dtype))
    want = torch.autograd.grad(expected, (value, loc, attn), grad_out)
    for name, g, e in zip(("value", "sampling_locations", "attention_weights"), got, want):
        assert g.dtype == dtype, name
        # Location gradients scale with W (7 here), hence the looser absolute tolerance.
        torch.testing.assert_close(g.double(), e.double(), atol=tol * 10, rtol=tol * 10, msg=lambda m: f"{name}: {m}")
    assert want[0].abs().sum() > 0 and want[1].abs().sum() > 0  # the check is not vacuous


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_forward(backend):
    value, shapes, starts, loc, attn = make_inputs(dtype=torch.float16)
    out = ms_deform_attn(value, shapes, starts, loc, attn, backend=backend)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.double(), oracle(value, SHAPES, loc, attn), atol=5e-3, rtol=5e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_dtypes_follow_value(backend):
    """Under autocast the module passes fp16 values with fp32 locations and weights."""
    value, shapes, starts, loc, attn = make_inputs(B=1, Lq=2)
    out = ms_deform_attn(value.half(), shapes, starts, loc, attn, backend=backend)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.double(), oracle(value.half(), SHAPES, loc, attn), atol=5e-3, rtol=5e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_far_outside_points_read_zero(backend):
    value, shapes, starts, loc, attn = make_inputs(B=1, Lq=2)
    loc = torch.full_like(loc, -1e6)
    loc[0, 1] = 1e6
    loc.requires_grad_()
    out = ms_deform_attn(value, shapes, starts, loc, attn, backend=backend)
    assert torch.equal(out, torch.zeros_like(out))
    (grad,) = torch.autograd.grad(out.sum(), loc)
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_queries(backend):
    value, shapes, starts, loc, attn = make_inputs(Lq=0)
    value.requires_grad_()
    out = ms_deform_attn(value, shapes, starts, loc, attn, backend=backend)
    assert out.shape == (2, 0, 6)
    (grad,) = torch.autograd.grad(out.sum(), value)
    assert torch.equal(grad, torch.zeros_like(value))


def _bad_inputs():
    def mutate(**changes):
        return changes

    return [
        pytest.param(mutate(value=torch.randn(2, 42, 6)), ValueError, r"value must be \(B, S, M, D\)", id="value-3d"),
        pytest.param(mutate(value=torch.randn(2, 41, 2, 3)), ValueError, "S=41", id="S-mismatch"),
        pytest.param(mutate(value=torch.ones(2, 42, 2, 3, dtype=torch.long)), TypeError, "floating", id="int-value"),
        pytest.param(mutate(spatial_shapes=torch.tensor(SHAPES, dtype=torch.float32)), TypeError, "integer", id="float-shapes"),
        pytest.param(mutate(spatial_shapes=torch.tensor([35, 6, 1])), ValueError, r"\(L, 2\)", id="shapes-1d"),
        pytest.param(mutate(spatial_shapes=torch.tensor([[42, 1], [0, 3], [0, 1]])), ValueError, "H, W >= 1", id="empty-level"),
        pytest.param(mutate(level_start_index=torch.tensor([0, 35, 40])), ValueError, r"\[0, 35, 41\]", id="bad-starts"),
        pytest.param(mutate(sampling_locations=torch.rand(2, 3, 2, 3, 2, 3)), ValueError, "sampling_locations", id="loc-last-dim"),
        pytest.param(mutate(sampling_locations=torch.rand(2, 3, 2, 2, 2, 2)), ValueError, "3 levels", id="loc-levels"),
        pytest.param(mutate(attention_weights=torch.rand(2, 3, 2, 3, 4)), ValueError, "attention_weights", id="attn-points"),
    ]


@pytest.mark.parametrize("changes,error,match", _bad_inputs())
def test_bad_inputs(changes, error, match):
    args = dict(zip(("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights"),
                    make_inputs(device="cpu")))
    args.update(changes)
    with pytest.raises(error, match=match):
        ms_deform_attn(**args, backend="pytorch")


def test_dispatcher_explains_refusals(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # read per call; also on CUDA machines
    args = make_inputs(device="cpu")
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        ms_deform_attn(*args, backend="cuda")
    # Under auto on CPU the (slow, test-only) interpreter is skipped, and the user is told why.
    reasons = explain_ms_deform_attn(*args)
    assert reasons["pytorch"] == [] and "backend='triton'" in reasons["triton"][0]
    assert explain_ms_deform_attn(*args, backend="triton")["triton"] == []

    bf16 = [t.bfloat16() if t.is_floating_point() else t for t in args]
    with pytest.raises(BackendUnavailable, match="bfloat16"):
        ms_deform_attn(*bf16, backend="triton")
    assert ms_deform_attn(*bf16).dtype == torch.bfloat16  # auto falls back to pytorch

    f64 = [t.double() if t.is_floating_point() else t for t in args]
    with pytest.raises(BackendUnavailable, match=r"`triton` is not supported because: dtype=\['torch.float64'\]"):
        ms_deform_attn(*f64, backend="triton")

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendUnavailable, match="TRITON_INTERPRET=1"):
        ms_deform_attn(*args, backend="triton")


# --------------------------------------------------------------------------------------------
# MSDeformAttn module
# --------------------------------------------------------------------------------------------


def _module_inputs(B=2, Lq=4, C=8, shapes=SHAPES):
    S = sum(h * w for h, w in shapes)
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    level_start_index = torch.tensor([0, 35, 41])
    query = torch.randn(B, Lq, C)
    ref = torch.rand(B, Lq, len(shapes), 2)
    value_input = torch.randn(B, S, C)
    return query, ref, value_input, spatial_shapes, level_start_index


def test_module_init():
    attn = MSDeformAttn(d_model=16, n_levels=3, n_heads=8, n_points=2)
    bias = attn.sampling_offsets.bias.view(8, 3, 2, 2)
    # Head m looks in direction 2*pi*m/8 (max-norm 1), point k is k pixels out, same on every level.
    expected_dirs = torch.tensor([[1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0], [-1, -1], [0, -1], [1, -1]], dtype=torch.float32)
    for k in range(2):
        for lvl in range(3):
            torch.testing.assert_close(bias[:, lvl, k], expected_dirs * (k + 1), atol=1e-5, rtol=0)
    assert torch.count_nonzero(attn.sampling_offsets.weight) == 0
    assert torch.count_nonzero(attn.attention_weights.weight) == 0 and torch.count_nonzero(attn.attention_weights.bias) == 0
    bound = math.sqrt(6 / (16 + 16))
    for proj in (attn.value_proj, attn.output_proj):
        assert torch.count_nonzero(proj.bias) == 0
        assert proj.weight.abs().max() <= bound and proj.weight.std() > bound / 4


def test_module_matches_hand_computation():
    """Offsets are divided by (W_l, H_l) and added to (x, y) references; weights softmax over L*P."""
    torch.manual_seed(1)
    mod = MSDeformAttn(d_model=8, n_levels=3, n_heads=2, n_points=2, backend="pytorch").double()
    torch.nn.init.normal_(mod.sampling_offsets.weight, std=0.5)
    torch.nn.init.normal_(mod.attention_weights.weight)
    query, ref, value_input, shapes, starts = (t.double() if t.is_floating_point() else t for t in _module_inputs(B=1, Lq=2))
    out = mod(query, ref, value_input, shapes, starts)

    value = mod.value_proj(value_input).view(1, 42, 2, 4)
    offsets = mod.sampling_offsets(query).view(1, 2, 2, 3, 2, 2)
    loc = torch.empty_like(offsets)
    for lvl, (h, w) in enumerate(SHAPES):
        loc[..., lvl, :, 0] = ref[:, :, None, lvl, None, 0] + offsets[..., lvl, :, 0] / w
        loc[..., lvl, :, 1] = ref[:, :, None, lvl, None, 1] + offsets[..., lvl, :, 1] / h
    logits = mod.attention_weights(query).view(1, 2, 2, 6)
    weights = (logits.exp() / logits.exp().sum(-1, keepdim=True)).view(1, 2, 2, 3, 2)
    expected = mod.output_proj(oracle(value, SHAPES, loc, weights))
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_module_forward_backward(backend):
    mod = MSDeformAttn(d_model=8, n_levels=3, n_heads=2, n_points=2, backend=backend).to(DEVICE)
    # At init the offset/weight projections ignore the query (zero weights): perturb them.
    torch.nn.init.normal_(mod.sampling_offsets.weight, std=0.1)
    torch.nn.init.normal_(mod.attention_weights.weight, std=0.1)
    query, ref, value_input, shapes, starts = (t.to(DEVICE) for t in _module_inputs())
    query.requires_grad_()
    out = mod(query, ref, value_input, shapes, starts)
    assert out.shape == (2, 4, 8)
    out.square().sum().backward()
    assert query.grad is not None and query.grad.abs().sum() > 0
    for name, p in mod.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_module_padding_mask_hides_tokens():
    mod = MSDeformAttn(d_model=8, n_levels=3, n_heads=2, n_points=2, backend="pytorch")
    query, ref, value_input, shapes, starts = _module_inputs()
    mask = torch.zeros(2, 42, dtype=torch.bool)
    mask[1, 30:] = True  # pad part of the second sample only
    value_input.requires_grad_()
    out = mod(query, ref, value_input, shapes, starts, mask)
    (grad,) = torch.autograd.grad(out.sum(), value_input)
    assert torch.count_nonzero(grad[1, 30:]) == 0 and torch.count_nonzero(grad[0, 30:]) > 0
    changed = value_input.detach().clone()
    changed[1, 30:] = 100.0
    torch.testing.assert_close(mod(query, ref, changed, shapes, starts, mask), out.detach())


def test_module_bad_inputs():
    with pytest.raises(ValueError, match="divisible"):
        MSDeformAttn(d_model=10, n_heads=4)
    mod = MSDeformAttn(d_model=8, n_levels=3, n_heads=2, n_points=2)
    query, ref, value_input, shapes, starts = _module_inputs()
    with pytest.raises(ValueError, match="S=41"):
        mod(query, ref, value_input[:, :41], shapes, starts)
    with pytest.raises(ValueError, match="reference_points"):
        mod(query, ref[..., :2, :], value_input, shapes, starts)
    with pytest.raises(ValueError, match=r"query must be \(B, Lq, 8\)"):
        mod(query[..., :4], ref, value_input, shapes, starts)
    with pytest.raises(ValueError, match="padding_mask"):
        mod(query, ref, value_input, shapes, starts, torch.zeros(2, 42))


@pytest.mark.parametrize("backend", BACKENDS)
def test_python_level_shapes_match_tensor_api(backend):
    """Python (H, W) pairs (no host read) give the Deformable DETR tensor API's result."""
    value, shapes, starts, loc, attn = make_inputs(B=1, Lq=2)
    want = ms_deform_attn(value, shapes, starts, loc, attn, backend=backend)
    got = ms_deform_attn(value, SHAPES, None, loc, attn, backend=backend)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    with pytest.raises(TypeError, match="integer"):
        ms_deform_attn(value, [(5.0, 7), (3, 2), (1, 1)], None, loc, attn, backend=backend)
    with pytest.raises(ValueError, match="S=42"):
        ms_deform_attn(value, [(5, 7), (3, 2), (1, 2)], None, loc, attn, backend=backend)


def test_module_takes_python_level_shapes_without_host_reads(monkeypatch):
    """MSDeformAttn with Python shapes never calls Tensor.tolist / item (no host sync on CUDA)."""
    mod = MSDeformAttn(d_model=8, n_levels=3, n_heads=2, n_points=2, backend="pytorch")
    query, ref, value_input, shapes, starts = _module_inputs()
    want = mod(query, ref, value_input, shapes, starts)

    def boom(*_, **__):
        raise AssertionError("host read of a tensor in the forward pass")

    monkeypatch.setattr(torch.Tensor, "tolist", boom)
    monkeypatch.setattr(torch.Tensor, "item", boom)
    got = mod(query, ref, value_input, SHAPES)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
