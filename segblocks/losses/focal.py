"""Focal losses for binary (interactive) segmentation.

* :func:`normalized_focal_loss` — the normalized focal loss (NFL) of RITM, the main training loss
  of FocSAM ("FocSAM: Delving Deeply into Focused Objects in Segmenting Anything", §3.4) and
  Inter2Former. The paper only names it; every detail below (α, γ,
  eps, the detached normaliser, ignore index 255, 2-channel logits, per-sample averaging) follows
  the authors' shared ``engine/losses/focal_loss.py`` (YouHuang67/focsam, YouHuang67/inter2former,
  YouHuang67/High-Resolution-Segment-Anything).
* :func:`sigmoid_focal_loss` — the RetinaNet focal loss (Lin et al. 2017, Eq. 5) with an ignore
  index, averaged per sample over the valid pixels.

Both take binary logits ``(B, 1, H, W)`` or two-class logits ``(B, 2, H, W)`` (reduced to the
single logit ``x[:, 1] - x[:, 0]``, as the authors' code does) and targets ``(B, H, W)`` or
``(B, 1, H, W)`` holding 0 (background), 1 (foreground) or ``ignore_index``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NormalizedFocalLoss", "SigmoidFocalLoss", "normalized_focal_loss", "sigmoid_focal_loss"]

_REDUCTIONS = ("mean", "sum", "none")
_FLOAT32_EPS = torch.finfo(torch.float32).eps


def binary_logits(logits: torch.Tensor) -> torch.Tensor:
    """Reduce ``(B, 1|2, H, W)`` logits to one foreground logit per pixel, ``(B, H, W)``.

    Two-class logits become ``x[:, 1] - x[:, 0]``: ``softmax(x)[:, 1] == sigmoid(x1 - x0)``.
    Half precision is upcast to float32 so the loss is computed in full precision.
    """
    if not torch.is_tensor(logits) or not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got {getattr(logits, 'dtype', type(logits))}")
    if logits.dim() != 4 or logits.shape[1] not in (1, 2):
        raise ValueError(f"logits must be (B, 1, H, W) or (B, 2, H, W), got {tuple(logits.shape)}")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]


def binary_inputs(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate and flatten logits and an ignore-aware binary target.

    Args:
        logits: (B, 1|2, H, W).
        target: (B, H, W) or (B, 1, H, W), values 0, 1 or ``ignore_index``.
        ignore_index: label of pixels that take no part in the loss, or None.

    Returns:
        ``x`` (B, H·W) foreground logits, ``y`` (B, H·W) targets in {0, 1} with ignored pixels set
        to 0, and ``valid`` (B, H·W) bool.
    """
    x = binary_logits(logits)
    if not torch.is_tensor(target) or target.dtype == torch.bool:
        got = getattr(target, "dtype", type(target))
        raise TypeError(f"target must be an integer or float tensor of labels, got {got}")
    if target.dim() == 4 and target.shape[1] == 1:
        target = target[:, 0]
    if target.shape != x.shape:
        raise ValueError(
            f"target must be (B, H, W) = {tuple(x.shape)} or (B, 1, H, W) to match logits "
            f"{tuple(logits.shape)}, got {tuple(target.shape)}"
        )
    x = x.flatten(1)  # B x HW
    target = target.flatten(1)  # B x HW
    valid = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    y = torch.where(valid, target, torch.zeros_like(target)).to(x.dtype)
    return x, y, valid


def check_reduction(reduction: str) -> str:
    """Return ``reduction`` if it is ``'mean' | 'sum' | 'none'``, else raise ValueError."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


def reduce_per_sample(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply ``'mean' | 'sum' | 'none'`` to a per-sample (or per-click) loss."""
    if check_reduction(reduction) == "mean":
        return loss.mean()
    return loss.sum() if reduction == "sum" else loss


