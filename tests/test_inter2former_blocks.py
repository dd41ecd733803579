"""Inter2Former blocks against independent float64 references written here (loops, dense)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from segblocks.blocks.inter2former import (
    BSQAttention,
    Canny,
    CannyNet,
    DynamicHybridAttention,
    DynamicLocalUpsampling,
    DynamicPromptEmbedding,
    HybridMoE,
    EdgeTokenSelection,
    edge_token_mask,
    select_edge_tokens,
)

F64 = torch.float64


def ref_maps():
    B, H, W = 3, 64, 96
    ref = torch.full((B, H, W), 1, dtype=torch.uint8)
    ref[0, 10:20, 30:50] = 3
    ref[0, 14:17, 40:43] = 4
    ref[1] = 2
    ref[1, :32] = 1
    return ref  # sample 2: all possible background


# ----------------------------------------------------------------------------- DPE


def naive_box(ref, s=16):
    ys, xs = (ref != 1).nonzero(as_tuple=True)
    H, W = ref.shape
    if len(ys) == 0:
        return 0, 0, H, W
    y0 = max(math.floor(int(ys.min()) / s) * s - s, 0)
    x0 = max(math.floor(int(xs.min()) / s) * s - s, 0)
    y1 = min(math.ceil((int(ys.max()) + 1) / s) * s + s, H)
    x1 = min(math.ceil((int(xs.max()) + 1) / s) * s + s, W)
    return y0, x0, y1, x1


def test_dpe_box_background_and_full_embedding():
    torch.manual_seed(0)
    dpe = DynamicPromptEmbedding(embed_dim=32, dims=(8, 16, 16, 32)).double()
    ref = ref_maps()
    P, boxes = dpe(ref[:, None])

    def full_embed(lab):  # float64 reference: one-hot embedding + convs over the whole map
        e = dpe.ref_embeds.weight[lab.long()].permute(0, 3, 1, 2)
        for conv in dpe.ref_conv.convs:
            e = F.relu(F.conv2d(e, conv.weight, conv.bias, stride=2, padding=1))
        return e

    full = full_embed(ref)
    bg = full_embed(torch.full((1, 48, 48), 1))[0, :, 1, 1]
    for b in range(3):
        y0, x0, y1, x1 = naive_box(ref[b])
        assert boxes[b].tolist() == [y0, x0, y1, x1]
        inside = torch.zeros(4, 6, dtype=torch.bool)
        inside[y0 // 16:y1 // 16, x0 // 16:x1 // 16] = True
        for ty in range(4):
            for tx in range(6):
                if not inside[ty, tx]:
                    torch.testing.assert_close(P[b, :, ty, tx], bg)
                # receptive field of token (ty, tx): pixels 16t - 15 .. 16t + 15
                elif 16 * ty - 15 >= y0 and 16 * ty + 15 < y1 and 16 * tx - 15 >= x0 and 16 * tx + 15 < x1:
                    torch.testing.assert_close(P[b, :, ty, tx], full[b, :, ty, tx])
    # gradients reach the embedding and every conv through both paths
    P.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in dpe.parameters())


def test_dpe_rejects_bad_labels():
    dpe = DynamicPromptEmbedding(embed_dim=32, dims=(8, 16, 16, 32))
    with pytest.raises(ValueError, match="0..4"):
        dpe(torch.full((1, 1, 32, 32), 5))
    with pytest.raises(ValueError, match="multiples of 16"):
        dpe(torch.full((1, 1, 30, 32), 1))


# ----------------------------------------------------------------------------- selection


def test_edge_tokens_match_variance_loop():
    ref = ref_maps()
    mask = edge_token_mask(ref, (4, 6))
    B, H, W = ref.shape
    x = F.pad(ref[:, None].double(), (3, 3, 3, 3), mode="reflect")[:, 0]
    for b in range(B):
        pix = torch.zeros(H, W, dtype=torch.bool)
        for i in range(H):
            for j in range(W):
                win = x[b, i:i + 7, j:j + 7]
                var = (win ** 2).mean() - win.mean() ** 2  # Eq. 4
                pix[i, j] = var > 1e-9 or ref[b, i, j] == 2
        tok = pix.view(4, 16, 6, 16).any(3).any(1).reshape(-1)
        assert torch.equal(mask[b], tok)
    sel = EdgeTokenSelection.from_mask(mask)
    assert sel.lengths[2] == 0 and sel.lengths[1] == 18  # all-background: empty; unknown half + its border row
    assert torch.equal(torch.sort(torch.cat([sel.idxs, sel.inv_idxs])).values, torch.arange(B * 24))


@pytest.mark.parametrize("kernel_size,patch", [(7, 16), (3, 8), (5, 4), (9, 8), (1, 8)])
def test_edge_tokens_random_maps_match_pixel_variance(kernel_size, patch):
    # Sparse random specks (single pixels near borders and corners included) and blocks: the
    # per-token evaluation must equal the per-pixel reflect-padded variance of Eq. 4.
    g = torch.Generator().manual_seed(kernel_size * 31 + patch)
    B, h, w = 3, 3, 4
    H, W = h * patch, w * patch
    ref = torch.ones(B, H, W, dtype=torch.uint8)  # POSSIBLE_BG
    for b in range(B):
        n = int(torch.randint(1, 6, (1,), generator=g))
        ys, xs = torch.randint(0, H, (n,), generator=g), torch.randint(0, W, (n,), generator=g)
        vals = torch.randint(0, 5, (n,), generator=g).to(torch.uint8)
        ref[b, ys, xs] = vals
    ref[1, :3, :5] = 3
    ref[2, H - 1, W - 1] = 0
    r = kernel_size // 2
    x = F.pad(ref[:, None].double(), (r, r, r, r), mode="reflect")[:, 0] if r else ref.double()
    mask = edge_token_mask(ref, (h, w), kernel_size=kernel_size)
    for b in range(B):
        pix = torch.zeros(H, W, dtype=torch.bool)
        for i in range(H):
            for j in range(W):
                win = x[b, i:i + kernel_size, j:j + kernel_size]
                pix[i, j] = bool((win ** 2).mean() - win.mean() ** 2 > 1e-9) or ref[b, i, j] == 2  # Eq. 4
        assert torch.equal(mask[b], pix.view(h, patch, w, patch).any(3).any(1).reshape(-1)), b


# ----------------------------------------------------------------------------- BSQA


def naive_bsq_keys(m: BSQAttention, k):
    S = m.code_size
    out = torch.zeros_like(k)
    for n in range(k.shape[0]):
        for h in range(k.shape[1]):
            b = k[n, h] @ m.code_proj.weight.T.double() + m.code_proj.bias.double()
            u = b / b.norm()
            for i in range(S):
                out[n, h] += m.codebook[i].double() if u[i] >= 0 else m.codebook[S + i].double()
    return out


def dense_attention(q, k, v):
    w = torch.softmax(torch.einsum("qhd,khd->hqk", q, k) / q.shape[-1] ** 0.5, -1)
    return torch.einsum("hqk,khd->qhd", w, v)


@pytest.mark.parametrize("lengths", [((5, 0, 7), (9, 4, 11)), ((20,), (20,))])
def test_bsqa_train_matches_naive_and_exact_matches_train(lengths):
    torch.manual_seed(0)
    m = BSQAttention(head_dim=8, code_size=4).double()
    ql, kl = lengths
    q = torch.randn(sum(ql), 2, 8, dtype=F64, requires_grad=True)
    k = torch.randn(sum(kl), 2, 8, dtype=F64, requires_grad=True)
    v = torch.randn(sum(kl), 2, 8, dtype=F64)
    out_train, loss = m(q, k, v, ql, kl, exact=False)
    out_exact, _ = m(q, k, v, ql, kl, exact=True)
    k_hat = naive_bsq_keys(m, k.detach())
    ref, qs, ks = [], 0, 0
    for a, b in zip(ql, kl):
        if a:
            ref.append(dense_attention(q.detach()[qs:qs + a], k_hat[ks:ks + b], v[ks:ks + b]))
        qs, ks = qs + a, ks + b
    torch.testing.assert_close(out_train, torch.cat(ref))
    torch.testing.assert_close(out_exact, out_train, rtol=1e-10, atol=1e-10)
    # STE: the keys receive gradient through the quantization
    (out_train.sum() + loss).backward()
    assert k.grad is not None and k.grad.abs().sum() > 0
    assert m.codebook.grad.abs().sum() > 0 and m.code_proj.weight.grad.abs().sum() > 0


def test_bsqa_exact_large_n_float32():
    torch.manual_seed(0)
    m = BSQAttention(head_dim=32, code_size=8)
    n = 16384
    q, k, v = torch.randn(n, 1, 32), torch.randn(n, 1, 32), torch.randn(n, 1, 32)
    q_sub = q[:512]
    a, _ = m(q_sub, k, v, [512], [n], exact=True)
    b, _ = m(q_sub, k, v, [512], [n], exact=False)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- DHA


def naive_rope(x, y, xx, D):  # independent 2-D RoPE: first half rotates with y, second with x
    half = D // 2
    out = x.clone()
    for axis, pos in ((0, y), (1, xx)):
        for i in range(half // 2):
            f = 10000.0 ** (-2 * i / half)
            ang = 0.5 * pos * f
            a, b = x[..., axis * half + 2 * i], x[..., axis * half + 2 * i + 1]
            out[..., axis * half + 2 * i] = a * math.cos(ang) + b * math.sin(ang)
            out[..., axis * half + 2 * i + 1] = b * math.cos(ang) - a * math.sin(ang)
    return out


@pytest.mark.parametrize("which", ["mixed", "empty", "all"])
def test_dha_matches_dense_per_token_reference(which):
    torch.manual_seed(0)
    B, h, w, C = 2, 3, 4, 32
    m = DynamicHybridAttention(embed_dim=C, num_heads=2, downscale=2, code_size=4).double()
    x = torch.randn(B, h * w, C, dtype=F64, requires_grad=True)
    mask = {"mixed": torch.rand(B, h * w) > 0.5, "empty": torch.zeros(B, h * w, dtype=torch.bool),
            "all": torch.ones(B, h * w, dtype=torch.bool)}[which]
    mask[0, 0] = which != "empty"
    sel = EdgeTokenSelection.from_mask(mask)
    out, _ = m(x, (h, w), sel)
    # reference: every token separately
    qkv = x.detach() @ m.qkv_proj.weight.T + m.qkv_proj.bias
    Da = m.attn_dim
    ref = torch.zeros(B, h * w, Da, dtype=F64)
    for b in range(B):
        q, k, v = qkv[b, :, :Da], qkv[b, :, Da:2 * Da], qkv[b, :, 2 * Da:]
        k_hat = naive_bsq_keys(m.bsqa, k.view(-1, 1, Da)).view(-1, Da)
        for t in range(h * w):
            if mask[b, t]:
                qr = naive_rope(q[t], t // w, t % w, Da)
                kr = torch.stack([naive_rope(k[j], j // w, j % w, Da) for j in range(h * w)])
                logits = kr @ qr
            else:
                logits = k_hat @ q[t]
            ref[b, t] = torch.softmax(logits / Da ** 0.5, 0) @ v
    ref = ref @ m.o_proj.weight.T + m.o_proj.bias
    torch.testing.assert_close(out, ref)
    m.eval()
    torch.testing.assert_close(m(x, (h, w), sel)[0], ref)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# ----------------------------------------------------------------------------- HMoE


def naive_hmoe(m: HybridMoE, x, index):
    def swiglu(t, w1, b1, w2, b2, w3, b3, ln):
        hdn = F.silu(t @ w1.T + b1) * (t @ w2.T + b2)
        return F.layer_norm(hdn, hdn.shape[-1:], ln.weight, ln.bias, ln.eps) @ w3.T + b3

    sh = m.shared_ffn
    out = [swiglu(t, sh.w1.weight, sh.w1.bias, sh.w2.weight, sh.w2.bias, sh.w3.weight, sh.w3.bias, sh.norm) for t in x]
    for i in index.tolist():
        t = x[i]
        s = torch.sigmoid(t @ m.expert_gate.weight.T + m.expert_gate.bias)
        e = int(torch.argmax(s + m.exp_bias))
        s_m = torch.sigmoid(t @ m.shared_gate.weight.T + m.shared_gate.bias)[0]
        y = swiglu(t, m.select_ffn_w1[e], m.select_ffn_b1[e], m.select_ffn_w2[e], m.select_ffn_b2[e],
                   m.select_ffn_w3[e], m.select_ffn_b3[e], m.select_ln)
        den = torch.exp(s_m) + torch.exp(s[e])
        out[i] = (torch.exp(s_m) * out[i] + torch.exp(s[e]) * y) / den  # Eq. 18
    return torch.stack(out)


@pytest.mark.parametrize("backend", ["auto", "bmm", "loop"])
def test_hmoe_grouped_matches_per_token_loop(backend):
    torch.manual_seed(0)
    m = HybridMoE(embed_dim=16, hidden_dim=32, num_experts=4, backend=backend).double().eval()
    m.exp_bias.copy_(torch.tensor([0.3, -0.2, 0.0, 0.1]))
    x = torch.randn(30, 16, dtype=F64, requires_grad=True)
    index = torch.tensor([0, 3, 4, 7, 8, 9, 15, 20, 29])
    out = m(x, index)
    ref = naive_hmoe(m, x, index)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad((out * g).sum(), [x, *m.parameters()], allow_unused=True)
    ref_grads = torch.autograd.grad((ref * g).sum(), [x, *m.parameters()], allow_unused=True)
    for a, b in zip(grads, ref_grads):
        if b is not None:
            torch.testing.assert_close(a, b)
    torch.testing.assert_close(m.experts_vanilla(x[index], torch.tensor([0, 1, 1, 3, 0, 2, 2, 1, 0])),
                               m.experts(x[index], torch.tensor([0, 1, 1, 3, 0, 2, 2, 1, 0])))
    assert m(x, index[:0]).shape == (30, 16)


@pytest.mark.parametrize("skewed", [False, True])
def test_hmoe_many_experts_padded_and_per_group_paths(skewed):
    # 16 experts: balanced routing takes the padded batch, one expert holding most tokens the
    # per-group loop (padding over PADDED_FFN_MAX_PAD_ROWS rows per expert); both equal a
    # per-token loop, values and grads.
    from segblocks.blocks.inter2former.hmoe import PADDED_FFN_MAX_PAD_ROWS
    from segblocks.ops.grouped_gemm import pad_rows_per_group, select_grouped_gemm_backend

    torch.manual_seed(1)
    E, M = 16, 300
    m = HybridMoE(embed_dim=8, hidden_dim=32, num_experts=E).double().eval()
    x = torch.randn(M, 8, dtype=F64, requires_grad=True)
    a = torch.where(torch.rand(M) < 0.8, 3, torch.randint(0, E, (M,))) if skewed else torch.randperm(M) % E
    counts = torch.bincount(a, minlength=E)
    assert (pad_rows_per_group(counts, M) > PADDED_FFN_MAX_PAD_ROWS) == skewed
    chosen = select_grouped_gemm_backend(x, m.select_ffn_w1, m.select_ffn_b1, counts=counts,
                                         max_pad_rows=PADDED_FFN_MAX_PAD_ROWS)
    assert chosen.name == ("loop" if skewed else "bmm")
    out = m.experts(x, a)

    def expert(t, e):  # one token through routed expert e
        hdn = F.silu(t @ m.select_ffn_w1[e].T + m.select_ffn_b1[e]) * (t @ m.select_ffn_w2[e].T + m.select_ffn_b2[e])
        ln = m.select_ln
        return F.layer_norm(hdn, hdn.shape[-1:], ln.weight, ln.bias, ln.eps) @ m.select_ffn_w3[e].T + m.select_ffn_b3[e]

    ref = torch.stack([expert(x[i], e) for i, e in enumerate(a.tolist())])
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    params = [x, *m.parameters()]
    for got, want in zip(torch.autograd.grad((out * g).sum(), params, allow_unused=True),
                         torch.autograd.grad((ref * g).sum(), params, allow_unused=True)):
        if want is not None:
            torch.testing.assert_close(got, want)


def test_hmoe_inference_weight_cache_follows_parameter_updates():
    # Without autograd the stacked expert weights are cached; in-place updates (optimiser steps,
    # load_state_dict) and dtype moves must invalidate the cache.
    torch.manual_seed(2)
    m = HybridMoE(embed_dim=8, hidden_dim=32, num_experts=16).eval()
    x, a = torch.randn(50, 8), torch.randint(0, 16, (50,))
    with torch.no_grad():
        first = m.experts(x, a)
        torch.testing.assert_close(first, m.experts_vanilla(x, a))
        m.select_ffn_w1.mul_(2.0)  # in place: version counter moves
        m.select_ffn_b3.add_(1.0)
        torch.testing.assert_close(m.experts(x, a), m.experts_vanilla(x, a))
        m.load_state_dict({k: v * 0.5 for k, v in m.state_dict().items()}, strict=True)
        torch.testing.assert_close(m.experts(x, a), m.experts_vanilla(x, a))
        m.double()
        out = m.experts(x.double(), a)
        assert out.dtype == F64
        torch.testing.assert_close(out, m.experts_vanilla(x.double(), a))
    assert m._scratch and not copy.deepcopy(m)._scratch  # the cache is never copied or pickled


def test_hmoe_inference_buffers_are_reused_without_corrupting_results(monkeypatch):
    # No-grad calls write the padded intermediates into reused per-thread buffers: calls of growing
    # and shrinking size, inference mode and several threads must each still match the per-expert
    # loop, and an earlier call's output must not change when a later call reuses the buffers.
    import threading

    from segblocks.blocks.inter2former import hmoe

    monkeypatch.setattr(hmoe, "REUSE_MIN_ELEMENTS", 0)  # reuse at these small sizes too
    torch.manual_seed(3)
    m = HybridMoE(embed_dim=8, hidden_dim=32, num_experts=16).eval()
    sizes = (40, 300, 7, 120)
    xs = [torch.randn(n, 8) for n in sizes]
    as_ = [torch.randperm(n) % 16 for n in sizes]
    with torch.no_grad():
        outs = [m.experts(x, a) for x, a in zip(xs, as_)]
        for out, x, a in zip(outs, xs, as_):
            torch.testing.assert_close(out, m.experts_vanilla(x, a))
    with torch.inference_mode():
        torch.testing.assert_close(m.experts(xs[1], as_[1]), m.experts_vanilla(xs[1], as_[1]))
    with torch.no_grad():  # buffers made in inference mode are not reused outside it
        torch.testing.assert_close(m.experts(xs[1], as_[1]), outs[1])
    errors = []

    def worker(i):
        with torch.no_grad():
            for _ in range(20):
                if not torch.allclose(m.experts(xs[i], as_[i]), outs[i]):
                    errors.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(sizes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sum(isinstance(k, tuple) and k[0] == "buffer" for k in m._scratch) >= 3  # per mode and per thread
    x = xs[0].clone().requires_grad_()
    m.experts(x, as_[0]).sum().backward()  # autograd: fresh tensors, gradients flow
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_hmoe_balancing_moves_bias_and_freezes():
    torch.manual_seed(0)
    m = HybridMoE(embed_dim=8, hidden_dim=8, num_experts=2, bias_lr=0.5, max_update_steps=2)
    with torch.no_grad():
        m.expert_gate.weight.zero_()
        m.expert_gate.bias.copy_(torch.tensor([2.0, 0.0]))  # everything prefers expert 0
    x, idx = torch.randn(10, 8), torch.arange(10)
    m.eval()
    m(x, idx)
    assert m.steps.item() == 0 and m.exp_bias.abs().sum() == 0  # eval (click simulation): no update
    m.train()
    m(x, idx)
    torch.testing.assert_close(m.exp_bias, torch.tensor([-0.5, 0.5]))  # overloaded expert 0 pushed down
    m(x, idx)  # now everything goes to expert 1 (0.88 - 0.5 < 0.5 + 0.5): pushed back
    torch.testing.assert_close(m.exp_bias, torch.tensor([0.0, 0.0]))
    m(x, idx)  # beyond max_update_steps: frozen
    assert m.steps.item() == 2
    torch.testing.assert_close(m.exp_bias, torch.tensor([0.0, 0.0]))
    assert {"exp_bias", "steps"} <= set(m.state_dict())


# ----------------------------------------------------------------------------- Canny / DLU


def naive_canny(img, thr=2.0):
    """Hand-written fixed Canny (loops, float64, zero padding)."""
    B, C, H, W = img.shape
    g = torch.tensor([math.exp(-k * k / 2) for k in range(-2, 3)], dtype=F64)
    pad = F.pad(img, (2, 2, 2, 2))
    blur_x = sum(g[i] * pad[..., :, i:i + W] for i in range(5))
    blur = sum(g[i] * blur_x[..., i:i + H, :] for i in range(5))
    sob = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=F64)
    bp = F.pad(blur, (1, 1, 1, 1))
    gx = sum(sob[i, j] * bp[..., i:i + H, j:j + W] for i in range(3) for j in range(3))
    gy = sum(sob[j, i] * bp[..., i:i + H, j:j + W] for i in range(3) for j in range(3))
    mag = torch.sqrt(gx ** 2 + gy ** 2).sum(1)
    ori = torch.round((torch.atan2(gy.sum(1), gx.sum(1)) * 180 / math.pi + 180) / 45) * 45
    offs = [(0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1)]
    thin = torch.zeros_like(mag)
    for b in range(B):
        for y in range(H):
            for x in range(W):
                d = int(ori[b, y, x] / 45) % 8
                ok = True
                for dd in (d, (d + 4) % 8):
                    ny, nx = y + offs[dd][0], x + offs[dd][1]
                    nb = mag[b, ny, nx] if 0 <= ny < H and 0 <= nx < W else 0.0
                    ok &= bool(mag[b, y, x] - nb > 0)
                thin[b, y, x] = mag[b, y, x] if ok else 0.0
    return mag, ori, thin, torch.where(thin < thr, 0.0, thin), torch.where(mag < thr, 0.0, mag)


def test_canny_matches_hand_written_reference():
    torch.manual_seed(0)
    img = torch.rand(2, 3, 12, 16, dtype=F64)
    img[:, :, 4:9, 5:11] += 0.8
    got = Canny()(img)[1:]
    for a, b in zip(got, naive_canny(img)):
        torch.testing.assert_close(a[:, 0], b)


def test_cannynet_shapes_and_zero_init():
    net = CannyNet(dims=(1, 4, 16, 64))
    outs = net(torch.rand(2, 3, 32, 48))
    assert [tuple(o.shape) for o in outs] == [(2, 64, 4, 6), (2, 16, 8, 12), (2, 4, 16, 24), (2, 1, 32, 48)]
    assert all(o.abs().sum() == 0 for o in outs)  # zero-initialised laterals


def test_dlu_local_equals_full_inside_box_with_full_statistics():
    torch.manual_seed(0)
    dlu = DynamicLocalUpsampling(embed_dim=64, crop_norm=False).double()
    B, h, w = 2, 6, 8
    x = torch.randn(B, 64, h, w, dtype=F64)
    edges = [torch.randn(B, c, h * 2 ** (j + 1), w * 2 ** (j + 1), dtype=F64) for j, c in enumerate((64, 16, 4, 1))]
    with torch.no_grad():  # coarse logits > -2 only in a known box per sample
        dlu.mlp.layers[-1].weight.zero_()
        dlu.mlp.layers[-1].bias.fill_(-10.0)
    x_full, coarse = dlu.train()(x, edges)
    assert coarse.shape == (B, 1, h, w) and x_full.shape == (B, 1, 16 * h, 16 * w)
    # force boxes via a coarse-logit hook
    boxes = [(1, 2, 5, 7), (0, 0, 6, 8)]

    def fake_mlp(t):
        out = torch.full((B, 1, h, w), -10.0, dtype=F64)
        for b, (y0, x0, y1, x1) in enumerate(boxes):
            out[b, 0, y0:y1, x0:x1] = 0.0
        return out

    dlu.mlp.forward = fake_mlp
    dlu.eval()
    local, _ = dlu(x, edges)
    for b, (y0, x0, y1, x1) in enumerate(boxes):
        Y0, X0, Y1, X1 = 16 * y0, 16 * x0, 16 * y1, 16 * x1
        outside = torch.ones(16 * h, 16 * w, dtype=torch.bool)
        outside[Y0:Y1, X0:X1] = False
        assert (local[b, 0][outside] == -100).all()
        m = 48  # interior: away from the crop border (zero padding / bicubic support of 4 stages)
        if (y0, x0, y1, x1) == (0, 0, h, w):
            torch.testing.assert_close(local[b], x_full[b])
        else:
            torch.testing.assert_close(local[b, 0, Y0 + m:Y1 - m, X0 + m:X1 - m], x_full[b, 0, Y0 + m:Y1 - m, X0 + m:X1 - m])
    dlu.crop_norm = True  # the authors' crop statistics differ inside the box
    crop_stats, _ = dlu(x, edges)
    assert not torch.allclose(crop_stats[0], local[0])
