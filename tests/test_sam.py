"""SAM modules vs naive float64 references written here (loops, explicit softmax, direct formulas)."""
from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from segblocks.interactive import Clicks, clicks_to_points
from segblocks.models import load_checkpoint
from segblocks.models.sam import (
    PIXEL_MEAN,
    PIXEL_STD,
    MaskDecoder,
    PromptEncoder,
    SamModel,
    SamPreprocess,
    TwoWayTransformer,
    ViTImageEncoder,
    postprocess_masks,
    resize_pos_embed,
    sam_tiny,
)
from segblocks.models.sam.image_encoder import Block
from segblocks.ops.geometry import resize_longest_side

D = torch.float64


# ----------------------------------------------------------------------------- naive references
def ln(x, norm):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def lerp_resize(table, length):
    """1-D linear resize, half-pixel centres, source clamped at 0 (align_corners=False)."""
    n = table.shape[0]
    rows = []
    for i in range(length):
        src = max((i + 0.5) * n / length - 0.5, 0.0)
        i0 = int(math.floor(src))
        i1 = min(i0 + 1, n - 1)
        lam = src - i0
        rows.append((1 - lam) * table[i0] + lam * table[i1])
    return torch.stack(rows)


def cubic_matrix(n_in, n_out):
    """Bicubic (A = -0.75, align_corners=False, border-clamped) 1-D resampling matrix (n_out, n_in)."""
    a = -0.75

    def near(x):
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    m = torch.zeros(n_out, n_in, dtype=D)
    for i in range(n_out):
        src = (i + 0.5) * n_in / n_out - 0.5
        i0 = math.floor(src)
        t = src - i0
        for off, wgt in zip((-1, 0, 1, 2), (far(t + 1), near(t), near(1 - t), far(2 - t))):
            m[i, min(max(i0 + off, 0), n_in - 1)] += wgt
    return m


def naive_vit_attention(attn, tokens, gh, gw):
    """Explicit softmax attention with the decomposed rel-pos bias over one (gh x gw) grid: (N, C)."""
    n, c = tokens.shape
    nh = attn.num_heads
    d = c // nh
    qkv = tokens @ attn.qkv.weight.T + attn.qkv.bias
    out = torch.zeros(n, c, dtype=D)
    rh = lerp_resize(attn.rel_pos_h, 2 * gh - 1) if attn.use_rel_pos else None
    rw = lerp_resize(attn.rel_pos_w, 2 * gw - 1) if attn.use_rel_pos else None
    for h in range(nh):
        q = qkv[:, h * d:(h + 1) * d]
        k = qkv[:, c + h * d:c + (h + 1) * d]
        v = qkv[:, 2 * c + h * d:2 * c + (h + 1) * d]
        logits = torch.zeros(n, n, dtype=D)
        for i in range(n):
            for j in range(n):
                yi, xi, yj, xj = i // gw, i % gw, j // gw, j % gw
                s = q[i] @ k[j] / math.sqrt(d)
                if attn.use_rel_pos:
                    s = s + q[i] @ rh[yi - yj + gh - 1] + q[i] @ rw[xi - xj + gw - 1]
                logits[i, j] = s
        p = torch.exp(logits - logits.max(-1, keepdim=True).values)
        out[:, h * d:(h + 1) * d] = (p / p.sum(-1, keepdim=True)) @ v
    return out @ attn.proj.weight.T + attn.proj.bias


