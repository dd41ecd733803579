"""PRO-SCALE blocks against independent naive implementations."""
import math

import pytest
import torch
import torch.nn.functional as F

from segblocks.blocks.proscale import (
    DeformableEncoderLayer,
    LightPixelEmbedding,
    ProgressiveScaleEncoder,
    TokenRecalibration,
)
from segblocks.models.mask2former.pixel_decoder import MSDeformPixelDecoder


def _naive_bilinear(img, out_h, out_w):
    """align_corners=False bilinear resize of (C, H, W) with explicit loops (float64)."""
    c, h, w = img.shape
    out = torch.zeros(c, out_h, out_w, dtype=torch.float64)
    for oy in range(out_h):
        for ox in range(out_w):
            sy = max((oy + 0.5) * h / out_h - 0.5, 0.0)
            sx = max((ox + 0.5) * w / out_w - 0.5, 0.0)
            y0, x0 = min(int(math.floor(sy)), h - 1), min(int(math.floor(sx)), w - 1)
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            ly, lx = sy - y0, sx - x0
            out[:, oy, ox] = (
                img[:, y0, x0] * (1 - ly) * (1 - lx) + img[:, y0, x1] * (1 - ly) * lx
                + img[:, y1, x0] * ly * (1 - lx) + img[:, y1, x1] * ly * lx
            )
    return out


@pytest.mark.parametrize("size,guide_size", [((3, 5), (7, 9)), ((2, 2), (8, 8)), ((4, 3), (4, 3))])
def test_trc_matches_paper_order(size, guide_size):
    """Eq. 4 in the paper's order: resize s2 (C channels) first, then φ, sigmoid(ε·), multiply."""
    b, c = 2, 6
    trc = TokenRecalibration(dim=c, temperature=0.1).double()
    torch.nn.init.normal_(trc.proj.weight)
    torch.nn.init.normal_(trc.proj.bias)
    tokens = torch.randn(b, size[0] * size[1], c, dtype=torch.float64, requires_grad=True)
    guide = torch.randn(b, guide_size[0] * guide_size[1], c, dtype=torch.float64, requires_grad=True)
    out = trc(tokens, size, guide, guide_size)

    expected = torch.empty_like(out)
    for i in range(b):
        g = guide[i].detach().T.reshape(c, *guide_size)  # true (C, H, W) layout
        g = _naive_bilinear(g, *size).reshape(c, -1).T  # HW x C
        gate = torch.sigmoid(0.1 * (g @ trc.proj.weight.detach().T + trc.proj.bias.detach()))
        expected[i] = tokens[i].detach() * gate
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert tokens.grad is not None and guide.grad.abs().sum() > 0 and trc.proj.weight.grad is not None


def test_trc_rejects_wrong_shapes():
    trc = TokenRecalibration(dim=4)
    with pytest.raises(ValueError, match="expected tokens"):
        trc(torch.randn(1, 5, 4), (2, 3), torch.randn(1, 16, 4), (4, 4))


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_lpe_matches_naive(pool):
    x = torch.randn(2, 32, 5, 7, dtype=torch.float64)
    lpe = LightPixelEmbedding(channels=32, pool=pool).double()
    torch.nn.init.normal_(lpe.norm.weight)
    torch.nn.init.normal_(lpe.norm.bias)
    out = lpe(x)

    pooled = torch.empty_like(x)
    for yy in range(5):
        for xx in range(7):
            win = x[:, :, max(yy - 1, 0): yy + 2, max(xx - 1, 0): xx + 2].flatten(2)
            pooled[:, :, yy, xx] = win.amax(-1) if pool == "max" else win.mean(-1)
    g = pooled.reshape(2, 32, -1)  # one channel per group
    normed = (g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + 1e-5)
    normed = normed.reshape_as(x) * lpe.norm.weight.view(1, -1, 1, 1) + lpe.norm.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(out, normed.clamp_min(0))


def test_lpe_has_no_conv_parameters():
    lpe = LightPixelEmbedding(channels=64)
    assert sum(p.numel() for p in lpe.parameters()) == 2 * 64  # GroupNorm affine only
    with pytest.raises(ValueError, match="pool"):
        LightPixelEmbedding(pool="median")


