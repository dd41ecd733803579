"""HRSAM / HRSAM++ interactive fine-tuning (HRSAM supp. D.3, stages "fair training" and 2).

SAM with its image encoder swapped for an HRSAM(++) encoder (HRSAM §3.1: "our HRSAM focuses on
optimizing the encoder without altering other modules"), trained with the harness' iterative
click simulation and NFL (:class:`~segblocks.lightning.sam_module.SamInteractive`).

* Setting 1 ("fair" training): the encoder from scratch (or MAE weights), no ``encoder_checkpoint``.
* Setting 3 (distil, then fine-tune): ``encoder_checkpoint`` = the stage-1 checkpoint of
  :class:`~segblocks.lightning.distill_module.SamDistillation` (keys ``student.*``).

The prompt encoder and mask decoder come from a SAM preset, optionally with their weights from
a local SAM checkpoint (the authors start from SAM-ViT-H's decoder; notes official_code_facts
§2.1). Only the ``prompt_encoder.*`` / ``mask_decoder.*`` keys are read, so any SAM file works
(ViT-B, -L or -H: their decoders are all 256-d) and no ViT weight can leak into the HRSAM
encoder through coinciding key names.

Optimisation: :func:`~segblocks.lightning.warmup_poly.warmup_poly_optimizer` (AdamW 1e-4, wd 0.05,
linear warm-up from 1e-6 of the lr, then poly decay; supp. D.3) over every trainable parameter.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from segblocks.lightning.sam_module import SAM_PRESETS, SamInteractive
from segblocks.lightning.warmup_poly import warmup_poly_optimizer
from segblocks.models.backbones.checkpoint import load_checkpoint
from segblocks.models.hrsam import HRSAM_PRESETS
from segblocks.models.sam import SamModel

__all__ = ["HRSAMInteractive"]


class HRSAMInteractive(SamInteractive):
    """SAM prompt encoder + mask decoder on an HRSAM(++) image encoder, with iterative click training.

    Args:
        encoder: a built image encoder; or leave None and name ``encoder_preset``.
        encoder_preset: a key of :data:`~segblocks.models.hrsam.HRSAM_PRESETS` (``"tiny"``,
            ``"pp_tiny"``, ``"vit_b"``, ``"pp_vit_b"``); ``"tiny"`` when neither is given.
        encoder_kwargs: keyword overrides of the preset.
        encoder_checkpoint: local file with the encoder's weights (strict), e.g. the stage-1
            Lightning checkpoint.
        encoder_prefix: key prefix of the encoder in that file (``"student."`` for stage 1,
            ``"sam.image_encoder."`` for a checkpoint of this module).
        sam_preset: :data:`~segblocks.lightning.sam_module.SAM_PRESETS` key giving the prompt
            encoder and mask decoder (their width must equal the encoder's ``out_chans``).
        sam_checkpoint: local SAM checkpoint (official key names) for those two parts; SAM's box
            embeddings in it are ignored (clicks only).
        sam_prefix: prefix of the SAM keys in that file (``"sam."`` for a
            :class:`~segblocks.lightning.sam_module.SamInteractive` checkpoint).
        warmup_start_factor: lr factor at the first step (1e-6, supp. D.3).
        **kwargs: :class:`~segblocks.lightning.interactive_module.InteractiveSegmentation`
            options and ``freeze_image_encoder``.
    """

    hparams_ignore = ("sam", "encoder")

    def __init__(
        self,
        *,
        encoder: nn.Module | None = None,
        encoder_preset: str | None = None,
        encoder_kwargs: dict[str, Any] | None = None,
        encoder_checkpoint: str | None = None,
        encoder_prefix: str = "student.",
        sam_preset: str = "tiny",
        sam_checkpoint: str | None = None,
        sam_prefix: str = "",
        warmup_start_factor: float = 1e-6,
        **kwargs: Any,
    ) -> None:
        if encoder is not None and (encoder_preset is not None or encoder_kwargs):
            raise ValueError("give either a built `encoder` or an `encoder_preset` (+ `encoder_kwargs`), not both")
        if sam_preset not in SAM_PRESETS:
            raise ValueError(f"sam_preset must be one of {sorted(SAM_PRESETS)}; got {sam_preset!r}")
        if encoder is None:
            preset = encoder_preset or "tiny"
            if preset not in HRSAM_PRESETS:
                raise ValueError(f"encoder_preset must be one of {sorted(HRSAM_PRESETS)}; got {preset!r}")
            encoder = HRSAM_PRESETS[preset](**(encoder_kwargs or {}))
        if encoder_checkpoint is not None:
            load_checkpoint(encoder, encoder_checkpoint, prefix=encoder_prefix, strict=True)
        sam = SAM_PRESETS[sam_preset]()
        if sam_checkpoint is not None:
            for part in ("prompt_encoder", "mask_decoder"):
                missing, _ = load_checkpoint(getattr(sam, part), sam_checkpoint, prefix=f"{sam_prefix}{part}.")
                if missing:
                    raise ValueError(f"SAM checkpoint {sam_checkpoint}: {part} keys missing: {missing}")
        width = getattr(encoder, "out_chans", sam.prompt_encoder.embed_dim)
        if width != sam.prompt_encoder.embed_dim:
            raise ValueError(
                f"encoder out_chans ({width}) must equal the {sam_preset!r} decoder width ({sam.prompt_encoder.embed_dim})"
            )
        sam = SamModel(image_encoder=encoder, prompt_encoder=sam.prompt_encoder, mask_decoder=sam.mask_decoder)
        super().__init__(sam=sam, **kwargs)

    def configure_optimizers(self):
        hp = self.hparams
        return warmup_poly_optimizer(
            self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay, warmup_steps=hp.warmup_steps,
            total_steps=max(int(self.trainer.estimated_stepping_batches), 1), start_factor=hp.warmup_start_factor,
        )