def naive_block(block, x):
    b, h, w, c = x.shape
    y = ln(x, block.norm1)
    out = torch.zeros_like(y)
    m = block.window_size
    for bi in range(b):
        if m == 0:
            out[bi] = naive_vit_attention(block.attn, y[bi].reshape(h * w, c), h, w).reshape(h, w, c)
            continue
        hp, wp = -(-h // m) * m, -(-w // m) * m
        padded = torch.zeros(hp, wp, c, dtype=D)
        padded[:h, :w] = y[bi]
        res = torch.zeros_like(padded)
        for r0 in range(0, hp, m):
            for c0 in range(0, wp, m):
                win = padded[r0:r0 + m, c0:c0 + m].reshape(m * m, c)
                res[r0:r0 + m, c0:c0 + m] = naive_vit_attention(block.attn, win, m, m).reshape(m, m, c)
        out[bi] = res[:h, :w]
    x = x + out
    hidden = F.gelu(ln(x, block.norm2) @ block.mlp.lin1.weight.T + block.mlp.lin1.bias)
    return x + hidden @ block.mlp.lin2.weight.T + block.mlp.lin2.bias


def naive_attn(mod, q, k, v):
    """Decoder attention for one sample: (Nq, C), (Nk, C), (Nk, C) -> (Nq, C)."""
    q = q @ mod.q_proj.weight.T + mod.q_proj.bias
    k = k @ mod.k_proj.weight.T + mod.k_proj.bias
    v = v @ mod.v_proj.weight.T + mod.v_proj.bias
    d = q.shape[1] // mod.num_heads
    heads = []
    for h in range(mod.num_heads):
        s = slice(h * d, (h + 1) * d)
        logits = q[:, s] @ k[:, s].T / math.sqrt(d)
        p = torch.exp(logits - logits.max(-1, keepdim=True).values)
        heads.append((p / p.sum(-1, keepdim=True)) @ v[:, s])
    return torch.cat(heads, 1) @ mod.out_proj.weight.T + mod.out_proj.bias


def naive_two_way(tr, image, pe, tokens):
    """SAM App. A decoder layers, one sample: image/pe (C, h, w), tokens (N, C)."""
    keys, kpe = image.flatten(1).T, pe.flatten(1).T
    queries = tokens
    for i, layer in enumerate(tr.layers):
        if i == 0:
            queries = naive_attn(layer.self_attn, queries, queries, queries)
        else:
            queries = queries + naive_attn(layer.self_attn, queries + tokens, queries + tokens, queries)
        queries = ln(queries, layer.norm1)
        queries = ln(queries + naive_attn(layer.cross_attn_token_to_image, queries + tokens, keys + kpe, keys),
                     layer.norm2)
        mlp = F.relu(queries @ layer.mlp.lin1.weight.T + layer.mlp.lin1.bias) @ layer.mlp.lin2.weight.T
        queries = ln(queries + mlp + layer.mlp.lin2.bias, layer.norm3)
        keys = ln(keys + naive_attn(layer.cross_attn_image_to_token, keys + kpe, queries + tokens, queries),
                  layer.norm4)
    attn = naive_attn(tr.final_attn_token_to_image, queries + tokens, keys + kpe, keys)
    return ln(queries + attn, tr.norm_final_attn), keys


def fourier(gauss, u):
    """[sin(2π(2u-1)G), cos(2π(2u-1)G)] for one normalized (x, y) location, channel by channel."""
    f = [2 * math.pi * ((2 * u[0] - 1) * gauss[0, j] + (2 * u[1] - 1) * gauss[1, j]) for j in range(gauss.shape[1])]
    return torch.tensor([math.sin(v) for v in f] + [math.cos(v) for v in f], dtype=D)


def naive_point_tokens(pe_enc, points, labels, size):
    """Prompt tokens of one sample (N, 2), (N,) in an input of size (H, W), plus SAM's pad token."""
    gauss = pe_enc.pe_layer.positional_encoding_gaussian_matrix
    rows = []
    for (x, y), lab in zip(points.tolist() + [[0.0, 0.0]], labels.tolist() + [-1]):
        if lab == -1:
            rows.append(pe_enc.not_a_point_embed.weight[0])
        else:
            rows.append(fourier(gauss, (x / size[1], y / size[0])) + pe_enc.point_embeddings[lab].weight[0])
    return torch.stack(rows)


def naive_decoder(dec, pe_enc, emb, points, labels, multimask):
    """Full SAM decode of one sample with no previous mask: (M, 4h, 4w), (M,), (M, C)."""
    c, h, w = emb.shape
    stride = pe_enc.stride
    sparse = naive_point_tokens(pe_enc, points, labels, (h * stride, w * stride))
    gauss = pe_enc.pe_layer.positional_encoding_gaussian_matrix
    pe = torch.zeros(c, h, w, dtype=D)
    for i in range(h):
        for j in range(w):
            pe[:, i, j] = fourier(gauss, ((j + 0.5) / w, (i + 0.5) / h))
    tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight, sparse])
    src = emb + pe_enc.no_mask_embed.weight[0].view(c, 1, 1)
    hs, keys = naive_two_way(dec.transformer, src, pe, tokens)
    up = dec.output_upscaling(keys.T.reshape(1, c, h, w))[0]  # C/8 x 4h x 4w
    idx = [1, 2, 3] if multimask else [0]
    masks = torch.stack([torch.einsum("c,chw->hw", dec.output_hypernetworks_mlps[i](hs[1 + i]), up) for i in idx])
    iou = dec.iou_prediction_head(hs[0])[idx]
    return masks, iou, hs[[1 + i for i in idx]]


