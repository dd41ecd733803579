"""Inter2Former as an :class:`~segblocks.interactive.protocol.InteractiveModel` (Inter2Former §3.2, Fig. 2).

``encode`` (once per image): the HRSAM++-without-Cycle-scan encoder
(:class:`~segblocks.models.inter2former.encoder.Inter2FormerEncoder`) and CannyNet's edge features.
``decode`` (once per click): DPE → ``depth`` × (DHA + HMoE) → DLU, on the reference map ``M_ref``
kept in the state. Per click, in the authors' order (YouHuang67/inter2former,
``inter2former/segmentors/interseg.py``, ``interact_test``; Inter2Former §3.3):

1. merge the clicks made since the previous decode into ``M_ref``
   (:func:`~segblocks.interactive.ref_label.points_to_ref_label`, radius 5, then
   :func:`~segblocks.interactive.ref_label.update_ref_label`);
2. forward;
3. feed the prediction ``logits > 0`` back (:func:`~segblocks.interactive.ref_label.update_ref_label_by_prediction`).

``previous is None`` (the first click of an image) resets ``M_ref`` to all UNKNOWN. The state is
therefore **mutable**: one state per image sequence, decoded in click order (as the evaluation
and training loops do). Clicks are mapped from their frame to the model input by ``floor(c · s)``
per axis (the authors' ``int(scale · y)``).

Training (§3.8, :mod:`segblocks.interactive.training`): in training mode DLU upsamples the whole
map; the graded decode stores the coarse logits and the BSQ commitment loss on the state, and
:meth:`Inter2Former.auxiliary_losses` (the training loop's hook) returns NFL on the coarse logits (against the stride-16
max-pooled mask) and the mean BSQ loss over the blocks, which the training loop adds to the NFL
of the full-resolution logits (authors' ``interseg_bsqa.py``: NFL on both logits + ``vq_loss``).

Input convention: ``images`` are RGB on the 0–255 scale, zero-padded bottom/right; the padding is
set to the pixel mean first so it is 0 after normalisation, as the authors' preprocessor
(normalise, then pad with 0). The authors' network sees BGR images normalised with RGB-ordered
constants; this implementation uses RGB throughout.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segblocks.blocks.inter2former import (
    CannyNet,
    DynamicHybridAttention,
    DynamicLocalUpsampling,
    DynamicPromptEmbedding,
    HybridMoE,
    edge_token_mask,
    select_edge_tokens,
)
from segblocks.interactive.clicker import Clicks
from segblocks.interactive.protocol import ClickPrompts
from segblocks.interactive.ref_label import (
    initial_ref_label,
    points_to_ref_label,
    update_ref_label,
    update_ref_label_by_prediction,
)
from segblocks.losses import normalized_focal_loss
from segblocks.models.inter2former.official import is_official_state_dict, official_to_segblocks
from segblocks.models.sam.click_model import mean_pad
from segblocks.models.sam.preprocess import PIXEL_MEAN, PIXEL_STD
from segblocks.ops._checks import check_int, check_tensor

__all__ = ["Inter2Former", "Inter2FormerBlock", "Inter2FormerNeck", "Inter2FormerState"]


@dataclass(eq=False)
class Inter2FormerState:
    """Per-image state of :class:`Inter2Former` (mutable: ``decode`` updates ``M_ref``).

    Attributes:
        features: ``(B, d, h, w)`` encoder tokens.
        edges: CannyNet features, coarse to fine.
        ref_label: ``(B, H, W)`` uint8 ``M_ref`` after the last decode.
        applied: ``(B,)`` int64 clicks already merged into ``ref_label``.
        aux_logits: ``(B, 1, h, w)`` coarse logits of the last training-mode decode (else None).
        vq_loss: BSQ commitment loss of the last training-mode decode (else None).
    """

    features: torch.Tensor
    edges: list[torch.Tensor]
    ref_label: torch.Tensor
    applied: torch.Tensor
    aux_logits: torch.Tensor | None = None
    vq_loss: torch.Tensor | None = None


class Inter2FormerBlock(nn.Module):
    """Pre-LN decoder layer: ``x += DHA(LN(x))``; ``x += HMoE(LN(x))`` (§3.2; authors' ``Block``, no dropout)."""

    def __init__(self, *, attn: DynamicHybridAttention, ffn: HybridMoE) -> None:
        super().__init__()
        d = attn.embed_dim
        if ffn.embed_dim != d:
            raise ValueError(f"Inter2FormerBlock: attn and ffn widths differ ({d} vs {ffn.embed_dim})")
        self.norm1 = nn.LayerNorm(d)
        self.attn = attn
        self.norm2 = nn.LayerNorm(d)
        self.ffn = ffn

    def forward(self, x, grid, selection):
        """``x`` ``(B, L, d)`` → ``(B, L, d)`` and the BSQ loss.

        ``selection``: an :class:`~segblocks.blocks.inter2former.EdgeTokenSelection` (the sparse
        path), or the ``(B, L)`` bool edge mask for the static-shape path of ``torch.export`` /
        ONNX (the blocks' ``forward_static``; same outputs).
        """
        B, L, C = x.shape
        if isinstance(selection, torch.Tensor):
            a, loss = self.attn.forward_static(self.norm1(x), grid, selection)
            ffn = self.ffn.forward_static(self.norm2(x + a).reshape(B * L, C), selection.reshape(B * L))  # BL x d
            return x + a + ffn.view(B, L, C), loss
        a, loss = self.attn(self.norm1(x), grid, selection)
        x = x + a
        x = x + self.ffn(self.norm2(x).reshape(B * L, C), selection.idxs).view(B, L, C)
        return x, loss


class Inter2FormerNeck(nn.Module):
    """DPE + edge-token selection + the DHA/HMoE layers: ``F_R`` from ``F`` and ``M_ref`` (§3.2-3.6).

    Args:
        dpe: :class:`~segblocks.blocks.inter2former.DynamicPromptEmbedding`.
        blocks: the :class:`Inter2FormerBlock` layers (2).
        kernel_size: local-variance window of the edge map (7, Eq. 4).

    Forward: ``x`` ``(B, d, h, w)``, ``ref_label`` ``(B, H, W)`` → ``(B, d, h, w)`` and the mean BSQ loss.
    ``static=True``: the static-shape path for ``torch.export`` / ONNX (DPE and the blocks'
    ``forward_static``, the edge tokens as a mask; same outputs, full-map cost).
    """

    def __init__(self, *, dpe: DynamicPromptEmbedding, blocks: Sequence[Inter2FormerBlock], kernel_size: int = 7) -> None:
        super().__init__()
        self.dpe = dpe
        self.blocks = nn.ModuleList(blocks)
        self.kernel_size = check_int(kernel_size, "kernel_size", owner="Inter2FormerNeck", minimum=1)

    def forward(self, x: torch.Tensor, ref_label: torch.Tensor, *, static: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        B, d, h, w = x.shape
        prompt, _ = (self.dpe.forward_static if static else self.dpe)(ref_label)  # B x d x h x w, Eq. 1-3
        # B x hw x d, F_P; contiguous once here: the strided layout would otherwise propagate
        # through every residual add and LayerNorm of the blocks (LN is ~8x slower on it)
        tokens = (x + prompt).flatten(2).transpose(1, 2).contiguous()
        if static:  # B x hw bool, Eq. 4-5
            selection = edge_token_mask(ref_label, (h, w), kernel_size=self.kernel_size)
        else:
            selection = select_edge_tokens(ref_label, (h, w), kernel_size=self.kernel_size)  # Eq. 4-5
        losses = []
        for block in self.blocks:
            tokens, loss = block(tokens, (h, w), selection)
            losses.append(loss)
        vq = torch.stack(losses).mean() if losses else x.new_zeros(())
        return tokens.transpose(1, 2).reshape(B, d, h, w), vq


def _convert_official(module: nn.Module, state_dict, prefix, *args) -> None:
    """Load pre-hook: the authors' key layout (:mod:`segblocks.models.inter2former.official`) → ours."""
    own = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if is_official_state_dict(own):
        for k in [k for k in state_dict if k.startswith(prefix)]:
            del state_dict[k]
        state_dict.update({prefix + k: v for k, v in official_to_segblocks(own).items()})


class Inter2Former(nn.Module):
    """Inter2Former (§3.2, Fig. 2) behind the click protocol (module docstring).

    Args:
        backbone: image encoder ``(B, 3, H, W)`` normalized → ``(B, d, H/16, W/16)``.
        edge_detector: :class:`~segblocks.blocks.inter2former.CannyNet` (images in [0, 1]).
        neck: :class:`Inter2FormerNeck`.
        decode_head: :class:`~segblocks.blocks.inter2former.DynamicLocalUpsampling`.
        inner_radius: click disk radius in ``M_ref`` (5).
        aux_loss_weight: weight of the coarse-logit NFL (1).
        vq_loss_weight: weight of the BSQ loss (1).
        pixel_mean, pixel_std: normalisation on the 0–255 scale (RGB).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        edge_detector: CannyNet,
        neck: Inter2FormerNeck,
        decode_head: DynamicLocalUpsampling,
        inner_radius: float = 5.0,
        aux_loss_weight: float = 1.0,
        vq_loss_weight: float = 1.0,
        pixel_mean: Sequence[float] = PIXEL_MEAN,
        pixel_std: Sequence[float] = PIXEL_STD,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.edge_detector = edge_detector
        self.neck = neck
        self.decode_head = decode_head
        self.inner_radius = float(inner_radius)
        self.aux_loss_weight = float(aux_loss_weight)
        self.vq_loss_weight = float(vq_loss_weight)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self._last_graded: tuple[torch.Tensor, torch.Tensor] | None = None
        self.register_load_state_dict_pre_hook(_convert_official)

    # ------------------------------------------------------------------ protocol
    def encode(self, images: torch.Tensor, valid_size: torch.Tensor) -> Inter2FormerState:
        """``(B, 3, H, W)`` RGB 0–255 (``H, W`` multiples of 16), ``valid_size`` ``(B, 2)`` → state."""
        B, _, H, W = check_tensor(images, "images", owner="Inter2Former", shape=("B", ("3", 3), "H", "W"))
        if H % 16 or W % 16 or H == 0 or W == 0:
            raise ValueError(f"Inter2Former: image height and width must be positive multiples of 16; got {H}x{W}")
        images = mean_pad(images, valid_size, self.pixel_mean)  # B x 3 x H x W
        features = self.backbone((images - self.pixel_mean) / self.pixel_std)  # B x d x h x w
        edges = self.edge_detector((images / 255.0).clamp(0, 1))
        return Inter2FormerState(
            features=features, edges=list(edges), ref_label=initial_ref_label(B, H, W, device=images.device),
            applied=torch.zeros(B, dtype=torch.long, device=images.device),
        )

    def decode(self, state: Inter2FormerState, prompts: ClickPrompts, previous: torch.Tensor | None) -> torch.Tensor:
        """Clicks so far → ``(B, 1, H, W)`` logits; updates ``state.ref_label`` (module docstring)."""
        if not isinstance(state, Inter2FormerState):
            raise TypeError(f"Inter2Former.decode: state must come from encode; got {type(state).__name__}")
        B, H, W = state.ref_label.shape
        if previous is None:  # first click of the sequence
            state.ref_label = initial_ref_label(B, H, W, device=state.ref_label.device)
            state.applied = torch.zeros_like(state.applied)
        new = self._new_clicks(state, prompts)
        ref = update_ref_label(state.ref_label, points_to_ref_label(new, H, W, inner_radius=self.inner_radius))
        logits, aux, vq = self.forward_tokens(state.features, state.edges, ref)
        state.ref_label = update_ref_label_by_prediction(ref, logits[:, 0] > 0)
        state.applied = prompts.clicks.num_clicks.to(state.applied.device)
        state.aux_logits, state.vq_loss = (aux, vq) if self.training else (None, None)
        self._last_graded = (aux, vq) if self.training and torch.is_grad_enabled() else None
        return logits

    def forward_tokens(self, features, edges, ref_label, *, static: bool = False):
        """Decoder on given tokens and ``M_ref``: ``(logits (B,1,H,W), coarse (B,1,h,w), BSQ loss)``.

        ``static=True``: the static-shape path of every block (``forward_static``: masks instead of
        the data-dependent token selection and boxes) that :mod:`segblocks.models.inter2former.export`
        traces; same outputs at full-map cost. ``ref_label`` values are then not checked.
        """
        refined, vq = self.neck(features, ref_label, static=static)  # B x d x h x w
        head = self.decode_head.forward_static if static else self.decode_head
        logits, coarse = head(refined, edges)
        return logits, coarse, vq

    def auxiliary_losses(self, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extra losses of the last graded decode (§3.8): weighted coarse-logit NFL and BSQ loss.

        The training loop's hook (:func:`segblocks.interactive.training.iterative_training_loss`)
        calls it right after the decode with gradients.

        Args:
            target: ``(B, H, W)`` int64 with 0 / 1 / 255 (ignore) at the input resolution.
        """
        if self._last_graded is None:
            raise RuntimeError("Inter2Former.auxiliary_losses needs a decode in training mode with gradients first")
        aux_logits, vq_loss = self._last_graded
        self._last_graded = None
        h, w = aux_logits.shape[-2:]
        fg = (target == 1).float()[:, None]  # B x 1 x H x W
        aux_target = F.adaptive_max_pool2d(fg, (h, w))[:, 0].long()  # B x h x w (authors: max-pool of gt)
        return {
            "aux_nfl": self.aux_loss_weight * normalized_focal_loss(aux_logits, aux_target),
            "bsq_loss": self.vq_loss_weight * vq_loss,
        }

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _new_clicks(state: Inter2FormerState, prompts: ClickPrompts) -> Clicks:
        """The clicks after ``state.applied``, mapped from their frame to the model input."""
        clicks = prompts.clicks
        H, W = state.ref_label.shape[-2:]
        scale = (prompts.input_size.to(torch.float64) / prompts.frame_size.to(torch.float64))  # B x 2
        coords = torch.floor(clicks.coords.cpu().to(torch.float64) * scale.cpu()[:, None]).long()  # B x N x 2
        coords[..., 0].clamp_(0, H - 1)
        coords[..., 1].clamp_(0, W - 1)
        labels, applied = clicks.labels.cpu().tolist(), state.applied.cpu().tolist()
        lists = [
            [(int(coords[b, i, 0]), int(coords[b, i, 1]), lab) for i, lab in enumerate(labels[b]) if lab >= 0 and i >= applied[b]]
            for b in range(clicks.batch_size)
        ]
        return Clicks.from_lists(lists, device=state.ref_label.device)

    def forward(self, images: torch.Tensor, clicks: Clicks, valid_size: torch.Tensor | None = None) -> torch.Tensor:
        """One-shot convenience: encode and decode all ``clicks`` at once → ``(B, 1, H, W)`` logits."""
        B, _, H, W = images.shape
        size = torch.tensor([[H, W]], device=images.device).expand(B, 2)
        state = self.encode(images, size if valid_size is None else valid_size)
        return self.decode(state, ClickPrompts(clicks=clicks, frame_size=size, input_size=size), None)
