"""Modulated deformable conv v2: both im2col backends against a float64 per-sample loop oracle
(values and the gradients of input, offset, mask, weight and bias), the layouts (mmcv /
torchvision offset order), the dispatcher and bad inputs.

On CPU the Triton backend runs under TRITON_INTERPRET=1 (set by conftest), so shapes are tiny.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from segblocks.ops._dispatch import BackendUnavailable
from segblocks.ops.deform_conv import DEFORM_CONV_BACKENDS, explain_deform_conv, modulated_deform_conv2d

BACKENDS = [b.name for b in DEFORM_CONV_BACKENDS]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def oracle(x, offset, mask, weight, bias, stride, padding, dilation, groups):
    """DCNv2 Eq. 3 one output pixel and kernel point at a time (float64, differentiable).

    Bilinear interpolation with zeros outside the map; the corner weights are built from the
    offsets with tensor ops (floor is piecewise constant).
    """
    x, offset, mask, weight = x.double(), offset.double(), mask.double(), weight.double()
    B, C, H, W = x.shape
    Cout, Cg, KH, KW = weight.shape
    K = KH * KW
    Ho, Wo = offset.shape[-2:]
    Gd = offset.shape[1] // (2 * K)
    cpd = C // Gd  # channels per deform group
    opg = Cout // groups
    out = []
    for b in range(B):
        cols = []  # per (ho, wo): C x K sampled values
        for ho in range(Ho):
            for wo in range(Wo):
                vals = []
                for c in range(C):
                    g = c // cpd
                    row = []
                    for i in range(KH):
                        for j in range(KW):
                            k = i * KW + j
                            y = ho * stride - padding + i * dilation + offset[b, g * 2 * K + 2 * k, ho, wo]
                            xx = wo * stride - padding + j * dilation + offset[b, g * 2 * K + 2 * k + 1, ho, wo]
                            y0, x0 = math.floor(y.item()), math.floor(xx.item())
                            fy, fx = y - y0, xx - x0
                            acc = x.new_zeros(())
                            for yi, xi, wgt in ((y0, x0, (1 - fy) * (1 - fx)), (y0, x0 + 1, (1 - fy) * fx),
                                                (y0 + 1, x0, fy * (1 - fx)), (y0 + 1, x0 + 1, fy * fx)):
                                if 0 <= yi < H and 0 <= xi < W:
                                    acc = acc + wgt * x[b, c, yi, xi]
                            row.append(acc * mask[b, g * K + k, ho, wo])
                    vals.append(torch.stack(row))
                cols.append(torch.stack(vals))  # C x K
        cols = torch.stack(cols, -1)  # C x K x L
        outs = []
        for o in range(Cout):
            grp = o // opg
            w = weight[o].reshape(Cg, K, 1)
            outs.append((w * cols[grp * Cg:(grp + 1) * Cg]).sum((0, 1)))
        y = torch.stack(outs).view(Cout, Ho, Wo)
        if bias is not None:
            y = y + bias.double().view(Cout, 1, 1)
        out.append(y)
    return torch.stack(out)


def make(B=2, C=4, H=5, W=6, Cout=4, k=3, stride=1, padding=1, dilation=1, groups=1, dgroups=1, dtype=torch.float32):
    Ho = (H + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    Wo = (W + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    x = torch.randn(B, C, H, W, device=DEVICE, dtype=dtype)
    offset = (torch.randn(B, 2 * dgroups * k * k, Ho, Wo, device=DEVICE) * 1.5).to(dtype)  # some samples leave the map
    mask = torch.rand(B, dgroups * k * k, Ho, Wo, device=DEVICE, dtype=dtype)
    weight = torch.randn(Cout, C // groups, k, k, device=DEVICE, dtype=dtype)
    bias = torch.randn(Cout, device=DEVICE, dtype=dtype)
    return x, offset, mask, weight, bias


CONFIGS = [
    dict(),
    dict(stride=2, padding=0, H=7, W=6),
    dict(dilation=2, padding=2, groups=2, dgroups=2, Cout=6),
    dict(k=1, padding=0, C=3, Cout=2, dgroups=3),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_values_and_all_gradients_match_loop_oracle(backend, cfg):
    cfg = dict(cfg)
    conv = {key: cfg.pop(key, d) for key, d in (("stride", 1), ("padding", 1), ("dilation", 1), ("groups", 1))}
    tensors = [t.requires_grad_() for t in make(**cfg, **conv)]
    out = modulated_deform_conv2d(*tensors, **conv, backend=backend)
    want = oracle(*tensors, **conv)
    assert out.dtype == torch.float32 and out.shape == want.shape
    torch.testing.assert_close(out.double(), want, atol=1e-4, rtol=1e-4)
    grad_out = torch.randn_like(want)
    got = torch.autograd.grad(out, tensors, grad_out.float())
    ref = torch.autograd.grad(want, tensors, grad_out)
    for name, g, r in zip(("input", "offset", "mask", "weight", "bias"), got, ref):
        torch.testing.assert_close(g.double(), r.double(), atol=2e-4, rtol=2e-4, msg=lambda m: f"{name}: {m}")


def test_zero_offsets_and_unit_mask_is_a_convolution():
    x, offset, mask, weight, bias = make(dtype=torch.float64)
    out = modulated_deform_conv2d(x, torch.zeros_like(offset), torch.ones_like(mask), weight, bias, padding=1)
    torch.testing.assert_close(out, F.conv2d(x, weight, bias, padding=1))


def test_offset_layout_is_y_then_x():
    """Channel 2k moves kernel point k down (rows), channel 2k+1 right (columns), as mmcv/torchvision."""
    x = torch.arange(25.0, dtype=torch.float64).view(1, 1, 5, 5)
    weight = torch.zeros(1, 1, 1, 1, dtype=torch.float64) + 1
    mask = torch.ones(1, 1, 5, 5, dtype=torch.float64)
    down = torch.zeros(1, 2, 5, 5, dtype=torch.float64)
    down[:, 0] = 1.0
    out = modulated_deform_conv2d(x, down, mask, weight)
    torch.testing.assert_close(out[0, 0, :4], x[0, 0, 1:])
    right = torch.zeros(1, 2, 5, 5, dtype=torch.float64)
    right[:, 1] = 1.0
    out = modulated_deform_conv2d(x, right, mask, weight)
    torch.testing.assert_close(out[0, 0, :, :4], x[0, 0, :, 1:])


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_forward(backend):
    x, offset, mask, weight, bias = make(dtype=torch.float16)
    out = modulated_deform_conv2d(x, offset, mask, weight, bias, padding=1, backend=backend)
    assert out.dtype == torch.float16
    want = oracle(x, offset, mask, weight, bias, 1, 1, 1, 1)
    torch.testing.assert_close(out.double(), want, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_far_outside_samples_read_zero(backend):
    x, offset, mask, weight, _ = make()
    offset = torch.full_like(offset, 1e4).requires_grad_()
    out = modulated_deform_conv2d(x, offset, mask, weight, padding=1, backend=backend)
    assert torch.count_nonzero(out) == 0
    (grad,) = torch.autograd.grad(out.sum(), offset)
    assert torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    x, offset, mask, weight, _ = make(B=0)
    x.requires_grad_()
    out = modulated_deform_conv2d(x, offset, mask, weight, padding=1, backend=backend)
    assert out.shape == (0, 4, 5, 6)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert grad.shape == x.shape


@pytest.mark.parametrize(
    "change,error,match",
    [
        (lambda t: (t[0][0],) + t[1:], ValueError, r"input must be \(B, C, H, W\)"),
        (lambda t: (t[0], t[1][:, :17]) + t[2:], ValueError, "offset must be"),
        (lambda t: (t[0], t[1], t[2][:, :4]) + t[3:], ValueError, "mask must be"),
        (lambda t: t[:3] + (t[3][:, :3],) + t[4:], ValueError, "weight must be"),
        (lambda t: (t[0].long(),) + t[1:], TypeError, "floating point"),
        (lambda t: t[:4] + (t[4][:2],), ValueError, "bias must be"),
    ],
)
def test_bad_inputs(change, error, match):
    with pytest.raises(error, match=match):
        modulated_deform_conv2d(*change(make()), padding=1)


def test_bad_hyperparameters():
    t = make()
    with pytest.raises(TypeError, match="stride must be an int"):
        modulated_deform_conv2d(*t, stride=1.5, padding=1)
    with pytest.raises(ValueError, match="padding must be >= 0"):
        modulated_deform_conv2d(*t, padding=-1)
    with pytest.raises(ValueError, match="smaller than"):
        x, offset, mask, weight, _ = make()
        modulated_deform_conv2d(x[..., :1, :1], offset, mask, weight, padding=0)


@pytest.mark.skipif(DEVICE == "cuda", reason="checks the CPU refusals")
def test_dispatcher_explains_refusals():
    x, offset, mask, _, _ = make()
    reasons = explain_deform_conv(x, offset, mask)
    assert reasons["pytorch"] == []
    assert any("only used when asked" in r for r in reasons["triton"])
    with pytest.raises(BackendUnavailable, match="triton"):
        modulated_deform_conv2d(*make(dtype=torch.float64), padding=1, backend="triton")