# ----------------------------------------------------------------------------- fixtures
def tiny_parts(dim=16, grid=(4, 4)):
    pe_enc = PromptEncoder(embed_dim=dim, image_embedding_size=grid, input_image_size=(16 * grid[0], 16 * grid[1]))
    dec = MaskDecoder(
        transformer_dim=dim,
        transformer=TwoWayTransformer(depth=2, embedding_dim=dim, num_heads=2, mlp_dim=32),
        iou_head_hidden_dim=16,
    )
    for p in list(pe_enc.parameters()) + list(dec.parameters()):  # move away from trivial inits
        torch.nn.init.normal_(p, std=0.5)
    return pe_enc.to(D), dec.to(D)


def randomize(module):
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "rel_pos" in name or "pos_embed" in name or "norm" in name:
                p.normal_(0, 0.5)


# ----------------------------------------------------------------------------- image encoder
@pytest.mark.parametrize("window,grid,rel_size", [(3, (5, 7), 4), (0, (3, 5), 4), (0, (4, 4), 4), (4, (2, 3), 9)])
def test_block_matches_naive(window, grid, rel_size):
    torch.manual_seed(0)
    block = Block(dim=8, num_heads=2, mlp_ratio=2.0, window_size=window, use_rel_pos=True, rel_pos_size=rel_size)
    block = block.to(D)
    randomize(block)
    x = torch.randn(2, *grid, 8, dtype=D)
    torch.testing.assert_close(block(x), naive_block(block, x), rtol=1e-10, atol=1e-10)


def test_block_without_rel_pos_matches_naive():
    torch.manual_seed(1)
    block = Block(dim=8, num_heads=4, mlp_ratio=1.0, window_size=2, use_rel_pos=False, rel_pos_size=2).to(D)
    x = torch.randn(1, 3, 5, 8, dtype=D)
    torch.testing.assert_close(block(x), naive_block(block, x), rtol=1e-10, atol=1e-10)


def test_pos_embed_resize_bicubic_and_identity():
    torch.manual_seed(0)
    pe = torch.randn(1, 4, 4, 3, dtype=D)
    assert resize_pos_embed(pe, (4, 4)) is pe
    out = resize_pos_embed(pe, (6, 10))
    expected = torch.einsum("ai,bj,ijc->abc", cubic_matrix(4, 6), cubic_matrix(4, 10), pe[0])
    torch.testing.assert_close(out[0], expected, rtol=1e-10, atol=1e-10)


def test_encoder_uses_interpolated_pos_embed_on_non_square_input():
    torch.manual_seed(0)
    enc = ViTImageEncoder(img_size=64, embed_dim=8, depth=0, num_heads=2, out_chans=8, global_attn_indexes=())
    enc = enc.to(D).eval()
    x = torch.randn(2, 3, 96, 160, dtype=D)
    tokens = enc.patch_embed(x)  # B x 6 x 10 x C
    pos = torch.einsum("ai,bj,ijc->abc", cubic_matrix(4, 6), cubic_matrix(4, 10), enc.pos_embed[0])
    expected = enc.neck((tokens + pos).permute(0, 3, 1, 2))
    torch.testing.assert_close(enc(x), expected, rtol=1e-10, atol=1e-10)
    # the stored embedding is used unchanged at the pretraining grid
    x = torch.randn(1, 3, 64, 64, dtype=D)
    torch.testing.assert_close(enc(x), enc.neck((enc.patch_embed(x) + enc.pos_embed).permute(0, 3, 1, 2)))


