"""Edge-token selection of DHA / HMoE (Inter2Former §3.4, Eq. 4-5).

``E = Pool(1{Conv(M²) - Conv(M)² > 0})`` (Eq. 4): the tokens whose ``16 x 16`` patch holds a pixel
with non-zero ``7 x 7`` local variance are the "edge" tokens ``Q_FA`` (Eq. 5); the others are
``Q_BSQ``. As in the authors' code (YouHuang67/inter2former, ``inter2former/necks/dpe_dha_hmoe.py``,
``UncertaintyMeasure``), ``M`` is the reference label map ``M_ref`` (clicks and previous
prediction), the mean filter uses **reflect** padding of 3, and every UNKNOWN pixel is selected
as well — so at the first click (all UNKNOWN) every token is an edge token.

A ``7 x 7`` window has non-zero variance exactly when it is not constant, i.e. when its maximum
and minimum differ; that integer test is used instead of the floating-point variance, so it is
exact. It is evaluated per token, never per pixel (two strided pools instead of two stride-1
``7 x 7`` pools over the full-resolution map, which took half of a 1024² decode):

* reflect padding by ``r = k // 2 < H, W`` only repeats values of the window's in-image part
  (the mirrored rows ``|i - 3|`` lie inside ``[0, i + 3]``), so a reflect-padded window is
  constant iff its part clipped to the image is;
* a ``16 x 16`` patch holds a pixel with a non-constant window iff the patch grown by ``r`` on
  every side (clipped) is not constant (``r ≥ 1``): if that box is not constant it holds two
  4-adjacent differing pixels (it is connected), and every adjacent pair of the grown box lies
  inside the window of some pixel of the patch; the converse is immediate.

So ``E`` is ``max ≠ min`` over ``(16 + 2r)``-wide boxes at stride 16 (``max_pool2d`` with padding
``r``, whose ``-inf`` padding clips), OR an UNKNOWN pixel in the patch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from segblocks.interactive.ref_label import RefLabel
from segblocks.ops._checks import check_int, check_tensor

__all__ = ["EdgeTokenSelection", "edge_token_mask", "select_edge_tokens"]


@dataclass(frozen=True, eq=False)
class EdgeTokenSelection:
    """Which tokens of a ``(B, h*w)`` batch are edge tokens, in the packed layouts ``varlen_attention`` takes.

    Attributes:
        mask: ``(B, L)`` bool, ``L = h * w``; True = edge token (``Q_FA``, routed in HMoE).
        idxs: ``(M,)`` int64 flat indices into ``B * L`` of the edge tokens, sample-major.
        inv_idxs: ``(B*L - M,)`` int64 flat indices of the other tokens (``Q_BSQ``).
        lengths: edge tokens per sample (ragged; zeros allowed).
        inv_lengths: other tokens per sample.
        tokens_per_sample: ``L``.
    """

    mask: torch.Tensor
    idxs: torch.Tensor
    inv_idxs: torch.Tensor
    lengths: tuple[int, ...]
    inv_lengths: tuple[int, ...]
    tokens_per_sample: int

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> "EdgeTokenSelection":
        """Build from a ``(B, L)`` bool mask."""
        check_tensor(mask, "mask", owner="EdgeTokenSelection", shape=("B", "L"), dtype="bool")
        B, L = mask.shape
        flat = mask.reshape(-1)
        counts = mask.sum(1).tolist()
        return cls(
            mask=mask,
            idxs=flat.nonzero().squeeze(1),
            inv_idxs=(~flat).nonzero().squeeze(1),
            lengths=tuple(counts),
            inv_lengths=tuple(L - c for c in counts),
            tokens_per_sample=L,
        )

    @property
    def batch_size(self) -> int:
        return self.mask.shape[0]


def edge_token_mask(ref_label: torch.Tensor, grid: tuple[int, int], *, kernel_size: int = 7) -> torch.Tensor:
    """Eq. 4 on ``M_ref``: ``(B, H, W)`` integer → ``(B, h*w)`` bool edge-token mask (module docstring).

    Args:
        ref_label: ``(B, H, W)`` (or ``(B, 1, H, W)``) integer map, ``H, W`` multiples of the grid.
        grid: token grid ``(h, w)``.
        kernel_size: odd local window (7).
    """
    owner = "edge_token_mask"
    kernel_size = check_int(kernel_size, "kernel_size", owner=owner, minimum=1)
    if kernel_size % 2 == 0:
        raise ValueError(f"{owner}: kernel_size must be odd; got {kernel_size}")
    if isinstance(ref_label, torch.Tensor) and ref_label.dim() == 4:
        check_tensor(ref_label, "ref_label", owner=owner, shape=("B", ("1", 1), "H", "W"), dtype="integer")
        ref_label = ref_label[:, 0]
    B, H, W = check_tensor(ref_label, "ref_label", owner=owner, shape=("B", "H", "W"), dtype="integer")
    h, w = (check_int(v, "grid", owner=owner, minimum=1) for v in grid)
    if H % h or W % w:
        raise ValueError(f"{owner}: ref_label size {H}x{W} must be a multiple of the grid {h}x{w}")
    if B == 0:
        return torch.zeros(0, h * w, dtype=torch.bool, device=ref_label.device)
    r = kernel_size // 2
    if r >= H or r >= W:
        raise ValueError(f"{owner}: reflect padding {r} needs H, W > {r}; got {H}x{W}")
    sh, sw = H // h, W // w  # patch size
    x = ref_label[:, None].to(torch.float32)  # B x 1 x H x W (values 0..4: exact in float)
    unknown = F.max_pool2d((x == RefLabel.UNKNOWN).to(torch.float32), (sh, sw)) > 0  # B x 1 x h x w
    if r == 0:  # 1 x 1 windows are constant
        return unknown.reshape(B, h * w)
    kernel = (sh + 2 * r, sw + 2 * r)  # the patch grown by r (padding r <= half the kernel: allowed)
    hi = F.max_pool2d(x, kernel, stride=(sh, sw), padding=r)  # B x 1 x h x w
    lo = -F.max_pool2d(-x, kernel, stride=(sh, sw), padding=r)
    return ((hi != lo) | unknown).reshape(B, h * w)


def select_edge_tokens(ref_label: torch.Tensor, grid: tuple[int, int], *, kernel_size: int = 7) -> EdgeTokenSelection:
    """:func:`edge_token_mask` packed as a :class:`EdgeTokenSelection` (Eq. 5)."""
    return EdgeTokenSelection.from_mask(edge_token_mask(ref_label, grid, kernel_size=kernel_size))
