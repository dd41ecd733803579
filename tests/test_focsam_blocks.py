"""FocSAM blocks against independent float64 implementations written here (loops, dense):
focus box, Dwin / shift Dwin (authors' and Swin-masked), zero-slot attention, P-DyReLU, the refine
block end to end (values and gradients), the refiner, and loading official key names.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from segblocks.blocks.focsam import (
    DwinAttention,
    DynamicWindows,
    FocusRefiner,
    PDyReLU,
    RefineBlock,
    bbox_to_mask,
    expand_bbox,
    focus_box_mask,
    mask_bbox,
)

D = torch.float64


# ----------------------------------------------------------------------------- oracles


def naive_box(mask):
    """(left, top, right, bottom) by scanning rows and columns; empty → whole map."""
    H, W = mask.shape
    rows = [i for i in range(H) if bool(mask[i].any())]
    cols = [j for j in range(W) if bool(mask[:, j].any())]
    if not rows:
        return [0, 0, W, H]
    return [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]


def naive_expand(box, rh, rw, H, W):
    l, t, r, b = box
    xc, yc = (l + r) / 2, (t + b) / 2
    rnd = lambda v: float(torch.round(torch.tensor(v, dtype=D)))  # half to even, as torch.round
    return [max(rnd(xc - rw * (xc - l)), 0), max(rnd(yc - rh * (yc - t)), 0),
            min(rnd(xc - rw * (xc - r)), W), min(rnd(yc - rh * (yc - b)), H)]


def naive_windows(x, box_mask, S, shift):
    """Pad, roll, and list windows [(b, wy, wx, tokens (S*S, C), selected, region labels)]."""
    B, C, H, W = x.shape
    Hp, Wp = math.ceil(H / S) * S, math.ceil(W / S) * S
    xp = torch.zeros(B, C, Hp, Wp, dtype=x.dtype)
    xp[:, :, :H, :W] = x
    mp = torch.zeros(B, 1, Hp, Wp, dtype=x.dtype)
    mp[:, :, :H, :W] = box_mask
    # region label of each *rolled* position, Swin's three bands per axis
    def band(i, n):
        return 0 if i < n - S else (1 if i < n - shift else 2)
    out = []
    for b in range(B):
        for wy in range(Hp // S):
            for wx in range(Wp // S):
                toks, sel, reg = [], False, []
                for i in range(S):
                    for j in range(S):
                        y, xx = wy * S + i, wx * S + j  # rolled coordinates
                        sy, sx = (y + shift) % Hp, (xx + shift) % Wp  # source position
                        toks.append(xp[b, :, sy, sx])
                        sel = sel or bool(mp[b, 0, sy, sx] > 0)
                        reg.append(band(y, Hp) * 3 + band(xx, Wp))
                out.append((b, wy, wx, torch.stack(toks), sel, reg))
    return out, (Hp, Wp)


def naive_attention(attn, q, k, v, mask=None):
    """Eq. 1 per query with the zero key/value slot appended (weights taken from ``attn``)."""
    Wq, bq = attn.q_proj.weight.double(), attn.q_proj.bias.double()
    Wk, bk = attn.k_proj.weight.double(), attn.k_proj.bias.double()
    Wv, bv = attn.v_proj.weight.double(), attn.v_proj.bias.double()
    Wo, bo = attn.proj.weight.double(), attn.proj.bias.double()
    n, Nq, C = q.shape
    h, d = attn.num_heads, C // attn.num_heads
    out = torch.zeros(n, Nq, C, dtype=D)
    for s in range(n):
        Q, K, V = q[s] @ Wq.T + bq, k[s] @ Wk.T + bk, v[s] @ Wv.T + bv
        heads = []
        for hh in range(h):
            sl = slice(hh * d, (hh + 1) * d)
            rows = []
            for i in range(Nq):
                logits = [Q[i, sl] @ K[j, sl] / math.sqrt(d) for j in range(K.shape[0])
                          if mask is None or bool(mask[s, i, j])]
                vals = [V[j, sl] for j in range(K.shape[0]) if mask is None or bool(mask[s, i, j])]
                logits.append(torch.zeros((), dtype=D))  # the null slot
                vals.append(torch.zeros(d, dtype=D))
                p = torch.softmax(torch.stack(logits), 0)
                rows.append(sum(pi * vi for pi, vi in zip(p, vals)))
            heads.append(torch.stack(rows))
        out[s] = torch.cat(heads, -1) @ Wo.T + bo
    return out


def mlp2(seq, x):
    lin1, lin2 = seq[0], seq[2]
    hdn = torch.relu(x @ lin1.weight.double().T + lin1.bias.double())
    return torch.tanh(hdn @ lin2.weight.double().T + lin2.bias.double())


def naive_pdyrelu(m, x, q):
    """Eq. 6-9 one pixel at a time."""
    n, N, C = x.shape
    out = torch.zeros_like(x)
    for s in range(n):
        mean = x[s].mean(0)
        ch = mlp2(m.channel_mlp, mean) * m.channel_scale.double().exp() + m.channel_bias.double()
        for i in range(N):
            sim = (x[s, i] * q[s, 0]).sum().view(1)
            px = mlp2(m.pixel_mlp, sim) * m.pixel_scale.double().exp() + m.pixel_bias.double()
            for c in range(C):
                out[s, i, c] = torch.maximum(px[c] * x[s, i, c] + px[C + c], ch[c] * x[s, i, c] + ch[C + c])
    return out


def bilinear(img, y, x):
    """img (C, H, W) at real (y, x), zeros outside."""
    C, H, W = img.shape
    y0, x0 = math.floor(float(torch.as_tensor(y).detach())), math.floor(float(torch.as_tensor(x).detach()))
    fy, fx = y - y0, x - x0
    acc = torch.zeros(C, dtype=D)
    for yi, xi, w in ((y0, x0, (1 - fy) * (1 - fx)), (y0, x0 + 1, (1 - fy) * fx), (y0 + 1, x0, fy * (1 - fx)), (y0 + 1, x0 + 1, fy * fx)):
        if 0 <= yi < H and 0 <= xi < W:
            acc = acc + w * img[:, yi, xi]
    return acc


def naive_deform_layer(layer, f):
    """3x3 modulated DCN, pad 1: offset conv → (Δy, Δx) pairs + sigmoid mask, one output pixel at a time."""
    om = F.conv2d(f, layer.dcn_offset.weight.double(), layer.dcn_offset.bias.double(), padding=1)
    Wt = layer.dcn.weight.double()
    n, C, S, _ = f.shape
    out = torch.zeros(n, Wt.shape[0], S, S, dtype=D)
    for s in range(n):
        for i in range(S):
            for j in range(S):
                acc = torch.zeros(Wt.shape[0], dtype=D)
                for k in range(9):
                    ki, kj = divmod(k, 3)
                    y = i - 1 + ki + om[s, 2 * k, i, j]
                    x = j - 1 + kj + om[s, 2 * k + 1, i, j]
                    v = bilinear(f[s], y, x) * torch.sigmoid(om[s, 18 + k, i, j])
                    acc = acc + Wt[:, :, ki, kj] @ v
                out[s, :, i, j] = acc
    return out


def ln(mod, x):
    return F.layer_norm(x, x.shape[-1:], mod.weight.double(), mod.bias.double(), mod.eps)


def naive_block(block, x, q, box_mask):
    """The refine block written out: windows by loops, attention/P-DyReLU/DCN by the oracles above."""
    S, shift = block.dwin.window_size, block.dwin.shift
    wins, (Hp, Wp) = naive_windows(x, box_mask, S, shift)
    B, C, H, W = x.shape
    ca, msa = block.img2cls, block.cls2img
    out_p = torch.zeros(B, C, Hp, Wp, dtype=D)
    per_window_q = [[] for _ in range(B)]
    for b, wy, wx, toks, sel, reg in wins:
        if sel:
            kv = ln(ca.norm_kv, toks)[None]
            qf = q[b][None] + ca.gamma1.double() * naive_attention(ca.attn, ln(ca.norm_q, q[b])[None], kv, kv)
            hdn = torch.relu(ln(ca.norm, qf) @ ca.mlp[0].weight.double().T + ca.mlp[0].bias.double())
            qf = qf + ca.gamma2.double() * (hdn @ ca.mlp[2].weight.double().T + ca.mlp[2].bias.double())  # 1 x 1 x C
            mask = None
            if block.dwin.masked_shift and shift:
                mask = torch.tensor([[ri == rj for rj in reg] for ri in reg])[None]
            a = naive_attention(msa.attn, toks[None], toks[None], toks[None], mask)
            qp = ln(msa.cls_proj[1], qf @ msa.cls_proj[0].weight.double().T + msa.cls_proj[0].bias.double())
            a = naive_pdyrelu(msa.relu1, ln(msa.norm1, a), qp)  # 1 x S² x C
            f = toks.T.reshape(1, C, S, S)
            u = f + msa.gamma1.double() * a[0].T.reshape(1, C, S, S)
            dc = naive_deform_layer(msa.conv2, u)
            gn = F.group_norm(dc, 1, msa.norm2.weight.double(), msa.norm2.bias.double(), msa.norm2.eps)
            newf = f + msa.gamma2.double() * torch.relu(gn)
            per_window_q[b].append(qf[0, 0])
        else:
            newf = toks.T.reshape(1, C, S, S)
            per_window_q[b].append(q[b, 0])
        for i in range(S):
            for j in range(S):
                y, xx = wy * S + i, wx * S + j
                out_p[b, :, (y + shift) % Hp, (xx + shift) % Wp] = newf[0, :, i, j]
    new_q = []
    for b in range(B):
        nq = torch.stack(per_window_q[b]).mean(0)
        if block.cls_scale_proj is not None:
            r = sum(sel for bb, *_, sel, _ in wins if bb == b) / len(per_window_q[b])
            sc = torch.exp(block.cls_scale_proj.weight.double()[0, 0] * -math.log(max(r, 1e-2)) + block.cls_scale_proj.bias.double()[0])
            nq = q[b, 0] + sc * (nq - q[b, 0])
        new_q.append(nq)
    return out_p[:, :, :H, :W], torch.stack(new_q)[:, None]


# ----------------------------------------------------------------------------- focus box


def test_focus_box_matches_scan_and_expansion():
    torch.manual_seed(1)
    masks = torch.zeros(4, 9, 11, dtype=torch.bool)
    masks[0, 2:5, 3:7] = True
    masks[1, 0, 0] = True  # one-pixel object at the corner
    masks[2] = True  # whole image
    # masks[3] empty → whole image
    boxes = mask_bbox(masks)
    for b in range(4):
        assert boxes[b].tolist() == naive_box(masks[b])
    for ratio in ((1.4, 1.4), (1.0, 1.3), (1.25, 1.05)):
        got = expand_bbox(boxes, ratio, (9, 11))
        for b in range(4):
            assert got[b].tolist() == naive_expand(boxes[b].tolist(), *ratio, 9, 11)
    m = bbox_to_mask(torch.tensor([[3, 2, 7, 5]]), (9, 11))
    ref = torch.zeros(1, 1, 9, 11)
    ref[..., 2:5, 3:7] = 1
    assert torch.equal(m, ref)


def test_focus_box_mask_from_logits():
    logits = torch.full((2, 1, 4, 4), -1.0)
    logits[0, 0, 1, 1] = 5.0
    m = focus_box_mask(logits, (16, 16), (1.0, 1.0))
    up = F.interpolate(logits, (16, 16), mode="bilinear", align_corners=False)[0, 0] > 0
    l, t, r, b = naive_box(up)
    assert m[0, 0].nonzero().min(0).values.tolist() == [t, l] and m[0, 0].nonzero().max(0).values.tolist() == [b - 1, r - 1]
    assert bool(m[1].all())  # empty prediction → the whole input


# ----------------------------------------------------------------------------- Dwin


@pytest.mark.parametrize("shift,masked", [(0, False), (2, False), (2, True)])
def test_dynamic_windows_select_and_merge(shift, masked):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 7, dtype=D)  # not a multiple of the window
    box = torch.zeros(2, 1, 6, 7, dtype=D)
    box[0, :, 1:3, 1:2] = 1
    box[1, :, 5, 6] = 1  # a single pixel at the bottom-right corner
    dw = DynamicWindows(window_size=4, shift=shift, masked_shift=masked)
    parts = dw.partition(x, box)
    wins, _ = naive_windows(x, box, 4, shift)
    want = [t for *_, t, sel, _ in wins if sel]
    assert parts.index.numel() == len(want)
    torch.testing.assert_close(parts.windows, torch.stack(want))
    assert parts.selected.flatten().tolist() == [sel for *_, sel, _ in wins]
    if masked:
        regs = [reg for *_, sel, reg in wins if sel]
        ref = torch.stack([torch.tensor([[ri == rj for rj in reg] for ri in reg]) for reg in regs])
        assert torch.equal(parts.attn_mask, ref)
    else:
        assert parts.attn_mask is None
    # processed windows land where they came from; others unchanged
    out = dw.merge(parts, parts.windows * 2)
    ref = x.clone()
    for b, wy, wx, _, sel, _ in wins:
        if not sel:
            continue
        for i in range(4):
            for j in range(4):
                sy, sx = (wy * 4 + i + shift) % 8, (wx * 4 + j + shift) % 8
                if sy < 6 and sx < 7:
                    ref[b, :, sy, sx] = 2 * x[b, :, sy, sx]
    torch.testing.assert_close(out, ref)


def test_dynamic_windows_empty_selection_and_whole_box():
    x = torch.randn(1, 2, 8, 8, dtype=D)
    dw = DynamicWindows(window_size=4)
    none = dw.partition(x, torch.zeros(1, 1, 8, 8))
    assert none.index.numel() == 0 and torch.equal(dw.merge(none, none.windows), x)
    full = dw.partition(x, torch.ones(1, 1, 8, 8))
    assert full.index.numel() == 4


# ----------------------------------------------------------------------------- attention, P-DyReLU


@pytest.mark.parametrize("with_mask", [False, True])
def test_attention_with_null_slot_matches_loop(with_mask):
    torch.manual_seed(0)
    attn = DwinAttention(embed_dim=8, num_heads=2).double()
    q, k, v = torch.randn(2, 3, 8, dtype=D), torch.randn(2, 5, 8, dtype=D), torch.randn(2, 5, 8, dtype=D)
    mask = torch.rand(2, 3, 5) > 0.5 if with_mask else None
    if with_mask:
        mask[0, 0] = False  # a query that sees only the null slot
    ts = [t.requires_grad_() for t in (q, k, v)]
    out = attn(*ts, mask)
    want = naive_attention(attn, *ts, mask)
    torch.testing.assert_close(out, want)
    g = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad(out, ts, g), torch.autograd.grad(want, ts, g)):
        torch.testing.assert_close(a, b)


def test_null_slot_changes_the_output():
    """Without the zero key/value slot the weights would sum to one over the real tokens."""
    attn = DwinAttention(embed_dim=4, num_heads=1).double()
    with torch.no_grad():
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj, attn.proj):
            lin.weight.copy_(torch.eye(4))
            lin.bias.zero_()
    q = torch.zeros(1, 1, 4, dtype=D)
    kv = torch.ones(1, 1, 4, dtype=D)
    torch.testing.assert_close(attn(q, kv, kv), torch.full((1, 1, 4), 0.5, dtype=D))  # softmax(0, 0) · (1, 0)


def test_pdyrelu_matches_per_pixel_loop():
    torch.manual_seed(0)
    m = PDyReLU(channels=6).double()
    with torch.no_grad():
        for p in (m.pixel_scale, m.pixel_bias, m.channel_scale, m.channel_bias):
            p.normal_(0, 0.3)
    x, q = torch.randn(2, 5, 6, dtype=D, requires_grad=True), torch.randn(2, 1, 6, dtype=D, requires_grad=True)
    out = m(x, q)
    want = naive_pdyrelu(m, x, q)
    torch.testing.assert_close(out, want)
    params = [x, q, *m.parameters()]
    g = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(want, params, g)):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------- refine block, refiner


def small_block(**kw):
    torch.manual_seed(0)
    blk = RefineBlock(embed_dim=8, num_heads=2, mlp_ratio=2.0, window_size=4, **kw).double()
    with torch.no_grad():  # move off the init so every path matters
        for name, p in blk.named_parameters():
            if "gamma" in name or "scale" in name or "bias" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return blk


@pytest.mark.parametrize("shift,masked,cls_scale", [(0, False, True), (2, False, True), (2, True, False)])
def test_refine_block_matches_naive(shift, masked, cls_scale):
    blk = small_block(shift=shift, masked_shift=masked, cls_scale=cls_scale)
    torch.manual_seed(1)
    x = torch.randn(2, 8, 5, 6, dtype=D, requires_grad=True)
    q = torch.randn(2, 1, 8, dtype=D, requires_grad=True)
    box = torch.zeros(2, 1, 5, 6, dtype=D)
    box[0, :, 0:2, 0:3] = 1
    box[1] = 1
    out_x, out_q = blk(x, q, box)
    want_x, want_q = naive_block(blk, x, q, box)
    torch.testing.assert_close(out_x, want_x)
    torch.testing.assert_close(out_q, want_q)
    params = [x, q] + [p for p in blk.parameters()]
    gx, gq = torch.randn_like(want_x), torch.randn_like(want_q)
    got = torch.autograd.grad((out_x, out_q), params, (gx, gq), allow_unused=True)
    ref = torch.autograd.grad((want_x, want_q), params, (gx, gq), allow_unused=True)
    for a, b in zip(got, ref):
        if b is None:
            assert a is None or torch.count_nonzero(a) == 0
        else:
            torch.testing.assert_close(a, b)


def test_cls_scale_at_init_is_mean_over_selected_windows():
    blk = RefineBlock(embed_dim=8, num_heads=2, window_size=4).double()
    x, q = torch.randn(1, 8, 8, 8, dtype=D), torch.randn(1, 1, 8, dtype=D)
    box = torch.zeros(1, 1, 8, 8, dtype=D)
    box[..., :2, :2] = 1  # one window of four
    _, new_q = blk(x, q, box)
    parts = blk.dwin.partition(x, box)
    want = blk.img2cls(q, parts.windows)
    torch.testing.assert_close(new_q, want)


def test_unselected_windows_unchanged():
    blk = small_block(shift=2)
    x, q = torch.randn(1, 8, 8, 8, dtype=D), torch.randn(1, 1, 8, dtype=D)
    box = torch.zeros(1, 1, 8, 8, dtype=D)
    box[..., 1, 1] = 1  # the rolled window containing (1, 1) covers rows/cols {6,7,0,1}
    out, _ = blk(x, q, box)
    changed = (out != x).any(1)[0]
    keep = torch.zeros(8, 8, dtype=torch.bool)
    for r in (6, 7, 0, 1):
        for c in (6, 7, 0, 1):
            keep[r, c] = True
    assert not changed[~keep].any() and changed[keep].any()


def test_refiner_structure_and_shapes():
    r = FocusRefiner(embed_dim=16, depth=4, num_heads=2, window_size=4)
    assert [b.dwin.shift for b in r.blocks] == [0, 2, 0, 2]
    assert [b.cls_scale_proj is not None for b in r.blocks] == [True, True, True, False]
    x = torch.randn(2, 16, 5, 7)  # not a multiple of the window
    logits = torch.randn(2, 1, 20, 28)
    logits[1] = -1  # empty mask → whole image
    out = r(x, logits, torch.randn(2, 16), (80, 112))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert r(x[:0], logits[:0], torch.randn(0, 16), (80, 112)).shape == (0, 16, 5, 7)


def test_refiner_defaults_are_the_papers():
    r = FocusRefiner()
    assert len(r.blocks) == 12 and r.blocks[0].dwin.window_size == 16 and r.blocks[1].dwin.shift == 8
    assert r.blocks[0].cls2img.attn.num_heads == 8 and r.embed_dim == 256 and r.expand_ratio == (1.4, 1.4)


def official_refiner_keys(depth=12):
    """Parameter names of YouHuang67/focsam focsam/refine_heads/focus_refiner.py (FocusRefiner)."""
    keys = ["embed_proj.weight", "embed_proj.bias", "token_proj.weight", "token_proj.bias"]
    attn = [f"{p}.{t}" for p in ("q_proj", "k_proj", "v_proj", "proj") for t in ("weight", "bias")]
    for i in range(depth):
        b = f"blocks.{i}."
        keys += [b + "img2cls." + k for k in ("norm_q.weight", "norm_q.bias", "norm_kv.weight", "norm_kv.bias", "gamma1",
                                               "norm.weight", "norm.bias", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight",
                                               "mlp.2.bias", "gamma2")]
        keys += [b + "img2cls.attn." + k for k in attn] + [b + "cls2img.attn." + k for k in attn]
        keys += [b + "cls2img." + k for k in (
            "cls_proj.0.weight", "cls_proj.0.bias", "cls_proj.1.weight", "cls_proj.1.bias", "norm1.weight", "norm1.bias",
            "relu1.pixel_scale", "relu1.pixel_bias", "relu1.pixel_mlp.0.weight", "relu1.pixel_mlp.0.bias",
            "relu1.pixel_mlp.2.weight", "relu1.pixel_mlp.2.bias", "relu1.channel_scale", "relu1.channel_bias",
            "relu1.channel_mlp.0.weight", "relu1.channel_mlp.0.bias", "relu1.channel_mlp.2.weight",
            "relu1.channel_mlp.2.bias", "conv2.dcn_offset.weight", "conv2.dcn_offset.bias", "conv2.dcn.weight",
            "norm2.weight", "norm2.bias", "gamma1", "gamma2")]
        if i < depth - 1:
            keys += [b + "cls_scale_proj.weight", b + "cls_scale_proj.bias"]
    return keys


def test_official_key_names_load_without_missing_or_unexpected():
    r = FocusRefiner(embed_dim=16, depth=12, num_heads=2, window_size=4)
    shapes = {k: v.shape for k, v in r.state_dict().items()}
    keys = official_refiner_keys()
    assert sorted(shapes) == sorted(keys)
    sd = {k: torch.randn(shapes[k]) for k in keys}
    res = r.load_state_dict(sd, strict=True)
    assert not res.missing_keys and not res.unexpected_keys
