"""The model-agnostic interface of click-based interactive segmentation models.

SAM-style models split inference into a heavy once-per-image step and a light once-per-click
step (SAM §3 "Efficiency"; FocSAM §3.1; Inter2Former §3), which is what the 20-click protocol
times separately for its SPC (Inter2Former §4). :class:`InteractiveModel` is that split:

* ``encode(images, valid_size) -> state`` once per image;
* ``decode(state, prompts, previous) -> logits`` once per click, where ``previous`` is whatever
  ``decode`` returned at the previous click (``None`` before the first one), so each model
  chooses its own feedback (SAM: low-resolution logits as dense prompt; dense click models:
  a previous-mask channel).

Models that re-run everything per click (RITM-style early fusion) implement ``encode`` as a cheap
identity returning the images, and do all the work in ``decode``.

Clicks reach the model as :class:`ClickPrompts`: the clicks in the frame where they were
simulated (the original image during evaluation, the training crop during training) plus the
size that frame has inside the model input, so a model can map them with :meth:`ClickPrompts.points`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from segblocks.interactive.clicker import Clicks
from segblocks.interactive.encodings import clicks_to_points

__all__ = ["ClickPrompts", "InteractiveModel", "logits_to_input"]


@dataclass(frozen=True, eq=False)
class ClickPrompts:
    """The clicks of a batch and where their frame lies in the model input.

    The frame of sample ``b`` (``frame_size[b]``) is resized to ``input_size[b]`` and placed at
    the top-left of the padded model input (SAM-style longest-side resize + bottom/right padding;
    :class:`~segblocks.data.interactive.InteractiveEvalTransform`). During training both sizes are
    the input size.

    Attributes:
        clicks: ``B`` click sequences, ``(y, x)`` pixel indices in the frame.
        frame_size: ``(B, 2)`` int64 ``(H, W)`` of the frame the clicks live in.
        input_size: ``(B, 2)`` int64 ``(h, w)`` of that frame inside the model input.
    """

    clicks: Clicks
    frame_size: torch.Tensor
    input_size: torch.Tensor

    def __post_init__(self) -> None:
        B = self.clicks.batch_size
        for name in ("frame_size", "input_size"):
            size = getattr(self, name)
            if not isinstance(size, torch.Tensor) or size.shape != (B, 2) or size.is_floating_point():
                got = f"{size.dtype} {tuple(size.shape)}" if isinstance(size, torch.Tensor) else type(size).__name__
                raise TypeError(f"{name} must be an integer tensor of shape ({B}, 2); got {got}")
            if bool((size < 1).any()):
                raise ValueError(f"{name} must be positive; got {size.tolist()}")

    def points(self) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM point prompts in the model input.

        A click at pixel ``c`` of the frame becomes ``c * s + 0.5`` with ``s = input / frame`` per
        axis: SAM's ``apply_coords`` followed by its prompt encoder's pixel-centre shift (equal to
        :func:`~segblocks.interactive.scale_points` when ``input_size`` is the longest-side resize).

        Returns:
            ``points`` ``(B, N, 2)`` float32 ``(x, y)`` (zeros at padding) and ``labels``
            ``(B, N)`` int64 with 1 / 0 / -1 (padding).
        """
        points, labels = clicks_to_points(self.clicks)  # B x N x 2 at c + 0.5, (x, y)
        scale = (self.input_size / self.frame_size).flip(-1).to(points.device, points.dtype)  # B x 2, (x, y)
        points = (points - 0.5) * scale[:, None] + 0.5  # B x N x 2
        return points * (labels >= 0).unsqueeze(-1), labels


@runtime_checkable
class InteractiveModel(Protocol):
    """What the click simulation loops need: evaluation (:mod:`segblocks.interactive.evaluation`)
    and training (:mod:`segblocks.interactive.training`). Implemented by
    :class:`~segblocks.models.sam.SamClickModel`; any object with these two methods works."""

    def encode(self, images: torch.Tensor, valid_size: torch.Tensor) -> Any:
        """Once per image.

        Args:
            images: ``(B, 3, H, W)`` float32 RGB on the 0–255 scale, zero-padded at the
                bottom/right.
            valid_size: ``(B, 2)`` int64 ``(h, w)`` of real content at the top-left.

        Returns:
            Any per-batch state (e.g. :class:`~segblocks.models.sam.SamState`); identity models
            return ``images``.
        """

    def decode(self, state: Any, prompts: ClickPrompts, previous: torch.Tensor | None) -> torch.Tensor:
        """Once per click.

        Args:
            state: the output of :meth:`encode` for the same batch.
            prompts: every click so far (not only the newest).
            previous: this method's output at the previous click, or ``None`` at the first.

        Returns:
            ``(B, 1, h, w)`` float foreground logits over the whole padded input at any
            resolution of the same aspect (e.g. SAM's stride-4 logits); callers resize them
            bilinearly (``align_corners=False``) to ``(H, W)``.
        """


def logits_to_input(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize :meth:`InteractiveModel.decode` logits to the model input, as the contract says.

    Args:
        logits: ``(B, 1, h, w)`` float logits.
        size: ``(H, W)`` of the padded input.

    Returns:
        ``(B, 1, H, W)`` (bilinear, ``align_corners=False``; the input itself when already that size).
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.dim() != 4 or logits.shape[1] != 1:
        got = f"{logits.dtype} {tuple(logits.shape)}" if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"decode must return float logits of shape (B, 1, h, w); got {got}")
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
