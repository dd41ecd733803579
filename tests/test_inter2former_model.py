"""Inter2Former model: click protocol, M_ref order, training losses, official keys, DDP balancing."""
from __future__ import annotations

import datetime
import os
import re
import tempfile
import time

import pytest
import torch
import torch.multiprocessing as mp

from segblocks.interactive.clicker import Clicks
from segblocks.interactive.protocol import ClickPrompts, InteractiveModel
from segblocks.interactive.ref_label import (
    initial_ref_label,
    points_to_ref_label,
    update_ref_label,
    update_ref_label_by_prediction,
)
from segblocks.interactive.training import iterative_training_loss
from segblocks.models import create_model
from segblocks.models.inter2former import inter2former_tiny


def _prompts(clicks, H=64, W=64):
    size = torch.tensor([[H, W]] * clicks.batch_size)
    return ClickPrompts(clicks=clicks, frame_size=size, input_size=size)


def test_registry_and_protocol():
    m = create_model("inter2former_tiny")
    assert isinstance(m, InteractiveModel)
    assert m.backbone.anchor_size == 64 and not m.backbone.blocks[1].attn.shift_single_window
    assert not any(p.numel() for n, p in m.backbone.named_parameters() if "scan" in n)


def test_ref_label_order_per_click():
    torch.manual_seed(0)
    m = inter2former_tiny().eval()
    img = torch.rand(2, 3, 64, 64) * 255
    state = m.encode(img, torch.tensor([[64, 64], [64, 64]]))
    c1 = Clicks.from_lists([[(20, 20, 1)], [(40, 30, 1)]])
    c2 = c1.append(torch.tensor([[5, 50], [0, 0]]), torch.tensor([0, 0]), torch.tensor([True, False]))
    with torch.no_grad():
        out1 = m.decode(state, _prompts(c1), None)
        ref1 = update_ref_label(initial_ref_label(2, 64, 64), points_to_ref_label(c1, 64, 64))
        logits1, _, _ = m.forward_tokens(state.features, state.edges, ref1)
        torch.testing.assert_close(out1, logits1)
        ref1 = update_ref_label_by_prediction(ref1, logits1[:, 0] > 0)
        assert torch.equal(state.ref_label, ref1)
        out2 = m.decode(state, _prompts(c2), out1)
        new = Clicks.from_lists([[(5, 50, 0)], []])  # only the click made since the last decode
        ref2 = update_ref_label(ref1, points_to_ref_label(new, 64, 64))
        torch.testing.assert_close(out2, m.forward_tokens(state.features, state.edges, ref2)[0])
        assert state.applied.tolist() == [2, 1]
        m.decode(state, _prompts(c1), None)  # previous=None restarts the sequence
        assert torch.equal(state.ref_label, ref1)


def test_training_step_losses_and_balancing():
    torch.manual_seed(0)
    m = inter2former_tiny().train()
    gt = torch.zeros(2, 64, 64, dtype=torch.bool)
    gt[0, 10:40, 12:30] = True
    gt[1, 30:60, 20:50] = True
    batch = {"image": torch.rand(2, 3, 64, 64) * 255, "mask": gt, "ignore": torch.zeros_like(gt),
             "valid_size": torch.tensor([[64, 64], [64, 64]])}
    out = iterative_training_loss(m, batch, gamma=0.9, max_clicks=3, generator=torch.Generator().manual_seed(1))
    assert {"aux_nfl", "bsq_loss", "nfl"} <= set(out)
    torch.testing.assert_close(out["loss"], out["nfl"] + out["aux_nfl"] + out["bsq_loss"])
    out["loss"].backward()
    assert m.neck.blocks[0].attn.bsqa.code_proj.weight.grad is not None
    assert m.decode_head.mlp.layers[0].weight.grad.abs().sum() > 0
    assert m.backbone.patch_embed.proj.weight.grad is None or m.backbone.patch_embed.proj.weight.grad.abs().sum() > 0
    # only the graded (training-mode) forward moves the balancing step count
    assert [int(b.ffn.steps) for b in m.neck.blocks] == [1, 1]


