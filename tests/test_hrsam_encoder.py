"""HRSAM / HRSAM++ image encoders: shapes, block layout, anchor branch, pos-embed resize, output head, gradients.

References are written here: a float64 loop for bilinear resizing, a hand-assembled output head
from hooked stage outputs, per-sample runs for batch independence.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from segblocks.blocks.hrsam_attention import FlashSwinAttention
from segblocks.blocks.hrsam_cyclescan import CycleScan, MultiScaleCycleScan, PerScaleCycleScan
from segblocks.models.hrsam import (
    HRSAM_PRESETS,
    HRSAMEncoder,
    HRSAMPlusPlusEncoder,
    hrsam_pp_vit_b,
    hrsam_vit_b,
    interpolate_pos_embed,
)

# Very small encoders: 32-d, 2 heads (head dim 16, RoPE needs a multiple of 4), 4 stages x 2 blocks.
SMALL = dict(embed_dim=32, num_heads=2, blocks_per_stage=2, window_size=4, out_chans=24, d_state=4, pos_embed_grid=5)


def _small(cls, **kw):
    torch.manual_seed(0)
    return cls(**{**SMALL, **({"anchor_size": 48} if cls is HRSAMPlusPlusEncoder else {}), **kw}).eval()


ENCODERS = [HRSAMEncoder, HRSAMPlusPlusEncoder]


# ----------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("cls", ENCODERS)
@pytest.mark.parametrize("hw", [(48, 80), (112, 16), (80, 80)])
def test_shapes_odd_non_square_and_batch_independence(cls, hw):
    model = _small(cls)
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        out = model(x)
        singles = torch.cat([model(x[i : i + 1]) for i in range(2)])
    assert out.shape == (2, 24, hw[0] // 16, hw[1] // 16) and out.dtype == torch.float32
    torch.testing.assert_close(out, singles, atol=1e-5, rtol=1e-5)  # no leakage between samples
    assert not torch.allclose(out[0], out[1])  # different content, different embeddings


@pytest.mark.parametrize("cls", ENCODERS)
def test_high_resolution_forward_1024_and_2048(cls):
    """Small width at the paper's sizes (64² and 128² token grids): forward only, per-window attention loop."""
    torch.manual_seed(0)
    kw = dict(embed_dim=96, num_heads=3, blocks_per_stage=1, d_state=4, cycle_repeats=1, attn_backend="reference")
    model = (hrsam_vit_b if cls is HRSAMEncoder else hrsam_pp_vit_b)(**kw).eval()
    with torch.no_grad():
        for side in (1024, 2048):
            out = model(torch.randn(1, 3, side, side))
            assert out.shape == (1, 256, side // 16, side // 16) and torch.isfinite(out).all()


@pytest.mark.parametrize("cls", ENCODERS)
def test_bad_inputs(cls):
    model = _small(cls)
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.randn(1, 3, 40, 48))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(1, 4, 48, 48))
    with pytest.raises(TypeError, match="floating point"):
        model(torch.zeros(1, 3, 48, 48, dtype=torch.long))
    with pytest.raises(ValueError, match="drop_path_rate"):
        cls(**SMALL, drop_path_rate=1.0)


def test_anchor_bad_inputs():
    model = _small(HRSAMPlusPlusEncoder)
    x = torch.randn(2, 3, 48, 48)
    with pytest.raises(ValueError, match="anchor height and width"):
        model(x, anchor=torch.randn(2, 3, 40, 40))
    with pytest.raises(ValueError, match="batch size"):
        model(x, anchor=torch.randn(1, 3, 48, 48))
    with pytest.raises(ValueError, match="anchor_size"):
        HRSAMPlusPlusEncoder(**SMALL, anchor_size=40)


