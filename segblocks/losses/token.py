"""MST's token losses (Xu et al., "MST: Adaptive Multi-Scale Tokens Guided Interactive
Segmentation", §III-C, Eq. 6-8; authors' code hahamyt/mst, ``isegm/model/losses.py``).

* :func:`triplet_token_loss` — Eq. 6-7: the selected tokens are split by the ground truth
  downsampled to their grid (Eq. 6); with the click kernel ``q`` as anchor,
  ``d_p = mean ‖q − k⁺‖₂``, ``d_n = mean ‖q − k⁻‖₂`` and the soft-margin loss
  ``log(1 + exp(d_p − d_n))`` (the authors' ``TripletLoss(margin=None)`` = ``SoftMarginLoss(d_n − d_p, 1)``).
  Samples without a positive click, or whose selection lacks positives or negatives, are skipped.
* :func:`score_focal_loss` — the authors' extra ``ScoreLoss``: focal loss (α 0.25, γ 2, RITM's
  ``FocalLoss`` on probabilities) of the similarity scores against the downsampled ground truth.
* :func:`token_targets` — the ground truth on a token grid (nearest, as ``F.interpolate``).

Both losses return per-sample values and a mask of the samples that count, so a model can
average them over blocks and scales (the authors average over all valid (block, scale, sample)
terms).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from segblocks.ops._checks import check_tensor

__all__ = ["score_focal_loss", "token_targets", "triplet_token_loss"]


def token_targets(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(B, H, W)`` labels (1 = object; anything else, ignore 255 included, = background) to the
    ``(B, h·w)`` bool token grid by nearest sampling (pixel ``(⌊i H/h⌋, ⌊j W/w⌋)``)."""
    check_tensor(mask, "mask", owner="token_targets", shape=("B", "H", "W"), dtype=None)
    fg = (mask == 1).float()[:, None]  # B x 1 x H x W
    return F.interpolate(fg, size=tuple(grid), mode="nearest")[:, 0].flatten(1) > 0.5  # B x h·w


def triplet_token_loss(
    kernel: torch.Tensor, tokens: torch.Tensor, index: torch.Tensor, target: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6-7 per sample.

    Args:
        kernel: ``(B, C)`` anchors ``q = f_kernel``.
        tokens: ``(B, k, C)`` selected tokens ``f_j^{k_j}``.
        index: ``(B, k)`` int64 their indices on the token grid.
        target: ``(B, N)`` bool ground truth on that grid (:func:`token_targets`).
        valid: ``(B,)`` bool samples with a kernel (a positive click).

    Returns:
        ``loss`` ``(B,)`` (0 where not counted) and ``counted`` ``(B,)`` bool.
    """
    check_tensor(kernel, "kernel", owner="triplet_token_loss", shape=("B", "C"))
    check_tensor(tokens, "tokens", owner="triplet_token_loss", shape=(kernel.shape[0], None, kernel.shape[1]))
    check_tensor(index, "index", owner="triplet_token_loss", shape=(kernel.shape[0], tokens.shape[1]), dtype="integer")
    check_tensor(target, "target", owner="triplet_token_loss", shape=(kernel.shape[0], None), dtype="bool")
    check_tensor(valid, "valid", owner="triplet_token_loss", shape=(kernel.shape[0],), dtype="bool")
    pos = torch.gather(target, 1, index)  # B x k, Eq. 6
    neg = ~pos
    dist = torch.linalg.vector_norm(tokens - kernel[:, None, :], dim=-1)  # B x k
    n_pos, n_neg = pos.sum(1), neg.sum(1)
    d_p = (dist * pos).sum(1) / n_pos.clamp(min=1)
    d_n = (dist * neg).sum(1) / n_neg.clamp(min=1)
    counted = valid & (n_pos > 0) & (n_neg > 0)
    loss = F.softplus(d_p - d_n) * counted  # log(1 + exp(d_p − d_n)), Eq. 7
    return loss, counted


def score_focal_loss(
    scores: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, *, alpha: float = 0.25, gamma: float = 2.0,
    eps: float = 1e-9,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Focal loss of similarity scores (probabilities in [0, 1]) per sample (RITM ``FocalLoss``,
    ``from_logits=True`` on probabilities, size-averaged): ``−α_t (1 − p_t)^γ log(min(p_t + ε, 1))``
    averaged over the tokens, ``α_t = α`` on object tokens and ``1 − α`` elsewhere.

    Args:
        scores: ``(B, N)`` scores ``s_j``.
        target: ``(B, N)`` bool ground truth on the token grid.
        valid: ``(B,)`` bool samples with scores (a positive click).

    Returns:
        ``loss`` ``(B,)`` (0 where not counted) and ``counted`` (= ``valid``).
    """
    check_tensor(scores, "scores", owner="score_focal_loss", shape=("B", "N"))
    check_tensor(target, "target", owner="score_focal_loss", shape=tuple(scores.shape), dtype="bool")
    check_tensor(valid, "valid", owner="score_focal_loss", shape=(scores.shape[0],), dtype="bool")
    y = target.to(scores.dtype)
    pt = 1 - (y - scores).abs()
    alpha_t = torch.where(target, torch.full_like(scores, alpha), torch.full_like(scores, 1 - alpha))
    loss = -alpha_t * (1 - pt) ** gamma * torch.log(torch.clamp(pt + eps, max=1.0))  # B x N
    loss = loss.sum(1) / (scores.shape[1] + eps)
    return loss * valid, valid
