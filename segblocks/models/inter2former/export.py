"""Inter2Former's per-click decoder as a graph of plain tensors with static shapes (``torch.export`` / ONNX).

What a click runs after :meth:`Inter2Former.encode <segblocks.models.inter2former.Inter2Former.encode>`:
DPE → 2 × (DHA + HMoE) → DLU on the reference map ``M_ref`` (Inter2Former §3.2-3.7, Fig. 2),
i.e. :meth:`Inter2Former.forward_tokens <segblocks.models.inter2former.Inter2Former.forward_tokens>`.

Why static shapes. The eager decoder is sparse: the edge tokens (Eq. 4-5), the DPE box (Eq. 1-3)
and the DLU box (Eq. 22) have data-dependent sizes, and the boxes are cut per sample in a Python
loop (``.tolist()``). ``torch.export`` stops there (``GuardOnDataDependentSymNode`` on the first
box coordinate). Unbacked symbolic sizes (``torch._check``) would need a per-sample loop (a
static batch), checks on every crop, GroupNorm and interpolation, and support for the same
unbounded shapes in the ONNX exporter and onnxruntime. Instead every block has a documented
``forward_static`` path with the selection and boxes as **masks** on fixed-size tensors, equal
to its sparse path (each tested against it):

* DPE: whole-map embedding, features outside the box zeroed at every convolution input (the
  crop's zero padding), ``e_bg`` outside
  (:meth:`~segblocks.blocks.inter2former.DynamicPromptEmbedding.forward_static`);
* DHA: full attention with RoPE and BSQ attention (exact Eq. 8-9 form from one-hot code counts)
  for every query, picked per query by the ``(B, L)`` edge mask
  (:meth:`~segblocks.blocks.inter2former.DynamicHybridAttention.forward_static`);
* HMoE: every token routed, every expert run on every token, picked by the expert id and the edge
  mask (:meth:`~segblocks.blocks.inter2former.HybridMoE.forward_static`);
* DLU: the box as masks: crop statistics as masked GroupNorm statistics, replicate padding for the
  bicubic taps, zero padding for the convolutions, −100 outside
  (:meth:`~segblocks.blocks.inter2former.DynamicLocalUpsampling.forward_static`).

This costs speed (the dense work of the non-sparse model, and ``M`` times the routed experts),
not correctness: the exported graph computes the same logits as the eager sparse decoder.

Graph interface (:class:`Inter2FormerOnnxDecoder`), ``B`` dynamic, ``H, W`` fixed at export:

* inputs ``features`` ``(B, d, H/16, W/16)`` float32 (``state.features``), ``ref_label``
  ``(B, H, W)`` uint8 ``M_ref`` **with the new clicks merged** (values 0..4, not checked in the
  graph), ``edges_0`` … ``edges_3`` CannyNet features ``(B, d/4^j, 2^(j+1)·H/16, …)``
  (``state.edges``);
* outputs ``logits`` ``(B, 1, H, W)`` and ``coarse_logits`` ``(B, 1, H/16, W/16)``.

The caller keeps ``M_ref`` as :meth:`Inter2Former.decode` does: before the graph
``ref = update_ref_label(ref, points_to_ref_label(new_clicks, H, W, inner_radius=5))``, after it
``ref = update_ref_label_by_prediction(ref, logits[:, 0] > 0)`` (:mod:`segblocks.interactive.ref_label`).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from segblocks.blocks.inter2former import DynamicLocalUpsampling
from segblocks.interactive.ref_label import RefLabel
from segblocks.models.inter2former.model import Inter2Former, Inter2FormerNeck

__all__ = ["Inter2FormerOnnxDecoder"]


class Inter2FormerOnnxDecoder(nn.Module):
    """Inter2Former's per-click decoder with tensor-only inputs and static shapes (module docstring).

    Equal to ``Inter2Former.forward_tokens(features, edges, ref_label)[:2]`` (eval mode).

    Args:
        neck: the model's :class:`~segblocks.models.inter2former.Inter2FormerNeck` (DPE + blocks).
        decode_head: the model's :class:`~segblocks.blocks.inter2former.DynamicLocalUpsampling`.
        image_size: ``(H, W)`` of the model input the graph is exported for (multiples of 16).
    """

    output_names = ("logits", "coarse_logits")
    #: :func:`segblocks.export.check_onnx`'s random inputs (the four ``M_ref`` cases of
    #: :meth:`example_inputs` cycle over the batch) and the traced example.
    check_cases = ({"batch": 1}, {"batch": 2}, {"batch": 4})
    export_case = {"batch": 2}

    def __init__(self, *, neck: Inter2FormerNeck, decode_head: DynamicLocalUpsampling, image_size: tuple[int, int]) -> None:
        super().__init__()
        if not isinstance(neck, Inter2FormerNeck) or not isinstance(decode_head, DynamicLocalUpsampling):
            raise TypeError(
                "Inter2FormerOnnxDecoder: neck must be an Inter2FormerNeck and decode_head a DynamicLocalUpsampling; got "
                f"{type(neck).__name__}, {type(decode_head).__name__}"
            )
        H, W = (int(v) for v in image_size)
        s = neck.dpe.stride
        if H <= 0 or W <= 0 or H % s or W % s:
            raise ValueError(f"Inter2FormerOnnxDecoder: image_size must be positive multiples of {s}; got {H}x{W}")
        self.neck = neck
        self.decode_head = decode_head
        self.image_size = (H, W)

    @classmethod
    def from_model(cls, model: Inter2Former, *, image_size: tuple[int, int] | int | None = None) -> "Inter2FormerOnnxDecoder":
        """The decoder of ``model`` (eval mode). ``image_size`` default: 4 × the encoder's anchor
        scale (1024² for the paper's 256² anchor, §4.1; 256² for ``inter2former_tiny``), else 1024²."""
        if not isinstance(model, Inter2Former):
            raise TypeError(f"Inter2FormerOnnxDecoder.from_model: expected an Inter2Former; got {type(model).__name__}")
        if image_size is None:
            image_size = 4 * int(getattr(model.backbone, "anchor_size", 256))
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        return cls(neck=model.neck, decode_head=model.decode_head, image_size=image_size).eval()

    # ------------------------------------------------------------------ graph interface
    @property
    def input_names(self) -> tuple[str, ...]:
        return ("features", "ref_label") + tuple(f"edges_{j}" for j in range(len(self.decode_head.upsamplers)))

    @property
    def summary(self) -> str:
        return "input " + "x".join(map(str, self.image_size))

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid ``(H/16, W/16)``."""
        s = self.neck.dpe.stride
        return self.image_size[0] // s, self.image_size[1] // s

    def input_shapes(self, batch: int) -> list[tuple[int, ...]]:
        """Shapes of the inputs, in :attr:`input_names` order."""
        (H, W), (h, w) = self.image_size, self.grid
        edges = [(batch, c, h * 2 ** (j + 1), w * 2 ** (j + 1)) for j, c in enumerate(self.decode_head.channels[:-1])]
        return [(batch, self.decode_head.embed_dim, h, w), (batch, H, W), *edges]

    def dynamic_shapes(self, max_batch: int = 1024) -> tuple[Any, ...]:
        """``torch.export`` spec of ``forward(features, ref_label, *edges)``: the batch is dynamic, everything else fixed."""
        batch = torch.export.Dim("batch", min=1, max=max_batch)
        return ({0: batch}, {0: batch}, tuple({0: batch} for _ in self.decode_head.upsamplers))

    def example_inputs(self, *, batch: int = 2, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        """Random inputs (float32 features and edges, a structured ``M_ref``), in :attr:`input_names` order.

        ``M_ref`` cycles over four cases by sample: a small object (a POSSIBLE_FG rectangle with a
        DEFINITE_FG click), a large object with an UNKNOWN hole and a DEFINITE_BG click, an
        all-background map (no edge token, whole-image DPE box) and the first-click map (all
        UNKNOWN but one click: every token selected); rectangles are random per sample.
        """
        if batch < 1:
            raise ValueError(f"Inter2FormerOnnxDecoder.example_inputs: batch must be >= 1; got {batch}")
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        shapes = self.input_shapes(batch)
        features = torch.randn(*shapes[0], generator=g)
        edges = [0.5 * torch.randn(*shape, generator=g) for shape in shapes[2:]]
        H, W = self.image_size
        ref = torch.full((batch, H, W), int(RefLabel.POSSIBLE_BG), dtype=torch.uint8)

        def rect(frac_lo: float, frac_hi: float) -> tuple[int, int, int, int]:
            fh, fw = (frac_lo + (frac_hi - frac_lo) * torch.rand(2, generator=g)).tolist()
            rh, rw = max(int(fh * H), 2), max(int(fw * W), 2)
            y0 = int(torch.randint(0, H - rh + 1, (1,), generator=g))
            x0 = int(torch.randint(0, W - rw + 1, (1,), generator=g))
            return y0, x0, y0 + rh, x0 + rw

        for b in range(batch):
            case = b % 4
            if case in (0, 1):
                y0, x0, y1, x1 = rect(0.05, 0.15) if case == 0 else rect(0.5, 0.9)
                ref[b, y0:y1, x0:x1] = RefLabel.POSSIBLE_FG
                cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
                ref[b, max(cy - 2, 0):cy + 3, max(cx - 2, 0):cx + 3] = RefLabel.DEFINITE_FG
                if case == 1:
                    ref[b, y0:(y0 + cy) // 2, x0:(x0 + cx) // 2] = RefLabel.UNKNOWN
                    ref[b, max(y0 - 6, 0):max(y0 - 1, 0), x0:x0 + 5] = RefLabel.DEFINITE_BG
            elif case == 3:
                ref[b] = RefLabel.UNKNOWN
                y0, x0, _, _ = rect(0.01, 0.02)
                ref[b, y0:y0 + 5, x0:x0 + 5] = RefLabel.DEFINITE_FG
        return (features, ref, *edges)

    def forward(self, features: torch.Tensor, ref_label: torch.Tensor, *edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, d, h, w)``, ``(B, H, W)`` uint8, edges → ``logits`` ``(B, 1, H, W)``, ``coarse_logits`` ``(B, 1, h, w)``."""
        refined, _ = self.neck(features, ref_label, static=True)  # B x d x h x w
        return self.decode_head.forward_static(refined, list(edges))
