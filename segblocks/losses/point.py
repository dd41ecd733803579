"""FocSAM point loss (PTL; "FocSAM: Delving Deeply into Focused Objects in Segmenting Anything", §3.4, Eq. 10).

``PTL(M, {(x_i, y_i, z_i)}) = Σ_i (M(x_i, y_i) - z_i)²``: the predicted probability at every click
should equal the click's label (1 positive, 0 negative). Eq. 10 writes a sum; the authors' code
(``clk_loss`` in YouHuang67/focsam, ``focsam/segmentors/mixseg_refine.py``) takes the **mean over the valid clicks of the whole batch**,
which is the default here (``reduction='sum'`` gives Eq. 10). Clicks are read at the resolution of
the logits, so they must be given in that resolution's coordinates (the code uses the original
image resolution).
"""
from __future__ import annotations

import torch
from torch import nn

from segblocks.losses.focal import binary_logits, check_reduction

__all__ = ["PointLoss", "point_loss"]


def point_loss(
    logits: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor, *, reduction: str = "mean"
) -> torch.Tensor:
    """Squared error between σ(logit) at each click and the click label.

    Args:
        logits: (B, 1, H, W) logits, or (B, 2, H, W) reduced to ``x[:, 1] - x[:, 0]``.
        coords: (B, N, 2) integer click positions as ``(y, x)`` pixel indices into the logits.
        labels: (B, N) integer labels: 1 positive, 0 negative, -1 padding (ignored; its
            coordinates may be anything).
        reduction: ``'mean'`` over the valid clicks of the batch (authors' code), ``'sum'``
            (Eq. 10, summed over the batch) or ``'none'`` (B, N) with 0 at padding.

    Returns:
        Scalar loss, or (B, N) for ``reduction='none'``. With no valid click the mean is 0 and
        still attached to the graph of ``logits``.
    """
    check_reduction(reduction)
    x = binary_logits(logits)  # B x H x W
    b, h, w = x.shape
    if coords.dim() != 3 or coords.shape[0] != b or coords.shape[2] != 2:
        raise ValueError(f"coords must be (B={b}, N, 2) as (y, x), got {tuple(coords.shape)}")
    if labels.shape != coords.shape[:2]:
        raise ValueError(f"labels must be (B, N) = {tuple(coords.shape[:2])} like coords, got {tuple(labels.shape)}")
    if any(t.is_floating_point() or t.dtype == torch.bool for t in (coords, labels)):
        raise TypeError(f"coords and labels must be integer tensors, got {coords.dtype} and {labels.dtype}")
    valid = labels >= 0  # B x N
    cy, cx = coords.unbind(-1)  # B x N each
    bad = (labels > 1) | (valid & ((cy < 0) | (cy >= h) | (cx < 0) | (cx >= w)))
    if bad.any():
        raise ValueError(
            f"labels must be in {{-1, 0, 1}} and valid clicks must lie inside the {h}x{w} logits; "
            f"offending (y, x, label): {torch.cat([coords, labels[..., None]], -1)[bad][:5].tolist()}"
        )
    # Padding may hold any coordinates: point it at pixel 0 and mask its error out below.
    index = torch.where(valid, cy * w + cx, torch.zeros_like(cy))  # B x N
    prob = x.flatten(1).gather(1, index).sigmoid()  # B x N
    err = (prob - labels.clamp(min=0).to(prob.dtype)) ** 2 * valid  # B x N
    if reduction == "none":
        return err
    if reduction == "sum":
        return err.sum()
    return err.sum() / valid.sum().clamp(min=1)


class PointLoss(nn.Module):
    """Module wrapper of :func:`point_loss` (see it for the arguments)."""

    def __init__(self, *, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)

    def forward(self, logits: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """logits: (B, 1|2, H, W); coords: (B, N, 2) (y, x); labels: (B, N) → scalar or (B, N)."""
        return point_loss(logits, coords, labels, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
