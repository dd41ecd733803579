"""FocSAM as an :class:`~segblocks.interactive.protocol.InteractiveModel`, with its two-stage training.

Huang et al., "FocSAM: Delving Deeply into Focused Objects in Segmenting Anything", CVPR 2024.

**Pipeline** (§3.1, Fig. 2): :meth:`FocSAM.encode` runs the image encoder once; :meth:`FocSAM.decode`
runs SAM's prompt encoder + mask decoder once per click. At the decode call with index
``refine_step`` (default 1, the 2nd click, as the authors' test protocol ``refine_start_step=1``;
§4.1 "the refine step K is set to 2"), the decoder first runs on the original embeddings with the
current clicks to give the coarse logits and the click-fused mask token, the
:class:`~segblocks.blocks.focsam.FocusRefiner` refines the embeddings once, and this and every
later click decodes on the refined embeddings (YouHuang67/focsam,
``focsam/segmentors/mixseg_refine.py``, ``intertest_predict``). The state returned by ``encode`` is
a small mutable :class:`FocSamState` (it counts the decode calls and keeps the refined
embeddings): one state per batch of objects, as the click protocol uses it.

Any encoder giving SAM-shaped embeddings works: the model wraps a
:class:`~segblocks.models.sam.SamModel` (SAM's ViT, or an HRSAM encoder with SAM's decoder:
:func:`focsam_hrsam_tiny`).

**Training** (§4.1 "two-stage training strategy", §3.4), chosen by ``stage``:

* ``"decoder"`` (stage 1): the refiner is off and the SAM decoder (prompt encoder + mask decoder)
  trains on frozen encoder embeddings with the ordinary iterative click loss
  (:func:`segblocks.interactive.training.iterative_training_loss`);
* ``"refiner"`` (stage 2, :meth:`FocSAM.training_loss`): encoder and decoder frozen. As coded
  (``ClickMixSegmentorRefine``): draw ``k ~ P ∝ γ^k`` (k ≤ max clicks) and the refine step
  ``r ~ P ∝ γ_r^k`` (k ≤ ``k``); without gradients simulate the first click, ``r`` SAM rounds, one
  refiner call, then ``k − r`` rounds on the refined embeddings. Then, with gradients through the
  refiner only: coarse logits and token from the frozen decoder on the refine-step clicks, the
  refiner with an expansion ratio drawn from ``U(1.0, 1.4)`` per axis, the frozen decoder on the
  final clicks; loss = NFL + ``point_loss_weight`` · PTL (Eq. 10, mean over valid clicks as coded).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from segblocks.blocks.focsam import FocusRefiner
from segblocks.interactive.clicker import TRAIN_INNER_K, Clicks, next_click, sample_num_clicks
from segblocks.interactive.protocol import ClickPrompts, logits_to_input
from segblocks.interactive.training import iterative_training_loss
from segblocks.losses import normalized_focal_loss, point_loss
from segblocks.models._registry import register_model
from segblocks.models.sam.click_model import mean_pad
from segblocks.models.sam.sam import SamModel, SamState
from segblocks.ops._checks import check_finite_float, check_int

__all__ = ["FocSAM", "FocSamState", "focus_refine", "focsam_hrsam_tiny", "focsam_tiny", "focsam_vit_b", "focsam_vit_h_refiner"]

_STAGES = ("decoder", "refiner")


@dataclass(eq=False)
class FocSamState:
    """Per-batch interaction state of :class:`FocSAM` (mutable: ``decode`` advances it).

    Attributes:
        sam: SAM's state with the original embeddings (B, C, h, w).
        refined: the refined embeddings once the refiner ran, else None.
        step: decode calls so far (the index of the next click).
        refine_step: decode index at which to refine (None: never, i.e. plain SAM).
    """

    sam: SamState
    refined: torch.Tensor | None = None
    step: int = 0
    refine_step: int | None = 1


class FocSAM(nn.Module):
    """SAM + focus refiner behind the click protocol (module docstring).

    Args:
        sam: a :class:`~segblocks.models.sam.SamModel` (or a registry name building one) whose
            decoder width equals the refiner's ``embed_dim``.
        refiner: the :class:`~segblocks.blocks.focsam.FocusRefiner`.
        refine_step: decode index of the refiner call (1 = the 2nd click); None disables it.
        stage: ``"refiner"`` (stage 2 and inference) or ``"decoder"`` (stage 1: refiner off,
            decoder trainable).
        refine_gamma: ``γ_r`` of the refine-step draw in stage 2 (0.6 COCO / 0.35 LVIS as coded).
        expand_ratio_range: ``U(lo, hi)`` of the training box expansion per axis ((1.0, 1.4)).
    """

    def __init__(
        self,
        *,
        sam: SamModel | str,
        refiner: FocusRefiner,
        refine_step: int | None = 1,
        stage: str = "refiner",
        refine_gamma: float = 0.6,
        expand_ratio_range: Sequence[float] = (1.0, 1.4),
    ) -> None:
        super().__init__()
        if isinstance(sam, str):
            from segblocks.models import create_model

            sam = create_model(sam)
        if not isinstance(sam, SamModel):
            raise TypeError(f"FocSAM: sam must be a SamModel or a registry name building one; got {type(sam).__name__}")
        if not isinstance(refiner, FocusRefiner):
            raise TypeError(f"FocSAM: refiner must be a FocusRefiner; got {type(refiner).__name__}")
        if refiner.embed_dim != sam.prompt_encoder.embed_dim:
            raise ValueError(
                f"FocSAM: refiner.embed_dim={refiner.embed_dim} must equal the SAM decoder width "
                f"{sam.prompt_encoder.embed_dim}"
            )
        if stage not in _STAGES:
            raise ValueError(f"FocSAM: stage must be one of {_STAGES}; got {stage!r}")
        self.refine_step = None if refine_step is None else check_int(refine_step, "refine_step", owner="FocSAM", minimum=0)
        self.refine_gamma = check_finite_float(refine_gamma, "refine_gamma", owner="FocSAM", positive=True)
        lo, hi = (check_finite_float(v, "expand_ratio_range", owner="FocSAM", positive=True) for v in expand_ratio_range)
        if lo > hi:
            raise ValueError(f"FocSAM: expand_ratio_range must be (lo, hi) with lo <= hi; got {(lo, hi)}")
        self.expand_ratio_range = (lo, hi)
        self.stage = stage
        self.sam = sam
        self.refiner = refiner
        # Frozen encoder in both stages (§4.1); stage 2 also freezes the decoder (as coded).
        self.sam.image_encoder.requires_grad_(False)
        decoder_trainable = stage == "decoder"
        self.sam.prompt_encoder.requires_grad_(decoder_trainable)
        self.sam.mask_decoder.requires_grad_(decoder_trainable)
        self.refiner.requires_grad_(stage == "refiner")
        self.train(self.training)

    def frozen_modules(self) -> tuple[nn.Module, ...]:
        """The parts this stage does not train: the image encoder, plus SAM's decoder in stage 2 (§4.1)."""
        if self.stage == "decoder":
            return (self.sam.image_encoder,)
        return (self.sam.image_encoder, self.sam.prompt_encoder, self.sam.mask_decoder)

    def train(self, mode: bool = True) -> "FocSAM":
        """``nn.Module.train``, except that :meth:`frozen_modules` stay in eval mode, so that a
        frozen part computes during training exactly what it computes at test (drop-path,
        dropout or batch-norm statistics of an encoder never change its training-time output)."""
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def checkpoint_absent_keys(self, state_dict: dict[str, torch.Tensor]) -> tuple[str, ...]:
        """A file without refiner keys (a SAM run, e.g. ``recipes/sam.yaml``'s, with
        ``checkpoint_prefix="model."``) may load: the refiner keeps its initialisation
        (see :mod:`segblocks.models.checkpoint`)."""
        return () if any(k.startswith("refiner.") for k in state_dict) else ("refiner.*",)

    # ------------------------------------------------------------------ protocol
    def encode(self, images: torch.Tensor, valid_size: torch.Tensor) -> FocSamState:
        """images (B, 3, H, W) 0–255, zero-padded outside ``valid_size`` → :class:`FocSamState`."""
        images = mean_pad(images, valid_size, self.sam.preprocess.pixel_mean)  # B x 3 x H x W
        with torch.no_grad():  # the encoder is frozen in both stages
            sam_state = self.sam.encode(images)
        refine = self.refine_step if self.stage == "refiner" else None
        return FocSamState(sam=sam_state, refine_step=refine)

    def refine(
        self,
        state: SamState,
        points: torch.Tensor,
        labels: torch.Tensor,
        previous: torch.Tensor | None,
        expand_ratio: tuple[float, float] | None = None,
    ) -> torch.Tensor:
        """One refiner call: decoder on the original embeddings → (coarse logits, token) → refined (B, C, h, w).

        :func:`focus_refine` with this model's SAM and refiner.
        """
        return focus_refine(self.sam, self.refiner, state, points, labels, previous, expand_ratio=expand_ratio)

    def decode(self, state: FocSamState, prompts: ClickPrompts, previous: torch.Tensor | None) -> torch.Tensor:
        """Clicks + previous (B, 1, H/4, W/4) logits → (B, 1, H/4, W/4) logits; refines once at ``state.refine_step``."""
        if not isinstance(state, FocSamState):
            raise TypeError(f"FocSAM.decode: state must be the FocSamState from FocSAM.encode; got {type(state).__name__}")
        points, labels = prompts.points()  # B x N x 2, B x N
        step, state.step = state.step, state.step + 1
        if state.refined is None and state.refine_step is not None and step >= state.refine_step:
            state.refined = self.refine(state.sam, points, labels, previous)
        sam_state = state.sam if state.refined is None else state.sam._replace(embeddings=state.refined)
        return self.sam.decode(sam_state, points, labels, previous_logits=previous).masks

    def evaluation_variants(self) -> dict[str, Any]:
        """``{"sam": this model without the refiner, "focsam": this model}``, evaluated side by side."""
        return {"sam": _WithoutRefiner(self), "focsam": self}

    # ------------------------------------------------------------------ training
    def training_loss(
        self,
        batch: dict,
        *,
        gamma: float = 0.6,
        max_clicks: int = 20,
        inner_k: float = TRAIN_INNER_K,
        point_loss_weight: float = 0.0,
        generator: np.random.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """One training step's losses: stage 1 or 2 of the module docstring.

        Returns ``loss``, ``nfl``, ``num_clicks`` (+ ``point_loss``, and ``refine_step`` in stage 2).
        """
        if self.stage == "decoder":
            return iterative_training_loss(
                self, batch, gamma=gamma, max_clicks=max_clicks, inner_k=inner_k,
                point_loss_weight=point_loss_weight, generator=generator,
            )
        rng = generator if generator is not None else np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
        images, gt, ignore = batch["image"], batch["mask"], batch["ignore"]
        B, H, W = gt.shape
        k = sample_num_clicks(gamma=gamma, max_clicks=max_clicks, generator=rng)
        r = sample_num_clicks(gamma=self.refine_gamma, max_clicks=k, generator=rng)
        state = self.encode(images, batch["valid_size"]).sam
        size = torch.tensor([[H, W]], device=gt.device).expand(B, 2)

        def round_(st: SamState, clicks: Clicks, previous):
            prompts = ClickPrompts(clicks=clicks, frame_size=size, input_size=size)
            return self.sam.decode(st, *prompts.points(), previous_logits=previous).masks

        def add_click(clicks: Clicks, logits: torch.Tensor) -> Clicks:
            pred = logits_to_input(logits, (H, W))[:, 0] > 0  # B x H x W
            coords, positive, placed = next_click(pred, gt, ignore=ignore, clicked=clicks.to_mask(H, W), inner_k=inner_k)
            return clicks.append(coords, positive, placed)

        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                coords, positive, placed = next_click(torch.zeros_like(gt), gt, ignore=ignore, inner_k=1.0)
                clicks = Clicks.empty(B, device=gt.device).append(coords, positive, placed)
                previous = None
                for _ in range(r):
                    previous = round_(state, clicks, previous)
                    clicks = add_click(clicks, previous)
                refine_clicks, refine_previous = clicks, previous
                if k > r:
                    prompts = ClickPrompts(clicks=clicks, frame_size=size, input_size=size)
                    refined = self.refine(state, *prompts.points(), previous)
                    for _ in range(k - r):
                        previous = round_(state._replace(embeddings=refined), clicks, previous)
                        clicks = add_click(clicks, previous)
        finally:
            self.train(was_training)
        ratio = tuple(float(v) for v in rng.uniform(*self.expand_ratio_range, size=2))  # (h, w)
        prompts = ClickPrompts(clicks=refine_clicks, frame_size=size, input_size=size)
        refined = self.refine(state, *prompts.points(), refine_previous, expand_ratio=ratio)  # grad: refiner only
        logits = round_(state._replace(embeddings=refined), clicks, previous)
        logits = logits_to_input(logits, (H, W))  # B x 1 x H x W
        target = torch.where(ignore, torch.full_like(gt, 255, dtype=torch.long), gt.long())  # B x H x W
        nfl = normalized_focal_loss(logits, target)
        out = {
            "loss": nfl, "nfl": nfl, "num_clicks": clicks.num_clicks.float().mean(),
            "refine_step": torch.tensor(float(r), device=gt.device),
        }
        if point_loss_weight > 0:
            ptl = point_loss(logits, clicks.coords, clicks.labels)
            out["point_loss"] = ptl
            out["loss"] = nfl + point_loss_weight * ptl
        return out


def focus_refine(
    sam: SamModel,
    refiner: FocusRefiner,
    state: SamState,
    points: torch.Tensor,
    labels: torch.Tensor,
    previous: torch.Tensor | None,
    *,
    expand_ratio: tuple[float, float] | None = None,
) -> torch.Tensor:
    """FocSAM's refine step (§3.1, Fig. 2): SAM's decoder, without gradients, on the original
    embeddings with the current clicks gives the coarse logits ``M^(K-1)`` and the click-fused mask
    token ``q_c^(K-1)`` (mask token 0); the refiner turns the embeddings into ``F_r^(K)``.

    As ``ClickMixSegmentorRefine`` of the authors' code (YouHuang67/focsam,
    ``focsam/segmentors/mixseg_refine.py``). Only ``sam.decode`` is used, so ``sam`` may be a
    decoder-only :class:`SamModel` (its image encoder is never called; see
    :mod:`segblocks.models.focsam.export`).

    Args:
        sam: the (frozen) SAM whose ``decode`` gives the coarse output.
        refiner: the :class:`~segblocks.blocks.focsam.FocusRefiner`.
        state: ``embeddings`` (B, C, h, w) of the padded input.
        points: (B, N, 2) ``(x, y)`` click coordinates; ``labels``: (B, N) (1 / 0 / -1 padding).
        previous: (B, 1, 4h, 4w) logits of the previous click, or None (SAM's no-mask embedding).
        expand_ratio: focus-box expansion (default the refiner's, 1.4).

    Returns:
        (B, C, h, w) refined embeddings.
    """
    with torch.no_grad():
        out = sam.decode(state, points, labels, previous_logits=previous)
    s = sam.prompt_encoder.stride
    size = (int(state.embeddings.shape[-2]) * s, int(state.embeddings.shape[-1]) * s)  # padded input (H, W)
    return refiner(state.embeddings, out.masks, out.mask_tokens[:, :1], size, expand_ratio=expand_ratio)


class _WithoutRefiner:
    """A :class:`FocSAM` seen as plain SAM (same weights, refiner never called)."""

    def __init__(self, model: FocSAM) -> None:
        self.model = model

    def encode(self, images: torch.Tensor, valid_size: torch.Tensor) -> FocSamState:
        state = self.model.encode(images, valid_size)
        state.refine_step = None
        return state

    def decode(self, state: FocSamState, prompts: ClickPrompts, previous: torch.Tensor | None) -> torch.Tensor:
        return self.model.decode(state, prompts, previous)


# ----------------------------------------------------------------------------- presets


def _focsam(sam: SamModel, refiner_kw: dict, **kw: Any) -> FocSAM:
    return FocSAM(sam=sam, refiner=FocusRefiner(embed_dim=sam.prompt_encoder.embed_dim, **refiner_kw), **kw)


@register_model
def focsam_vit_h_refiner(*, masked_shift: bool = False) -> FocusRefiner:
    """The paper's focus refiner alone (§4.1): 12 blocks, window 16, 256-d, 8 heads, MLP ratio 4.

    The authors' refiner weights load with ``checkpoint=..., checkpoint_prefix="refine_head."``
    (their key names are kept: YouHuang67/focsam ``focsam/refine_heads/focus_refiner.py``).
    """
    return FocusRefiner(embed_dim=256, depth=12, num_heads=8, mlp_ratio=4.0, window_size=16, masked_shift=masked_shift)


@register_model
def focsam_vit_b(*, stage: str = "refiner", refine_step: int | None = 1, masked_shift: bool = False) -> FocSAM:
    """FocSAM over SAM ViT-B (:func:`~segblocks.models.sam.sam_vit_b`) with the paper's refiner (§4.1).

    The paper uses SAM ViT-H; the decoder and refiner are the same 256-d modules for every SAM size.
    """
    from segblocks.models.sam.sam import sam_vit_b

    return FocSAM(sam=sam_vit_b(), refiner=focsam_vit_h_refiner(masked_shift=masked_shift), stage=stage, refine_step=refine_step)


@register_model
def focsam_tiny(*, stage: str = "refiner", refine_step: int | None = 1, masked_shift: bool = False) -> FocSAM:
    """CPU-sized FocSAM (not from the paper): :func:`~segblocks.models.sam.sam_tiny` (64-d) + a 4-block,
    window-4, 4-head refiner (the embeddings of a 128 px input are 8 × 8)."""
    from segblocks.models.sam.sam import sam_tiny

    return _focsam(
        sam_tiny(), dict(depth=4, num_heads=4, mlp_ratio=2.0, window_size=4, masked_shift=masked_shift),
        stage=stage, refine_step=refine_step,
    )


@register_model
def focsam_hrsam_tiny(*, stage: str = "refiner", refine_step: int | None = 1) -> FocSAM:
    """FocSAM's refiner over the CPU-sized HRSAM encoder (:func:`~segblocks.models.hrsam.sam_hrsam_tiny`):
    the refiner only needs SAM-shaped embeddings (not from either paper)."""
    from segblocks.models.hrsam.sam_hrsam import sam_hrsam_tiny

    return _focsam(sam_hrsam_tiny(), dict(depth=4, num_heads=4, mlp_ratio=2.0, window_size=4), stage=stage, refine_step=refine_step)
