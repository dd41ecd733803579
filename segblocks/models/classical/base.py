"""Shared machinery of the classical (training-free) click baselines.

A classical seeded segmenter (random walker, GrabCut) behind the
:class:`~segblocks.interactive.protocol.InteractiveModel` interface:

* :meth:`ClassicalClickModel.encode` (once per image) resizes the padded input to a working grid
  whose longest side is at most ``max_side`` (bilinear with antialiasing; the algorithms' cost
  grows with the pixel count) and keeps the valid region of each image as ``uint8`` RGB;
* :meth:`ClassicalClickModel.decode` (once per click) turns every click so far into seeds --
  disks of radius ``seed_radius`` grid pixels around the clicks, positive and negative, as in the
  RITM-style disk encoding (:func:`~segblocks.interactive.encodings.disk_maps`) -- and runs the
  algorithm on the valid region; it returns logits over the whole working grid, which has the
  aspect of the padded input, so the caller's bilinear resize maps them back (the protocol of
  :meth:`~segblocks.interactive.protocol.InteractiveModel.decode`). Padding gets background logits.

A click at pixel ``c`` of its frame lands on grid pixel ``floor((c + 0.5) * s)`` with ``s`` the
frame-to-grid scale per axis (the pixel containing the click's centre). The algorithms come from
optional packages (the ``classical`` extra), imported when a model is built, never at import time.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segblocks.interactive.protocol import ClickPrompts, logits_to_input
from segblocks.ops._checks import check_finite_float, check_int, check_tensor

__all__ = ["CLASSICAL_EXTRA", "ClassicalClickModel", "ClassicalState", "border_ring", "click_seeds", "require_module"]

#: The pip extra that installs the classical baselines' dependencies.
CLASSICAL_EXTRA = "classical"
#: Magnitude of the logits of hard labels (and of the padding's background).
HARD_LOGIT = 10.0


def require_module(module: str, *, package: str, owner: str) -> Any:
    """Import ``module`` or raise an ``ImportError`` that names the ``classical`` extra."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{owner} needs {package} ({module} could not be imported: {err}); install it with "
            f"pip install 'segblocks[{CLASSICAL_EXTRA}]'"
        ) from err


@dataclass(frozen=True, eq=False)
class ClassicalState:
    """What :meth:`ClassicalClickModel.encode` keeps of a batch.

    Attributes:
        images: ``B`` arrays ``(h_b, w_b, 3)`` uint8 RGB, the valid region of each image on the grid.
        grid_size: ``(h, w)`` of the working grid (the padded input resized).
        input_size: ``(H, W)`` of the padded input.
        device: where :meth:`ClassicalClickModel.decode` returns its logits.
    """

    images: list[np.ndarray]
    grid_size: tuple[int, int]
    input_size: tuple[int, int]
    device: torch.device


def click_seeds(prompts: ClickPrompts, state: ClassicalState, radius: float) -> np.ndarray:
    """Seed labels of every click so far on the working grid.

    Each click paints the disk of ``radius`` grid pixels around it with its label, in click
    order, so where disks overlap the later click (the correction) wins; the disks are those of
    :func:`~segblocks.interactive.encodings.disk_maps` (``(i - y)**2 + (j - x)**2 <= radius**2``).

    Args:
        prompts: the clicks (in their frame) and the frame's size inside the padded input.
        state: the batch's :class:`ClassicalState` (grid and input sizes).
        radius: disk radius in grid pixels.

    Returns:
        ``(B, h, w)`` int8: 1 positive seed, 0 negative seed, -1 no seed.

    Raises:
        ValueError: a click outside its frame.
    """
    clicks = prompts.clicks.to("cpu")
    frame = prompts.frame_size.cpu().double()  # B x 2, (H0, W0)
    (H, W), (h, w) = state.input_size, state.grid_size
    to_grid = prompts.input_size.cpu().double() * torch.tensor([h / H, w / W], dtype=torch.float64) / frame  # B x 2
    valid = clicks.labels >= 0  # B x N
    coords = clicks.coords  # B x N x 2, (y, x) in the frame
    outside = valid & ((coords < 0) | (coords >= frame.long()[:, None])).any(-1)
    if bool(outside.any()):
        b, n = (int(i) for i in outside.nonzero()[0])
        raise ValueError(
            f"click {n} of sample {b} at (y, x) = {tuple(coords[b, n].tolist())} lies outside its "
            f"{tuple(frame[b].long().tolist())} frame"
        )
    grid = torch.floor((coords.double() + 0.5) * to_grid[:, None]).long()  # B x N x 2
    grid = torch.minimum(grid.clamp(min=0), torch.tensor([h - 1, w - 1]))
    seeds = np.full((clicks.batch_size, h, w), -1, dtype=np.int8)
    r = int(math.floor(radius))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]  # (2r+1) x (2r+1) offsets
    disk = dy**2 + dx**2 <= radius**2
    for b, n in valid.nonzero().tolist():  # row-major: each sample's clicks in order
        y, x = grid[b, n].tolist()
        y0, y1, x0, x1 = max(y - r, 0), min(y + r + 1, h), max(x - r, 0), min(x + r + 1, w)
        patch = disk[y0 - (y - r) : y1 - (y - r), x0 - (x - r) : x1 - (x - r)]
        seeds[b, y0:y1, x0:x1][patch] = int(clicks.labels[b, n])
    return seeds


