"""FocSAM's refine step as a graph of plain tensors for ``torch.export`` and ONNX.

Huang et al., "FocSAM: Delving Deeply into Focused Objects in Segmenting Anything", CVPR 2024.
FocSAM's per-click decode is SAM's decoder, exported by :mod:`segblocks.export`; what FocSAM adds
is the refine step, run once per object at the refine click (§3.1, Fig. 2): SAM's decoder on the
original embeddings gives the coarse logits and the click-fused mask token, and the focus refiner
(§3.2–3.3: Dwin-MSA blocks on the dynamic windows that meet the focus box, P-DyReLU) returns
refined embeddings, on which the later clicks decode. :class:`FocusRefinerOnnx` is that step.

**How the data-dependent shape is exported** (approach (a), chosen after trying it): the number
``M`` of dynamic windows (:class:`~segblocks.blocks.focsam.DynamicWindows`, ``nonzero`` over the
windows that meet each sample's box) becomes an *unbacked* symbolic size in ``torch.export``. The
eager code is exported as is; the only change is in
:class:`~segblocks.blocks.focsam.RefineBlock`, which, while exporting, asserts ``M >= 1`` with
``torch._check`` instead of branching on ``M`` (the focus box is never empty: an empty prediction
gives the whole map, and an expand ratio ``>= 1`` keeps a box non-empty, which
:func:`refiner_for_export` checks). The dynamo ONNX exporter (``torch.onnx.export(module, ...,
dynamo=True)``, opset 20) turns ``nonzero`` / indexing / ``index_copy`` into ``NonZero`` /
``GatherND`` / ``ScatterND`` (the deformable convolution's sampling into ``GridSample``), and
onnxruntime runs the graph with any non-empty box. A static formulation (every window computed,
the selection applied by masks) was not needed: it would give the same values at the cost of
running the MSA module on all ``B·nW`` windows, which is the saving Dwin exists for (§3.2).
Export ONNX from the module, not from a saved ``ExportedProgram``: torch 2.13's ONNX
decomposition of a program with unbacked sizes fails (``PendingUnbackedSymbolNotFound``).

**The graph** (:class:`FocusRefinerOnnx`, ``h, w`` fixed by the model's input size, ``B`` and
``N`` dynamic), float32 unless stated:

* ``with_decoder=True`` (default; equals :meth:`FocSAM.refine <segblocks.models.focsam.FocSAM.refine>`):
  inputs ``image_embeddings`` ``(B, C, h, w)``, ``point_coords`` ``(B, N, 2)`` ``(x, y)`` at pixel
  centres of the padded input, ``point_labels`` ``(B, N)`` int64 (1 / 0 / -1 padding),
  ``mask_input`` ``(B, 1, 4h, 4w)`` the previous click's logits (the refine click is never the
  first: ``refine_step >= 1``); output ``refined_embeddings`` ``(B, C, h, w)``.
* ``with_decoder=False`` (the refiner alone, equals
  :class:`~segblocks.blocks.focsam.FocusRefiner`): inputs ``image_embeddings`` ``(B, C, h, w)``,
  ``coarse_logits`` ``(B, 1, 4h, 4w)``, ``mask_token`` ``(B, 1, C)``; same output.

Deployment: the per-click decoder ONNX of :mod:`segblocks.export` for clicks before the refine
step, this graph once at the refine step, then the decoder on ``refined_embeddings``.

Equality: onnxruntime matches eager PyTorch within ``atol = rtol = 1e-4`` in float32
(:data:`REFINER_TOLERANCE`; up to about 3e-5 is observed for ``focsam_tiny``, 8e-5 for
``focsam_vit_b`` at 1024² with 12 refine blocks and random weights), the
``torch.export`` program within 1e-5 (0 observed); ``tests/test_export_focsam.py`` checks
batches of 1–3 with different boxes per sample, a box inside one window, a box covering the image
and an empty prediction.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from segblocks.blocks.focsam import bbox_to_mask
from segblocks.models.focsam.model import FocSAM, focus_refine
from segblocks.models.sam.sam import SamModel, SamState

__all__ = [
    "FocusRefinerOnnx",
    "REFINER_INPUTS",
    "REFINER_ONLY_INPUTS",
    "REFINER_OUTPUTS",
    "REFINER_TOLERANCE",
    "box_logits",
    "refiner_example_inputs",
    "refiner_for_export",
]

#: Input names of the refine-step graph (``with_decoder=True``), in order.
REFINER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input")
#: Input names of the refiner-only graph (``with_decoder=False``), in order.
REFINER_ONLY_INPUTS = ("image_embeddings", "coarse_logits", "mask_token")
#: Output names of both graphs.
REFINER_OUTPUTS = ("refined_embeddings",)
#: ``(atol, rtol)`` within which onnxruntime's refined embeddings must equal PyTorch's (float32).
REFINER_TOLERANCE = (1e-4, 1e-4)


class FocusRefinerOnnx(nn.Module):
    """FocSAM's refine step with plain-tensor inputs (module docstring for the layout).

    Holds the FocSAM's prompt encoder, mask decoder and refiner (shared, not copied) and no image
    encoder. ``forward`` is :func:`~segblocks.models.focsam.model.focus_refine` (``with_decoder``)
    or the refiner's own forward, so the exported graph is the eager code.

    Args:
        model: a :class:`~segblocks.models.focsam.FocSAM`.
        with_decoder: include SAM's decoder (the inputs are clicks and previous logits) or take the
            coarse logits and mask token directly.

    Attributes:
        input_names, output_names: the graph's names (:data:`REFINER_INPUTS` or
            :data:`REFINER_ONLY_INPUTS`; :data:`REFINER_OUTPUTS`).

    It follows the protocol of the graphs in :mod:`segblocks.export` (``input_names``,
    ``output_names``, :meth:`dynamic_shapes`, :meth:`example_inputs`, ``export_case``,
    ``check_cases``, ``summary``, a tuple of outputs in ``output_names`` order), so that module's
    ``export_program`` / ``export_onnx`` / ``check_onnx`` take it as they take a decoder.
    """

    #: :func:`segblocks.export.check_onnx`'s random inputs (boxes differ per sample, see
    #: :func:`refiner_example_inputs`) and the traced example.
    check_cases = ({"batch": 1}, {"batch": 2}, {"batch": 4})
    export_case = {"batch": 2}

    def __init__(self, *, model: FocSAM, with_decoder: bool = True) -> None:
        super().__init__()
        if not isinstance(model, FocSAM):
            raise TypeError(f"FocusRefinerOnnx: model must be a FocSAM; got {type(model).__name__}")
        ratio = model.refiner.expand_ratio
        if min(ratio) < 1.0:
            raise ValueError(
                f"FocusRefinerOnnx: the refiner's expand_ratio must be >= 1 on both axes to export (a shrunk box may "
                f"select no window, see RefineBlock); got {ratio}"
            )
        # decoder-only SAM view sharing the modules (never encodes; focus_refine only calls decode)
        self.sam = SamModel(
            image_encoder=nn.Identity(), prompt_encoder=model.sam.prompt_encoder,
            mask_decoder=model.sam.mask_decoder, preprocess=model.sam.preprocess,
        )
        self.refiner = model.refiner
        self.with_decoder = bool(with_decoder)
        self.input_names = REFINER_INPUTS if self.with_decoder else REFINER_ONLY_INPUTS
        self.output_names = REFINER_OUTPUTS

    @property
    def embedding_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of the image embeddings the graph takes."""
        return (self.sam.prompt_encoder.embed_dim, *self.sam.prompt_encoder.image_embedding_size)

    @property
    def summary(self) -> str:
        return "input " + "x".join(map(str, self.image_size))

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the padded model input (``(h, w)`` times the encoder stride)."""
        _, h, w = self.embedding_shape
        s = self.sam.prompt_encoder.stride
        return h * s, w * s

    def forward(self, image_embeddings: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor]:
        """``with_decoder``: ``(B, C, h, w)``, coords ``(B, N, 2)``, labels ``(B, N)``, mask ``(B, 1, 4h, 4w)``;
        else: ``(B, C, h, w)``, coarse logits ``(B, 1, 4h, 4w)``, token ``(B, 1, C)`` →
        ``(refined_embeddings,)`` with ``refined_embeddings`` ``(B, C, h, w)``."""
        if 1 + len(inputs) != len(self.input_names):
            raise TypeError(
                f"FocusRefinerOnnx: expected the {len(self.input_names)} inputs {self.input_names}; got {1 + len(inputs)} tensors"
            )
        if self.with_decoder:
            coords, labels, mask_input = inputs
            state = SamState(embeddings=image_embeddings, input_size=self.image_size)
            return (focus_refine(self.sam, self.refiner, state, coords, labels, mask_input),)
        coarse_logits, mask_token = inputs
        return (self.refiner(image_embeddings, coarse_logits, mask_token, self.image_size),)

    def dynamic_shapes(self, max_batch: int = 1024, max_clicks: int = 1024) -> tuple[Any, ...]:
        """``dynamic_shapes`` for ``torch.export`` / ``torch.onnx.export``: dynamic batch (and click count).

        Structured as :meth:`forward`'s arguments: ``(image_embeddings, (the other inputs...))``.
        """
        batch = torch.export.Dim("batch", min=1, max=max_batch)
        if not self.with_decoder:
            return ({0: batch}, ({0: batch}, {0: batch}))
        clicks = torch.export.Dim("clicks", min=1, max=max_clicks)
        return ({0: batch}, ({0: batch, 1: clicks}, {0: batch, 1: clicks}, {0: batch}))

    def example_inputs(
        self,
        *,
        batch: int = 2,
        clicks: int = 2,
        boxes: torch.Tensor | Sequence[Sequence[int]] | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """:func:`refiner_example_inputs` of this graph."""
        return refiner_example_inputs(self, batch=batch, clicks=clicks, boxes=boxes, generator=generator)

    def extra_repr(self) -> str:
        return f"with_decoder={self.with_decoder}, embedding_shape={self.embedding_shape}"


def refiner_for_export(model: FocSAM | str, *, with_decoder: bool = True, **create_kwargs: Any) -> FocusRefinerOnnx:
    """The exportable refine step of a FocSAM (in eval mode).

    Args:
        model: a :class:`~segblocks.models.focsam.FocSAM` or a registry name building one
            (``focsam_tiny``, ``focsam_vit_b``, ``focsam_hrsam_tiny``).
        with_decoder: see :class:`FocusRefinerOnnx`.
        **create_kwargs: ``checkpoint=``, ``checkpoint_prefix=``... when ``model`` is a name.

    Raises:
        TypeError: not a FocSAM (or keyword arguments with a model object).
    """
    if isinstance(model, str):
        from segblocks.models import create_model

        model = create_model(model, **create_kwargs)
    elif create_kwargs:
        raise TypeError(f"refiner_for_export: {sorted(create_kwargs)} apply only to a registry name")
    if not isinstance(model, FocSAM):
        raise TypeError(f"refiner_for_export: expected a FocSAM or its registry name; got {type(model).__name__}")
    return FocusRefinerOnnx(model=model, with_decoder=with_decoder).eval()


def box_logits(boxes: torch.Tensor, size: tuple[int, int], stride: int, *, value: float = 8.0) -> torch.Tensor:
    """Logits ``+value`` inside and ``-value`` outside boxes, on a grid of ``stride`` input pixels.

    ``boxes`` ``(B, 4)`` ``(left, top, right, bottom)`` in input pixels (right/bottom exclusive) are
    floored to the grid and drawn with :func:`~segblocks.blocks.focsam.bbox_to_mask`; an empty box
    gives an all-negative map (the refiner then focuses on the whole map). Returns
    ``(B, 1, H / stride, W / stride)`` float32.
    """
    H, W = size
    grid = torch.div(torch.as_tensor(boxes).long(), stride, rounding_mode="floor")  # B x 4
    inside = bbox_to_mask(grid, (H // stride, W // stride))  # B x 1 x H/s x W/s
    return (2 * inside - 1) * value


def refiner_example_inputs(
    module: FocusRefinerOnnx,
    *,
    batch: int = 2,
    clicks: int = 2,
    boxes: torch.Tensor | Sequence[Sequence[int]] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, ...]:
    """Random inputs of the graph (float32), in ``module.input_names`` order.

    The coarse logits (``with_decoder=False``) or previous logits (``with_decoder=True``) are
    :func:`box_logits` of ``boxes`` (``(B, 4)`` input pixels); by default sample 0 gets a box inside
    one refiner window, sample 1 the whole image, and the others random boxes, so the samples
    select different numbers of dynamic windows. Click labels are 1 for the first click, then
    random in {1, 0, -1}.
    """
    if not isinstance(module, FocusRefinerOnnx):
        raise TypeError(f"refiner_example_inputs: module must be a FocusRefinerOnnx (refiner_for_export); got {type(module).__name__}")
    if batch < 1 or clicks < 1:
        raise ValueError(f"refiner_example_inputs: batch and clicks must be >= 1; got {batch}, {clicks}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    c, h, w = module.embedding_shape
    H, W = module.image_size
    if boxes is None:
        cell = module.sam.prompt_encoder.stride  # one embedding cell, in input pixels
        rows = [[cell, cell, 2 * cell, 2 * cell], [0, 0, W, H]]
        for _ in range(max(batch - 2, 0)):
            x0, y0 = (int(torch.randint(0, v // 2, (), generator=g)) for v in (W, H))
            x1, y1 = (int(torch.randint(v0 + 1, v + 1, (), generator=g)) for v0, v in ((x0, W), (y0, H)))
            rows.append([x0, y0, x1, y1])
        boxes = torch.tensor(rows[:batch])
    boxes = torch.as_tensor(boxes)
    if boxes.shape != (batch, 4):
        raise ValueError(f"refiner_example_inputs: boxes must be (batch={batch}, 4); got {tuple(boxes.shape)}")
    emb = torch.randn(batch, c, h, w, generator=g)
    logits = box_logits(boxes, (H, W), H // (4 * h))  # B x 1 x 4h x 4w (SAM's low-resolution logits)
    if not module.with_decoder:
        return emb, logits, torch.randn(batch, 1, c, generator=g)
    coords = torch.rand(batch, clicks, 2, generator=g) * torch.tensor([W, H])  # B x N x 2, (x, y)
    labels = torch.randint(-1, 2, (batch, clicks), generator=g)
    labels[:, 0] = 1
    return emb, coords, labels, logits
