"""HRSAM / HRSAM++ image encoders: shapes, block layout, anchor branch, pos-embed resize, output head, gradients.

References are written here: a float64 loop for bilinear resizing, a hand-assembled output head
from hooked stage outputs, per-sample runs for batch independence.
"""
from __future__ import annotations

import fnmatch
import inspect
import math
import re

import pytest
import torch
import torch.nn.functional as F

from segblocks.blocks.hrsam_attention import FlashSwinAttention
from segblocks.blocks.hrsam_cyclescan import CycleScan, MultiScaleCycleScan, PerScaleCycleScan
from segblocks.models import create_model, load_checkpoint
from segblocks.models.hrsam import (
    MAE_ABSENT_KEYS,
    HRSAMEncoder,
    HRSAMPlusPlusEncoder,
    hrsam_pp_tiny,
    hrsam_pp_vit_b,
    hrsam_tiny,
    hrsam_vit_b,
    interpolate_pos_embed,
    mae_to_hrsam,
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
        assert b.mlp.fc1.out_features == 3072 and isinstance(b.mlp.act, torch.nn.GELU)
    assert len(model.cycle_scans) == 4
    assert all(type(s) is CycleScan and s.d_state == 32 and s.repeats == 3 for s in model.cycle_scans)
    assert tuple(model.pos_embed.shape) == (1, 14, 14, 768)
    assert model.refine[0].groups == 256 and model.refine[0].bias is None  # depthwise 3x3, no bias
    assert all(p[0].bias is None and p[0].out_features == 256 for p in model.stage_proj)
    # the authors' base config: drop path linear from 0 to 0.2 over the 12 blocks
    rates = [b.drop_path.p for b in model.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.2) and rates == sorted(rates)


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


# ----------------------------------------------------------------------------- faithful defaults
@pytest.mark.parametrize("cls", ENCODERS)
def test_layernorm_eps_as_authors(cls):
    """Every LayerNorm of the authors' HRSAMViT is nn.LayerNorm(C) (eps 1e-5), the output head's too."""
    model = _small(cls)
    for b in model.blocks:
        assert b.norm1.eps == 1e-5 and b.norm2.eps == 1e-5
    assert model.refine[1].eps == 1e-5
    assert all(m.eps == 1e-5 for m in model.modules() if isinstance(m, torch.nn.LayerNorm))
    # the block's LN is the plain formula with eps 1e-5
    x = torch.randn(2, 5, 32, dtype=torch.float64) * 1e-3  # small variance: eps matters
    norm = model.blocks[0].norm1.double()
    mu = x.mean(-1, keepdim=True)
    ref = (x - mu) / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(norm(x), ref * norm.weight + norm.bias)


def test_drop_path_defaults():
    assert inspect.signature(HRSAMEncoder).parameters["drop_path_rate"].default == 0.2
    for make in (hrsam_tiny, hrsam_pp_tiny):  # the CPU demo presets keep 0 (documented)
        assert all(b.drop_path.p == 0.0 for b in make().blocks)
    assert hrsam_tiny(drop_path_rate=0.3).blocks[-1].drop_path.p == pytest.approx(0.3)


# ----------------------------------------------------------------------------- MAE weights
MAE_DECODER_KEYS = ("decoder_embed.weight", "decoder_embed.bias", "decoder_pos_embed", "decoder_blocks.0.norm1.weight",
                    "decoder_norm.weight", "decoder_pred.weight", "decoder_pred.bias")


def _mae_state_dict(depth, dim, grid, hidden, generator):
    """Random tensors under MAE's key names (facebookresearch/mae models_mae.py MaskedAutoencoderViT)."""
    r = lambda *shape: torch.randn(*shape, generator=generator)  # noqa: E731
    sd = {
        "cls_token": r(1, 1, dim),
        "mask_token": r(1, 1, dim),
        "pos_embed": r(1, 1 + grid * grid, dim),
        "patch_embed.proj.weight": r(dim, 3, 16, 16),
        "patch_embed.proj.bias": r(dim),
        "norm.weight": r(dim),
        "norm.bias": r(dim),
    }
    for i in range(depth):
        p = f"blocks.{i}."
        sd.update({
            p + "norm1.weight": r(dim), p + "norm1.bias": r(dim),
            p + "attn.qkv.weight": r(3 * dim, dim), p + "attn.qkv.bias": r(3 * dim),
            p + "attn.proj.weight": r(dim, dim), p + "attn.proj.bias": r(dim),
            p + "norm2.weight": r(dim), p + "norm2.bias": r(dim),
            p + "mlp.fc1.weight": r(hidden, dim), p + "mlp.fc1.bias": r(hidden),
            p + "mlp.fc2.weight": r(dim, hidden), p + "mlp.fc2.bias": r(dim),
        })
    for k in MAE_DECODER_KEYS:
        sd[k] = r(4, 4)
    return sd


def _expected_absent(model):
    """The encoder keys MAE has no counterpart for, listed by hand."""
    depth = len(model.blocks)
    keys = {f"blocks.{i}.attn.pad_token" for i in range(depth)}
    heads = ("cycle_scans.", "fusion_scans.", "stage_proj.", "refine.")
    keys |= {k for k in model.state_dict() if k.startswith(heads)}
    return keys


def test_mae_to_hrsam_maps_keys_and_pos_embed():
    g = torch.Generator().manual_seed(0)
    sd = _mae_state_dict(depth=2, dim=8, grid=3, hidden=32, generator=g)
    before = {k: v.clone() for k, v in sd.items()}
    out = mae_to_hrsam(sd)
    assert {k: v for k, v in sd.items()}.keys() == before.keys()  # input untouched
    dropped = {"cls_token", "mask_token", "norm.weight", "norm.bias", *MAE_DECODER_KEYS}
    assert set(out) == (set(sd) - dropped)
    pos = torch.empty(1, 3, 3, 8)
    for i in range(3):
        for j in range(3):
            pos[0, i, j] = sd["pos_embed"][0, 1 + i * 3 + j]  # class token first, grid row-major
    assert torch.equal(out["pos_embed"], pos)
    assert torch.equal(out["blocks.1.mlp.fc2.weight"], sd["blocks.1.mlp.fc2.weight"])
    with pytest.raises(ValueError, match="pos_embed"):
        mae_to_hrsam({"pos_embed": torch.zeros(1, 3, 3, 8)})
    with pytest.raises(ValueError, match="square"):
        mae_to_hrsam({"cls_token": torch.zeros(1, 1, 8), "pos_embed": torch.zeros(1, 1 + 8, 8)})


@pytest.mark.parametrize("cls", ENCODERS)
def test_mae_checkpoint_loads_into_encoder(cls, tmp_path):
    model = _small(cls)
    g = torch.Generator().manual_seed(1)
    sd = _mae_state_dict(depth=len(model.blocks), dim=32, grid=5, hidden=128, generator=g)
    path = tmp_path / "mae_pretrain.pth"
    torch.save({"model": sd}, path)  # MAE's release layout
    untouched = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("cycle_scans.", "refine."))}
    result = load_checkpoint(model, path)  # strict: only MAE-absent keys may be missing
    assert result.unexpected_keys == []
    assert result.missing_keys == []  # the MAE-absent ones are accepted, not reported
    assert all(any(fnmatch.fnmatchcase(k, p) for p in MAE_ABSENT_KEYS) for k in _expected_absent(model))
    # the registry path takes the same file strictly
    name = "hrsam_tiny" if cls is HRSAMEncoder else "hrsam_pp_tiny"
    extra = {"anchor_size": 48} if cls is HRSAMPlusPlusEncoder else {}
    built = create_model(name, checkpoint=path, **SMALL, **extra)
    assert built.checkpoint_report.missing_keys == [] and built.checkpoint_report.unexpected_keys == []
    
    state = model.state_dict()
    for k, v in sd.items():
        if k.startswith(("blocks.", "patch_embed.")):
            assert torch.equal(state[k], v), k
    assert torch.equal(state["pos_embed"], sd["pos_embed"][:, 1:].reshape(1, 5, 5, 32))
    for k, v in untouched.items():
        assert torch.equal(state[k], v), k
    # a missing block weight is still an error
    del sd["blocks.0.mlp.fc1.weight"]
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"blocks\.0\.mlp\.fc1\.weight"):
        load_checkpoint(_small(cls), path)


def test_mae_checkpoint_other_grid_is_resized(tmp_path):
    """MAE ViT-B's 14x14 table into a 5x5-grid encoder: class token dropped, then bilinear resize."""
    model = _small(HRSAMEncoder)
    g = torch.Generator().manual_seed(2)
    sd = _mae_state_dict(depth=len(model.blocks), dim=32, grid=7, hidden=128, generator=g)
    missing, unexpected = model.load_state_dict(sd, strict=False)  # the plain torch path converts too
    assert unexpected == [] and set(missing) == _expected_absent(model)
    grid = sd["pos_embed"][:, 1:].reshape(1, 7, 7, 32).double()
    torch.testing.assert_close(model.pos_embed.detach().double()[0], _bilinear_reference(grid[0], 5, 5), atol=1e-5, rtol=1e-5)