# ----------------------------------------------------------------------------- structure
def test_vit_b_block_structure():
    torch.manual_seed(0)
    model = hrsam_vit_b()
    assert len(model.blocks) == 12 and model.out_indices == (2, 5, 8, 11)
    assert [b.attn.shift for b in model.blocks] == [0, 8] * 6  # alternate 0 / 8 (Fig. 2)
    for b in model.blocks:
        assert isinstance(b.attn, FlashSwinAttention)
        assert (b.attn.window_size, b.attn.num_heads, b.attn.dim) == (16, 12, 768)
        assert b.attn.kv_padding and b.attn.rope is not None
        assert b.mlp.lin1.out_features == 3072 and isinstance(b.mlp.act, torch.nn.GELU)
    assert len(model.cycle_scans) == 4
    assert all(type(s) is CycleScan and s.d_state == 32 and s.repeats == 3 for s in model.cycle_scans)
    assert tuple(model.pos_embed.shape) == (1, 14, 14, 768)
    assert model.refine[0].groups == 256 and model.refine[0].bias is None  # depthwise 3x3, no bias
    assert all(p[0].bias is None and p[0].out_features == 256 for p in model.stage_proj)
    assert set(HRSAM_PRESETS) == {"vit_b", "pp_vit_b", "tiny", "pp_tiny"}


def _call_order(model, x):
    """Names of blocks / Cycle-scans in the order they run."""
    order, handles = [], []
    named = [(f"b{i}", b) for i, b in enumerate(model.blocks)] + [(f"s{i}", s) for i, s in enumerate(model.cycle_scans)]
    named += [(f"f{i}", s) for i, s in enumerate(getattr(model, "fusion_scans", []))]
    for name, mod in named:
        handles.append(mod.register_forward_pre_hook(lambda m, a, name=name: order.append(name)))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return order


def test_cycle_scan_before_last_block_of_each_stage():
    model = _small(HRSAMEncoder, blocks_per_stage=3)
    assert _call_order(model, torch.randn(1, 3, 32, 32)) == [
        "b0", "b1", "s0", "b2", "b3", "b4", "s1", "b5", "b6", "b7", "s2", "b8", "b9", "b10", "s3", "b11"
    ]
    pp = _small(HRSAMPlusPlusEncoder, blocks_per_stage=3)
    assert all(type(s) is PerScaleCycleScan for s in pp.cycle_scans)
    assert all(type(s) is MultiScaleCycleScan for s in pp.fusion_scans) and len(pp.fusion_scans) == 4
    assert _call_order(pp, torch.randn(1, 3, 32, 32)) == [
        "b0", "b1", "s0", "b2", "f0", "b3", "b4", "s1", "b5", "f1", "b6", "b7", "s2", "b8", "f2", "b9", "b10", "s3", "b11", "f3"
    ]


# ----------------------------------------------------------------------------- anchor map
def test_anchor_branch_shares_weights():
    pp, base = _small(HRSAMPlusPlusEncoder), _small(HRSAMEncoder)
    # one patch embedding, one position embedding, one set of blocks: nothing duplicated for the anchor
    extra = {k for k in pp.state_dict() if k not in base.state_dict()}
    assert all(k.startswith(("fusion_scans.", "stage_proj.")) for k in extra), extra
    assert not any("anchor" in name for name, _ in pp.named_modules())

    calls = {"patch": [], "attn": []}
    h1 = pp.patch_embed.register_forward_hook(lambda m, a, o: calls["patch"].append(tuple(a[0].shape)))
    h2 = pp.blocks[1].attn.register_forward_hook(lambda m, a, o: calls["attn"].append(list(a[1])))
    with torch.no_grad():
        pp(torch.randn(2, 3, 80, 48))
    h1.remove(), h2.remove()
    assert calls["patch"] == [(2, 3, 80, 48), (2, 3, 48, 48)]  # the same module embeds both scales
    assert calls["attn"] == [[(5, 3), (3, 3)]]  # one attention call over both scales


def test_anchor_changes_output_and_defaults_to_square_resize():
    model = _small(HRSAMPlusPlusEncoder)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 80, 48)
    a1, a2 = torch.randn(2, 3, 48, 48), torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        o1, o2 = model(x, anchor=a1), model(x, anchor=a2)
        default = model(x)
        resized = model(x, anchor=F.interpolate(x, size=(48, 48), mode="bilinear", align_corners=False))
    assert o1.shape == (2, 24, 5, 3)
    assert (o1 - o2).abs().amax() > 1e-3
    torch.testing.assert_close(default, resized)


