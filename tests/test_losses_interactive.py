"""NFL, sigmoid focal, dice and FocSAM point loss against per-pixel float64 references."""
import math

import pytest
import torch

from segblocks.losses import (
    DiceLoss,
    NormalizedFocalLoss,
    PointLoss,
    SigmoidFocalLoss,
    dice_loss,
    normalized_focal_loss,
    point_loss,
    sigmoid_focal_loss,
)

EPS32 = torch.finfo(torch.float32).eps
IGNORE = 255


def _targets():
    """(3, 4, 5): sample 0 mixed with ignore pixels, sample 1 mixed, sample 2 all ignored."""
    g = torch.Generator().manual_seed(1)
    t = torch.randint(0, 2, (3, 4, 5), generator=g)
    t[0, 0, :3] = IGNORE
    t[0, 2, 4] = IGNORE
    t[2] = IGNORE
    return t


def _pixels(t2d):
    return [(i, j, int(t2d[i, j])) for i in range(t2d.shape[0]) for j in range(t2d.shape[1]) if t2d[i, j] != IGNORE]


def ref_nfl(x, t, alpha=0.5, gamma=2.0, detach=True):
    """Per-pixel NFL, one sample at a time. x: (B, H, W) float64 foreground logits."""
    out = []
    for b in range(x.shape[0]):
        pix = _pixels(t[b])
        if not pix:
            out.append(x.new_zeros(()))
            continue
        pts = [torch.sigmoid(x[b, i, j]) if y == 1 else 1 - torch.sigmoid(x[b, i, j]) for i, j, y in pix]
        betas = [(1 - pt) ** gamma for pt in pts]
        norm = len(pix) / (sum(betas) + EPS32)
        if detach:
            norm = norm.detach()
        total = 0
        for (_, _, y), pt, beta in zip(pix, pts, betas):
            a = alpha if y == 1 else 1 - alpha
            total = total - a * norm * beta * torch.log(torch.clamp(pt + EPS32, max=1.0))
        out.append(total / len(pix))
    return torch.stack(out)


def ref_focal(x, t, alpha=0.25, gamma=2.0):
    """alpha=None: no class balancing."""
    a_pos, a_neg = (1.0, 1.0) if alpha is None else (alpha, 1 - alpha)
    out = []
    for b in range(x.shape[0]):
        terms = []
        for i, j, y in _pixels(t[b]):
            p = torch.sigmoid(x[b, i, j])
            terms.append(-a_pos * (1 - p) ** gamma * torch.log(p) if y == 1
                         else -a_neg * p ** gamma * torch.log(1 - p))
        out.append(sum(terms) / len(terms) if terms else x.new_zeros(()))
    return torch.stack(out)


def ref_dice(x, t, smooth=1.0):
    out = []
    for b in range(x.shape[0]):
        inter, psum, ysum = 0, 0, 0
        for i, j, y in _pixels(t[b]):
            p = torch.sigmoid(x[b, i, j])
            inter, psum, ysum = inter + p * y, psum + p, ysum + y
        out.append(1 - (2 * inter + smooth) / (psum + ysum + smooth) + x.new_zeros(()))
    return torch.stack(out)


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("alpha", [0.5, 0.25])
def test_nfl_matches_reference_and_gradient(channels, alpha):
    t = _targets()
    x = torch.randn(3, channels, 4, 5, dtype=torch.float64, requires_grad=True)
    loss = normalized_focal_loss(x, t, alpha=alpha, reduction="none")
    x1 = x[:, 0] if channels == 1 else x[:, 1] - x[:, 0]
    ref = ref_nfl(x1, t, alpha=alpha)
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    assert loss[2].item() == 0.0  # no valid pixel
    (g,) = torch.autograd.grad(loss.mean(), x)
    (g_ref,) = torch.autograd.grad(ref.mean(), x)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)
    assert torch.all(g[2] == 0) and torch.all(g[0, :, 0, :3] == 0)  # ignored pixels get no gradient
    torch.testing.assert_close(normalized_focal_loss(x, t, alpha=alpha), ref.mean())


def test_nfl_normalizer_not_detached():
    t = _targets()
    x = torch.randn(3, 1, 4, 5, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(normalized_focal_loss(x, t, detach_normalizer=False, reduction="sum"), x)
    (g_ref,) = torch.autograd.grad(ref_nfl(x[:, 0], t, detach=False).sum(), x)
    (g_det,) = torch.autograd.grad(normalized_focal_loss(x, t, reduction="sum"), x)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(g, g_det)  # the option changes the gradient


def test_nfl_dtypes_target_layout_and_module():
    t = _targets()
    x64 = torch.randn(3, 1, 4, 5, dtype=torch.float64)
    ref = ref_nfl(x64[:, 0], t)
    out32 = normalized_focal_loss(x64.float(), t[:, None], reduction="none")
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), ref, rtol=1e-5, atol=1e-6)
    out16 = NormalizedFocalLoss(reduction="sum")(x64.bfloat16(), t.float())
    assert out16.dtype == torch.float32
    torch.testing.assert_close(out16.double(), ref.sum(), rtol=3e-2, atol=1e-3)


def test_nfl_perfect_prediction_is_zero():
    t = torch.tensor([[[0, 1], [1, 0]]])
    x = (t.double() * 2 - 1)[:, None] * 40  # σ saturates to exactly 0/1 in float64
    assert normalized_focal_loss(x, t).item() == 0.0


