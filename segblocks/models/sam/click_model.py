"""SAM as an :class:`~segblocks.interactive.protocol.InteractiveModel` (Segment Anything §3; HRSAM / FocSAM prompt side).

:meth:`SamClickModel.encode` runs SAM's image encoder once per image; :meth:`SamClickModel.decode`
runs the prompt encoder and mask decoder once per click with

* sparse prompts: every click so far as a point at its pixel centre in the model input
  (``(x, y) + 0.5`` after the longest-side scaling), padding label −1 (HRSAM code,
  YouHuang67/High-Resolution-Segment-Anything, ``models/necks/sam_prompt.py``);
* dense prompt: the previous click's low-resolution logits (stride 4), or SAM's
  ``no_mask_embed`` at the first click;
* single-mask output (the HRSAM code's ``SAMDecoder`` ``mode='single mask'``).

The interactive transforms zero-pad the raw image; here the padding is first set to the pixel
mean so that, after SAM's normalisation, it is 0, as in the authors' configs, whose mmseg
``SegDataPreProcessor`` normalises first and then pads with 0 (HRSAM code, ``configs/hrsam/hrsam.py``).
"""
from __future__ import annotations

import torch
from torch import nn

from segblocks.interactive.protocol import ClickPrompts
from segblocks.models.sam.sam import SamModel, SamState

__all__ = ["SamClickModel", "mean_pad"]


def mean_pad(images: torch.Tensor, valid_size: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Set every pixel outside the top-left ``valid_size`` region to ``mean``.

    Args:
        images: (B, 3, H, W) float RGB 0–255.
        valid_size: (B, 2) ``(h, w)`` of real content.
        mean: (3, 1, 1) pixel mean.

    Returns:
        (B, 3, H, W): the padding is exactly 0 after ``(x - mean) / std``.
    """
    if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(f"images must be float (B, 3, H, W); got {images.dtype} {tuple(images.shape)}")
    if tuple(valid_size.shape) != (images.shape[0], 2):
        raise ValueError(f"valid_size must be (B={images.shape[0]}, 2); got {tuple(valid_size.shape)}")
    B, _, H, W = images.shape
    h, w = valid_size.to(images.device).unbind(-1)  # B each
    rows = torch.arange(H, device=images.device).view(1, H, 1) < h.view(B, 1, 1)  # B x H x 1
    cols = torch.arange(W, device=images.device).view(1, 1, W) < w.view(B, 1, 1)  # B x 1 x W
    return torch.where((rows & cols)[:, None], images, mean.to(images))  # B x 3 x H x W


class SamClickModel(nn.Module):
    """A :class:`~segblocks.models.sam.SamModel` behind the click protocol (``encode`` / ``decode``).

    Any SAM-style model works: SAM ViT-B / tiny, or SAM's prompt encoder and mask decoder on an
    HRSAM encoder (``create_model("sam_hrsam_tiny")``).

    Args:
        sam: the model, or a registry name built with :func:`segblocks.models.create_model`.
        freeze_image_encoder: train only the prompt encoder and mask decoder (FocSAM stage 1
            trains SAM's decoder on frozen embeddings); the encoder then runs without gradients.
    """

    def __init__(self, *, sam: SamModel | str, freeze_image_encoder: bool = False) -> None:
        super().__init__()
        if isinstance(sam, str):
            from segblocks.models import create_model

            sam = create_model(sam)
        if not isinstance(sam, SamModel):
            raise TypeError(f"sam must be a SamModel or a registry name building one; got {type(sam).__name__}")
        self.sam = sam
        self.freeze_image_encoder = bool(freeze_image_encoder)
        self.sam.image_encoder.requires_grad_(not freeze_image_encoder)

    def encode(self, images: torch.Tensor, valid_size: torch.Tensor) -> SamState:
        """images: (B, 3, H, W) 0–255, zero-padded outside ``valid_size`` (B, 2) → SamState with (B, C, H/16, W/16)."""
        images = mean_pad(images, valid_size, self.sam.preprocess.pixel_mean)  # B x 3 x H x W
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_image_encoder):
            return self.sam.encode(images)

    def decode(self, state: SamState, prompts: ClickPrompts, previous: torch.Tensor | None) -> torch.Tensor:
        """Clicks + previous (B, 1, H/4, W/4) logits → (B, 1, H/4, W/4) logits."""
        points, labels = prompts.points()  # B x N x 2, B x N
        return self.sam.decode(state, points, labels, previous_logits=previous).masks