class _Recorder(torch.nn.Module):
    """Stands in for a deformable layer and records what the encoder fed it."""

    def __init__(self, log, tag):
        super().__init__()
        self.log, self.tag = log, tag

    def forward(self, src, pos, ref, spatial_shapes, level_start_index=None):
        self.log.append((self.tag, src.clone(), ref.clone(), spatial_shapes, level_start_index, pos.clone()))
        return src + 1.0


@pytest.mark.parametrize("layers_per_stage", [(1, 1, 1), (2, 0, 3), (0, 0, 2)])
def test_encoder_token_bookkeeping(layers_per_stage):
    """Stage k sees [previous output, raw level-k tokens] with k levels (Eq. 1-3)."""
    c = 32
    shapes = [(2, 3), (3, 5), (5, 9)]  # coarse → fine, odd sizes
    enc = ProgressiveScaleEncoder(layers_per_stage=layers_per_stage, d_model=c, token_recalibration=False)
    log = []
    for k, stage in enumerate(enc.stages):
        for j in range(len(stage)):
            stage[j] = _Recorder(log, (k, j))
    feats = [torch.randn(2, c, h, w) for h, w in shapes]
    out = enc(feats)

    raw = [f.flatten(2).transpose(1, 2) for f in feats]
    expected_src = torch.zeros(2, 0, c)
    calls = iter(log)
    for k, p in enumerate(layers_per_stage):
        expected_src = torch.cat([expected_src, raw[k]], 1)
        for j in range(p):
            tag, src, ref, sp, lsi, pos = next(calls)
            assert tag == (k, j)
            torch.testing.assert_close(src, expected_src)
            # level l's tokens carry the sine embedding of level l plus level_embed[l]
            expected_pos = torch.cat([
                (enc.pos_embed(feats[lvl]).flatten(2).transpose(1, 2) + enc.level_embed[lvl]) for lvl in range(k + 1)
            ], 1)
            torch.testing.assert_close(pos, expected_pos.detach())
            # level shapes as Python ints (no tensor to read back per layer); starts derived from them
            assert [tuple(s) for s in sp] == shapes[: k + 1] and lsi is None
            sizes = [h * w for h, w in shapes[: k + 1]]
            assert ref.shape == (2, sum(sizes), k + 1, 2)
            # reference point of token t of level l is its normalised pixel centre, for every level
            t = 0
            for h, w in shapes[: k + 1]:
                for yy in range(h):
                    for xx in range(w):
                        assert torch.allclose(ref[1, t, :, 0], torch.tensor((xx + 0.5) / w))
                        assert torch.allclose(ref[1, t, :, 1], torch.tensor((yy + 0.5) / h))
                        t += 1
            expected_src = expected_src + 1.0
    assert next(calls, None) is None
    # token counts per level are restored in the output maps
    for f, o, (h, w) in zip(feats, out, shapes):
        assert o.shape == (2, c, h, w)
    torch.testing.assert_close(out[-1].flatten(2).transpose(1, 2), expected_src[:, -shapes[-1][0] * shapes[-1][1]:])


def test_encoder_layer_counts_and_levels():
    enc = ProgressiveScaleEncoder(layers_per_stage=(3, 3, 3), d_model=32, n_heads=4)
    assert [len(s) for s in enc.stages] == [3, 3, 3]
    assert [s[0].self_attn.n_levels for s in enc.stages] == [1, 2, 3]
    m2f = ProgressiveScaleEncoder(layers_per_stage=(0, 0, 6), d_model=32, n_heads=4)
    assert [len(s) for s in m2f.stages] == [0, 0, 6]
    with pytest.raises(ValueError, match="layers_per_stage"):
        ProgressiveScaleEncoder(layers_per_stage=(0, 0, 0))
    assert ProgressiveScaleEncoder(layers_per_stage="2-2-2", d_model=32, n_heads=4).layers_per_stage == (2, 2, 2)
    with pytest.raises(ValueError, match="preset"):
        ProgressiveScaleEncoder(layers_per_stage="4-4-4")