def _official_name(key: str) -> str:
    """Our key → the authors' name (written independently of segblocks.models.inter2former.official)."""
    rules = [
        (r"^backbone\.blocks\.(\d+)\.attn\.pad_token$", r"backbone.blocks.\1.attn.padding"),
        (r"^backbone\.stage_proj\.(\d+)\.norm\.", r"backbone.fusion_norms.\1."),
        (r"^backbone\.stage_proj\.(\d+)\.proj\.", r"backbone.fusion_projs.\1."),
        (r"^backbone\.refine\.", "backbone.out_conv."),
        (r"^neck\.dpe\.", "neck."),
        (r"^neck\.blocks\.(\d+)\.attn\.bsqa\.", r"neck.blocks.\1.attn.global_attn."),
        (r"^neck\.blocks\.(\d+)\.ffn\.shared_ffn\.norm\.", r"neck.blocks.\1.moe.shared_ln."),
        (r"^neck\.blocks\.(\d+)\.ffn\.(shared|expert)_gate\.", r"neck.blocks.\1.moe.\2_gate.0."),
        (r"^neck\.blocks\.(\d+)\.ffn\.", r"neck.blocks.\1.moe."),
    ]
    for pattern, repl in rules:
        new = re.sub(pattern, repl, key)
        if new != key:
            return new
    return key


def test_official_checkpoint_layout_loads_strictly():
    torch.manual_seed(0)
    model = inter2former_tiny()
    ours = model.state_dict()
    official = {}
    for key, value in ours.items():
        v = torch.randn_like(value.float()).to(value.dtype) if value.is_floating_point() else value + 3
        if key == "backbone.pos_embed":  # MAE-style token list with the class token
            g, c = value.shape[1], value.shape[-1]
            v = torch.randn(1, 1 + g * g, c)
        if key == "backbone.patch_embed.proj.weight":  # unfold + Linear
            v = v.reshape(v.shape[0], -1)
        official[_official_name(key)] = v
    assert "neck.ref_embeds.weight" in official and "neck.blocks.0.moe.select_ffn_w1" in official
    fresh = inter2former_tiny()
    report = fresh.load_state_dict(dict(official), strict=True)
    assert not report.missing_keys and not report.unexpected_keys
    loaded = fresh.state_dict()
    for key, value in ours.items():
        src = official[_official_name(key)]
        if key == "backbone.pos_embed":
            src = src[:, 1:].reshape(value.shape)
        torch.testing.assert_close(loaded[key], src.reshape(value.shape))


def _ddp_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    from segblocks.blocks.inter2former import HybridMoE

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    torch.manual_seed(0)  # same weights on both ranks
    m = HybridMoE(embed_dim=8, hidden_dim=8, num_experts=4, bias_lr=0.1).train()
    g = torch.Generator().manual_seed(100 + rank)  # different tokens per rank
    for _ in range(3):
        m(torch.randn(20 + 7 * rank, 8, generator=g), torch.arange(10 + 5 * rank))
    torch.save(m.exp_bias, os.path.join(out_dir, f"bias{rank}.pt"))
    dist.destroy_process_group()


def test_hmoe_ddp_bias_allreduce_identical_on_ranks():
    with tempfile.TemporaryDirectory() as tmp:
        ctx = mp.start_processes(_ddp_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=False,
                                 start_method="spawn")
        deadline = time.monotonic() + 120
        try:
            while not ctx.join(timeout=1):
                if time.monotonic() > deadline:
                    pytest.fail("DDP workers did not finish within 120 s")
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
        b0, b1 = (torch.load(os.path.join(tmp, f"bias{r}.pt")) for r in range(2))
        torch.testing.assert_close(b0, b1)
        assert b0.abs().sum() > 0
