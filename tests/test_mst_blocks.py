"""MST blocks against naive float64 references written here (loops, explicit gathers, dense softmax)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from segblocks.blocks.mst import (
    CODE_PATCH_SIZES,
    AdaptivePatchEmbed,
    MultiScaleTokenBlock,
    TopKTokenSelector,
    click_token_index,
    pi_resize_matrix,
)
from segblocks.losses.token import score_focal_loss, token_targets, triplet_token_loss

F64 = torch.float64


# ----------------------------------------------------------------------------- PI-resize
def naive_resize(x, new):
    return F.interpolate(x[None, None], size=new, mode="bicubic", antialias=True, align_corners=False)[0, 0]


def naive_resize_matrix(old, new):
    cols = []
    for i in range(old[0] * old[1]):
        e = torch.zeros(old[0] * old[1], dtype=F64)
        e[i] = 1
        cols.append(naive_resize(e.reshape(old), new).reshape(-1))
    return torch.stack(cols, 1)  # n_new x n_old


@pytest.mark.parametrize("new", [28, 32])
def test_pi_resize_preserves_inner_products_when_upsampling(new):
    torch.manual_seed(0)
    pe = AdaptivePatchEmbed(in_chans=2, embed_dim=3, patch_sizes=(8, 16, new)).double()
    w = pe.proj.weight  # 3 x 2 x 16 x 16
    w_new = pe.kernel(new)
    for _ in range(3):
        x = torch.randn(2, 16, 16, dtype=F64)
        x_up = torch.stack([naive_resize(c, (new, new)) for c in x])  # 2 x new x new
        lhs = torch.einsum("oihw,ihw->o", w_new, x_up)
        rhs = torch.einsum("oihw,ihw->o", w, x)
        torch.testing.assert_close(lhs, rhs, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("new", [8, 28, 32])
def test_pi_resize_equals_direct_least_squares(new):
    torch.manual_seed(1)
    pe = AdaptivePatchEmbed(in_chans=1, embed_dim=2, patch_sizes=(8, 16, 28, 32)).double()
    B = naive_resize_matrix((16, 16), (new, new))  # n_new x n_old
    w = pe.proj.weight.detach().reshape(2, -1).t()  # n_old x 2
    sol = torch.linalg.lstsq(B.t(), w, driver="gelsd").solution  # min-norm least squares of Bᵀ ŵ = w
    got = pe.kernel(new).detach().reshape(2, -1).t()
    torch.testing.assert_close(got, sol, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(pi_resize_matrix((16, 16), (new, new)), torch.linalg.pinv(B.t()))


def test_adaptive_patch_embed_matches_patch_loop_and_base_size_is_the_conv():
    torch.manual_seed(2)
    pe = AdaptivePatchEmbed(in_chans=3, embed_dim=4, patch_sizes=CODE_PATCH_SIZES).double()
    x = torch.randn(1, 3, 64, 32, dtype=F64, requires_grad=True)
    for p in (8, 16, 32):
        out = pe(x, p)
        k = pe.kernel(p)
        ref = torch.empty(1, 64 // p, 32 // p, 4, dtype=F64)
        for i in range(64 // p):
            for j in range(32 // p):
                patch = x[0, :, i * p:(i + 1) * p, j * p:(j + 1) * p]
                ref[0, i, j] = torch.einsum("oihw,ihw->o", k, patch) + pe.proj.bias
        torch.testing.assert_close(out, ref)
    torch.testing.assert_close(pe.kernel(16), pe.proj.weight)
    # gradient reaches the single stored kernel through the resize
    pe(x, 8).sum().backward()
    assert pe.proj.weight.grad is not None and pe.proj.weight.grad.abs().sum() > 0


def test_adaptive_patch_embed_refuses_indivisible_sizes_and_unknown_patch_sizes():
    pe = AdaptivePatchEmbed(embed_dim=4)  # paper sizes 8/16/28
    with pytest.raises(ValueError, match="multiples of the patch size 28"):
        pe(torch.randn(1, 3, 64, 64), 28)
    with pytest.raises(ValueError, match="one of"):
        pe(torch.randn(1, 3, 64, 64), 32)
    with pytest.raises(TypeError, match="patch_size must be an int"):
        pe(torch.randn(1, 3, 64, 64), 8.0)


# ----------------------------------------------------------------------------- selector
def naive_select(base, scale, clicks, k, kernel_mode="mean"):
    """Per-sample loops: Eq. 2 kernel, Eq. 3 scores, sort, explicit gather with the ST gradient."""
    out_sel, out_scores, out_idx, kernels = [], [], [], []
    for b in range(base.shape[0]):
        ids = [int(i) for i in clicks[b] if i >= 0]
        n = scale.shape[1]
        if not ids:
            out_scores.append(torch.zeros(n, dtype=base.dtype))
            out_sel.append(torch.zeros(k, scale.shape[2], dtype=base.dtype) + 0 * scale[b, :k])
            out_idx.append(None)
            kernels.append(torch.zeros(base.shape[2], dtype=base.dtype))
            continue
        T = torch.stack([base[b, i] for i in ids])
        if kernel_mode == "mean":
            kern = T.mean(0)
        else:
            A = torch.softmax(T @ T.t() / math.sqrt(T.shape[1]), -1)
            kern = (A @ T).mean(0)
            kern = kern / kern.norm().clamp(min=1e-12)
        s = torch.stack([(torch.dot(kern, scale[b, j]) / (kern.norm() * scale[b, j].norm()) + 1) / 2 for j in range(n)])
        order = sorted(range(n), key=lambda j: -float(s[j].detach()))[:k]
        rows = [scale[b, j] + (s[j] - s[j].detach()) * scale[b, j] for j in order]
        out_sel.append(torch.stack(rows))
        out_scores.append(s)
        out_idx.append(order)
        kernels.append(kern)
    return torch.stack(out_sel), torch.stack(out_scores), out_idx, torch.stack(kernels)


@pytest.mark.parametrize("kernel_mode", ["mean", "attention"])
def test_topk_selector_forward_is_explicit_gather_and_gradient_reaches_scores(kernel_mode):
    torch.manual_seed(3)
    base = torch.randn(3, 12, 5, dtype=F64, requires_grad=True)
    scale = torch.randn(3, 48, 5, dtype=F64, requires_grad=True)
    clicks = torch.tensor([[2, 7, -1], [-1, 5, -1], [-1, -1, -1]])  # sample 2: no positive click
    sel = TopKTokenSelector(kernel=kernel_mode)
    out = sel(base, scale, clicks)
    assert out.selection.shape == (3, 4, 48)  # k = 48 // 12
    ref_sel, ref_scores, ref_idx, ref_kernel = naive_select(base, scale, clicks, 4, kernel_mode)
    got = out.gather(scale)
    torch.testing.assert_close(got, ref_sel)
    torch.testing.assert_close(out.scores, ref_scores)
    torch.testing.assert_close(out.kernel, ref_kernel)
    for b in range(2):
        assert out.index[b].tolist() == ref_idx[b]
        # forward: exactly one-hot rows × 1
        assert torch.equal(out.selection[b], F.one_hot(out.index[b], 48).to(F64))
    assert not out.has_click[2] and out.selection[2].abs().sum() == 0
    # gradients (values via the scores too) equal the naive straight-through reference
    r = torch.randn_like(got)
    g_impl = torch.autograd.grad((got * r).sum(), (base, scale))
    g_ref = torch.autograd.grad((ref_sel * r).sum(), (base, scale))
    for a, b in zip(g_impl, g_ref):
        torch.testing.assert_close(a, b)
    assert g_impl[0][:2].abs().sum() > 0  # base tokens get gradient only through the scores (kernel)


def test_topk_selector_k_ratio_and_grid_too_small():
    s = TopKTokenSelector(ratio=16)
    assert s.num_selected(64) == 4
    with pytest.raises(ValueError, match="k = 0"):
        TopKTokenSelector()(torch.randn(1, 4, 3), torch.randn(1, 11, 3), torch.tensor([[0]]))
    with pytest.raises(ValueError, match="need 1 <= k"):
        TopKTokenSelector(k=20)(torch.randn(1, 4, 3), torch.randn(1, 11, 3), torch.tensor([[0]]))


def test_click_token_index_positive_only():
    coords = torch.tensor([[[0, 0], [17, 33], [5, 5], [100, 3]]])
    labels = torch.tensor([[1, 1, 0, 1]])
    idx = click_token_index(coords, labels, patch_size=16, grid=(4, 4))
    assert idx.tolist() == [[0, 1 * 4 + 2, -1, -1]]  # negative and outside clicks dropped


# ----------------------------------------------------------------------------- MST block
def naive_attention(x, y, q_w, q_b, kv_w, kv_b, heads, key_mask=None):
    C = x.shape[-1]
    d = C // heads
    q = x @ q_w.t() + (0 if q_b is None else q_b)
    kv = y @ kv_w.t() + (0 if kv_b is None else kv_b)
    k, v = kv[:, :C], kv[:, C:]
    outs = []
    for h in range(heads):
        qh, kh, vh = q[:, h * d:(h + 1) * d], k[:, h * d:(h + 1) * d], v[:, h * d:(h + 1) * d]
        logits = qh @ kh.t() / math.sqrt(d)
        if key_mask is not None:
            logits = logits.masked_fill(~key_mask[None, :], float("-inf"))
        outs.append(torch.softmax(logits, -1) @ vh)
    return torch.cat(outs, -1)


def naive_mst_block(blk, x, scales, clicks, fusion):
    B, h, w, C = x.shape
    sd = dict(blk.named_parameters())
    ln = lambda t, n, eps: F.layer_norm(t, (C,), sd[n + ".weight"], sd[n + ".bias"], eps)  # noqa: E731
    lin = lambda t, n: t @ sd[n + ".weight"].t() + sd[n + ".bias"]  # noqa: E731
    outs = []
    for b in range(B):
        base = x[b].reshape(h * w, C)
        selected, topk_means, has = [], [], any(int(i) >= 0 for i in clicks[b])
        for e, (tok, pos) in enumerate(scales):
            t = tok[b]
            # spatial reduction: conv with kernel = stride = r on the base grid, then LN
            r = blk.score.cross_attn.sr_ratio
            g = ln(base, "score.norm2", 1e-5).t().reshape(C, h, w)
            red = torch.stack([
                torch.stack([
                    torch.einsum("oihw,ihw->o", sd["score.cross_attn.sr.weight"], g[:, i * r:(i + 1) * r, j * r:(j + 1) * r])
                    + sd["score.cross_attn.sr.bias"] for j in range(w // r)]) for i in range(h // r)]).reshape(-1, C)
            red = ln(red, "score.cross_attn.norm", 1e-5)
            a = naive_attention(ln(t, "score.norm1", 1e-5), red, sd["score.cross_attn.q.weight"], None,
                                sd["score.cross_attn.kv.weight"], None, blk.score.cross_attn.num_heads)
            ex = "expert_s" if e == 0 else "expert_l"
            a = lin(F.gelu(lin(a, f"score.cross_attn.proj.{ex}.0")), f"score.cross_attn.proj.{ex}.2")
            t = t + a
            t = t + lin(F.gelu(lin(ln(t, "score.norm3", 1e-5), "score.cross_mlp.fc1")), "score.cross_mlp.fc2")
            sel, scores, idx, _ = naive_select(base[None], t[None], clicks[b:b + 1], blk.selector.num_selected(t.shape[0]))
            # the position embeddings are selected by the same straight-through S (gradient to the scores)
            psel = (torch.stack([pos[0, j] * (1 + scores[0, j] - scores[0, j].detach()) for j in idx[0]])
                    if idx[0] is not None else torch.zeros_like(sel[0]))
            selected.append(sel[0] + psel)
            topk_means.append(scores[0].sort(descending=True).values[: sel.shape[1]].mean())
        if fusion == "code":
            gsel = selected[0] + naive_attention(
                ln(selected[0], "norm6", 1e-6), ln(selected[1], "norm7", 1e-6), sd["score_l_s.q.weight"], None,
                sd["score_l_s.kv.weight"], None, 2) @ sd["score_l_s.proj.weight"].t() * sd["gamma"][0] \
                + sd["score_l_s.proj.bias"] * sd["gamma"][0]
            keys, mask = gsel, None
        else:
            keys = torch.cat(selected)
            small = bool(topk_means[0] >= topk_means[1])
            mask = torch.tensor([small] * selected[0].shape[0] + [not small] * selected[1].shape[0])
        upd = lin(naive_attention(ln(base, "norm3", 1e-6), ln(keys, "norm4", 1e-6), sd["score_cross_attn.q.weight"], None,
                                  sd["score_cross_attn.kv.weight"], None, 4, mask), "score_cross_attn.proj")
        if has:
            base = base + upd * sd["gamma2"][0]
        # ViT block
        hn = ln(base, "norm1", 1e-6)
        qkv = lin(hn, "attn.qkv")
        heads = blk.attn.num_heads
        d = C // heads
        att = torch.cat([torch.softmax(qkv[:, i * d:(i + 1) * d] @ qkv[:, C + i * d:C + (i + 1) * d].t() / math.sqrt(d), -1)
                         @ qkv[:, 2 * C + i * d:2 * C + (i + 1) * d] for i in range(heads)], -1)
        base = base + lin(att, "attn.proj")
        base = base + lin(F.gelu(lin(ln(base, "norm2", 1e-6), "mlp.fc1")), "mlp.fc2")
        outs.append(base.reshape(h, w, C))
    return torch.stack(outs)


@pytest.mark.parametrize("fusion", ["paper", "code"])
def test_mst_block_matches_naive_values_and_gradients(fusion):
    torch.manual_seed(4)
    C = 8
    blk = MultiScaleTokenBlock(dim=C, num_heads=2, fusion=fusion, sr_ratio=2,
                               selector=TopKTokenSelector(ratio=4)).double()
    with torch.no_grad():
        for p in blk.parameters():
            p.add_(0.1 * torch.randn_like(p))  # non-trivial norms, gammas
    x = torch.randn(2, 4, 4, C, dtype=F64, requires_grad=True)
    small = torch.randn(2, 64, C, dtype=F64, requires_grad=True)
    large = torch.randn(2, 4, C, dtype=F64, requires_grad=True)
    pos_s, pos_l = torch.randn(1, 64, C, dtype=F64), torch.randn(1, 4, C, dtype=F64)
    clicks = torch.tensor([[5, -1], [-1, -1]])
    scales = [(small, pos_s), (large, pos_l)]
    out, new_scales, aux = blk(x, scales, clicks)
    ref = naive_mst_block(blk, x, scales, clicks, fusion)
    torch.testing.assert_close(out, ref)
    r = torch.randn_like(out)
    inputs = (x, small, large, *blk.parameters())
    g1 = torch.autograd.grad((out * r).sum(), inputs, allow_unused=True)
    g2 = torch.autograd.grad((ref * r).sum(), inputs, allow_unused=True)
    for a, b in zip(g1, g2):
        if a is None or b is None:
            assert (a is None or a.abs().sum() == 0) and (b is None or b.abs().sum() == 0)
        else:
            torch.testing.assert_close(a, b)
    assert aux["selected_t"].shape == (2, 16, C) and aux["selected_l"].shape == (2, 1, C)


# ----------------------------------------------------------------------------- losses
def test_triplet_token_loss_matches_per_sample_loop():
    torch.manual_seed(5)
    B, k, C, N = 4, 5, 6, 20
    kernel = torch.randn(B, C, dtype=F64, requires_grad=True)
    tokens = torch.randn(B, k, C, dtype=F64, requires_grad=True)
    index = torch.stack([torch.randperm(N)[:k] for _ in range(B)])
    target = torch.rand(B, N) > 0.5
    target[2] = True  # only positives: skipped
    valid = torch.tensor([True, True, True, False])
    loss, counted = triplet_token_loss(kernel, tokens, index, target, valid)
    for b in range(B):
        pos = [tokens[b, i] for i in range(k) if target[b, index[b, i]]]
        neg = [tokens[b, i] for i in range(k) if not target[b, index[b, i]]]
        if not valid[b] or not pos or not neg:
            assert not counted[b] and loss[b] == 0
            continue
        d_p = sum(torch.sqrt(((kernel[b] - t) ** 2).sum()) for t in pos) / len(pos)
        d_n = sum(torch.sqrt(((kernel[b] - t) ** 2).sum()) for t in neg) / len(neg)
        ref = torch.log(1 + torch.exp(d_p - d_n))
        torch.testing.assert_close(loss[b], ref)
        g1 = torch.autograd.grad(loss[b], (kernel, tokens), retain_graph=True)
        g2 = torch.autograd.grad(ref, (kernel, tokens))
        for a, c in zip(g1, g2):
            torch.testing.assert_close(a, c)


def test_score_focal_loss_matches_loop_and_token_targets_nearest():
    torch.manual_seed(6)
    scores = torch.rand(3, 10, dtype=F64, requires_grad=True)
    target = torch.rand(3, 10) > 0.5
    valid = torch.tensor([True, False, True])
    loss, counted = score_focal_loss(scores, target, valid)
    for b in range(3):
        if not valid[b]:
            assert loss[b] == 0
            continue
        tot = 0
        for j in range(10):
            y = float(target[b, j])
            pt = 1 - abs(y - scores[b, j])
            a = 0.25 if y == 1 else 0.75
            tot = tot - a * (1 - pt) ** 2 * torch.log(torch.clamp(pt + 1e-9, max=1.0))
        torch.testing.assert_close(loss[b], tot / (10 + 1e-9))
    mask = torch.zeros(1, 8, 8, dtype=torch.long)
    mask[0, 0, 4] = 1
    mask[0, 4, 0] = 255
    t = token_targets(mask, (2, 2))
    assert t.tolist() == [[False, True, False, False]]  # pixel (0, 4) is sampled; ignore counts as background