def test_full_encoder_shapes_and_batch_independence():
    torch.manual_seed(0)
    enc = ViTImageEncoder(
        img_size=64, embed_dim=16, depth=3, num_heads=2, out_chans=8, window_size=3, global_attn_indexes=(1,)
    ).to(D)
    x = torch.randn(3, 3, 96, 160, dtype=D)
    out = enc(x)
    assert out.shape == (3, 8, 6, 10) and out.dtype == D
    torch.testing.assert_close(out[1:2], enc(x[1:2]), rtol=1e-10, atol=1e-10)


def test_load_hook_resizes_tables():
    torch.manual_seed(0)
    kw = dict(embed_dim=8, depth=2, num_heads=2, out_chans=8, window_size=2, global_attn_indexes=(1,))
    src = ViTImageEncoder(img_size=128, **kw)
    randomize(src)
    dst = ViTImageEncoder(img_size=64, **kw)
    dst.load_state_dict(src.state_dict())
    torch.testing.assert_close(dst.pos_embed, resize_pos_embed(src.pos_embed, (4, 4)))
    assert dst.blocks[1].attn.rel_pos_h.shape == (7, 4)
    torch.testing.assert_close(dst.blocks[1].attn.rel_pos_h, lerp_resize(src.blocks[1].attn.rel_pos_h, 7))
    torch.testing.assert_close(dst.blocks[0].attn.rel_pos_w, src.blocks[0].attn.rel_pos_w)  # window table kept


