"""Inter2Former's per-click decoder exported: the blocks' static-shape paths equal their sparse paths,
and the torch.export program and the ONNX file (onnxruntime) equal the eager sparse decode."""
from __future__ import annotations

import pytest
import torch

from _onnx import needs_onnx  # tests/_onnx.py
from segblocks.blocks.inter2former import (
    BSQAttention,
    DynamicHybridAttention,
    DynamicLocalUpsampling,
    DynamicPromptEmbedding,
    EdgeTokenSelection,
    HybridMoE,
    box_mask,
)
from segblocks.blocks.inter2former.dlu import clamp_to_box, logit_boxes
from segblocks.blocks.inter2former.dpe import prompt_boxes
from segblocks.export import ONNX_TOLERANCE, decoder_for_export, example_inputs, export_program, main, run_onnx
from segblocks.interactive.clicker import Clicks
from segblocks.interactive.protocol import ClickPrompts
from segblocks.interactive.ref_label import points_to_ref_label, update_ref_label, update_ref_label_by_prediction
from segblocks.models import create_model
from segblocks.models.inter2former.export import Inter2FormerOnnxDecoder

F64 = torch.float64


# ----------------------------------------------------------------------------- helpers


def test_box_mask_and_clamp_to_box_match_loops():
    boxes = torch.tensor([[1, 2, 4, 7], [0, 0, 5, 8], [3, 6, 4, 7]])
    x = torch.randn(3, 2, 5, 8, dtype=F64)
    mask, clamped = box_mask(boxes, 5, 8), clamp_to_box(x, boxes)
    for b, (y0, x0, y1, x1) in enumerate(boxes.tolist()):
        for i in range(5):
            for j in range(8):
                assert bool(mask[b, 0, i, j]) == (y0 <= i < y1 and x0 <= j < x1)
                ci, cj = min(max(i, y0), y1 - 1), min(max(j, x0), x1 - 1)
                assert torch.equal(clamped[b, :, i, j], x[b, :, ci, cj])


# ----------------------------------------------------------------------------- blocks: static == sparse