def test_encoder_trc_applied_to_coarse_levels_only():
    c = 32
    enc = ProgressiveScaleEncoder(layers_per_stage=(1, 0, 0), d_model=c, n_heads=4, token_recalibration=True)
    trc = enc.token_recalibration
    feats = [torch.randn(1, c, 2, 2), torch.randn(1, c, 4, 4), torch.randn(1, c, 8, 8)]
    out = enc(feats)
    # levels untouched by any layer: level 1 is only recalibrated (naive Eq. 4 on the true
    # C x H x W layout), level 2 (the guide) passes through
    guide = _naive_bilinear(feats[2][0].double(), 4, 4).reshape(c, -1).T  # 16 x C
    w, b = trc.proj.weight.detach().double(), trc.proj.bias.detach().double()
    gate = torch.sigmoid(0.1 * (guide @ w.T + b))  # 16 x 1
    expected1 = feats[1][0].double().reshape(c, -1).T * gate
    torch.testing.assert_close(out[1][0].double().reshape(c, -1).T, expected1)
    torch.testing.assert_close(out[2], feats[2])


def test_encoder_gradients_and_batch_independence():
    c = 32
    enc = ProgressiveScaleEncoder(layers_per_stage=(1, 1, 1), d_model=c, n_heads=4, token_recalibration=True)
    feats = [torch.randn(2, c, h, w, requires_grad=True) for h, w in [(2, 3), (3, 5), (5, 9)]]
    out = enc(feats)
    sum(o.sum() for o in out).backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)
    single = enc([f[1:].detach() for f in feats])
    for o, s in zip(out, single):
        torch.testing.assert_close(o[1:].detach(), s, atol=1e-5, rtol=1e-5)


def test_deformable_layer_shapes():
    layer = DeformableEncoderLayer(d_model=32, d_ffn=64, n_levels=2, n_heads=4, n_points=2)
    src = torch.randn(2, 6 + 15, 32)
    ref = torch.rand(2, 21, 2, 2)
    shapes = torch.tensor([[2, 3], [3, 5]])
    out = layer(src, torch.zeros_like(src), ref, shapes, torch.tensor([0, 6]))
    assert out.shape == src.shape


def test_pixel_decoder_shapes_and_lpe():
    enc = ProgressiveScaleEncoder(layers_per_stage=(1, 1, 1), d_model=32, n_heads=4)
    dec = MSDeformPixelDecoder(in_channels=[8, 16, 24, 40], encoder=enc, pixel_embedding="lpe", conv_dim=32, mask_dim=16)
    feats = {"res2": torch.randn(2, 8, 13, 17), "res3": torch.randn(2, 16, 7, 9), "res4": torch.randn(2, 24, 4, 5), "res5": torch.randn(2, 40, 2, 3)}
    mask_features, ms = dec(feats)
    assert mask_features.shape == (2, 16, 13, 17)
    assert [tuple(m.shape) for m in ms] == [(2, 32, 2, 3), (2, 32, 4, 5), (2, 32, 7, 9)]
    assert isinstance(dec.pixel_embedding, LightPixelEmbedding)
    with pytest.raises(ValueError, match="pixel_embedding"):
        MSDeformPixelDecoder(in_channels=[8, 16, 24, 40], encoder=enc, pixel_embedding="deconv", conv_dim=32)
    with pytest.raises(ValueError, match="d_model"):
        MSDeformPixelDecoder(in_channels=[8, 16, 24, 40], encoder=enc, conv_dim=64)
    with pytest.raises(ValueError, match="backbone channels"):
        dec({**feats, "res2": torch.randn(2, 9, 13, 17)})
    with pytest.raises(ValueError, match="missing"):
        dec({k: v for k, v in feats.items() if k != "res5"})


