"""FocSAM's refine step (focus refiner, data-dependent dynamic windows) through torch.export and ONNX.

References: eager ``FocSAM.refine`` / ``FocusRefiner`` run sample by sample (batch of 1), and a
naive loop counting the windows each focus box selects, so the cases are known to give different
numbers of dynamic windows (the data-dependent size of the graph).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from _onnx import needs_onnx  # tests/_onnx.py
from segblocks.blocks.focsam import RefineBlock
from segblocks.models import create_model
from segblocks.models.focsam.export import (
    REFINER_INPUTS,
    REFINER_ONLY_INPUTS,
    REFINER_OUTPUTS,
    REFINER_TOLERANCE,
    FocusRefinerOnnx,
    refiner_example_inputs,
    refiner_for_export,
)
from segblocks.models.sam.sam import SamState


# focsam_tiny: 256 px input, 16 x 16 embeddings (stride 16), refiner windows of 4 x 4 cells (64 px).
TINY = [24, 20, 40, 36]  # inside one embedding cell's neighbourhood: one plain window
FULL = [0, 0, 256, 256]
MEDIUM = [70, 10, 200, 120]
EMPTY = [0, 0, 0, 0]  # no positive logit: the refiner focuses on the whole map


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("focsam_tiny").eval()


def _naive_window_count(box, ratio=1.4, size=256, cell=16, window=4):
    """Plain-Dwin windows met by the expanded box (loops; the box of box_logits' +/- map is ``box``)."""
    left, top, right, bottom = box
    if right <= left or bottom <= top:
        left, top, right, bottom = 0, 0, size, size
    xc, yc = (left + right) / 2, (top + bottom) / 2
    left, right = max(0, round(xc - ratio * (xc - left))), min(size, round(xc - ratio * (xc - right)))
    top, bottom = max(0, round(yc - ratio * (yc - top))), min(size, round(yc - ratio * (yc - bottom)))
    windows = set()
    for y in range(top, bottom):
        for x in range(left, right):
            windows.add((y // cell // window, x // cell // window))
    return len(windows)


def _eager_refine(model, inputs, with_decoder):
    """Eager FocSAM.refine / FocusRefiner, one sample at a time."""
    outs = []
    with torch.no_grad():
        for b in range(inputs[0].shape[0]):
            one = [t[b : b + 1] for t in inputs]
            if with_decoder:
                emb, coords, labels, previous = one
                outs.append(model.refine(SamState(embeddings=emb, input_size=(256, 256)), coords, labels, previous))
            else:
                emb, logits, token = one
                outs.append(model.refiner(emb, logits, token, (256, 256)))
    return torch.cat(outs)  # B x C x h x w


def _cases(module, batches=((TINY, FULL, MEDIUM), (TINY,), (FULL,), (EMPTY, MEDIUM))):
    return [
        refiner_example_inputs(module, batch=len(boxes), clicks=2 + i, boxes=boxes, generator=torch.Generator().manual_seed(i))
        for i, boxes in enumerate(batches)
    ]


def test_cases_select_different_numbers_of_windows():
    counts = [_naive_window_count(b) for b in (TINY, FULL, MEDIUM, EMPTY)]
    assert counts[0] == 1 and counts[1] == counts[3] == 16 and 1 < counts[2] < 16


def test_default_example_boxes_differ_per_sample(model):
    module = refiner_for_export(model, with_decoder=False)
    emb, logits, token = refiner_example_inputs(module, batch=4)
    assert emb.shape == (4, 64, 16, 16) and logits.shape == (4, 1, 64, 64) and token.shape == (4, 1, 64)
    positive = (logits[:, 0] > 0).flatten(1).sum(1)  # B
    assert positive[1] == 64 * 64 and positive[0] == 16  # whole image; one 16 px cell = 4 x 4 logits
    assert len(set(positive.tolist())) >= 3


@pytest.mark.parametrize("with_decoder", [True, False])
def test_wrapper_equals_eager_refine(model, with_decoder):
    module = refiner_for_export(model, with_decoder=with_decoder)
    assert module.input_names == (REFINER_INPUTS if with_decoder else REFINER_ONLY_INPUTS)
    assert module.output_names == REFINER_OUTPUTS and module.embedding_shape == (64, 16, 16)
    assert module.refiner is model.refiner and module.sam.mask_decoder is model.sam.mask_decoder
    inputs = _cases(module)[0]
    with torch.no_grad():
        (got,) = module(*inputs)
    torch.testing.assert_close(got, _eager_refine(model, inputs, with_decoder), atol=1e-5, rtol=1e-5)


def test_torch_export_program_equals_eager(model):
    """The refiner (the data-dependent part) with torch.export; the whole refine step's program is
    checked in the ONNX test below (the exporter's own torch.export program)."""
    with_decoder = False
    module = refiner_for_export(model, with_decoder=with_decoder)
    program = torch.export.export(module, _cases(module)[0], dynamic_shapes=module.dynamic_shapes())
    targets = {str(n.target) for n in program.graph.nodes}
    assert "aten.nonzero.default" in targets  # the dynamic-window selection is in the graph, not baked in
    for inputs in _cases(module):
        with torch.no_grad():
            (got,) = program.module()(*inputs)
        torch.testing.assert_close(got, _eager_refine(model, inputs, with_decoder), atol=1e-5, rtol=1e-5)


def test_refine_block_export_path_equals_normal_path():
    """The block's export path (torch._check on the number of windows) against its eager path."""
    torch.manual_seed(1)
    block = RefineBlock(embed_dim=16, num_heads=2, mlp_ratio=2.0, window_size=4, shift=2, masked_shift=True).eval()
    x, q = torch.randn(2, 16, 10, 12), torch.randn(2, 1, 16)
    box = torch.zeros(2, 1, 10, 12)
    box[0, :, 1:3, 2:4] = 1
    box[1] = 1
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(block, (x, q, box), dynamic_shapes=({0: batch}, {0: batch}, {0: batch}))
    for b, seed in [(1, 0), (3, 1)]:
        g = torch.Generator().manual_seed(seed)
        x, q = torch.randn(b, 16, 10, 12, generator=g), torch.randn(b, 1, 16, generator=g)
        box = (torch.rand(b, 1, 10, 12, generator=g) > 0.95).float()
        box[0, :, 0, 0] = 1  # at least one window
        with torch.no_grad():
            got, want = program.module()(x, q, box), block(x, q, box)
        for g_, w_ in zip(got, want):
            torch.testing.assert_close(g_, w_, atol=1e-5, rtol=1e-5)
    empty = torch.zeros_like(box)
    with torch.no_grad():
        x_out, _ = block(x, q, empty)
    torch.testing.assert_close(x_out, x)  # eagerly, no window: unchanged
    with pytest.raises(RuntimeError, match=">= 1"):
        program.module()(x, q, empty)  # exported: the runtime check of torch._check(M >= 1)


def _onnx_export(module, path):
    """Write ``module`` to ``path`` with the dynamo exporter; returns its torch.export program."""
    program = torch.onnx.export(
        module, _cases(module)[0], dynamo=True, dynamic_shapes=module.dynamic_shapes(),
        input_names=list(module.input_names), output_names=list(module.output_names), verbose=False,
    )
    program.save(str(path))
    return program.exported_program


def _onnx_outputs(path, module):
    """onnxruntime's output of the ONNX file at ``path`` on every case, with the session's input names."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    outs = [torch.from_numpy(session.run(list(REFINER_OUTPUTS), {n: t.numpy() for n, t in zip(module.input_names, inputs)})[0])
            for inputs in _cases(module)]
    return [i.name for i in session.get_inputs()], outs


@pytest.mark.slow
@needs_onnx
def test_onnx_refiner_matches_eager_in_onnxruntime(model, tmp_path):
    """Refiner alone: batches with different boxes, a one-window box, the whole image, an empty mask."""
    module = refiner_for_export(model, with_decoder=False)
    program = _onnx_export(module, tmp_path / "refiner.onnx")
    names, outs = _onnx_outputs(tmp_path / "refiner.onnx", module)
    assert names == list(module.input_names)
    atol, rtol = REFINER_TOLERANCE
    for inputs, got in zip(_cases(module), outs):
        want = _eager_refine(model, inputs, False)
        with torch.no_grad():  # the torch.export program the ONNX file was made from
            torch.testing.assert_close(program.module()(*inputs)[0], want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol)


@pytest.mark.slow
@needs_onnx
def test_onnx_refine_step_matches_focsam_refine_in_onnxruntime(model, tmp_path):
    """The deployable graph: SAM decoder + refiner, equal to FocSAM.refine sample by sample.

    (With random weights SAM's coarse masks are ~60 % positive everywhere, so here every box is the
    whole map; the boxes of other sizes are covered by the refiner-only graph above.) Exported by
    the command line (``segblocks export --part refiner``) from the model's checkpoint."""
    from segblocks.export import main

    ckpt, out = tmp_path / "focsam.pth", tmp_path / "refine_step.onnx"
    torch.save(model.state_dict(), ckpt)
    assert main(["--model", "focsam_tiny", "--part", "refiner", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    module = refiner_for_export(model)
    names, outs = _onnx_outputs(out, module)
    assert names == list(module.input_names)
    atol, rtol = REFINER_TOLERANCE
    for inputs, got in zip(_cases(module), outs):
        torch.testing.assert_close(got, _eager_refine(model, inputs, True), atol=atol, rtol=rtol)


def test_refiner_for_export_errors(model):
    assert isinstance(refiner_for_export("focsam_tiny"), FocusRefinerOnnx)
    with pytest.raises(TypeError, match="FocSAM"):
        refiner_for_export(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="FocSAM"):
        refiner_for_export("sam_tiny")
    with pytest.raises(TypeError, match="registry name"):
        refiner_for_export(model, checkpoint="x.pth")
    shrunk = create_model("focsam_tiny")
    shrunk.refiner.expand_ratio = (0.8, 1.0)
    with pytest.raises(ValueError, match="expand_ratio must be >= 1"):
        refiner_for_export(shrunk)
    module = refiner_for_export(model)
    with pytest.raises(TypeError, match="4 inputs"):
        module(torch.zeros(1, 64, 16, 16), torch.zeros(1, 1, 64, 64), torch.zeros(1, 1, 64))
    with pytest.raises(ValueError, match="batch and clicks"):
        refiner_example_inputs(module, batch=0)
    with pytest.raises(ValueError, match="boxes must be"):
        refiner_example_inputs(module, batch=2, boxes=[FULL])
