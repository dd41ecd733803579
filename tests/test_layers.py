"""segblocks.layers: drop path, MLPs, SwiGLU, patch embedding, LayerNorm2d, window partition.

Every reference is written here: float64 loops or explicit formulas, never the layer under test.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from segblocks.layers import (
    DropPath,
    LayerNorm2d,
    MLPBlock,
    MLPHead,
    Mlp,
    PatchEmbed,
    SwiGLU,
    drop_path,
    window_partition,
    window_unpartition,
)

D = torch.float64


def naive_layer_norm(x, weight, bias, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * weight + bias


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / 2**0.5))


# ----------------------------------------------------------------------------- drop path
def test_drop_path_per_sample_and_identity_in_eval():
    x = torch.randn(64, 3, 2)
    drop = DropPath(0.5)
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(drop_path(x, 0.5, training=False), x) and torch.equal(drop_path(x, 0.0, training=True), x)
    torch.manual_seed(0)
    y = drop.train()(x)
    kept = []
    for i in range(64):  # each sample is either dropped whole or scaled by 1 / (1 - p)
        if torch.equal(y[i], torch.zeros_like(x[i])):
            kept.append(False)
        else:
            torch.testing.assert_close(y[i], x[i] / 0.5)
            kept.append(True)
    assert 0 < sum(kept) < 64
    assert "p=0.5" in repr(drop)
    with pytest.raises(ValueError, match="p must"):
        DropPath(1.0)
    with pytest.raises(ValueError, match="p must"):
        drop_path(x, -0.1, training=True)


def test_drop_path_keeps_the_expectation():
    torch.manual_seed(0)
    x = torch.ones(20000, 1, dtype=D)
    assert abs(drop_path(x, 0.3, training=True).mean().item() - 1.0) < 0.03


# ----------------------------------------------------------------------------- MLPs
def test_mlp_and_mlpblock_same_formula_official_key_names():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, dtype=D)
    timm_style = Mlp(in_features=6, hidden_features=10, out_features=4).double()
    assert set(timm_style.state_dict()) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    ref = gelu(x @ timm_style.fc1.weight.T + timm_style.fc1.bias) @ timm_style.fc2.weight.T + timm_style.fc2.bias
    torch.testing.assert_close(timm_style(x), ref)
    assert Mlp(in_features=6, hidden_features=10).fc2.out_features == 6  # default out = in

    sam_style = MLPBlock(embedding_dim=6, mlp_dim=10, act=nn.ReLU).double()
    assert set(sam_style.state_dict()) == {"lin1.weight", "lin1.bias", "lin2.weight", "lin2.bias"}
    ref = torch.clamp(x @ sam_style.lin1.weight.T + sam_style.lin1.bias, min=0) @ sam_style.lin2.weight.T
    torch.testing.assert_close(sam_style(x), ref + sam_style.lin2.bias)
    with pytest.raises(ValueError, match="sizes must be >= 1"):
        Mlp(in_features=0, hidden_features=4)


def test_mlp_without_bias():
    m = Mlp(in_features=4, hidden_features=8, bias=False)
    assert m.fc1.bias is None and m.fc2.bias is None


@pytest.mark.parametrize("sub_ln", [False, True])
def test_swiglu_against_formula(sub_ln):
    torch.manual_seed(0)
    norm = nn.LayerNorm(7).double() if sub_ln else None
    m = SwiGLU(in_features=5, hidden_features=7, norm=norm).double()
    if sub_ln:
        nn.init.normal_(m.norm.weight)
        nn.init.normal_(m.norm.bias)
    keys = {f"w{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")}
    assert set(m.state_dict()) == keys | ({"norm.weight", "norm.bias"} if sub_ln else set())
    x = torch.randn(3, 4, 5, dtype=D)
    a = x @ m.w1.weight.T + m.w1.bias
    b = x @ m.w2.weight.T + m.w2.bias
    hidden = a / (1 + torch.exp(-a)) * b  # SiLU(w1 x) * w2 x
    if sub_ln:
        hidden = naive_layer_norm(hidden, m.norm.weight, m.norm.bias, m.norm.eps)
    torch.testing.assert_close(m(x), hidden @ m.w3.weight.T + m.w3.bias)
    assert SwiGLU(in_features=5, hidden_features=7, out_features=3)(x.float()).shape == (3, 4, 3)


def test_mlp_head_relu_between_layers_only():
    torch.manual_seed(0)
    head = MLPHead(input_dim=4, hidden_dim=6, output_dim=3, num_layers=3).double()
    assert set(head.state_dict()) == {f"layers.{i}.{p}" for i in range(3) for p in ("weight", "bias")}
    x = torch.randn(2, 4, dtype=D)
    h = x
    for i, layer in enumerate(head.layers):
        h = h @ layer.weight.T + layer.bias
        if i < 2:
            h = torch.where(h > 0, h, torch.zeros_like(h))
    torch.testing.assert_close(head(x), h)
    one = MLPHead(input_dim=4, hidden_dim=99, output_dim=2, num_layers=1).double()
    torch.testing.assert_close(one(x), x @ one.layers[0].weight.T + one.layers[0].bias)  # no activation at all
    with pytest.raises(ValueError, match="num_layers"):
        MLPHead(input_dim=4, hidden_dim=6, output_dim=3, num_layers=0)


# ----------------------------------------------------------------------------- patch embedding
def naive_patch_embed(x, weight, bias, p):
    b, _, h, w = x.shape
    out = torch.zeros(b, h // p, w // p, weight.shape[0], dtype=D)
    flat_w = weight.reshape(weight.shape[0], -1)  # C x (C_in p p)
    for i in range(h // p):
        for j in range(w // p):
            patch = x[:, :, i * p : (i + 1) * p, j * p : (j + 1) * p].reshape(b, -1)  # B x (C_in p p)
            out[:, i, j] = patch @ flat_w.T + bias
    return out


def test_patch_embed_matches_flattened_patches():
    torch.manual_seed(0)
    pe = PatchEmbed(patch_size=4, in_chans=2, embed_dim=5).double()
    assert set(pe.state_dict()) == {"proj.weight", "proj.bias"}
    x = torch.randn(2, 2, 8, 12, dtype=D)
    torch.testing.assert_close(pe(x), naive_patch_embed(x, pe.proj.weight, pe.proj.bias, 4))
    with pytest.raises(ValueError, match="multiples of 4"):
        pe(torch.randn(1, 2, 9, 12, dtype=D))
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        pe(torch.randn(1, 3, 8, 8, dtype=D))


def test_patch_embed_padding_and_norm_swin_style():
    torch.manual_seed(0)
    pe = PatchEmbed(patch_size=4, in_chans=3, embed_dim=6, norm=nn.LayerNorm(6), pad=True).double()
    assert set(pe.state_dict()) == {"proj.weight", "proj.bias", "norm.weight", "norm.bias"}  # Swin's keys
    x = torch.randn(1, 3, 9, 6, dtype=D)
    padded = torch.zeros(1, 3, 12, 8, dtype=D)
    padded[:, :, :9, :6] = x  # zeros at the bottom/right
    ref = naive_layer_norm(naive_patch_embed(padded, pe.proj.weight, pe.proj.bias, 4), pe.norm.weight, pe.norm.bias, 1e-5)
    out = pe(x)
    assert out.shape == (1, 3, 2, 6)
    torch.testing.assert_close(out, ref)


# ----------------------------------------------------------------------------- LayerNorm2d
def test_layernorm2d_over_channels():
    torch.manual_seed(0)
    norm = LayerNorm2d(num_channels=3, eps=1e-5).double()
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(2, 3, 4, 5, dtype=D) * 1e-3  # small variance: eps matters
    ref = torch.zeros_like(x)
    for b in range(2):
        for i in range(4):
            for j in range(5):
                ref[b, :, i, j] = naive_layer_norm(x[b, :, i, j], norm.weight, norm.bias, 1e-5)
    torch.testing.assert_close(norm(x), ref)
    assert LayerNorm2d(num_channels=3).eps == 1e-6  # SAM's default
    assert set(norm.state_dict()) == {"weight", "bias"}
    with pytest.raises(ValueError, match="num_channels"):
        LayerNorm2d(num_channels=0)


# ----------------------------------------------------------------------------- windows
def naive_windows(x, m):
    """List windows by loops over the zero-padded map: (B, nW, M*M, C)."""
    b, h, w, c = x.shape
    hp, wp = -(-h // m) * m, -(-w // m) * m
    padded = torch.zeros(b, hp, wp, c, dtype=x.dtype)
    padded[:, :h, :w] = x
    windows = []
    for wy in range(hp // m):
        for wx in range(wp // m):
            tokens = [padded[:, wy * m + i, wx * m + j] for i in range(m) for j in range(m)]  # row-major in the window
            windows.append(torch.stack(tokens, dim=1))  # B x M² x C
    return torch.stack(windows, dim=1)


@pytest.mark.parametrize("hw,m", [((6, 9), 3), ((7, 5), 3), ((1, 1), 4), ((8, 8), 8)])
def test_window_partition_pads_and_round_trips(hw, m):
    x = torch.randn(2, *hw, 3, dtype=D)
    windows = window_partition(x, m)
    torch.testing.assert_close(windows, naive_windows(x, m), rtol=0, atol=0)
    assert torch.equal(window_unpartition(windows, m, hw), x)


def test_window_unpartition_checks_shapes():
    windows = window_partition(torch.randn(1, 6, 6, 2), 3)
    with pytest.raises(ValueError, match="do not tile"):
        window_unpartition(windows, 3, (9, 6))
    with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
        window_partition(torch.randn(6, 6, 2), 3)