def test_pixel_decoder_lpe_equals_manual_pipeline():
    """With LPE, the per-pixel embedding is mask_proj(LPE(lateral(res2) + up(encoded res3)))."""
    enc = ProgressiveScaleEncoder(layers_per_stage=(0, 0, 1), d_model=32, n_heads=4)
    dec = MSDeformPixelDecoder(in_channels=[8, 16, 24, 40], encoder=enc, pixel_embedding="lpe", conv_dim=32, mask_dim=16).eval()
    feats = {"res2": torch.randn(1, 8, 16, 16), "res3": torch.randn(1, 16, 8, 8), "res4": torch.randn(1, 24, 4, 4), "res5": torch.randn(1, 40, 2, 2)}
    mask_features, ms = dec(feats)
    y = dec.lateral(feats["res2"]) + F.interpolate(ms[-1], size=(16, 16), mode="bilinear", align_corners=False)
    pooled = F.max_pool2d(y, 3, 1, 1)
    expected = dec.mask_features(F.relu(F.group_norm(pooled, 32, dec.pixel_embedding.norm.weight, dec.pixel_embedding.norm.bias)))
    torch.testing.assert_close(mask_features, expected)


def test_default_is_the_papers_full_configuration():
    """PRO-SCALE (3, 3, 3) with TRC, ε = 0.1 (Table 1, §3.1.1, Table 4; authors' *_proscale_3_3_3_coco.yaml)."""
    enc = ProgressiveScaleEncoder()
    assert enc.layers_per_stage == (3, 3, 3) and enc.d_model == 256
    assert isinstance(enc.token_recalibration, TokenRecalibration)
    assert enc.token_recalibration.temperature == 0.1
    assert [len(s) for s in enc.stages] == [3, 3, 3]
    assert {m.self_attn.n_heads for s in enc.stages for m in s} == {8}
    assert {m.self_attn.n_points for s in enc.stages for m in s} == {4}
    assert {m.linear1.out_features for s in enc.stages for m in s} == {1024}
    ablation = ProgressiveScaleEncoder(token_recalibration=False)  # Table 3's without-TRC row
    assert ablation.token_recalibration is None
    assert not any(k.startswith("token_recalibration") for k in ablation.state_dict())


def test_pixel_decoder_input_proj_has_a_bias_like_mask2former():
    """Mask2Former's / PRO-SCALE's ``input_proj.{l}`` = Conv2d 1x1 *with bias* + GroupNorm: the
    official checkpoints carry ``input_proj.{l}.0.bias`` and must load with every key."""
    enc = ProgressiveScaleEncoder(layers_per_stage=(0, 0, 1), d_model=32, n_heads=4, token_recalibration=False)
    dec = MSDeformPixelDecoder(in_channels=[8, 16, 24, 40], encoder=enc, conv_dim=32, mask_dim=16, num_groups=8)
    keys = set(dec.state_dict())
    for lvl, c_in in enumerate((40, 24, 16)):  # coarse → fine
        assert {f"input_proj.{lvl}.0.weight", f"input_proj.{lvl}.0.bias", f"input_proj.{lvl}.1.weight"} <= keys
        assert dec.input_proj[lvl][0].weight.shape == (32, c_in, 1, 1)
        assert torch.count_nonzero(dec.input_proj[lvl][0].bias) == 0  # zero init, as Mask2Former
    assert "lateral.0.bias" not in keys  # the FPN convs are bias-free (followed by GroupNorm)
    # the bias is used: a hand-written 1x1 conv + bias + GroupNorm in float64
    proj = dec.input_proj[0].double()
    with torch.no_grad():
        proj[0].bias.normal_()
        proj[1].weight.normal_()
        proj[1].bias.normal_()
    x = torch.randn(2, 40, 3, 4, dtype=torch.float64)
    y = torch.einsum("oc,bchw->bohw", proj[0].weight[:, :, 0, 0], x) + proj[0].bias[None, :, None, None]
    g = y.reshape(2, 8, 4, 3, 4)  # 8 groups of 4 channels: a per-channel bias is not normalised away
    mean, var = g.mean((2, 3, 4), keepdim=True), g.var((2, 3, 4), unbiased=False, keepdim=True)
    expected = ((g - mean) / torch.sqrt(var + 1e-5)).reshape(2, 32, 3, 4)
    expected = expected * proj[1].weight[None, :, None, None] + proj[1].bias[None, :, None, None]
    torch.testing.assert_close(proj(x), expected)
    with torch.no_grad():
        proj[0].bias.zero_()
    assert not torch.allclose(proj(x), expected)
