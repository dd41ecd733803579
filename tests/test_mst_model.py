"""The MST click model: official key names, the click protocol (re-run per click), the training hook."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from segblocks.interactive.clicker import Clicks
from segblocks.interactive.evaluation import evaluate_clicks
from segblocks.interactive.protocol import ClickPrompts, InteractiveModel
from segblocks.interactive.training import iterative_training_loss
from segblocks.models import create_model, list_models


def official_vit_b_mst_keys() -> dict[str, tuple[int, ...]]:
    """Key names and shapes of the authors' ViT-B MST at 448 px (hahamyt/mst, ``AdaptiveVitModel`` with
    ``models/adaptivevit_base448_cclvs.py``: SimpleFPN out_dims (128, 256, 512, 1024), head channels 256,
    ``use_score`` on blocks 3, 7, 11, ScoreBlock sr_ratio 4), written out from that structure."""
    C, keys = 768, {}

    def lin(name, o, i, bias=True):
        keys[f"{name}.weight"] = (o, i)
        if bias:
            keys[f"{name}.bias"] = (o,)

    def norm(name, c=C):
        keys[f"{name}.weight"], keys[f"{name}.bias"] = (c,), (c,)

    def conv(name, o, i, k, transposed=False):
        keys[f"{name}.weight"] = (i, o, k, k) if transposed else (o, i, k, k)
        keys[f"{name}.bias"] = (o,)

    conv("backbone.patch_embed.proj", C, 3, 16)
    keys["backbone.pos_embed"] = (1, 28 * 28 + 1, C)
    for d in range(12):
        b = f"backbone.blocks.{d}"
        norm(f"{b}.norm1"), lin(f"{b}.attn.qkv", 3 * C, C), lin(f"{b}.attn.proj", C, C)
        norm(f"{b}.norm2"), lin(f"{b}.mlp.fc1", 4 * C, C), lin(f"{b}.mlp.fc2", C, 4 * C)
        if (d + 1) % 4 == 0:
            s = f"{b}.score"
            for n in ("norm1", "norm2", "norm3"):
                norm(f"{s}.{n}")
            lin(f"{s}.cross_attn.q", C, C, bias=False), lin(f"{s}.cross_attn.kv", 2 * C, C, bias=False)
            for e in ("expert_s", "expert_l"):
                lin(f"{s}.cross_attn.proj.{e}.0", C, C), lin(f"{s}.cross_attn.proj.{e}.2", C, C)
            conv(f"{s}.cross_attn.sr", C, C, 4), norm(f"{s}.cross_attn.norm")
            lin(f"{s}.cross_mlp.fc1", C, C), lin(f"{s}.cross_mlp.fc2", C, C)
            for n in ("norm3", "norm4", "norm6", "norm7"):
                norm(f"{b}.{n}")
            for a in ("score_cross_attn", "score_l_s"):
                lin(f"{b}.{a}.q", C, C, bias=False), lin(f"{b}.{a}.kv", 2 * C, C, bias=False), lin(f"{b}.{a}.proj", C, C)
            keys[f"{b}.gamma"] = keys[f"{b}.gamma2"] = (1, 1, C)
    conv("neck.down_4.0", 384, C, 2, True), norm("neck.down_4.1", 384), conv("neck.down_4.3", 192, 384, 2, True)
    norm("neck.down_4.4", 192), conv("neck.down_4.5", 128, 192, 1), norm("neck.down_4.6", 128)
    conv("neck.down_8.0", 384, C, 2, True), norm("neck.down_8.1", 384), conv("neck.down_8.2", 256, 384, 1)
    norm("neck.down_8.3", 256)
    conv("neck.down_16.0", 512, C, 1), norm("neck.down_16.1", 512)
    conv("neck.down_32.0", 1536, C, 2), norm("neck.down_32.1", 1536), conv("neck.down_32.2", 1024, 1536, 1)
    norm("neck.down_32.3", 1024)
    for i, c in enumerate((128, 256, 512, 1024)):
        conv(f"head.convs.{i}.conv", 256, c, 1)
    conv("head.fusion_conv.conv", 256, 1024, 1), conv("head.conv_seg", 1, 256, 1)
    conv("patch_embed_coords.proj", C, 3, 16)
    return keys


def test_official_vit_b_mst_keys_load_strictly():
    model = create_model("mst_vit_base")  # variant="code", blocks 3/7/11
    official = official_vit_b_mst_keys()
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert set(ours) == set(official), (sorted(set(official) - set(ours))[:5], sorted(set(ours) - set(official))[:5])
    assert ours == official
    sd = {k: torch.randn(shape) for k, shape in official.items()}
    report = model.load_state_dict(sd, strict=True)
    assert not report.missing_keys and not report.unexpected_keys


def test_registry_and_protocol():
    assert {"mst_tiny", "mst_vit_base", "simpleclick_vit_base"} <= set(list_models())
    assert isinstance(create_model("mst_tiny"), InteractiveModel)


def _batch(b=2, size=112, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(b, 3, size, size, generator=g) * 255
    mask = torch.zeros(b, size, size, dtype=torch.bool)
    mask[0, 20:70, 30:90] = True
    mask[1, 50:100, 10:60] = True
    return image, mask


def test_backbone_runs_once_per_click_and_never_in_encode():
    """What makes the harness's online SPC equal its 20-SPC for MST: encode does no network work."""
    torch.manual_seed(0)
    model = create_model("mst_tiny").eval()
    calls = []
    model.backbone.register_forward_hook(lambda *a: calls.append(1))
    image, mask = _batch()
    batch = {"image": image, "valid_size": torch.tensor([[112, 112]] * 2), "original_size": torch.tensor([[112, 112]] * 2),
             "original_mask": list(mask), "original_ignore": [torch.zeros_like(m) for m in mask]}
    state = model.encode(image, batch["valid_size"])
    assert calls == [] and state.images is image
    curves = evaluate_clicks(model, batch, max_clicks=3, generator=np.random.default_rng(0))
    assert len(calls) == 3 and curves.ious.shape == (2, 3)