# ----------------------------------------------------------------------------- position embedding
def _bilinear_reference(grid: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """align_corners=False bilinear resize of (Gh, Gw, C), float64 loops."""
    gh, gw, c = grid.shape
    g = grid.double()
    out = torch.zeros(h, w, c, dtype=torch.float64)

    def src(i, n_out, n_in):
        s = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(math.floor(s)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        return i0, i1, s - i0

    for y in range(h):
        y0, y1, fy = src(y, h, gh)
        for x in range(w):
            x0, x1, fx = src(x, w, gw)
            top = (1 - fx) * g[y0, x0] + fx * g[y0, x1]
            bottom = (1 - fx) * g[y1, x0] + fx * g[y1, x1]
            out[y, x] = (1 - fy) * top + fy * bottom
    return out


@pytest.mark.parametrize("hw", [(3, 7), (9, 4), (5, 5)])
def test_pos_embed_interpolation(hw):
    model = _small(HRSAMEncoder)
    with torch.no_grad():
        model.pos_embed.copy_(torch.randn_like(model.pos_embed))
        model.patch_embed.proj.weight.zero_()
        model.patch_embed.proj.bias.zero_()
        tokens = model.embed_tokens(torch.randn(1, 3, 16 * hw[0], 16 * hw[1]))  # = the resized embedding
    expected = _bilinear_reference(model.pos_embed[0].detach(), *hw).reshape(1, hw[0] * hw[1], -1)
    torch.testing.assert_close(tokens.double(), expected, atol=1e-5, rtol=1e-5)
    assert interpolate_pos_embed(model.pos_embed, (5, 5)) is model.pos_embed  # stored grid: untouched


# ----------------------------------------------------------------------------- output head
def test_output_head_sums_projected_stage_outputs():
    """HRSAM: E = LN2d(DWConv(Σ_s LN(F_s W_s))) with F_s the output of each stage's last block."""
    model = _small(HRSAMEncoder)
    feats = []
    hooks = [model.blocks[i].register_forward_hook(lambda m, a, o: feats.append(o)) for i in model.out_indices]
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        out = model(x)
        for h in hooks:
            h.remove()
        total = 0
        for f, proj in zip(feats, model.stage_proj):
            y = f.reshape(2, 3, 4, -1).double() @ proj[0].weight.double().T
            total = total + F.layer_norm(y, (24,), proj[1].weight.double(), proj[1].bias.double(), 1e-5)
        conv = F.conv2d(total.permute(0, 3, 1, 2), model.refine[0].weight.double(), padding=1, groups=24)
        mu, var = conv.mean(1, keepdim=True), conv.var(1, unbiased=False, keepdim=True)
        ln = model.refine[1]
        expected = (conv - mu) / torch.sqrt(var + 1e-6) * ln.weight.double()[:, None, None] + ln.bias.double()[:, None, None]
    torch.testing.assert_close(out.double(), expected, atol=1e-4, rtol=1e-4)


def test_plusplus_head_concatenates_upsampled_anchor():
    """HRSAM++: LN(W [LN(F) ‖ LN(up(F_anchor))]) per stage, F from the multi-scale fusion scan."""
    model = _small(HRSAMPlusPlusEncoder)
    feats = []
    hooks = [s.register_forward_hook(lambda m, a, o: feats.append(o)) for s in model.fusion_scans]
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        out = model(x)
        for h in hooks:
            h.remove()
        total = 0
        for (full, anchor), head in zip(feats, model.stage_proj):
            full = full.reshape(1, 4, 2, -1)
            anchor = anchor.reshape(1, 3, 3, -1).permute(0, 3, 1, 2)
            anchor = F.interpolate(anchor, size=(4, 2), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
            cat = torch.cat([head["norm"](full), head["norm"](anchor)], -1)
            total = total + head["proj"](cat)
        expected = model.refine(total.permute(0, 3, 1, 2))
    torch.testing.assert_close(out, expected)


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("cls", ENCODERS)
def test_gradients_reach_every_parameter(cls):
    model = _small(cls, drop_path_rate=0.1).train()
    x = torch.randn(2, 3, 48, 80, requires_grad=True)
    model(x).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for name in ("pos_embed", "blocks.1.attn.pad_token", "cycle_scans.0.A_log", "refine.0.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
