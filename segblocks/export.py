"""Export the per-click decoders with ``torch.export`` and to ONNX, and check them in onnxruntime.

An interactive model encodes each image once and then runs only its decoder per click (SAM §3
"Efficiency"; :mod:`segblocks.interactive.protocol`). That decoder is what a deployment runs in a
browser or a service after a server-side encoder, so this module exports it alone:

* :class:`SamOnnxDecoder`: SAM's prompt encoder + mask decoder as one graph of plain tensors,
  laid out as the ONNX model of the SAM authors (facebookresearch/segment-anything,
  ``segment_anything/utils/onnx.py``, ``SamOnnxModel``): inputs ``image_embeddings``
  ``(B, C, h, w)``, ``point_coords`` ``(B, N, 2)`` ``(x, y)`` at pixel centres of the padded input
  (as :meth:`segblocks.interactive.ClickPrompts.points` gives them), ``point_labels`` ``(B, N)``
  int64 (1 / 0 / -1 padding), ``mask_input`` ``(B, 1, 4h, 4w)`` previous low-resolution logits and
  ``has_mask_input`` ``(B,)`` (1: use ``mask_input``; 0: SAM's ``no_mask_embed``, the first click).
  Outputs ``masks`` ``(B, M, 4h, 4w)`` logits and ``iou_predictions`` ``(B, M)``. ``B`` and ``N``
  are dynamic; ``h, w`` are fixed by the model's input size.
* Which models: any SAM-style model (:func:`decoder_for_export` takes a
  :class:`~segblocks.models.sam.SamModel`, :class:`~segblocks.models.sam.SamDecoder`,
  :class:`~segblocks.models.sam.SamClickModel`, or a registry name such as ``sam_tiny``,
  ``sam_hrsam_tiny``), and FocSAM, whose per-click decode is SAM's decoder on the (once-refined)
  embeddings (FocSAM §3.1), so its decoder exports the same way.
* :class:`~segblocks.models.focsam.export.FocusRefinerOnnx` (``--part refiner``): FocSAM's refine
  step, run once per object (FocSAM §3.2-3.3: SAM's decoder on the refine click, then the focus
  refiner over the dynamic windows of the predicted box); the number of windows is a
  data-dependent size that ``torch.export`` keeps as an unbacked symbol (``NonZero`` / ``GatherND``
  / ``ScatterND`` in ONNX): :mod:`segblocks.models.focsam.export` says how.
* :class:`~segblocks.models.inter2former.export.Inter2FormerOnnxDecoder`: Inter2Former's per-click
  decoder (DPE → 2 × (DHA + HMoE) → DLU, Inter2Former §3.2-3.7) for ``inter2former_tiny`` /
  ``inter2former_vit_b`` or an :class:`~segblocks.models.inter2former.Inter2Former`. Its
  edge-token selection (Eq. 4-5) and its DPE / DLU boxes have data-dependent sizes, so the graph
  is the blocks' static-shape path (masks instead of gathers and crops; equal outputs, full-map
  cost; :mod:`segblocks.models.inter2former.export` says why and how): inputs ``features``
  ``(B, d, H/16, W/16)``, ``ref_label`` ``(B, H, W)`` uint8 ``M_ref`` with the new clicks merged,
  ``edges_0..3`` (CannyNet features); outputs ``logits`` ``(B, 1, H, W)`` and ``coarse_logits``.
  ``B`` is dynamic; ``H, W`` are fixed at export (``image_size``, default 4 × the encoder's
  anchor scale: 1024² for ViT-B, 256² for the tiny preset). The ``M_ref`` updates around the
  graph stay with the caller (:mod:`segblocks.interactive.ref_label`).

Every graph module (these two and FocSAM's :class:`~segblocks.models.focsam.export.FocusRefinerOnnx`)
carries what :func:`export_program`, :func:`export_onnx`, :func:`check_onnx` and :func:`main` need:
``input_names`` / ``output_names``, ``dynamic_shapes()``, ``example_inputs(batch=..., generator=...,
...)``, the keyword sizes of the traced example (``export_case``) and of :func:`check_onnx`'s
random inputs (``check_cases``), and a ``summary`` of its fixed sizes.

Equality: onnxruntime's outputs match PyTorch's within ``atol = rtol = 1e-4`` in float32
(:data:`ONNX_TOLERANCE`; about 1e-7 is observed for ``sam_tiny``, about 2e-6 on the logits of
``inter2former_tiny`` against its eager sparse decoder; the static-shape path of
``inter2former_vit_b`` at 1024² is within it too, 2e-4 absolute on logits up to 8), checked by :func:`check_onnx` on several
batch sizes and click counts (Inter2Former: batch sizes 1, 2, 4, covering a small object, a large
object, an all-background ``M_ref`` with no edge token, and a first click). The ONNX file comes from the dynamo exporter
(``torch.onnx.export(..., dynamo=True)``, which needs ``onnxscript``); onnx / onnxruntime /
onnxscript are the ``export`` extra: ``pip install 'segblocks[export]'``.

Command line (also ``segblocks export ...``)::

    python -m segblocks.export --model sam_tiny --out decoder.onnx
    python -m segblocks.export --model sam_vit_b --checkpoint sam_vit_b_01ec64.pth --out sam_b_decoder.onnx
    python -m segblocks.export --model inter2former_tiny --out inter2former_decoder.onnx
    python -m segblocks.export --model focsam_tiny --part refiner --out focsam_refine_step.onnx
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

__all__ = [
    "DECODER_INPUTS",
    "DECODER_OUTPUTS",
    "ONNX_TOLERANCE",
    "SamOnnxDecoder",
    "check_onnx",
    "decoder_for_export",
    "example_inputs",
    "export_onnx",
    "export_program",
    "main",
    "run_onnx",
]

#: Input names of the exported decoder, in order.
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input")
#: Output names of the exported decoder, in order.
DECODER_OUTPUTS = ("masks", "iou_predictions")
#: ``(atol, rtol)`` within which onnxruntime's outputs must equal PyTorch's (float32).
ONNX_TOLERANCE = (1e-4, 1e-4)


class SamOnnxDecoder(nn.Module):
    """SAM's per-click decoder with tensor-only inputs (module docstring; SAM authors' ``SamOnnxModel``).

    Equal to :meth:`segblocks.models.sam.SamModel.decode` with ``previous_logits=mask_input`` where
    ``has_mask_input`` is 1 and ``previous_logits=None`` where it is 0: the dense prompt is
    ``has · mask_downscaling(mask_input) + (1 − has) · no_mask_embed``.

    Args:
        prompt_encoder: :class:`~segblocks.models.sam.PromptEncoder` of width ``C``.
        mask_decoder: :class:`~segblocks.models.sam.MaskDecoder` of width ``C``.
        multimask_output: export SAM's 3 ambiguity masks instead of the single mask.
    """

    input_names = DECODER_INPUTS
    output_names = DECODER_OUTPUTS
    #: :func:`check_onnx`'s random inputs: batch sizes and click counts.
    check_cases = ({"batch": 1, "clicks": 1}, {"batch": 2, "clicks": 3}, {"batch": 3, "clicks": 7})
    #: sizes of the example the graph is traced with (not 1: a size-1 example specialises its dimension).
    export_case = {"batch": 2, "clicks": 3}

    def __init__(self, *, prompt_encoder: nn.Module, mask_decoder: nn.Module, multimask_output: bool = False) -> None:
        super().__init__()
        from segblocks.models.sam import MaskDecoder, PromptEncoder

        if not isinstance(prompt_encoder, PromptEncoder) or not isinstance(mask_decoder, MaskDecoder):
            raise TypeError(
                "SamOnnxDecoder: prompt_encoder must be a PromptEncoder and mask_decoder a MaskDecoder; got "
                f"{type(prompt_encoder).__name__}, {type(mask_decoder).__name__}"
            )
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.multimask_output = bool(multimask_output)

    @property
    def embedding_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of the image embeddings the graph takes."""
        return (self.prompt_encoder.embed_dim, *self.prompt_encoder.image_embedding_size)

    @property
    def summary(self) -> str:
        c, h, w = self.embedding_shape
        return f"embeddings {c}x{h}x{w}"

    def example_inputs(
        self, *, batch: int = 1, clicks: int = 2, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Random inputs (float32), in :data:`DECODER_INPUTS` order.

        Labels are 1 for the first click, then random in {1, 0, -1}; ``has_mask_input`` is 0 for
        the first sample and 1 for the others, so both dense-prompt branches are exercised.
        """
        if batch < 1 or clicks < 1:
            raise ValueError(f"example_inputs: batch and clicks must be >= 1; got {batch}, {clicks}")
        c, h, w = self.embedding_shape
        stride = self.prompt_encoder.stride
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        emb = torch.randn(batch, c, h, w, generator=g)
        coords = torch.rand(batch, clicks, 2, generator=g) * torch.tensor([w * stride, h * stride])  # B x N x 2, (x, y)
        labels = torch.randint(-1, 2, (batch, clicks), generator=g)
        labels[:, 0] = 1
        mask = torch.randn(batch, 1, 4 * h, 4 * w, generator=g)
        has = torch.ones(batch)
        has[0] = 0.0
        return emb, coords, labels, mask, has

    def dynamic_shapes(self, max_batch: int = 1024, max_clicks: int = 1024) -> tuple[dict[int, Any], ...]:
        """``torch.export`` spec: dynamic batch and click count."""
        batch = torch.export.Dim("batch", min=1, max=max_batch)
        clicks = torch.export.Dim("clicks", min=1, max=max_clicks)
        return ({0: batch}, {0: batch, 1: clicks}, {0: batch, 1: clicks}, {0: batch}, {0: batch})

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, h, w)``, ``(B, N, 2)``, ``(B, N)``, ``(B, 1, 4h, 4w)``, ``(B,)`` → masks ``(B, M, 4h, 4w)``, IoU ``(B, M)``."""
        size = tuple(image_embeddings.shape[-2:])
        prompts = self.prompt_encoder(point_coords, point_labels, image_embedding_size=size, masks=mask_input)
        has = has_mask_input.to(prompts.dense.dtype).view(-1, 1, 1, 1)  # B x 1 x 1 x 1
        no_mask = self.prompt_encoder.no_mask_embed.weight.view(1, -1, 1, 1)  # 1 x C x 1 x 1
        prompts = prompts._replace(dense=has * prompts.dense + (1 - has) * no_mask)  # B x C x h x w
        out = self.mask_decoder(
            image_embeddings, self.prompt_encoder.get_dense_pe(size), prompts, multimask_output=self.multimask_output
        )
        return out.masks, out.iou_pred


def decoder_for_export(
    model: nn.Module | str, *, multimask_output: bool = False, image_size: int | tuple[int, int] | None = None,
    **create_kwargs: Any,
) -> nn.Module:
    """The exportable per-click decoder of ``model`` (in eval mode).

    Args:
        model: a :class:`~segblocks.models.sam.SamModel`, :class:`~segblocks.models.sam.SamDecoder`,
            :class:`~segblocks.models.sam.SamClickModel`, :class:`~segblocks.models.focsam.FocSAM`
            (→ :class:`SamOnnxDecoder`), an :class:`~segblocks.models.inter2former.Inter2Former`
            (→ :class:`~segblocks.models.inter2former.export.Inter2FormerOnnxDecoder`), or a
            registry name building one (:func:`segblocks.models.create_model`).
        multimask_output: see :class:`SamOnnxDecoder` (SAM-style models only).
        image_size: Inter2Former only: the input size the graph is exported for (an int or
            ``(H, W)``; default 4 × the encoder's anchor scale).
        **create_kwargs: ``checkpoint=``, ``checkpoint_prefix=``... when ``model`` is a name.

    Raises:
        TypeError: the model has no exportable per-click decoder (naming what is accepted).
    """
    from segblocks.models import create_model
    from segblocks.models.inter2former import Inter2Former
    from segblocks.models.inter2former.export import Inter2FormerOnnxDecoder
    from segblocks.models.sam import SamClickModel, SamDecoder, SamModel

    if isinstance(model, str):
        model = create_model(model, **create_kwargs)
    elif create_kwargs:
        raise TypeError(f"decoder_for_export: {sorted(create_kwargs)} apply only to a registry name")
    if isinstance(model, Inter2Former):
        if multimask_output:
            raise TypeError("decoder_for_export: multimask_output applies only to SAM-style models")
        return Inter2FormerOnnxDecoder.from_model(model, image_size=image_size)
    if image_size is not None:
        raise TypeError("decoder_for_export: image_size applies only to Inter2Former (SAM's is fixed by its encoder)")
    inner = model
    if isinstance(inner, SamClickModel):
        inner = inner.sam
    elif type(inner).__name__ == "FocSAM":  # its per-click decode is SAM's decoder (FocSAM §3.1)
        inner = inner.sam
    if not isinstance(inner, (SamModel, SamDecoder)):
        raise TypeError(
            "decoder_for_export: expected a SAM-style model (SamModel, SamDecoder, SamClickModel, FocSAM), an "
            f"Inter2Former, or a registry name; got {type(model).__name__} (its decoder is not exportable, see segblocks.export)"
        )
    return SamOnnxDecoder(
        prompt_encoder=inner.prompt_encoder, mask_decoder=inner.mask_decoder, multimask_output=multimask_output
    ).eval()


def example_inputs(decoder: nn.Module, *, generator: torch.Generator | None = None, **sizes: int) -> tuple[torch.Tensor, ...]:
    """Random inputs of a graph module, in ``decoder.input_names`` order: its ``example_inputs``
    with keyword ``sizes`` (SAM: ``batch``, ``clicks``; Inter2Former: ``batch``, the clicks being
    merged into ``M_ref`` by the caller; FocSAM's refine step: ``batch``, ``clicks``, ``boxes``)."""
    return decoder.example_inputs(generator=generator, **sizes)


def export_program(decoder: nn.Module, example: Sequence[torch.Tensor] | None = None) -> torch.export.ExportedProgram:
    """``torch.export.export`` of the decoder with a dynamic batch (and click count for SAM); save it with ``torch.export.save``."""
    example = tuple(example) if example is not None else decoder.example_inputs(**decoder.export_case)
    return torch.export.export(decoder.eval(), example, dynamic_shapes=decoder.dynamic_shapes())


def export_onnx(
    decoder: nn.Module,
    path: str | os.PathLike,
    *,
    example: Sequence[torch.Tensor] | None = None,
    opset_version: int | None = None,
) -> Path:
    """Write the decoder as an ONNX file (dynamo exporter; dynamic batch, and click count for SAM).

    Raises:
        ImportError: onnx / onnxscript missing, naming the ``export`` extra.
    """
    for module in ("onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError as err:
            raise ImportError(f"ONNX export needs {module}: pip install 'segblocks[export]'") from err
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = tuple(example) if example is not None else decoder.example_inputs(**decoder.export_case)
    kwargs = {} if opset_version is None else {"opset_version": opset_version}
    program = torch.onnx.export(
        decoder.eval(), example, dynamo=True, dynamic_shapes=decoder.dynamic_shapes(),
        input_names=list(decoder.input_names), output_names=list(decoder.output_names), verbose=False, **kwargs,
    )
    program.save(str(path))
    return path


def run_onnx(path: str | os.PathLike, inputs: Sequence[torch.Tensor] | Mapping[str, Any]) -> list:
    """Run an exported decoder in onnxruntime (CPU); ``inputs`` in the graph's input order or by name.

    Returns:
        The outputs as numpy arrays, in the graph's output order (:data:`DECODER_OUTPUTS` for SAM).
    """
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError("running ONNX files needs onnxruntime: pip install 'segblocks[export]'") from err
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    if not isinstance(inputs, Mapping):
        inputs = dict(zip([i.name for i in session.get_inputs()], inputs))
    feed = {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
    return session.run([o.name for o in session.get_outputs()], feed)


def check_onnx(
    decoder: nn.Module,
    path: str | os.PathLike,
    *,
    cases: Sequence[Mapping[str, int]] | None = None,
    tolerance: tuple[float, float] = ONNX_TOLERANCE,
) -> float:
    """Compare onnxruntime with PyTorch on random inputs of each case; returns the max |Δ|.

    ``cases``: keyword sizes of ``decoder.example_inputs`` (default ``decoder.check_cases``: SAM
    batch sizes and click counts ``(1, 1), (2, 3), (3, 7)``; Inter2Former batch sizes 1, 2, 4,
    covering its four ``M_ref`` cases).

    Raises:
        AssertionError: an output differs beyond ``tolerance`` ``(atol, rtol)``, naming it.
    """
    import numpy as np

    atol, rtol = tolerance
    worst = 0.0
    for i, case in enumerate(decoder.check_cases if cases is None else cases):
        inputs = decoder.example_inputs(generator=torch.Generator().manual_seed(100 + i), **case)
        with torch.no_grad():
            expected = [t.numpy() for t in decoder(*inputs)]
        where = ", ".join(f"{k}={v}" for k, v in case.items())
        for name, got, ref in zip(decoder.output_names, run_onnx(path, inputs), expected):
            if got.shape != ref.shape:
                raise AssertionError(f"{name}: onnxruntime shape {got.shape} != PyTorch {ref.shape} ({where})")
            diff = float(np.abs(got - ref).max()) if ref.size else 0.0
            if not np.allclose(got, ref, atol=atol, rtol=rtol):
                raise AssertionError(f"{name}: onnxruntime differs from PyTorch by {diff:.3g} ({where})")
            worst = max(worst, diff)
    return worst


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m segblocks.export`` / ``segblocks export``: write the decoder as ONNX (and a ``.pt2`` program)."""
    parser = argparse.ArgumentParser(
        prog="segblocks export",
        description="Export an interactive model's per-click decoder (SAM-style, FocSAM, Inter2Former) to ONNX with "
        "a dynamic batch (and click count for SAM), then check it in onnxruntime against PyTorch.",
    )
    parser.add_argument("--model", required=True,
                        help="registry name, e.g. sam_tiny, sam_vit_b, sam_hrsam_tiny, focsam_tiny, inter2former_tiny")
    parser.add_argument("--out", required=True, help="ONNX file to write, e.g. decoder.onnx")
    parser.add_argument("--checkpoint", default=None, help="local weights (official SAM file, Lightning .ckpt)")
    parser.add_argument("--checkpoint-prefix", default="", help="key prefix to keep and strip (model.sam. in an InteractiveSegmentation .ckpt)")
    parser.add_argument("--multimask", action="store_true", help="export SAM's 3 ambiguity masks instead of one")
    parser.add_argument("--program", default=None, help="also save the torch.export program here (.pt2)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="Inter2Former: square input size the graph is fixed to (default 4 x the encoder's anchor scale)")
    parser.add_argument("--part", choices=("decoder", "refiner"), default="decoder",
                        help="decoder: the per-click decoder; refiner: FocSAM's refine step (SAM decoder + focus refiner, "
                        "run once per object; focsam_* models)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    ns = parser.parse_args(None if argv is None else list(argv))
    kwargs = {"checkpoint": ns.checkpoint, "checkpoint_prefix": ns.checkpoint_prefix} if ns.checkpoint else {}
    if ns.image_size is not None:
        kwargs["image_size"] = ns.image_size
    if ns.part == "refiner":
        from segblocks.models.focsam.export import refiner_for_export

        if ns.multimask or ns.image_size is not None:
            parser.error("--multimask and --image-size apply to --part decoder only")
        decoder = refiner_for_export(ns.model, **kwargs)
    else:
        decoder = decoder_for_export(ns.model, multimask_output=ns.multimask, **kwargs)
    if ns.program:
        Path(ns.program).parent.mkdir(parents=True, exist_ok=True)
        torch.export.save(export_program(decoder), ns.program)
        print(f"torch.export program written to {ns.program}")
    path = export_onnx(decoder, ns.out, opset_version=ns.opset)
    print(f"ONNX {ns.part} written to {path}: inputs {', '.join(decoder.input_names)} ({decoder.summary}), "
          f"outputs {', '.join(decoder.output_names)}")
    if not ns.no_check:
        diff = check_onnx(decoder, path)
        atol, rtol = ONNX_TOLERANCE
        print(f"onnxruntime == PyTorch: max |diff| {diff:.2e} (atol {atol:g}, rtol {rtol:g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
