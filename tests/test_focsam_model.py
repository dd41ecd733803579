"""FocSAM model: the click protocol (refine once at the configured step), SAM side of the same
weights, two-stage training (which parameters get gradients), HRSAM encoder, official refiner keys."""
import numpy as np
import pytest
import torch

from segblocks.blocks.focsam import FocusRefiner
from segblocks.interactive.clicker import Clicks
from segblocks.interactive.protocol import ClickPrompts, InteractiveModel
from segblocks.models import create_model
from segblocks.models.focsam import FocSAM, FocSamState
from segblocks.models.sam import SamClickModel

from test_focsam_blocks import official_refiner_keys


def batch(B=2, H=64, W=64):
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(B, H, W, dtype=torch.bool)
    mask[:, 16:40, 20:44] = True
    return {
        "image": torch.rand(B, 3, H, W, generator=g) * 255,
        "mask": mask,
        "ignore": torch.zeros(B, H, W, dtype=torch.bool),
        "valid_size": torch.tensor([[H, W]] * B),
    }


def prompts(B, n, H=64, W=64):
    clicks = Clicks.empty(B)
    for i in range(n):
        clicks = clicks.append(torch.tensor([[20 + i, 30 + i]] * B), torch.tensor([i % 2 == 0] * B), torch.ones(B, dtype=torch.bool))
    size = torch.tensor([[H, W]] * B)
    return ClickPrompts(clicks=clicks, frame_size=size, input_size=size)


def counting(model):
    calls = []
    model.refiner.register_forward_hook(lambda *a: calls.append(1))
    return calls


def test_protocol_refines_once_at_the_second_click():
    torch.manual_seed(0)
    m = create_model("focsam_tiny").eval()
    assert isinstance(m, InteractiveModel)
    calls = counting(m)
    b = batch()
    state = m.encode(b["image"], b["valid_size"])
    assert isinstance(state, FocSamState) and state.refined is None
    sam = SamClickModel(sam=m.sam).eval()
    sam_state = sam.encode(b["image"], b["valid_size"])
    with torch.no_grad():
        out0 = m.decode(state, prompts(2, 1), None)
        torch.testing.assert_close(out0, sam.decode(sam_state, prompts(2, 1), None))  # click 1: plain SAM
        assert calls == [] and state.refined is None
        out1 = m.decode(state, prompts(2, 2), out0)
        assert len(calls) == 1 and state.refined is not None
        # click 2: coarse pass on the original embeddings, refine, decode on the refined ones
        pts, lab = prompts(2, 2).points()
        coarse = m.sam.decode(state.sam, pts, lab, previous_logits=out0)
        refined = m.refiner(state.sam.embeddings, coarse.masks, coarse.mask_tokens, (64, 64))
        torch.testing.assert_close(state.refined, refined)
        want = m.sam.decode(state.sam._replace(embeddings=refined), pts, lab, previous_logits=out0).masks
        torch.testing.assert_close(out1, want)
        before = len(calls)  # the manual refiner call above counted too
        m.decode(state, prompts(2, 3), out1)
        assert len(calls) == before  # reused, not re-run
        assert not torch.equal(out1, sam.decode(sam_state, prompts(2, 2), out0))


def test_refine_step_is_configurable_and_none_is_sam():
    m = create_model("focsam_tiny", refine_step=3).eval()
    calls = counting(m)
    b = batch()
    state = m.encode(b["image"], b["valid_size"])
    with torch.no_grad():
        prev = None
        for n in range(1, 4):
            prev = m.decode(state, prompts(2, n), prev)
        assert calls == []
        m.decode(state, prompts(2, 4), prev)
    assert len(calls) == 1
    variants = m.evaluation_variants()
    assert set(variants) == {"sam", "focsam"}
    sam_view = variants["sam"]
    st = sam_view.encode(b["image"], b["valid_size"])
    with torch.no_grad():
        for n in range(1, 6):
            sam_view.decode(st, prompts(2, n), None)
    assert len(calls) == 1 and st.refined is None


def _grads(model):
    return {n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in model.named_parameters()}


