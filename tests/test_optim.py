"""segblocks.optim: parameter groups (weight decay, lr multipliers, layer-wise decay) and the lr schedule.

References are written here: per-step formulas of the warm-up + poly / multistep schedules and a
hand-written table of layer ids for a small ViT-style model.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from segblocks.optim import configure_adamw, layer_id, lr_schedule, param_groups


class TinyViT(nn.Module):
    def __init__(self, depth: int = 3):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 8, 4, stride=4)
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 4, 8))
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8)) for _ in range(depth))
        self.cycle_scans = nn.ModuleList([nn.Linear(8, 8)])
        self.neck = nn.Linear(8, 4)
        self.A_log = nn.Parameter(torch.zeros(2, 3))
        self.A_log._no_weight_decay = True


def _run(sched, opt, steps):
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("total,warmup,start,power", [(20, 5, 1e-6, 1.0), (30, 0, 1e-6, 1.0), (12, 4, 0.1, 2.0), (5, 9, 1e-3, 1.0)])
def test_warmup_poly_matches_formula(total, warmup, start, power):
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=2e-4)
    sched = lr_schedule(opt, total_steps=total, warmup_steps=warmup, warmup_start_factor=start, power=power)
    W = min(warmup, total)
    for t, got in enumerate(_run(sched, opt, total + 2)):
        if t < W:
            f = start + (1 - start) * t / W
        elif t <= total:
            f = (1 - (t - W) / max(total - W, 1)) ** power
        else:
            f = 0.0
        assert got == pytest.approx(2e-4 * f, rel=1e-9, abs=1e-15), t


@pytest.mark.parametrize("warmup", [0, 3])
def test_warmup_multistep_matches_formula(warmup):
    total, fractions, gamma = 40, (0.5, 0.9), 0.1
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = lr_schedule(opt, total_steps=total, warmup_steps=warmup, decay="multistep", milestones=fractions, gamma=gamma)
    milestones = [int(f * total) for f in fractions]  # absolute steps 20, 36
    for t, got in enumerate(_run(sched, opt, total)):
        f = 1e-6 + (1 - 1e-6) * t / warmup if t < warmup else gamma ** sum(t >= m for m in milestones)
        assert got == pytest.approx(1e-3 * f, rel=1e-9), t


def test_layer_ids_of_a_vit():
    L = 12
    table = {
        "patch_embed.proj.weight": 0, "pos_embed": 0, "student.pos_embed": 0, "cls_token": 0,
        "blocks.0.attn.qkv.weight": 1, "blocks.11.mlp.fc2.bias": 12, "student.blocks.3.norm1.weight": 4,
        "stage_proj.0.0.weight": 13, "refine.1.weight": 13, "neck.weight": 13, "myblocks.2.weight": 13,
    }
    for name, expected in table.items():
        assert layer_id(name, L) == expected, name


def test_param_groups_layer_decay_weight_decay_and_multipliers():
    model = TinyViT(depth=3)
    groups = param_groups(model, lr=1.0, weight_decay=0.05, layer_decay=0.5, layer_decay_ignore=("*cycle_scans*",))
    by_name = {n: g for g in groups for n in g["names"]}
    assert set(by_name) == {n for n, _ in model.named_parameters()}
    L = 3
    expected_lr = {
        "patch_embed.weight": 0.5 ** (L + 1), "pos_embed": 0.5 ** (L + 1),
        "blocks.0.1.weight": 0.5 ** 3, "blocks.1.1.weight": 0.5 ** 2, "blocks.2.0.weight": 0.5 ** 1,
        "cycle_scans.0.weight": 1.0, "neck.weight": 1.0, "A_log": 1.0,
    }
    for name, lr in expected_lr.items():
        assert by_name[name]["lr"] == pytest.approx(lr), name
    params = dict(model.named_parameters())
    for name, g in by_name.items():  # biases and norm weights (1-D), the position table, the tagged A_log
        no_decay = params[name].dim() <= 1 or name in ("pos_embed", "A_log")
        assert g["weight_decay"] == (0.0 if no_decay else 0.05), name
    assert by_name["blocks.0.1.weight"]["weight_decay"] == 0.05 and by_name["pos_embed"]["weight_decay"] == 0.0
    mult = param_groups(model, lr=2.0, weight_decay=0.0, lr_multipliers={"blocks.": 0.1, "blocks.1.": 0.5})
    by_name = {n: g for g in mult for n in g["names"]}
    assert by_name["blocks.0.1.weight"]["lr"] == pytest.approx(0.2)
    assert by_name["blocks.1.1.weight"]["lr"] == pytest.approx(1.0)  # the longest prefix wins
    assert by_name["neck.weight"]["lr"] == pytest.approx(2.0)


def test_frozen_parameters_are_left_out_and_bad_arguments():
    model = TinyViT()
    model.neck.requires_grad_(False)
    cfg = configure_adamw(model, lr=1e-3, weight_decay=0.1, total_steps=10, warmup_steps=2)
    params = [p for g in cfg["optimizer"].param_groups for p in g["params"]]
    assert not any(p is model.neck.weight for p in params) and len(params) == len(list(model.parameters())) - 2
    with pytest.raises(ValueError, match="layer_decay"):
        param_groups(model, lr=1.0, weight_decay=0.0, layer_decay=1.5)
    with pytest.raises(ValueError, match="blocks"):
        param_groups(nn.Linear(2, 2), lr=1.0, weight_decay=0.0, layer_decay=0.9)
    with pytest.raises(ValueError, match="decay"):
        lr_schedule(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), total_steps=5, decay="cosine")