def normalized_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float = 0.5,
    gamma: float = 2.0,
    eps: float = _FLOAT32_EPS,
    ignore_index: int | None = 255,
    detach_normalizer: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    """Normalized focal loss (RITM NFL), as used to train FocSAM and Inter2Former.

    Per sample, over its valid pixels ``w = [y != ignore]`` with ``p = σ(x)``::

        p_t   = 1 - |p - y|                     (1 on ignored pixels)
        β     = (1 - p_t)^γ
        s     = Σw / (Σβ + eps)                 (detached unless detach_normalizer=False)
        ℓ_pix = -α_t · s · β · log(min(p_t + eps, 1)) · w,   α_t = α if y = 1 else 1 - α
        loss  = Σ ℓ_pix / Σw                    (0 for a sample with no valid pixel)

    The normaliser ``s`` rescales the focal weights so they sum to the number of valid pixels;
    detaching it (``stop_delimiter_grad`` in the authors' code) keeps it a pure re-weighting.

    Args:
        logits: (B, 1, H, W) or (B, 2, H, W) logits.
        target: (B, H, W) or (B, 1, H, W) labels in {0, 1, ignore_index}.
        alpha: weight of foreground pixels; background gets ``1 - alpha``.
        gamma: focusing exponent.
        eps: stabiliser of the normaliser and the log (float32 machine epsilon, as in the code).
        ignore_index: label excluded from the loss, or None.
        detach_normalizer: stop the gradient through ``s``.
        reduction: ``'mean'`` over samples (the authors' trainer), ``'sum'`` or ``'none'`` (B,).

    Returns:
        Scalar loss, or (B,) for ``reduction='none'``.
    """
    x, y, valid = binary_inputs(logits, target, ignore_index)  # B x HW each
    w = valid.to(x.dtype)
    p = x.sigmoid()
    pt = torch.where(valid, 1 - (p - y).abs(), torch.ones_like(p))
    beta = (1 - pt) ** gamma
    n_valid = w.sum(1)  # B
    scale = n_valid / (beta.sum(1) + eps)  # B
    if detach_normalizer:
        scale = scale.detach()
    alpha_t = torch.where(y != 0, torch.full_like(y, alpha), torch.full_like(y, 1 - alpha))
    loss_pix = -alpha_t * scale[:, None] * beta * torch.log((pt + eps).clamp(max=1.0)) * w  # B x HW
    # A sample with no valid pixel has Σℓ = 0, so clamping its count to 1 returns exactly 0.
    per_sample = loss_pix.sum(1) / n_valid.clamp(min=1)
    return reduce_per_sample(per_sample, reduction)


def sigmoid_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    ignore_index: int | None = 255,
    reduction: str = "mean",
) -> torch.Tensor:
    """RetinaNet focal loss ``-α_t (1 - p_t)^γ log p_t`` (Lin et al. 2017, Eq. 5) with ignore.

    ``p_t = p`` and ``α_t = α`` on foreground, ``1 - p`` and ``1 - α`` on background. The loss is
    averaged over each sample's valid pixels (0 for a sample with none), then reduced over the
    batch; RetinaNet's normalisation by the anchor count has no pixel-level counterpart.

    Args:
        logits: (B, 1, H, W) or (B, 2, H, W) logits.
        target: (B, H, W) or (B, 1, H, W) labels in {0, 1, ignore_index}.
        alpha: foreground weight, or a negative value to disable α-balancing.
        gamma: focusing exponent.
        ignore_index: label excluded from the loss, or None.
        reduction: ``'mean'`` over samples, ``'sum'`` or ``'none'`` (B,).

    Returns:
        Scalar loss, or (B,) for ``reduction='none'``.
    """
    x, y, valid = binary_inputs(logits, target, ignore_index)  # B x HW each
    w = valid.to(x.dtype)
    p = x.sigmoid()
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")  # -log p_t, numerically stable
    p_t = p * y + (1 - p) * (1 - y)
    loss_pix = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss_pix = loss_pix * (alpha * y + (1 - alpha) * (1 - y))
    per_sample = (loss_pix * w).sum(1) / w.sum(1).clamp(min=1)
    return reduce_per_sample(per_sample, reduction)


class NormalizedFocalLoss(nn.Module):
    """Module wrapper of :func:`normalized_focal_loss` (see it for the arguments)."""

    def __init__(
        self,
        *,
        alpha: float = 0.5,
        gamma: float = 2.0,
        eps: float = _FLOAT32_EPS,
        ignore_index: int | None = 255,
        detach_normalizer: bool = True,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.alpha, self.gamma, self.eps = alpha, gamma, eps
        self.ignore_index, self.detach_normalizer = ignore_index, detach_normalizer
        self.reduction = check_reduction(reduction)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits: (B, 1|2, H, W); target: (B, H, W) → scalar or (B,)."""
        return normalized_focal_loss(
            logits, target, alpha=self.alpha, gamma=self.gamma, eps=self.eps, ignore_index=self.ignore_index,
            detach_normalizer=self.detach_normalizer, reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, ignore_index={self.ignore_index}, reduction={self.reduction!r}"


class SigmoidFocalLoss(nn.Module):
    """Module wrapper of :func:`sigmoid_focal_loss` (see it for the arguments)."""

    def __init__(
        self, *, alpha: float = 0.25, gamma: float = 2.0, ignore_index: int | None = 255, reduction: str = "mean"
    ) -> None:
        super().__init__()
        self.alpha, self.gamma, self.ignore_index = alpha, gamma, ignore_index
        self.reduction = check_reduction(reduction)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits: (B, 1|2, H, W); target: (B, H, W) → scalar or (B,)."""
        return sigmoid_focal_loss(
            logits, target, alpha=self.alpha, gamma=self.gamma, ignore_index=self.ignore_index, reduction=self.reduction
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, ignore_index={self.ignore_index}, reduction={self.reduction!r}"
