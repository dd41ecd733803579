"""Backbones: output contract, Swin attention vs a naive per-token reference, checkpoints, freezing."""
from __future__ import annotations

import logging
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from segblocks.models.backbones import (
    Backbone,
    FrozenBatchNorm2d,
    ResNet,
    ResNet50,
    SwinTransformer,
    TimmBackbone,
    TinyBackbone,
    swin_tiny,
)
from segblocks.models import load_checkpoint
from segblocks.models.backbones.swin import SwinBlock, relative_position_index

STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
CKPT_LOGGER = "segblocks.models.checkpoint"


def small_swin(**kw) -> SwinTransformer:
    return SwinTransformer(embed_dim=8, depths=(2, 2, 1, 1), num_heads=(1, 2, 2, 4), window_size=3, **kw)


def check_contract(model: Backbone, images: torch.Tensor, channels: tuple[int, ...]) -> dict[str, torch.Tensor]:
    out = model(images)
    assert list(out) == list(STRIDES)
    assert model.out_strides == STRIDES
    assert model.out_channels == dict(zip(STRIDES, channels))
    b, _, h, w = images.shape
    for name, s in STRIDES.items():
        assert out[name].shape == (b, channels[list(STRIDES).index(name)], math.ceil(h / s), math.ceil(w / s))
        assert out[name].dtype == images.dtype
        assert torch.isfinite(out[name]).all()
    return out


# --------------------------------------------------------------------------- output contract


@pytest.mark.parametrize("size", [(96, 72), (100, 75), (33, 47)])
@pytest.mark.parametrize(
    "make, channels",
    [(TinyBackbone, (32, 64, 128, 256)), (small_swin, (8, 16, 32, 64))],
    ids=["tiny", "swin-small-config"],
)
def test_small_backbones_shapes_and_batch_independence(make, channels, size):
    model = make().eval()
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = check_contract(model, images, channels)
        single = model(images[1:])
    for name in STRIDES:  # samples do not mix inside the batch (window reshapes, norms)
        torch.testing.assert_close(out[name][1:], single[name], rtol=1e-4, atol=1e-5)
        assert not torch.allclose(out[name][0], out[name][1])


def test_resnet50_shapes():
    with torch.no_grad():
        out = check_contract(ResNet50().eval(), torch.randn(2, 3, 100, 75), (256, 512, 1024, 2048))
    assert out["res5"].shape == (2, 2048, 4, 3)  # 100 x 75 at stride 32, rounded up


def test_swin_tiny_shapes_and_preset():
    model = swin_tiny().eval()
    assert sum(len(s.blocks) for s in model.layers) == 12
    assert [s.blocks[0].attn.num_heads for s in model.layers] == [3, 6, 12, 24]
    assert model.layers[3].blocks[1].drop_path.p == pytest.approx(0.3)  # Mask2Former's Swin-T rate, last block
    with torch.no_grad():
        check_contract(model, torch.randn(2, 3, 96, 72), (96, 192, 384, 768))


@pytest.mark.parametrize("make", [TinyBackbone, small_swin], ids=["tiny", "swin"])
def test_empty_batch(make):
    out = make().eval()(torch.randn(0, 3, 40, 36))
    assert out["res5"].shape[0] == 0 and out["res5"].shape[2:] == (2, 2)