def test_stage2_trains_only_the_refiner():
    torch.manual_seed(0)
    m = create_model("focsam_tiny").train()
    out = m.training_loss(batch(), gamma=0.9, max_clicks=4, point_loss_weight=1.0, generator=np.random.default_rng(3))
    assert {"loss", "nfl", "point_loss", "num_clicks", "refine_step"} <= set(out)
    torch.testing.assert_close(out["loss"], out["nfl"] + out["point_loss"])
    out["loss"].backward()
    g = _grads(m)
    assert any(v for n, v in g.items() if n.startswith("refiner."))
    assert not any(v for n, v in g.items() if n.startswith("sam."))
    assert all(not p.requires_grad for p in m.sam.parameters())


def test_stage1_trains_only_the_decoder():
    torch.manual_seed(0)
    m = create_model("focsam_tiny", stage="decoder").train()
    calls = counting(m)
    out = m.training_loss(batch(), gamma=0.9, max_clicks=3, generator=np.random.default_rng(0))
    out["loss"].backward()
    g = _grads(m)
    assert calls == []
    assert any(v for n, v in g.items() if n.startswith("sam.mask_decoder."))
    assert not any(v for n, v in g.items() if n.startswith(("refiner.", "sam.image_encoder.")))


def test_over_the_hrsam_encoder():
    torch.manual_seed(0)
    m = create_model("focsam_hrsam_tiny").eval()
    b = batch(B=1)
    state = m.encode(b["image"], b["valid_size"])
    with torch.no_grad():
        prev = m.decode(state, prompts(1, 1), None)
        out = m.decode(state, prompts(1, 2), prev)
    assert out.shape == prev.shape and state.refined is not None
    assert state.refined.shape == state.sam.embeddings.shape


def test_bad_construction():
    with pytest.raises(ValueError, match="embed_dim"):
        FocSAM(sam=create_model("sam_tiny"), refiner=FocusRefiner(embed_dim=32, depth=1, num_heads=2, window_size=4))
    with pytest.raises(ValueError, match="stage"):
        create_model("focsam_tiny", stage="both")
    with pytest.raises(TypeError, match="refine_step must be an int"):
        create_model("focsam_tiny", refine_step=1.5)


def test_official_refiner_checkpoint_loads_strictly(tmp_path):
    ref = create_model("focsam_vit_h_refiner")
    shapes = {k: v.shape for k, v in ref.state_dict().items()}
    sd = {"refine_head." + k: torch.randn(shapes[k]) for k in official_refiner_keys()}
    sd["decode_head.something"] = torch.zeros(1)  # other parts of the authors' segmentor
    path = tmp_path / "focsam.pth"
    torch.save({"state_dict": sd}, path)
    loaded = create_model("focsam_vit_h_refiner", checkpoint=str(path), checkpoint_prefix="refine_head.")
    torch.testing.assert_close(loaded.blocks[3].cls2img.conv2.dcn.weight, sd["refine_head.blocks.3.cls2img.conv2.dcn.weight"])


def test_a_sam_run_loads_into_focsam(tmp_path):
    """Stage 1 starts from a SAM run (SamClickModel keys model.sam.*): the refiner keys may be absent."""
    sam = SamClickModel(sam=create_model("sam_tiny"))
    path = tmp_path / "sam.ckpt"
    torch.save({"state_dict": {"model." + k: v for k, v in sam.state_dict().items()}}, path)
    m = create_model("focsam_tiny", stage="decoder", checkpoint=str(path), checkpoint_prefix="model.")
    torch.testing.assert_close(m.sam.mask_decoder.iou_token.weight, sam.sam.mask_decoder.iou_token.weight)


def test_frozen_parts_stay_in_eval_mode():
    """train() leaves each stage's frozen parts in eval mode (they compute what they compute at test)."""
    for stage, frozen, trained in (("decoder", ("image_encoder",), ("prompt_encoder", "mask_decoder")),
                                   ("refiner", ("image_encoder", "prompt_encoder", "mask_decoder"), ())):
        m = create_model("focsam_tiny", stage=stage).train()
        assert m.training and all(not mod.training for part in frozen for mod in getattr(m.sam, part).modules())
        assert all(getattr(m.sam, part).training for part in trained)
        assert m.refiner.training
        m.eval()
        assert not any(mod.training for mod in m.modules())
