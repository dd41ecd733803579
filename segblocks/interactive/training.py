"""Iterative click training over any :class:`~segblocks.interactive.protocol.InteractiveModel`.

RITM's scheme as InterFormer, Inter2Former (§4.2), HRSAM and FocSAM train with it (Inter2Former
code, YouHuang67/inter2former, ``inter2former/segmentors/interseg_bsqa.py``; click rule in the
shared ``engine/utils/click_fast.py``). Per batch:

1. draw ``k`` with ``P(k) ∝ γ^k``, ``k ∈ {0..max_clicks}`` (one ``k`` for the whole batch, as
   the authors do);
2. :func:`simulate_clicks`, without gradients and in eval mode: place the first click from an
   empty prediction with the evaluation rule (``inner_k=1``), then ``k`` times decode →
   ``logit > 0`` → add a click with the training rule (``inner_k=1.7``), feeding the previous
   decode output back. Samples whose error vanished get no further click, so click counts
   differ within a batch (padding label −1);
3. one decode with gradients on all the clicks and the last previous output, then NFL (+ the
   optional FocSAM point loss, Eq. 10) on the logits resized to the crop, plus any extra terms the
   model returns from an optional ``auxiliary_losses(target)`` method called right after that
   decode (e.g. MST's token losses, MST Eq. 8): a ``{name: tensor}`` dict added to the loss as is.

Optionally (``initial_clicks > 0``) the first clicks come from a RITM-style multi-point sampler
(RITM §3 / MST §IV-A: up to 24 clicks, decay γ 0.8; authors' ``MultiPointSampler(24,
prob_gamma=0.8)`` in hahamyt/mst ``models/adaptivevit_base448_cclvs.py``): per batch
``n ∈ {1..initial_clicks}`` with ``P(n) ∝ γ^(n−1)`` and ``m ∈ {0..initial_clicks}`` with ``P(m) ∝ γ^m``,
then :func:`~segblocks.interactive.clicker.sample_initial_clicks` places up to ``n`` positives and
up to ``m // 2`` negatives per negative region; samples it leaves without clicks get the usual
first click.

The image is encoded **once per step, with gradients**, and the simulated decodes reuse that
state under ``no_grad``. Inter2Former instead runs its backbone twice (no-grad in eval mode for
the simulation, then with gradients); the two agree unless the encoder has batch-norm or
dropout, and encoding once halves the encoder cost.

The evaluation loop is :func:`segblocks.interactive.evaluation.evaluate_clicks`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from segblocks.interactive.clicker import (
    TRAIN_INNER_K,
    Clicks,
    next_click,
    sample_initial_clicks,
    sample_num_clicks,
)
from segblocks.interactive.protocol import ClickPrompts, InteractiveModel, logits_to_input
from segblocks.losses import normalized_focal_loss, point_loss

__all__ = ["iterative_training_loss", "simulate_clicks"]


def _frame(gt: torch.Tensor) -> torch.Tensor:
    B, H, W = gt.shape
    return torch.tensor([[H, W]], device=gt.device).expand(B, 2)  # B x 2: clicks live in the input frame


def simulate_clicks(
    model: InteractiveModel,
    state: Any,
    gt: torch.Tensor,
    ignore: torch.Tensor,
    num_clicks: int,
    *,
    inner_k: float = TRAIN_INNER_K,
    initial: Clicks | None = None,
) -> tuple[Clicks, torch.Tensor | None]:
    """Step 2 of the module docstring: the first click, then ``num_clicks`` predict → click rounds.

    Runs without gradients; an ``nn.Module`` model is put in eval mode and restored afterwards.

    Args:
        model: ``encode`` / ``decode`` model.
        state: ``model.encode`` output for the batch.
        gt: ``(B, H, W)`` bool objects in the input frame.
        ignore: ``(B, H, W)`` bool pixels never clicked.
        num_clicks: ``k``, the prediction-driven clicks after the first.
        inner_k: candidate threshold of the clicks after the first (1.7 in the authors' configs).
        initial: clicks placed before the simulation (e.g. a multi-point sampler's); samples
            without any get the usual first click.

    Returns:
        The clicks (``1 + k`` at most per sample) and the last decode output (None if ``k = 0``).
    """
    if num_clicks < 0:
        raise ValueError(f"num_clicks must be >= 0; got {num_clicks}")
    B, H, W = gt.shape
    size = _frame(gt)
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    try:
        with torch.no_grad():
            clicks = Clicks.empty(B, device=gt.device) if initial is None else initial
            coords, positive, placed = next_click(torch.zeros_like(gt), gt, ignore=ignore, inner_k=1.0)
            clicks = clicks.append(coords, positive, placed & (clicks.num_clicks == 0))
            previous = None
            for _ in range(num_clicks):
                previous = model.decode(state, ClickPrompts(clicks=clicks, frame_size=size, input_size=size), previous)
                pred = logits_to_input(previous, (H, W))[:, 0] > 0  # B x H x W
                coords, positive, placed = next_click(
                    pred, gt, ignore=ignore, clicked=clicks.to_mask(H, W), inner_k=inner_k
                )
                clicks = clicks.append(coords, positive, placed)
    finally:
        if was_training:
            model.train()
    return clicks, previous


def iterative_training_loss(
    model: InteractiveModel,
    batch: dict,
    *,
    gamma: float = 0.6,
    max_clicks: int = 20,
    inner_k: float = TRAIN_INNER_K,
    point_loss_weight: float = 0.0,
    initial_clicks: int = 0,
    initial_gamma: float = 0.8,
    generator: np.random.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """One training step's losses (module docstring, steps 1-3).

    Args:
        model: ``encode`` / ``decode`` model (in training mode).
        batch: ``image`` (B, 3, H, W) 0–255, ``mask`` (B, H, W) bool, ``ignore`` (B, H, W) bool,
            ``valid_size`` (B, 2) (:func:`~segblocks.data.interactive.collate_interactive`).
        gamma, max_clicks: ``P(k) ∝ γ^k`` over ``0..max_clicks`` (0.6 and 20 for COCO).
        inner_k: candidate threshold of the simulated clicks after the first.
        point_loss_weight: weight of the FocSAM point loss (0: off).
        initial_clicks, initial_gamma: the multi-point first clicks of the module docstring
            (0: off, a single first click; MST: 24 and 0.8).
        generator: random source of ``k`` (default: torch's global generator, like the simulated clicks).

    Returns:
        ``loss`` (with gradients), ``nfl``, ``point_loss`` (when weighted), the model's
        auxiliary terms (when it has ``auxiliary_losses``), ``num_clicks`` (mean clicks per sample).
    """
    images, gt, ignore = batch["image"], batch["mask"], batch["ignore"]
    H, W = gt.shape[-2:]
    k = sample_num_clicks(gamma=gamma, max_clicks=max_clicks, generator=generator)
    state = model.encode(images, batch["valid_size"])
    initial = None
    if initial_clicks > 0:
        n_pos = 1 + sample_num_clicks(gamma=initial_gamma, max_clicks=initial_clicks - 1, generator=generator)
        n_neg = sample_num_clicks(gamma=initial_gamma, max_clicks=initial_clicks, generator=generator)
        initial = sample_initial_clicks(gt & ~ignore, max_pos=n_pos, max_neg=n_neg // 2, min_area=1,
                                        generator=generator)
    clicks, previous = simulate_clicks(model, state, gt, ignore, k, inner_k=inner_k, initial=initial)
    size = _frame(gt)
    prompts = ClickPrompts(clicks=clicks, frame_size=size, input_size=size)
    logits = logits_to_input(model.decode(state, prompts, previous), (H, W))  # B x 1 x H x W
    target = torch.where(ignore, torch.full_like(gt, 255, dtype=torch.long), gt.long())  # B x H x W
    nfl = normalized_focal_loss(logits, target)
    out = {"loss": nfl, "nfl": nfl, "num_clicks": clicks.num_clicks.float().mean()}
    if point_loss_weight > 0:
        ptl = point_loss(logits, clicks.coords, clicks.labels)
        out["point_loss"] = ptl
        out["loss"] = nfl + point_loss_weight * ptl
    extra = getattr(model, "auxiliary_losses", None)
    if callable(extra):
        for name, value in extra(target).items():
            if name in out:
                raise ValueError(f"auxiliary_losses returned {name!r}, which the training loop already uses")
            out[name] = value
            out["loss"] = out["loss"] + value
    return out
