"""segblocks.export: the per-click SAM decoder through torch.export and ONNX (onnxruntime) equals PyTorch."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from _onnx import needs_onnx  # tests/_onnx.py
from segblocks.export import (
    DECODER_INPUTS,
    ONNX_TOLERANCE,
    SamOnnxDecoder,
    decoder_for_export,
    example_inputs,
    export_program,
    main,
    run_onnx,
)
from segblocks.models import create_model
from segblocks.models.sam.sam import SamState



@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)
    return create_model("sam_tiny").eval()


def _reference(sam, inputs):
    """SamModel.decode sample by sample: previous logits only where has_mask_input is 1."""
    emb, coords, labels, mask, has = inputs
    masks, ious = [], []
    for b in range(emb.shape[0]):
        state = SamState(embeddings=emb[b : b + 1], input_size=(256, 256))
        previous = mask[b : b + 1] if has[b] > 0 else None
        out = sam.decode(state, coords[b : b + 1], labels[b : b + 1], previous_logits=previous)
        masks.append(out.masks)
        ious.append(out.iou_pred)
    return torch.cat(masks), torch.cat(ious)


def test_export_decoder_equals_sam_decode(sam):
    decoder = decoder_for_export(sam)
    inputs = example_inputs(decoder, batch=3, clicks=4)
    assert inputs[4].tolist() == [0.0, 1.0, 1.0]  # both dense-prompt branches
    with torch.no_grad():
        got, want = decoder(*inputs), _reference(sam, inputs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_decoder_for_export_accepts_sam_forms():
    click = create_model("focsam_tiny")
    dec = decoder_for_export(click)
    assert dec.mask_decoder is click.sam.mask_decoder and dec.prompt_encoder is click.sam.prompt_encoder
    assert decoder_for_export("sam_tiny_decoder").embedding_shape == (64, 16, 16)
    with pytest.raises(TypeError, match="SAM-style"):
        decoder_for_export(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="registry name"):
        decoder_for_export(click, checkpoint="x.pth")


def test_torch_export_program_dynamic_batch_and_clicks(sam):
    decoder = decoder_for_export(sam, multimask_output=True)
    program = export_program(decoder)
    for batch, clicks in [(1, 1), (4, 9)]:
        inputs = example_inputs(decoder, batch=batch, clicks=clicks, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            got, want = program.module()(*inputs), decoder(*inputs)
        assert got[0].shape == (batch, 3, 64, 64)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


@needs_onnx
def test_cli_onnx_matches_pytorch_in_onnxruntime(sam, tmp_path, capsys):
    """`segblocks export` with a checkpoint writes an ONNX file whose onnxruntime outputs equal PyTorch's."""
    ckpt = tmp_path / "sam.pth"
    torch.save(sam.state_dict(), ckpt)
    out = tmp_path / "decoder.onnx"
    assert main(["--model", "sam_tiny", "--checkpoint", str(ckpt), "--out", str(out), "--no-check"]) == 0
    assert out.is_file() and "ONNX decoder written" in capsys.readouterr().out
    decoder = decoder_for_export(sam)  # the same weights, loaded independently of the CLI
    atol, rtol = ONNX_TOLERANCE
    for i, (batch, clicks) in enumerate([(1, 1), (2, 5), (3, 12)]):
        inputs = example_inputs(decoder, batch=batch, clicks=clicks, generator=torch.Generator().manual_seed(7 + i))
        with torch.no_grad():
            want = _reference(sam, inputs)
        got = run_onnx(out, dict(zip(DECODER_INPUTS, inputs)))
        for g, w in zip(got, want):
            torch.testing.assert_close(torch.from_numpy(g), w, atol=atol, rtol=rtol)


def test_export_subcommand_registered():
    from segblocks.lightning.cli import SUBCOMMANDS

    assert SUBCOMMANDS["export"].target == "segblocks.export:main"


def test_decoder_type_checks():
    with pytest.raises(TypeError, match="PromptEncoder"):
        SamOnnxDecoder(prompt_encoder=nn.Identity(), mask_decoder=nn.Identity())
    with pytest.raises(ValueError, match="batch and clicks"):
        example_inputs(decoder_for_export("sam_tiny_decoder"), batch=0)
