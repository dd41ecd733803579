"""Reference label map ``M_ref`` of InterFormer / Inter2Former (Inter2Former §3.3, DPE).

``M_ref`` keeps, per pixel, what the clicks and the previous predictions say about it, in five
states (:class:`RefLabel`). The paper describes the states; the exact transition rules below
follow the authors' code (YouHuang67/inter2former, ``inter2former/utils/update_ref_labels.py``;
YouHuang67/InterFormer, ``interformer/utils/uncertainty.py``). Per
interaction step: click -> :func:`update_ref_label` with :func:`points_to_ref_label` of the new
clicks -> forward -> :func:`update_ref_label_by_prediction`. A fresh map is
:func:`initial_ref_label` (all UNKNOWN).
"""
from __future__ import annotations

from enum import IntEnum

import torch

from segblocks.interactive.clicker import Clicks
from segblocks.interactive.encodings import disk_maps

__all__ = [
    "RefLabel",
    "initial_ref_label",
    "points_to_ref_label",
    "update_ref_label",
    "update_ref_label_by_prediction",
]


class RefLabel(IntEnum):
    """The five ``M_ref`` states."""

    DEFINITE_BG = 0
    POSSIBLE_BG = 1
    UNKNOWN = 2
    POSSIBLE_FG = 3
    DEFINITE_FG = 4


_INTEGER_DTYPES = (torch.uint8, torch.int16, torch.int32, torch.int64)


def initial_ref_label(
    batch_size: int, height: int, width: int, *, device: torch.device | str | None = None
) -> torch.Tensor:
    """``(B, H, W)`` uint8 map, all :attr:`RefLabel.UNKNOWN`."""
    return torch.full((batch_size, height, width), int(RefLabel.UNKNOWN), dtype=torch.uint8, device=device)


def points_to_ref_label(
    clicks: Clicks, height: int, width: int, *, inner_radius: float = 5.0, outer_radius: float = 0.0
) -> torch.Tensor:
    """Label map of a set of (new) clicks alone.

    Starting from UNKNOWN: pixels within ``inner_radius + outer_radius`` of a click become
    POSSIBLE_FG / POSSIBLE_BG, and UNKNOWN where both polarities reach them; pixels within
    ``inner_radius`` become DEFINITE_FG / DEFINITE_BG. Where definite disks of both polarities
    overlap, the polarity whose *first* click comes later in the sequence wins (the authors
    write the polarities in order of first appearance). Distances are Euclidean between pixel
    indices (``<=``); the authors' configs use ``inner_radius=5, outer_radius=0``.

    Args:
        clicks: the clicks made since the last update (``B`` samples, any counts).
        height, width: map size.

    Returns:
        ``(B, H, W)`` uint8 with values in 0..4.
    """
    if inner_radius < 0 or outer_radius < 0:
        raise ValueError(f"radii must be >= 0; got inner {inner_radius}, outer {outer_radius}")
    B, N = clicks.labels.shape
    outer = disk_maps(clicks, height, width, radius=inner_radius + outer_radius, dtype=torch.bool)  # B x 2 x H x W
    inner = disk_maps(clicks, height, width, radius=inner_radius, dtype=torch.bool)  # B x 2 x H x W
    out = initial_ref_label(B, height, width, device=clicks.coords.device)
    out[outer[:, 0]] = RefLabel.POSSIBLE_FG
    out[outer[:, 1]] = RefLabel.POSSIBLE_BG
    out[outer[:, 0] & outer[:, 1]] = RefLabel.UNKNOWN
    out[inner[:, 0]] = RefLabel.DEFINITE_FG
    out[inner[:, 1]] = RefLabel.DEFINITE_BG
    positive_last = (_first_index(clicks.labels, 1) > _first_index(clicks.labels, 0)).view(B, 1, 1)  # B x 1 x 1
    out[inner[:, 0] & inner[:, 1] & positive_last] = RefLabel.DEFINITE_FG
    return out


def update_ref_label(x: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Merge the label map of new clicks into the running map.

    Per pixel, by the value of ``new``: DEFINITE_* overwrite anything (the opposite definite
    label included); UNKNOWN changes nothing; POSSIBLE_* turn UNKNOWN into that value and the
    opposite POSSIBLE_* into UNKNOWN, and leave definite labels alone.

    Args:
        x: ``(B, H, W)`` integer running map (values 0..4).
        new: ``(B, H, W)`` integer map from :func:`points_to_ref_label`.

    Returns:
        ``(B, H, W)`` map with the dtype of ``x`` (a new tensor).
    """
    _check_ref(x=x, new=new)
    out = x.clone()
    for mode in RefLabel:
        _update_with_mask(out, new == mode, mode)
    return out


def update_ref_label_by_prediction(x: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Feed a prediction back: ``pred`` acts as POSSIBLE_FG where True and POSSIBLE_BG where False.

    So UNKNOWN becomes POSSIBLE_{FG,BG}, a POSSIBLE label contradicted by the prediction becomes
    UNKNOWN, and definite labels never change.

    Args:
        x: ``(B, H, W)`` integer running map.
        pred: ``(B, H, W)`` bool prediction.

    Returns:
        ``(B, H, W)`` map with the dtype of ``x`` (a new tensor).
    """
    _check_ref(x=x)
    if pred.dtype != torch.bool or pred.shape != x.shape:
        raise TypeError(f"pred must be a bool tensor of shape {tuple(x.shape)}; got {pred.dtype} {tuple(pred.shape)}")
    out = x.clone()
    _update_with_mask(out, pred, RefLabel.POSSIBLE_FG)
    _update_with_mask(out, ~pred, RefLabel.POSSIBLE_BG)
    return out


def _update_with_mask(out: torch.Tensor, mask: torch.Tensor, mode: RefLabel) -> None:
    """In-place rule of one incoming label (``update_with_mask`` in YouHuang67/inter2former, ``inter2former/utils/update_ref_labels.py``)."""
    if mode in (RefLabel.DEFINITE_BG, RefLabel.DEFINITE_FG):
        out[mask] = mode
    elif mode in (RefLabel.POSSIBLE_BG, RefLabel.POSSIBLE_FG):
        opposite = RefLabel.POSSIBLE_FG if mode == RefLabel.POSSIBLE_BG else RefLabel.POSSIBLE_BG
        was_unknown, was_opposite = mask & (out == RefLabel.UNKNOWN), mask & (out == opposite)
        out[was_unknown] = mode
        out[was_opposite] = RefLabel.UNKNOWN


def _first_index(labels: torch.Tensor, value: int) -> torch.Tensor:
    """``(B,)`` index of the first click with ``value`` (``N`` when there is none)."""
    N = labels.shape[1]
    order = torch.arange(N, device=labels.device).expand_as(labels)  # B x N
    return torch.where(labels == value, order, N).min(dim=1).values if N else labels.new_zeros(labels.shape[0])


def _check_ref(**maps: torch.Tensor) -> None:
    shape = None
    for name, m in maps.items():
        if not isinstance(m, torch.Tensor) or m.dtype not in _INTEGER_DTYPES or m.dim() != 3:
            got = f"{m.dtype} {tuple(m.shape)}" if isinstance(m, torch.Tensor) else type(m).__name__
            raise TypeError(f"{name} must be an integer tensor (B, H, W); got {got}")
        if shape is not None and m.shape != shape:
            raise ValueError(f"{name} must have shape {tuple(shape)}; got {tuple(m.shape)}")
        if m.numel() and (int(m.min()) < 0 or int(m.max()) > 4):
            raise ValueError(f"{name} must hold values 0..4; got range [{int(m.min())}, {int(m.max())}]")
        shape = m.shape