def test_encoder_bad_inputs():
    enc = ViTImageEncoder(img_size=64, embed_dim=8, depth=1, num_heads=2, out_chans=8, global_attn_indexes=(0,))
    with pytest.raises(ValueError, match="multiples of 16"):
        enc(torch.zeros(1, 3, 40, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        enc(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="global_attn_indexes"):
        ViTImageEncoder(depth=2, global_attn_indexes=(5,))
    with pytest.raises(ValueError, match="divisible"):
        ViTImageEncoder(embed_dim=10, num_heads=3, depth=1, global_attn_indexes=())


# ----------------------------------------------------------------------------- prompt encoder
def test_prompt_encoder_points_padding_and_fourier():
    torch.manual_seed(0)
    pe_enc, _ = tiny_parts(grid=(4, 6))
    points = torch.tensor([[[90.5, 60.5], [17.25, 0.5], [999.0, -5.0]]], dtype=D)
    labels = torch.tensor([[1, 0, -1]])
    out = pe_enc(points, labels)
    assert out.sparse.shape == (1, 4, 16) and out.dense.shape == (1, 16, 4, 6)
    assert out.valid.tolist() == [[True, True, False, True]]
    expected = naive_point_tokens(pe_enc, points[0, :2], labels[0, :2], (64, 96))
    torch.testing.assert_close(out.sparse[0, [0, 1, 3]], expected, rtol=1e-10, atol=1e-10)
    # padding: not-a-point embedding, no positional encoding, whatever the coordinates
    torch.testing.assert_close(out.sparse[0, 2], pe_enc.not_a_point_embed.weight[0])
    # no mask: the learned no-mask embedding everywhere
    torch.testing.assert_close(out.dense, pe_enc.no_mask_embed.weight.view(1, 16, 1, 1).expand(1, 16, 4, 6))


def test_dense_pe_matches_formula_and_point_pe():
    torch.manual_seed(0)
    pe_enc, _ = tiny_parts()
    gauss = pe_enc.pe_layer.positional_encoding_gaussian_matrix
    dense = pe_enc.get_dense_pe((3, 5))
    assert dense.shape == (1, 16, 3, 5)
    for i in range(3):
        for j in range(5):
            torch.testing.assert_close(dense[0, :, i, j], fourier(gauss, ((j + 0.5) / 5, (i + 0.5) / 3)))
    # a point at the centre of a 16-px cell gets the cell's positional encoding
    pts = torch.tensor([[[16 * 3.5, 16 * 1.5]]], dtype=D)
    tok = pe_enc.embed_points(pts, torch.tensor([[1]]), (3, 5))
    torch.testing.assert_close(tok[0, 0] - pe_enc.point_embeddings[1].weight[0], dense[0, :, 1, 3])


def test_prompt_encoder_size_per_call_and_masks():
    pe_enc, _ = tiny_parts()
    pts, lab = torch.zeros(2, 0, 2, dtype=D), torch.zeros(2, 0, dtype=torch.long)
    out = pe_enc(pts, lab, image_embedding_size=(6, 10), masks=torch.randn(2, 1, 24, 40, dtype=D))
    assert out.sparse.shape == (2, 1, 16) and out.dense.shape == (2, 16, 6, 10)
    torch.testing.assert_close(out.sparse[:, 0], pe_enc.not_a_point_embed.weight.expand(2, -1))
    with pytest.raises(ValueError, match="masks must have shape"):
        pe_enc(pts, lab, image_embedding_size=(6, 10), masks=torch.randn(2, 1, 24, 24, dtype=D))


def test_prompt_encoder_bad_inputs():
    pe_enc, _ = tiny_parts()
    with pytest.raises(TypeError, match="labels"):
        pe_enc(torch.zeros(1, 2, 2), torch.zeros(1, 2))
    with pytest.raises(TypeError, match="points"):
        pe_enc(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, N, 2\)"):
        pe_enc(torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must have shape"):
        pe_enc(torch.zeros(1, 2, 2), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="in"):
        pe_enc(torch.zeros(1, 1, 2), torch.full((1, 1), 2))
    with pytest.raises(ValueError, match="multiple"):
        PromptEncoder(embed_dim=16, image_embedding_size=(4, 4), input_image_size=(64, 48))


# ----------------------------------------------------------------------------- mask decoder
@pytest.mark.parametrize("multimask", [False, True])
def test_mask_decoder_matches_naive(multimask):
    torch.manual_seed(0)
    pe_enc, dec = tiny_parts(grid=(3, 5))
    emb = torch.randn(1, 16, 3, 5, dtype=D)
    points = torch.tensor([[[10.5, 20.5], [70.5, 5.5]]], dtype=D)
    labels = torch.tensor([[1, 0]])
    prompts = pe_enc(points, labels, image_embedding_size=(3, 5))
    out = dec(emb, pe_enc.get_dense_pe((3, 5)), prompts, multimask_output=multimask)
    masks, iou, tok = naive_decoder(dec, pe_enc, emb[0], points[0], labels[0], multimask)
    torch.testing.assert_close(out.masks[0], masks, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out.iou_pred[0], iou, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out.mask_tokens[0], tok, rtol=1e-9, atol=1e-9)


def test_mask_decoder_shapes_and_tokens():
    torch.manual_seed(0)
    pe_enc, dec = tiny_parts(grid=(4, 6))
    emb = torch.randn(3, 16, 4, 6, dtype=D)
    points = torch.rand(3, 4, 2, dtype=D) * 64
    labels = torch.tensor([[1, -1, -1, -1], [1, 0, 1, -1], [1, 1, 0, 0]])
    prompts = pe_enc(points, labels, image_embedding_size=(4, 6))
    pe = pe_enc.get_dense_pe((4, 6))
    single = dec(emb, pe, prompts)
    multi = dec(emb, pe, prompts, multimask_output=True)
    assert single.masks.shape == (3, 1, 16, 24) and single.iou_pred.shape == (3, 1)
    assert single.mask_tokens.shape == (3, 1, 16) and single.tokens.shape == (3, 1 + 4 + 4 + 1, 16)
    assert multi.masks.shape == (3, 3, 16, 24) and multi.iou_pred.shape == (3, 3)
    assert multi.mask_tokens.shape == (3, 3, 16)
    torch.testing.assert_close(single.tokens, multi.tokens)
    torch.testing.assert_close(single.mask_tokens, single.tokens[:, 1:2])
    torch.testing.assert_close(multi.mask_tokens, multi.tokens[:, 2:5])


def test_batch_independence_and_padding_invariance():
    torch.manual_seed(0)
    pe_enc, dec = tiny_parts(grid=(4, 6))
    emb = torch.randn(3, 16, 4, 6, dtype=D)
    pe = pe_enc.get_dense_pe((4, 6))
    prev = torch.randn(3, 1, 16, 24, dtype=D)
    points = torch.rand(3, 4, 2, dtype=D) * 64
    labels = torch.tensor([[1, -1, -1, -1], [1, 0, 1, -1], [0, 1, 0, 1]])
    batched = dec(emb, pe, pe_enc(points, labels, image_embedding_size=(4, 6), masks=prev), True)
    n_valid = (labels >= 0).sum(1).tolist()
    for i in range(3):
        n = n_valid[i]
        alone = dec(emb[i:i + 1], pe, pe_enc(points[i:i + 1, :n], labels[i:i + 1, :n], image_embedding_size=(4, 6),
                                             masks=prev[i:i + 1]), True)
        torch.testing.assert_close(batched.masks[i:i + 1], alone.masks, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(batched.iou_pred[i:i + 1], alone.iou_pred, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(batched.mask_tokens[i:i + 1], alone.mask_tokens, rtol=1e-9, atol=1e-9)
    # moving padding clicks changes nothing anywhere
    moved = points.clone()
    moved[labels < 0] = 1234.0
    again = dec(emb, pe, pe_enc(moved, labels, image_embedding_size=(4, 6), masks=prev), True)
    torch.testing.assert_close(again.masks, batched.masks, rtol=1e-9, atol=1e-9)


def test_mask_decoder_bad_inputs():
    pe_enc, dec = tiny_parts()
    prompts = pe_enc(torch.zeros(2, 1, 2, dtype=D), torch.ones(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="image_embeddings"):
        dec(torch.zeros(2, 8, 4, 4, dtype=D), pe_enc.get_dense_pe(), prompts)
    with pytest.raises(ValueError, match="prompts do not match"):
        dec(torch.zeros(3, 16, 4, 4, dtype=D), pe_enc.get_dense_pe(), prompts)
    with pytest.raises(ValueError, match="transformer width"):
        MaskDecoder(transformer_dim=32, transformer=TwoWayTransformer(embedding_dim=16, num_heads=2, mlp_dim=8))


# ----------------------------------------------------------------------------- SamModel
def test_sam_tiny_encode_decode_end_to_end():
    torch.manual_seed(0)
    model = sam_tiny().eval()
    for size, b in (((128, 128), 2), ((160, 96), 1)):
        images = torch.rand(b, 3, *size) * 255
        state = model.encode(images)
        assert state.embeddings.shape == (b, 64, size[0] // 16, size[1] // 16)
        assert state.input_size == size
        coords = torch.tensor([[[5, 7], [100, 20]]] * b)
        labels = torch.tensor([[1, -1]] * b)
        if b > 1:
            labels[1, 1] = 0
        points, labels = clicks_to_points(Clicks(coords=coords, labels=labels))
        out = model.decode(state, points, labels)
        assert out.masks.shape == (b, 1, size[0] // 4, size[1] // 4) and out.mask_tokens.shape == (b, 1, 64)
        out2 = model.decode(state, points, labels, previous_logits=out.masks, multimask_output=True)
        assert out2.masks.shape == (b, 3, size[0] // 4, size[1] // 4) and out2.iou_pred.shape == (b, 3)
        assert not torch.allclose(out2.tokens, out.tokens)  # the mask prompt is used
        full = model.postprocess(out.masks, state)
        assert full.shape == (b, 1, *size)
        assert model.postprocess(out.masks, state, (50, 70)).shape == (b, 1, 50, 70)
        torch.testing.assert_close(model(images, points, labels).masks, out.masks)


def test_sam_unpadded_input_and_grad_flow():
    torch.manual_seed(0)
    model = sam_tiny()
    images = torch.rand(2, 3, 100, 90) * 255  # padded to 112 x 96 inside encode
    state = model.encode(images)
    assert state.embeddings.shape == (2, 64, 7, 6) and state.input_size == (100, 90)
    points = torch.tensor([[[10.5, 10.5]], [[50.5, 80.5]]])
    prev = torch.randn(2, 1, 28, 24)
    out = model.decode(state, points, torch.ones(2, 1, dtype=torch.long), previous_logits=prev)
    (out.masks.square().mean() + out.iou_pred.sum() + out.mask_tokens.sum()).backward()
    no_grad = {n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0}
    unused = {f"mask_decoder.output_hypernetworks_mlps.{i}.{s}" for i in (1, 2, 3) for s in (
        "layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias", "layers.2.weight", "layers.2.bias")}
    assert no_grad == unused | {"prompt_encoder.no_mask_embed.weight", "prompt_encoder.point_embeddings.0.weight"}


def test_preprocess_and_postprocess():
    pre = SamPreprocess()
    images = torch.full((1, 3, 20, 30), 200.0)
    out = pre(images)
    assert out.shape == (1, 3, 32, 32)
    torch.testing.assert_close(out[0, :, 0, 0], (200 - pre.pixel_mean.flatten()) / pre.pixel_std.flatten())
    assert out[:, :, 20:].abs().sum() == 0 and out[:, :, :, 30:].abs().sum() == 0
    assert SamPreprocess(pad_size=64)(images).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="larger than pad_size"):
        SamPreprocess(pad_size=16)(images)
    with pytest.raises(TypeError, match="float"):
        pre(images.to(torch.uint8))
    assert resize_longest_side(torch.rand(1, 3, 30, 60), 128).shape == (1, 3, 64, 128)
    logits = torch.arange(8.0).view(1, 1, 2, 4).repeat(1, 2, 1, 1)  # padded input 8 x 16
    up = postprocess_masks(logits, (6, 11))
    ref = F.interpolate(logits, size=(8, 16), mode="bilinear", align_corners=False)[..., :6, :11]
    torch.testing.assert_close(up, ref)
    assert postprocess_masks(logits, (6, 11), (3, 5)).shape == (1, 2, 3, 5)
    with pytest.raises(ValueError, match="must fit"):
        postprocess_masks(logits, (9, 11))


def test_sam_bad_inputs():
    model = sam_tiny()
    state = model.encode(torch.rand(2, 3, 32, 32) * 255)
    with pytest.raises(ValueError, match="points must be"):
        model.decode(state, torch.zeros(3, 1, 2), torch.ones(3, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="masks must have shape"):
        model.decode(state, torch.zeros(2, 1, 2), torch.ones(2, 1, dtype=torch.long), torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="images must be"):
        model.encode(torch.rand(2, 1, 32, 32))
    enc = ViTImageEncoder(img_size=64, embed_dim=8, depth=0, num_heads=2, out_chans=32, global_attn_indexes=())
    bad = SamModel(image_encoder=enc, prompt_encoder=model.prompt_encoder, mask_decoder=model.mask_decoder)
    with pytest.raises(ValueError, match="image_encoder output"):
        bad.encode(torch.rand(1, 3, 32, 32))


def test_checkpoint_round_trip_and_grid_resize(tmp_path, caplog):
    torch.manual_seed(0)
    src = sam_tiny()
    randomize(src)
    state = dict(src.state_dict())
    state["prompt_encoder.point_embeddings.2.weight"] = torch.zeros(1, 64)  # official box corners
    path = tmp_path / "sam.pth"
    torch.save({"model": state}, path)
    with caplog.at_level(logging.WARNING):
        dst = sam_tiny(checkpoint=path)  # strict by default; the box corners are declared ignored
    assert not caplog.records
    for k, v in src.state_dict().items():
        torch.testing.assert_close(dst.state_dict()[k], v)
    # a model whose position embedding is stored at another grid
    enc = ViTImageEncoder(
        img_size=128, embed_dim=96, depth=4, num_heads=3, out_chans=64, window_size=8, global_attn_indexes=(1, 3)
    )
    other = SamModel(image_encoder=enc, prompt_encoder=dst.prompt_encoder, mask_decoder=dst.mask_decoder)
    load_checkpoint(other, path)
    torch.testing.assert_close(other.image_encoder.pos_embed, resize_pos_embed(src.image_encoder.pos_embed, (8, 8)))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        sam_tiny(checkpoint=tmp_path / "missing.pth")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(ValueError, match="unexpected"):
        sam_tiny(checkpoint=path)
    torch.save({"foo": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="none of its 1 keys matches"):
        sam_tiny(checkpoint=path)


# ----------------------------------------------------------------------------- faithful defaults
def test_layernorm_eps_as_sam():
    """SAM's ViT blocks and its LayerNorm2d (neck, prompt encoder, decoder) use eps 1e-6."""
    model = sam_tiny()
    for block in model.image_encoder.blocks:
        assert block.norm1.eps == 1e-6 and block.norm2.eps == 1e-6
    lns2d = [m for m in model.modules() if type(m).__name__ == "LayerNorm2d"]
    assert len(lns2d) == 2 + 2 + 1 and all(m.eps == 1e-6 for m in lns2d)  # neck, mask downscaling, upscaling
    x = torch.randn(3, 96, dtype=D) * 1e-3  # small variance: eps matters
    norm = model.image_encoder.blocks[0].norm1.double()
    mu = x.mean(-1, keepdim=True)
    ref = (x - mu) / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + 1e-6) * norm.weight + norm.bias
    torch.testing.assert_close(norm(x), ref)


def test_sam_vit_b_pads_non_square_images_to_1024(monkeypatch):
    """SAM pads every (longest-side resized) input to img_size²; sam_vit_b does so by default.

    The ViT-B encoder and decoder are swapped for sam_tiny's (built at 1024 px) to keep the test
    light; the preprocessing under test is sam_vit_b's own.
    """
    import segblocks.models.sam.sam as sam_module

    small_encoder = lambda: ViTImageEncoder(  # noqa: E731
        img_size=1024, embed_dim=32, depth=1, num_heads=2, out_chans=64, window_size=8, global_attn_indexes=(0,)
    )
    monkeypatch.setattr(sam_module, "sam_vit_b_encoder", small_encoder)
    monkeypatch.setattr(sam_module, "sam_vit_b_decoder", sam_module.sam_tiny_decoder)
    model = sam_module.sam_vit_b().eval()
    image = torch.rand(1, 3, 768, 1024) * 255  # a 3:4 photo after SAM's ResizeLongestSide(1024)
    x = model.preprocess(image)
    assert x.shape == (1, 3, 1024, 1024)
    mean, std = torch.tensor(PIXEL_MEAN).view(3, 1, 1), torch.tensor(PIXEL_STD).view(3, 1, 1)
    torch.testing.assert_close(x[0, :, :768], (image[0] - mean) / std)
    assert not x[:, :, 768:].any()  # zeros below the image, as SAM's F.pad after normalising
    with torch.no_grad():
        state = model.encode(image)
    assert state.embeddings.shape == (1, 64, 64, 64) and state.input_size == (768, 1024)  # SAM's 64 x 64 grid
    with pytest.raises(ValueError, match="larger than pad_size"):
        model.preprocess(torch.rand(1, 3, 1040, 512))
    # the multiple-of-16 padding stays an option
    loose = sam_module.sam_vit_b(pad_to_square=False)
    assert loose.preprocess(torch.rand(1, 3, 100, 200)).shape == (1, 3, 112, 208)