def border_ring(height: int, width: int) -> np.ndarray:
    """``(height, width)`` bool, True on the one-pixel frame of the region."""
    ring = np.ones((height, width), dtype=bool)
    ring[1:-1, 1:-1] = False
    return ring


class ClassicalClickModel(nn.Module):
    """Base of the training-free click baselines (see the module docstring); no parameters.

    Subclasses implement :meth:`segment`.

    Args:
        seed_radius: radius of the seed disks around the clicks, in working-grid pixels (RITM's
            ``norm_radius`` 5 by default).
        max_side: longest side of the working grid (None: the padded input's own resolution).
    """

    def __init__(self, *, seed_radius: float = 5.0, max_side: int | None = 320) -> None:
        super().__init__()
        owner = type(self).__name__
        self.seed_radius = check_finite_float(seed_radius, "seed_radius", owner=owner)
        if self.seed_radius < 0:
            raise ValueError(f"{owner}: seed_radius must be >= 0, got {seed_radius}")
        self.max_side = None if max_side is None else check_int(max_side, "max_side", owner=owner, minimum=8)

    def extra_repr(self) -> str:
        return f"seed_radius={self.seed_radius}, max_side={self.max_side}"

    def encode(self, images: torch.Tensor, valid_size: torch.Tensor) -> ClassicalState:
        """images: (B, 3, H, W) float RGB 0-255, valid_size: (B, 2) -> :class:`ClassicalState`."""
        owner = f"{type(self).__name__}.encode"
        B, _, H, W = check_tensor(images, "images", owner=owner, shape=("B", ("C", 3), "H", "W"))
        check_tensor(valid_size, "valid_size", owner=owner, shape=(("B", B), 2), dtype="integer")
        if B and (bool((valid_size < 1).any()) or bool((valid_size[:, 0] > H).any()) or bool((valid_size[:, 1] > W).any())):
            raise ValueError(f"{owner}: valid_size must lie in [1, ({H}, {W})], got {valid_size.tolist()}")
        scale = 1.0 if self.max_side is None else min(1.0, self.max_side / max(H, W))
        h, w = max(1, round(H * scale)), max(1, round(W * scale))
        small = images.detach().float()
        if (h, w) != (H, W):
            small = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False, antialias=True)  # B x 3 x h x w
        small = small.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()  # B x h x w x 3
        crops = []
        for b, (vh, vw) in enumerate(valid_size.tolist()):
            gh, gw = min(h, math.ceil(vh * h / H)), min(w, math.ceil(vw * w / W))
            crops.append(np.ascontiguousarray(small[b, :gh, :gw]))
        return ClassicalState(images=crops, grid_size=(h, w), input_size=(H, W), device=images.device)

    def decode(self, state: ClassicalState, prompts: ClickPrompts, previous: torch.Tensor | None) -> torch.Tensor:
        """Clicks so far (+ this method's previous output) -> (B, 1, h, w) logits on the working grid."""
        owner = f"{type(self).__name__}.decode"
        if not isinstance(state, ClassicalState):
            raise TypeError(f"{owner}: state must be the ClassicalState returned by encode, got {type(state).__name__}")
        if not isinstance(prompts, ClickPrompts):
            raise TypeError(f"{owner}: prompts must be a ClickPrompts, got {type(prompts).__name__}")
        B, (h, w) = len(state.images), state.grid_size
        if prompts.clicks.batch_size != B:
            raise ValueError(f"{owner}: prompts hold {prompts.clicks.batch_size} samples but the state {B}")
        prev = None
        if previous is not None:
            check_tensor(previous, "previous", owner=owner, shape=(("B", B), 1, "h", "w"))
            prev = (logits_to_input(previous.detach().float(), (h, w))[:, 0] > 0).cpu().numpy()  # B x h x w
        seeds = click_seeds(prompts, state, self.seed_radius)  # B x h x w
        logits = torch.full((B, 1, h, w), -HARD_LOGIT)
        for b, image in enumerate(state.images):
            gh, gw = image.shape[:2]
            fg, bg = seeds[b, :gh, :gw] == 1, seeds[b, :gh, :gw] == 0
            if not fg.any():  # no positive seed (no click yet, or only negative ones): nothing is selected
                continue
            out = self.segment(image, fg, bg, None if prev is None else prev[b, :gh, :gw])  # gh x gw
            logits[b, 0, :gh, :gw] = torch.from_numpy(np.asarray(out, dtype=np.float32))
        return logits.to(state.device)

    def segment(self, image: np.ndarray, positive: np.ndarray, negative: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
        """One image: ``(h, w, 3)`` uint8 RGB, seed masks ``(h, w)`` bool (``positive`` not empty),
        the previous mask ``(h, w)`` bool or None -> ``(h, w)`` float foreground logits."""
        raise NotImplementedError