@pytest.mark.parametrize(
    "images, err",
    [
        (torch.randn(2, 1, 64, 64), ValueError),
        (torch.randn(3, 64, 64), ValueError),
        (torch.zeros(2, 3, 64, 64, dtype=torch.uint8), TypeError),
        ([1, 2, 3], TypeError),
    ],
)
def test_bad_images(images, err):
    with pytest.raises(err, match="images"):
        TinyBackbone()(images)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="norm"):
        TinyBackbone(norm="LN")
    with pytest.raises(ValueError, match="depth"):
        ResNet(depth=34)
    with pytest.raises(ValueError, match="freeze_at"):
        ResNet(freeze_at=6)
    with pytest.raises(ValueError, match="4 stages"):
        SwinTransformer(depths=(2, 2, 6))
    with pytest.raises(ValueError, match="divisible"):
        SwinTransformer(embed_dim=10, num_heads=(3, 6, 12, 24))


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize(
    "make",
    [TinyBackbone, lambda: small_swin(drop_path_rate=0.2), lambda: ResNet50(norm="BN")],
    ids=["tiny", "swin", "r50"],
)
def test_gradients_flow(make):
    model = make().train()
    images = torch.randn(2, 3, 64, 48, requires_grad=True)
    out = model(images)
    sum((v * torch.randn_like(v)).sum() for v in out.values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert images.grad.abs().sum() > 0
    if isinstance(model, SwinTransformer):
        assert model.layers[0].blocks[1].attn.relative_position_bias_table.grad.abs().sum() > 0


# --------------------------------------------------------------------------- Swin vs naive reference


def test_relative_position_index_matches_naive():
    m = 4
    index = relative_position_index(m)
    coords = [(y, x) for y in range(m) for x in range(m)]
    for qi, (yq, xq) in enumerate(coords):
        for ki, (yk, xk) in enumerate(coords):
            # row-major in (Δy, Δx) shifted to be non-negative, as in the official tables
            assert index[qi, ki] == (yq - yk + m - 1) * (2 * m - 1) + (xq - xk + m - 1)
    assert index.dtype == torch.int64
    assert set(index.flatten().tolist()) == set(range((2 * m - 1) ** 2))


def naive_swin_block(block: SwinBlock, x: torch.Tensor) -> torch.Tensor:
    """Per-token Swin block: explicit window membership, wrap-around masking and bias lookup."""
    b, h, w, c = x.shape
    m, s, heads = block.window_size, block.shift_size, block.attn.num_heads
    d = c // heads
    hp, wp = math.ceil(h / m) * m, math.ceil(w / m) * m
    y = F.layer_norm(x, (c,), block.norm1.weight, block.norm1.bias, block.norm1.eps)
    padded = torch.zeros(b, hp, wp, c, dtype=x.dtype)
    padded[:, :h, :w] = y  # zero tokens beyond the image, visible as keys
    q, k, v = F.linear(padded, block.attn.qkv.weight, block.attn.qkv.bias).split(c, dim=-1)
    table = block.attn.relative_position_bias_table.view(2 * m - 1, 2 * m - 1, heads)
    attn_out = torch.zeros(b, h, w, c, dtype=x.dtype)
    for i in range(h):
        for j in range(w):
            si, sj = (i - s) % hp, (j - s) % wp  # position after rolling the map by -s
            keys = []
            for i2 in range(hp):
                for j2 in range(wp):
                    si2, sj2 = (i2 - s) % hp, (j2 - s) % wp
                    same_window = si2 // m == si // m and sj2 // m == sj // m
                    # tokens that wrapped around (original index < s) only see tokens that also wrapped
                    contiguous = (i2 < s) == (i < s) and (j2 < s) == (j < s)
                    if same_window and contiguous:
                        keys.append((i2, j2, table[si % m - si2 % m + m - 1, sj % m - sj2 % m + m - 1]))
            for n in range(b):
                for hd in range(heads):
                    sl = slice(hd * d, (hd + 1) * d)
                    logits = torch.stack(
                        [q[n, i, j, sl] @ k[n, i2, j2, sl] / math.sqrt(d) + bias[hd] for i2, j2, bias in keys]
                    )
                    weights = torch.softmax(logits, dim=0)
                    attn_out[n, i, j, sl] = sum(wt * v[n, i2, j2, sl] for wt, (i2, j2, _) in zip(weights, keys))
    x = x + F.linear(attn_out, block.attn.proj.weight, block.attn.proj.bias)
    z = F.layer_norm(x, (c,), block.norm2.weight, block.norm2.bias, block.norm2.eps)
    z = F.gelu(F.linear(z, block.mlp.fc1.weight, block.mlp.fc1.bias))
    return x + F.linear(z, block.mlp.fc2.weight, block.mlp.fc2.bias)


@pytest.mark.parametrize("shift", [0, 1])
@pytest.mark.parametrize("hw", [(5, 7), (2, 3), (6, 3)])
def test_swin_block_matches_naive(shift, hw):
    block = SwinBlock(dim=6, num_heads=2, window_size=3, shift_size=shift, mlp_ratio=2.0).double().eval()
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_()  # large enough to matter
        block.norm1.weight.uniform_(0.5, 1.5)
        block.norm1.bias.normal_()  # non-zero bias: padding after the norm must stay zero
    x = torch.randn(2, *hw, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(block(x), naive_swin_block(block, x))


def test_swin_blocks_alternate_shift():
    model = small_swin()
    assert [blk.shift_size for blk in model.layers[0].blocks] == [0, 1]


def test_swin_layernorm_eps_is_torch_default():
    """Swin's official code builds every LayerNorm with nn.LayerNorm's default eps 1e-5."""
    norms = [m for m in small_swin().modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 1 + 2 * 6 + 3 + 4  # patch embed, 2 per block, 3 merges, 4 stage outputs
    assert all(m.eps == 1e-5 for m in norms)


# --------------------------------------------------------------------------- ResNet


def torchvision_resnet50_keys() -> set[str]:
    """Key names of torchvision's resnet50 state dict, without ``fc``."""
    def bn(prefix):
        return {f"{prefix}.{n}" for n in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}

    keys = {"conv1.weight"} | bn("bn1")
    for stage, blocks in enumerate((3, 4, 6, 3), start=1):
        for blk in range(blocks):
            p = f"layer{stage}.{blk}"
            for i in (1, 2, 3):
                keys |= {f"{p}.conv{i}.weight"} | bn(f"{p}.bn{i}")
            if blk == 0:
                keys |= {f"{p}.downsample.0.weight"} | bn(f"{p}.downsample.1")
    return keys


def test_resnet50_matches_torchvision_layout():
    model = ResNet50(norm="BN")
    assert sum(p.numel() for p in model.parameters()) == 23_508_032  # torchvision resnet50 minus fc
    assert set(model.state_dict()) == torchvision_resnet50_keys()
    assert model.layer2[0].conv2.stride == (2, 2) and model.layer2[0].conv1.stride == (1, 1)


def test_torchvision_checkpoint_into_frozen_bn_resnet(tmp_path, caplog):
    reference = ResNet50(norm="BN")
    with torch.no_grad():
        for mod in reference.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.1)
    state = dict(reference.state_dict(), **{"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)})
    path = tmp_path / "resnet50-torchvision.pth"
    torch.save(state, path)
    model = ResNet50()  # FrozenBN default
    with caplog.at_level(logging.WARNING, logger=CKPT_LOGGER):
        report = load_checkpoint(model, path)  # strict: the classifier is ignored by declaration
    assert not caplog.records and report.ignored_keys == ["fc.weight", "fc.bias"]
    assert report.missing_keys == [] and report.unexpected_keys == []  # num_batches_tracked dropped by FrozenBN
    images = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        expected, got = reference.eval()(images), model.eval()(images)
    for name in STRIDES:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-4)


def test_frozen_bn_is_a_fixed_affine_map():
    c = 5
    bn = FrozenBatchNorm2d(c, eps=1e-3)
    bn.weight.uniform_(0.5, 2)
    bn.bias.normal_()
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.1, 3)
    stats = [t.clone() for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var)]
    x = torch.randn(3, c, 4, 6, dtype=torch.float64, requires_grad=True)
    y = bn.train()(x)
    expected = torch.empty_like(x)
    for ch in range(c):
        w, b, mu, var = (float(t[ch]) for t in stats)
        expected[:, ch] = (x[:, ch] - mu) / math.sqrt(var + 1e-3) * w + b
    torch.testing.assert_close(y, expected)
    y.sum().backward()
    for ch in range(c):  # dy/dx = weight / sqrt(var + eps) per channel
        slope = float(stats[0][ch] / (stats[3][ch] + 1e-3).sqrt())
        torch.testing.assert_close(x.grad[:, ch], torch.full_like(x.grad[:, ch], slope))
    assert list(bn.parameters()) == []
    for before, after in zip(stats, (bn.weight, bn.bias, bn.running_mean, bn.running_var)):
        assert torch.equal(before, after)  # train mode updates nothing


@pytest.mark.parametrize("freeze_at", [0, 2])
def test_resnet_freeze_at(freeze_at):
    model = ResNet50(norm="BN", freeze_at=freeze_at)
    frozen = [model.conv1, model.bn1, model.layer1] if freeze_at else []
    trainable = [model.layer2, model.layer3, model.layer4] + ([] if freeze_at else [model.conv1, model.layer1])
    for mod in frozen:
        assert all(not p.requires_grad for p in mod.parameters())
        assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in mod.modules())
    for mod in trainable:
        assert all(p.requires_grad for p in mod.parameters())
    assert isinstance(model.layer2[0].bn1, torch.nn.BatchNorm2d)
    assert isinstance(model.bn1, FrozenBatchNorm2d if freeze_at else torch.nn.BatchNorm2d)


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("make", [TinyBackbone, small_swin], ids=["tiny", "swin"])
@pytest.mark.parametrize(
    "suffix, wrap, prefix",
    [
        (".pth", lambda sd: sd, ""),
        (".ckpt", lambda sd: {"state_dict": {f"model.bb.{k}": v for k, v in sd.items()}, "epoch": 3}, "model.bb."),
        (".pt", lambda sd: {"model": sd}, ""),
    ],
    ids=["plain", "lightning", "nested-model"],
)
def test_checkpoint_round_trip(tmp_path, caplog, make, suffix, wrap, prefix):
    source = make().eval()
    path = tmp_path / f"weights{suffix}"
    torch.save(wrap(source.state_dict()), path)
    with caplog.at_level(logging.WARNING, logger=CKPT_LOGGER):
        loaded = make()
        load_checkpoint(loaded, path, prefix=prefix)
        loaded.eval()
    assert not caplog.records
    images = torch.randn(2, 3, 50, 45)
    with torch.no_grad():
        a, b = source(images), loaded(images)
    for name in STRIDES:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