def test_dpe_static_equals_sparse_with_different_boxes():
    torch.manual_seed(0)
    dpe = DynamicPromptEmbedding(embed_dim=16, dims=(4, 8, 16, 16)).double()
    ref = torch.full((4, 64, 96), 1, dtype=torch.uint8)
    ref[0, 10:20, 30:50] = 3
    ref[0, 14:17, 40:43] = 4
    ref[1, :40, 70:] = 2  # box touching the top-right border
    ref[3, 50:52, 2:4] = 0  # a one-token object in a corner
    # sample 2: all possible background -> whole-image box
    boxes = prompt_boxes(ref, 16)
    assert boxes[2].tolist() == [0, 0, 64, 96] and len({tuple(b) for b in boxes.tolist()}) == 4
    sparse, b1 = dpe(ref)
    static, b2 = dpe.forward_static(ref[:, None])  # (B, 1, H, W) accepted too
    assert torch.equal(b1, b2)
    torch.testing.assert_close(static, sparse, rtol=1e-12, atol=1e-12)
    dpe.local = False
    torch.testing.assert_close(dpe.forward_static(ref)[0], dpe(ref)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("exact", [True, False])
def test_bsqa_dense_equals_packed(exact):
    torch.manual_seed(0)
    m = BSQAttention(head_dim=8, code_size=4).double()
    B, Lq, Lk, H = 3, 5, 7, 2
    q, k, v = torch.randn(B, Lq, H, 8, dtype=F64), torch.randn(B, Lk, H, 8, dtype=F64), torch.randn(B, Lk, H, 8, dtype=F64)
    out, loss = m.forward_dense(q, k, v, exact=exact)
    ref, ref_loss = m(q.reshape(B * Lq, H, 8), k.reshape(B * Lk, H, 8), v.reshape(B * Lk, H, 8), (Lq,) * B, (Lk,) * B, exact=exact)
    torch.testing.assert_close(out.reshape(B * Lq, H, 8), ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(loss, ref_loss)


@pytest.mark.parametrize("which", ["mixed", "empty", "all"])
@pytest.mark.parametrize("train", [False, True])
def test_dha_static_equals_sparse(which, train):
    torch.manual_seed(0)
    B, h, w, C = 3, 3, 4, 32
    m = DynamicHybridAttention(embed_dim=C, num_heads=2, downscale=2, code_size=4).double().train(train)
    x = torch.randn(B, h * w, C, dtype=F64)
    mask = {"mixed": torch.rand(B, h * w) > 0.5, "empty": torch.zeros(B, h * w, dtype=torch.bool),
            "all": torch.ones(B, h * w, dtype=torch.bool)}[which]
    if which == "mixed":
        mask[1] = False  # a sample without edge tokens next to ones with some
    out, loss = m.forward_static(x, (h, w), mask)
    ref, ref_loss = m(x, (h, w), EdgeTokenSelection.from_mask(mask))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(loss, ref_loss)


def test_hmoe_static_equals_sparse_and_is_inference_only():
    torch.manual_seed(0)
    m = HybridMoE(embed_dim=16, hidden_dim=32, num_experts=4).double().eval()
    with torch.no_grad():
        m.exp_bias.copy_(torch.tensor([0.3, -0.2, 0.0, 0.1], dtype=F64))
    x = torch.randn(40, 16, dtype=F64)
    for mask in (torch.rand(40) > 0.4, torch.zeros(40, dtype=torch.bool), torch.ones(40, dtype=torch.bool)):
        torch.testing.assert_close(m.forward_static(x, mask), m(x, mask.nonzero()[:, 0]), rtol=1e-10, atol=1e-10)
    assert len(torch.unique(m.route(x)[0])) > 1  # several experts really used
    with pytest.raises(RuntimeError, match="inference"):
        m.train().forward_static(x, torch.ones(40, dtype=torch.bool))


@pytest.mark.parametrize("crop_norm", [True, False])
def test_dlu_static_equals_sparse_with_different_boxes(crop_norm):
    torch.manual_seed(0)
    dlu = DynamicLocalUpsampling(embed_dim=64, crop_norm=crop_norm).double().eval()
    B, h, w = 4, 5, 7
    x = torch.randn(B, 64, h, w, dtype=F64)
    edges = [torch.randn(B, c, h * 2 ** (j + 1), w * 2 ** (j + 1), dtype=F64) for j, c in enumerate((64, 16, 4, 1))]
    boxes = [(1, 2, 4, 6), (0, 0, h, w), (0, 4, 2, 7), (4, 0, 5, 1)]  # inner, whole, border, one token

    def fake_mlp(t):  # coarse logits > -2 exactly in the boxes
        out = torch.full((B, 1, h, w), -10.0, dtype=F64)
        for b, (y0, x0, y1, x1) in enumerate(boxes):
            out[b, 0, y0:y1, x0:x1] = 0.0
        return out

    dlu.mlp.forward = fake_mlp
    assert logit_boxes(fake_mlp(x), -2.0).tolist() == [list(b) for b in boxes]
    sparse, c1 = dlu(x, edges)
    static, c2 = dlu.forward_static(x, edges)
    assert torch.equal(c1, c2)
    torch.testing.assert_close(static, sparse, rtol=1e-10, atol=1e-10)
    dlu.train()
    torch.testing.assert_close(dlu.forward_static(x, edges)[0], dlu(x, edges)[0], rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- the model's decoder

SIZE = 256


def _ref_labels() -> torch.Tensor:
    """M_ref before the click: small object, large object, all background, first click (all UNKNOWN)."""
    ref = torch.full((4, SIZE, SIZE), 1, dtype=torch.uint8)
    ref[0, 40:60, 180:204] = 3  # small object near the right border
    ref[1, 20:230, 30:210] = 3  # large object with an undecided part
    ref[1, 100:140, 60:90] = 2
    ref[3] = 2
    return ref


def _new_clicks() -> Clicks:
    return Clicks.from_lists([[(50, 190, 1)], [(200, 100, 0), (60, 150, 1)], [], [(128, 128, 1)]])


@pytest.fixture(scope="module")
def model_and_state():
    torch.manual_seed(0)
    m = create_model("inter2former_tiny").eval()
    images = torch.rand(4, 3, SIZE, SIZE) * 255
    with torch.no_grad():
        state = m.encode(images, torch.tensor([[SIZE, SIZE]] * 4))
        # An untrained model's coarse logits have no spatial structure, so DLU's box would be the
        # whole grid. Give the tokens of each object a component along ``v`` and let the coarse
        # MLP read it (silu(...silu(v·x)) - 7): the box (> -2) is then the object's, per sample.
        v = torch.randn(64)
        v /= v.norm()
        bump = torch.zeros(4, 1, 16, 16)
        bump[0, :, 2:4, 11:13] = 1  # small object
        bump[1, :, 2:14, 2:13] = 1  # large object
        bump[3, :, 7:9, 7:9] = 1  # first click; sample 2 (background): no box -> whole grid
        state.features = state.features + 10.0 * v.view(1, -1, 1, 1) * bump
        layers = m.decode_head.mlp.layers  # 1x1 convs with SiLU between
        for layer in layers:
            layer.weight.zero_()
            layer.bias.zero_()
            layer.weight[0, 0] = 1.0  # pass channel 0 on
        layers[0].weight[0, :, 0, 0] = v
        layers[-1].bias.fill_(-7.0)
    return m, state


def _eager_decode(m, state, ref_before):
    """Inter2Former.decode (the sparse eager path) of the new clicks on ``ref_before``."""
    state.ref_label = ref_before.clone()
    state.applied = torch.zeros(4, dtype=torch.long)
    clicks = _new_clicks()
    size = torch.tensor([[SIZE, SIZE]] * 4)
    with torch.no_grad():
        logits = m.decode(state, ClickPrompts(clicks=clicks, frame_size=size, input_size=size), torch.zeros(4, 1, SIZE, SIZE))
    return logits, state.ref_label


def test_cases_are_exercised(model_and_state):
    m, state = model_and_state
    ref = update_ref_label(_ref_labels(), points_to_ref_label(_new_clicks(), SIZE, SIZE))
    dpe_boxes = prompt_boxes(ref, 16).tolist()
    assert dpe_boxes[2] == [0, 0, SIZE, SIZE] and dpe_boxes[0] != dpe_boxes[1]
    from segblocks.blocks.inter2former import edge_token_mask

    counts = edge_token_mask(ref, (16, 16)).sum(1).tolist()
    assert counts[2] == 0 and counts[3] == 256 and 0 < counts[0] < counts[1] < 256  # empty / all / small / large
    with torch.no_grad():
        _, coarse, _ = m.forward_tokens(state.features, state.edges, ref)
    dlu_boxes = logit_boxes(coarse, m.decode_head.threshold).tolist()
    assert len({tuple(b) for b in dlu_boxes}) > 1 and any(b != [0, 0, 16, 16] for b in dlu_boxes)


def test_static_forward_equals_sparse_decode(model_and_state):
    m, state = model_and_state
    logits, _ = _eager_decode(m, state, _ref_labels())
    ref = update_ref_label(_ref_labels(), points_to_ref_label(_new_clicks(), SIZE, SIZE))
    decoder = decoder_for_export(m)
    assert isinstance(decoder, Inter2FormerOnnxDecoder) and decoder.image_size == (SIZE, SIZE)
    with torch.no_grad():
        got, coarse = decoder(state.features, ref, *state.edges)
    torch.testing.assert_close(got, logits, atol=1e-4, rtol=1e-4)
    assert (got == -100).any() and (got > 0).any()  # DLU background outside the box, some foreground


def test_torch_export_program_dynamic_batch(model_and_state):
    m, state = model_and_state
    decoder = decoder_for_export(m)
    program = export_program(decoder)
    ref = update_ref_label(_ref_labels(), points_to_ref_label(_new_clicks(), SIZE, SIZE))
    for idx in ([2], [0, 1, 2, 3]):
        inputs = (state.features[idx], ref[idx], *(e[idx] for e in state.edges))
        with torch.no_grad():
            got, want = program.module()(*inputs), m.forward_tokens(inputs[0], list(inputs[2:]), inputs[1])
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


@needs_onnx
def test_cli_onnx_equals_eager_decode_in_onnxruntime(model_and_state, tmp_path, capsys):
    """`segblocks export --model inter2former_tiny` writes a file; onnxruntime == eager decode (and M_ref feedback)."""
    m, state = model_and_state
    ckpt = tmp_path / "i2f.pth"
    torch.save(m.state_dict(), ckpt)
    out = tmp_path / "i2f_decoder.onnx"
    assert main(["--model", "inter2former_tiny", "--checkpoint", str(ckpt), "--out", str(out), "--image-size", str(SIZE)]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "ONNX decoder written" in printed and "onnxruntime == PyTorch" in printed
    atol, rtol = ONNX_TOLERANCE
    logits, ref_after = _eager_decode(m, state, _ref_labels())
    ref = update_ref_label(_ref_labels(), points_to_ref_label(_new_clicks(), SIZE, SIZE))
    for idx in ([1], [0, 1, 2, 3], [3, 0]):  # batch 1, 4, and 2 with different boxes
        got, coarse = run_onnx(out, (state.features[idx], ref[idx], *(e[idx] for e in state.edges)))
        got = torch.from_numpy(got)
        torch.testing.assert_close(got, logits[idx], atol=atol, rtol=rtol)
        assert coarse.shape == (len(idx), 1, 16, 16)
        assert torch.equal(update_ref_label_by_prediction(ref[idx], got[:, 0] > 0), ref_after[idx])
    # the random check inputs of the CLI cover the four M_ref cases at batch 4
    assert example_inputs(decoder_for_export(m), batch=4)[1].shape == (4, SIZE, SIZE)