@pytest.mark.parametrize("alpha", [0.25, -1.0])
def test_sigmoid_focal_matches_reference(alpha):
    t = _targets()
    x = torch.randn(3, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    out = sigmoid_focal_loss(x, t, alpha=alpha, reduction="none")
    x1 = x[:, 1] - x[:, 0]
    ref = ref_focal(x1, t, alpha=alpha if alpha >= 0 else None)  # negative alpha: no balancing
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    (g,) = torch.autograd.grad(out.sum(), x)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(SigmoidFocalLoss(alpha=alpha)(x, t), ref.mean())


def test_dice_matches_reference():
    t = _targets()
    x = torch.randn(3, 1, 4, 5, dtype=torch.float64, requires_grad=True)
    out = dice_loss(x, t, reduction="none")
    ref = ref_dice(x[:, 0], t)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    assert out[2].item() == 0.0
    (g,) = torch.autograd.grad(out.sum(), x)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(DiceLoss(smooth=0.5)(x, t), ref_dice(x[:, 0], t, smooth=0.5).mean())
    t_full = torch.where(t == IGNORE, 1, t)  # no ignore: every pixel counts
    out_full = dice_loss(x, t_full, ignore_index=None, reduction="sum")
    torch.testing.assert_close(out_full, ref_dice(x[:, 0], t_full).sum())


def ref_point(x, coords, labels):
    errs = [(torch.sigmoid(x[b, int(coords[b, n, 0]), int(coords[b, n, 1])]) - labels[b, n].item()) ** 2
            for b in range(labels.shape[0]) for n in range(labels.shape[1]) if labels[b, n] >= 0]
    return errs


@pytest.mark.parametrize("channels", [1, 2])
def test_point_loss_with_padding(channels):
    x = torch.randn(2, channels, 5, 7, dtype=torch.float64, requires_grad=True)
    coords = torch.tensor([[[0, 0], [4, 6], [-1, -1], [99, 99]], [[2, 3], [2, 3], [0, 6], [0, 0]]])
    labels = torch.tensor([[1, 0, -1, -1], [0, 1, 1, -1]])
    x1 = x[:, 0] if channels == 1 else x[:, 1] - x[:, 0]
    errs = ref_point(x1, coords, labels)
    ref = sum(errs) / len(errs)
    out = point_loss(x, coords, labels)
    torch.testing.assert_close(out, ref)
    (g,) = torch.autograd.grad(out, x)
    (g_ref,) = torch.autograd.grad(ref, x)
    torch.testing.assert_close(g, g_ref)
    torch.testing.assert_close(PointLoss(reduction="sum")(x, coords, labels), sum(errs))  # Eq. 10
    none = point_loss(x, coords, labels, reduction="none")
    assert none.shape == (2, 4) and none[0, 2] == 0 and none[1, 3] == 0
    torch.testing.assert_close(none[1, 1], errs[3])


def test_point_loss_no_valid_click_keeps_graph():
    x = torch.randn(2, 1, 3, 3, requires_grad=True)
    out = point_loss(x, torch.zeros(2, 3, 2, dtype=torch.long), -torch.ones(2, 3, dtype=torch.long))
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert torch.all(x.grad == 0)
    empty = point_loss(x, torch.zeros(2, 0, 2, dtype=torch.long), torch.zeros(2, 0, dtype=torch.long))
    assert empty.item() == 0.0 and empty.requires_grad


def test_point_loss_bad_inputs():
    x = torch.randn(1, 1, 4, 4)
    ok = torch.tensor([[[1, 1]]])
    with pytest.raises(ValueError, match="inside the 4x4"):
        point_loss(x, torch.tensor([[[4, 0]]]), torch.tensor([[1]]))
    with pytest.raises(ValueError, match="labels must be in"):
        point_loss(x, ok, torch.tensor([[2]]))
    with pytest.raises(TypeError, match="integer"):
        point_loss(x, ok.float(), torch.tensor([[1]]))
    with pytest.raises(ValueError, match="coords must be"):
        point_loss(x, ok[0], torch.tensor([[1]]))
    with pytest.raises(ValueError, match="labels must be"):
        point_loss(x, ok, torch.tensor([1]))
    with pytest.raises(ValueError, match="reduction"):
        PointLoss(reduction="avg")


@pytest.mark.parametrize("fn", [normalized_focal_loss, sigmoid_focal_loss, dice_loss])
def test_bad_inputs(fn):
    t = torch.zeros(2, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\) or \(B, 2, H, W\)"):
        fn(torch.randn(2, 3, 4, 4), t)
    with pytest.raises(TypeError, match="floating-point"):
        fn(torch.zeros(2, 1, 4, 4, dtype=torch.long), t)
    with pytest.raises(ValueError, match="target must be"):
        fn(torch.randn(2, 1, 4, 5), t)
    with pytest.raises(TypeError, match="target"):
        fn(torch.randn(2, 1, 4, 4), t.bool())
    with pytest.raises(ValueError, match="reduction"):
        fn(torch.randn(2, 1, 4, 4), t, reduction="avg")


def test_odd_sizes_batch_means():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 1, 3, 7, dtype=torch.float64, generator=g)
    t = torch.randint(0, 2, (4, 3, 7), generator=g)
    per = normalized_focal_loss(x, t, reduction="none")
    assert per.shape == (4,) and len(set(per.tolist())) == 4
    assert math.isclose(normalized_focal_loss(x, t).item(), per.mean().item(), rel_tol=1e-12)
