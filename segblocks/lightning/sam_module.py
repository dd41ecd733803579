"""SAM trained and evaluated with the interactive harness (Segment Anything §3; HRSAM / FocSAM prompt side).

``encode`` runs SAM's image encoder once per image; ``decode`` runs the prompt encoder and mask
decoder once per click with

* sparse prompts: every click so far as a point at its pixel centre in the model input
  (``(x, y) + 0.5`` after the longest-side scaling), padding label −1 (notes §2.4);
* dense prompt: the previous click's low-resolution logits (stride 4), or SAM's
  ``no_mask_embed`` at the first click;
* single-mask output (HRSAM's ``mode='single mask'``).

The eval/train transforms zero-pad the raw image; here the padding is first set to the pixel mean
so that, after SAM's normalisation, it is 0, as in the authors' normalise-then-pad preprocessors
(notes §0.2).
"""
from __future__ import annotations

import os
from typing import Any

import torch

from segblocks.interactive.protocol import ClickPrompts
from segblocks.lightning.interactive_module import InteractiveSegmentation
from segblocks.models.sam import SamModel, SamState, sam_tiny, sam_vit_b

__all__ = ["SAM_PRESETS", "SamInteractive"]

#: Model factories selectable by ``preset``.
SAM_PRESETS = {"tiny": sam_tiny, "vit_b": sam_vit_b}


class SamInteractive(InteractiveSegmentation):
    """SAM as an :class:`~segblocks.interactive.protocol.InteractiveModel` with iterative training.

    Args:
        sam: a ready :class:`~segblocks.models.sam.SamModel` (e.g. with an injected HRSAM
            encoder); leave ``preset`` and ``checkpoint`` unset then.
        preset: build ``SAM_PRESETS[preset]`` (``"tiny"``: CPU-sized, ``"vit_b"``: SAM ViT-B);
            the default when ``sam`` is None is ``"tiny"``.
        checkpoint: local SAM checkpoint (official key names) loaded into the preset.
        freeze_image_encoder: train only the prompt encoder and mask decoder (FocSAM stage 1
            trains SAM's decoder on frozen embeddings); the encoder then runs without gradients.
        **kwargs: :class:`~segblocks.lightning.interactive_module.InteractiveSegmentation` options.
    """

    hparams_ignore = ("sam",)

    def __init__(
        self,
        *,
        sam: SamModel | None = None,
        preset: str | None = None,
        checkpoint: str | None = None,
        freeze_image_encoder: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if sam is not None:
            if preset is not None or checkpoint is not None:
                raise ValueError("give either a built `sam` or a `preset` (+ `checkpoint`), not both")
            if not isinstance(sam, SamModel):
                raise TypeError(f"sam must be a SamModel; got {type(sam).__name__}")
        else:
            preset = preset or "tiny"
            if preset not in SAM_PRESETS:
                raise ValueError(f"preset must be one of {sorted(SAM_PRESETS)}; got {preset!r}")
            if checkpoint is not None and not os.path.isfile(checkpoint):
                raise FileNotFoundError(f"SAM checkpoint not found: {checkpoint}")
            sam = SAM_PRESETS[preset](checkpoint=checkpoint)
        self.sam = sam
        self.freeze_image_encoder = freeze_image_encoder
        self.sam.image_encoder.requires_grad_(not freeze_image_encoder)

    def encode(self, images: torch.Tensor, valid_size: torch.Tensor) -> SamState:
        """images: (B, 3, H, W) 0–255, zero-padded outside ``valid_size`` (B, 2) → SamState with (B, C, H/16, W/16)."""
        B, _, H, W = images.shape
        rows = torch.arange(H, device=images.device).view(1, H, 1)  # 1 x H x 1
        cols = torch.arange(W, device=images.device).view(1, 1, W)  # 1 x 1 x W
        h, w = valid_size.to(images.device).unbind(-1)  # B each
        valid = (rows < h.view(B, 1, 1)) & (cols < w.view(B, 1, 1))  # B x H x W
        mean = self.sam.preprocess.pixel_mean.to(images.dtype)  # 3 x 1 x 1
        images = torch.where(valid[:, None], images, mean)  # B x 3 x H x W
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_image_encoder):
            return self.sam.encode(images)

    def decode(self, state: SamState, prompts: ClickPrompts, previous: torch.Tensor | None) -> torch.Tensor:
        """Clicks + previous (B, 1, H/4, W/4) logits → (B, 1, H/4, W/4) logits."""
        points, labels = prompts.points()  # B x N x 2, B x N
        return self.sam.decode(state, points, labels, previous_logits=previous).masks