def test_checkpoint_missing_and_unexpected_keys(tmp_path, caplog):
    state = TinyBackbone().state_dict()
    del state["stem.0.weight"]
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    model = TinyBackbone()
    with caplog.at_level(logging.WARNING, logger=CKPT_LOGGER):
        load_checkpoint(model, path, strict=False)
    (record,) = caplog.records
    assert "stem.0.weight" in record.message and "extra.weight" in record.message and str(path) in record.message
    torch.testing.assert_close(model.stages[0][0][0].weight, state["stages.0.0.0.weight"], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"1 missing keys \['stem.0.weight'\].*extra.weight"):
        load_checkpoint(TinyBackbone(), path)


def test_checkpoint_file_errors(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint(TinyBackbone(), missing)
    bad_suffix = tmp_path / "weights.pkl"
    bad_suffix.write_bytes(b"x")
    with pytest.raises(ValueError, match="weights.pkl"):
        load_checkpoint(TinyBackbone(), bad_suffix)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.pth"):
        load_checkpoint(TinyBackbone(), corrupt)


def test_checkpoint_shape_mismatch_and_prefix_hint(tmp_path):
    path = tmp_path / "wide.pth"
    torch.save(TinyBackbone(widths=(16, 64, 128, 256)).state_dict(), path)
    with pytest.raises(ValueError, match="(?s)shapes do not match.*stem.0.weight"):
        load_checkpoint(TinyBackbone(), path)
    prefixed = tmp_path / "prefixed.pth"
    torch.save({f"backbone.{k}": v for k, v in TinyBackbone().state_dict().items()}, prefixed)
    with pytest.raises(ValueError, match="try checkpoint_prefix='backbone.'"):
        load_checkpoint(TinyBackbone(), prefixed)
    with pytest.raises(ValueError, match="no key starts with checkpoint_prefix 'body.'"):
        load_checkpoint(TinyBackbone(), prefixed, prefix="body.")


def test_swin_official_checkpoint_layout(tmp_path, caplog):
    source = small_swin()
    state = source.state_dict()
    for key in (
        "patch_embed.proj.weight",
        "patch_embed.norm.weight",
        "layers.0.blocks.1.attn.relative_position_bias_table",
        "layers.0.blocks.1.attn.relative_position_index",
        "layers.0.blocks.0.attn.qkv.weight",
        "layers.0.blocks.0.mlp.fc1.weight",
        "layers.0.downsample.reduction.weight",
        "layers.0.downsample.norm.weight",
        "norm3.weight",
    ):
        assert key in state, key
    assert not any(k.startswith("layers.3.downsample") for k in state)
    state["layers.0.blocks.1.attn_mask"] = torch.zeros(4, 9, 9)  # cached by classification checkpoints
    state["head.weight"] = torch.zeros(10, 64)
    path = tmp_path / "swin.pth"
    torch.save({"model": state}, path)
    with caplog.at_level(logging.WARNING, logger=CKPT_LOGGER):
        report = load_checkpoint(small_swin(), path)  # strict: the classification head is ignored by declaration
    assert not caplog.records and report.ignored_keys == ["head.weight"] and not report.unexpected_keys


# --------------------------------------------------------------------------- timm


def test_timm_backbone_without_timm(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'segblocks\[timm\]'"):
        TimmBackbone(model_name="resnet50")