def test_decode_pads_inputs_that_are_not_multiples_of_the_patch_sizes():
    model = create_model("mst_tiny").eval()
    image = torch.rand(1, 3, 100, 90) * 255
    clicks = Clicks.from_lists([[(50, 40, 1)]])
    size = torch.tensor([[100, 90]])
    with torch.no_grad():
        out = model.decode(model.encode(image, size), ClickPrompts(clicks=clicks, frame_size=size, input_size=size), None)
    assert out.shape == (1, 1, 100, 90)


@pytest.mark.parametrize("token_weight", [1.0, 0.0])
def test_training_hook_adds_token_losses(token_weight):
    torch.manual_seed(1)
    model = create_model("mst_tiny", token_loss_weight=token_weight).train()
    image, mask = _batch()
    batch = {"image": image, "mask": mask, "ignore": torch.zeros_like(mask), "valid_size": torch.tensor([[112, 112]] * 2)}
    out = iterative_training_loss(model, batch, gamma=1.0, max_clicks=1, initial_clicks=24, initial_gamma=0.8,
                                  generator=np.random.default_rng(3))
    extra = out.get("token_loss", 0) + out["score_loss"]
    torch.testing.assert_close(out["loss"], out["nfl"] + extra)
    assert ("token_loss" in out) == (token_weight > 0)
    out["loss"].backward()
    g = model.backbone.blocks[1].score.cross_attn.q.weight.grad
    assert g is not None and g.abs().sum() > 0  # the scale-token path trains (through the scores)


def test_mst_off_is_plain_simpleclick_without_aux_losses():
    model = create_model("mst_tiny", mst_depths=()).train()
    image, mask = _batch()
    batch = {"image": image, "mask": mask, "ignore": torch.zeros_like(mask), "valid_size": torch.tensor([[112, 112]] * 2)}
    out = iterative_training_loss(model, batch, gamma=1.0, max_clicks=0, generator=np.random.default_rng(0))
    assert set(out) == {"loss", "nfl", "num_clicks"}
