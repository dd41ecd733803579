"""Mask2Former-style universal segmentation model composed from injected parts.

backbone → pixel decoder (encoder + per-pixel embedding) → masked-attention transformer decoder
→ (class logits, mask logits) per query; inference turns them into panoptic, semantic and
instance predictions (Mask2Former §3, PRO-SCALE Fig. 3). Use it without Lightning::

    model = Mask2Former(backbone=TinyBackbone(), pixel_decoder=..., transformer_decoder=...)
    out = model(images)                      # images: B x 3 x H x W, RGB in 0..255
    preds = model.predict(images, image_sizes, thing_classes=[0, 1, 2])
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segblocks.models.mask2former.inference import instance_inference, panoptic_inference, semantic_inference
from segblocks.models.mask2former.transformer_decoder import MultiScaleMaskedTransformerDecoder

__all__ = ["Mask2Former", "mask2former_from_parts"]


class Mask2Former(nn.Module):
    """Backbone + pixel decoder + transformer decoder.

    Args:
        backbone: module returning ``res2..res5`` features.
        pixel_decoder: e.g. :class:`~segblocks.models.mask2former.MSDeformPixelDecoder`.
        transformer_decoder: e.g. :class:`~segblocks.models.mask2former.MultiScaleMaskedTransformerDecoder`.
        pixel_mean, pixel_std: RGB normalisation applied to 0..255 inputs (ImageNet, as detectron2).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        pixel_decoder: nn.Module,
        transformer_decoder: nn.Module,
        pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
        pixel_std: Sequence[float] = (58.395, 57.12, 57.375),
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.transformer_decoder = transformer_decoder
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), persistent=False)
        expected = getattr(pixel_decoder, "in_channels", None)
        provided = getattr(backbone, "out_channels", None)
        if expected is not None and provided is not None:
            provided = [provided[k] for k in ("res2", "res3", "res4", "res5")]
            if list(expected) != list(provided):
                raise ValueError(
                    f"pixel_decoder.in_channels={list(expected)} does not match the backbone's res2..res5 channels {provided}"
                )

    @property
    def num_classes(self) -> int | None:
        """Categories K of the classifier (``K + 1`` logits with "no object"), or None if unknown."""
        head = getattr(self.transformer_decoder, "class_embed", None)
        return None if head is None else head.out_features - 1

    def forward(self, images: torch.Tensor) -> dict:
        """images: (B, 3, H, W) RGB 0..255 → dict(pred_logits (B, Q, K+1), pred_masks (B, Q, H/4, W/4), aux_outputs)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"Mask2Former: expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"Mask2Former: expected floating-point images (0..255), got {images.dtype}")
        x = (images - self.pixel_mean) / self.pixel_std
        mask_features, multi_scale = self.pixel_decoder(self.backbone(x))
        return self.transformer_decoder(multi_scale, mask_features)

    @staticmethod
    def upsample_masks(pred_masks: torch.Tensor, padded_size: tuple[int, int]) -> torch.Tensor:
        """(B, Q, h, w) mask logits → (B, Q, H, W) at the padded input size (bilinear)."""
        return F.interpolate(pred_masks, size=padded_size, mode="bilinear", align_corners=False)

    @torch.no_grad()
    def postprocess(
        self,
        outputs: dict,
        padded_size: tuple[int, int],
        image_sizes: torch.Tensor,
        *,
        thing_classes: Sequence[int],
        tasks: Sequence[str] = ("panoptic", "semantic", "instance"),
        object_mask_threshold: float = 0.8,
        overlap_threshold: float = 0.8,
        test_topk_per_image: int = 100,
        output_sizes: torch.Tensor | None = None,
    ) -> list[dict]:
        """Per-image predictions cropped to each ``image_sizes[i] = (h, w)``.

        With ``output_sizes`` (B, 2), the cropped mask logits are then resized (bilinear) to each
        image's original size before inference, as Mask2Former evaluates.

        Returns a list of dicts with the requested keys: ``panoptic`` = (panoptic_seg (h, w),
        segments_info), ``semantic`` = (K, h, w) scores, ``instance`` = dict(masks, scores, labels).
        """
        unknown = set(tasks) - {"panoptic", "semantic", "instance"}
        if unknown:
            raise ValueError(f"unknown tasks {sorted(unknown)}; expected panoptic, semantic, instance")
        masks = self.upsample_masks(outputs["pred_masks"], padded_size)
        results = []
        out_sizes = image_sizes if output_sizes is None else output_sizes
        for cls, mask, (h, w), out_size in zip(outputs["pred_logits"], masks, image_sizes.tolist(), out_sizes.tolist()):
            mask = mask[:, :h, :w]  # Q x h x w
            if tuple(out_size) != (h, w):
                mask = F.interpolate(mask[None], size=tuple(out_size), mode="bilinear", align_corners=False)[0]
            result = {}
            if "semantic" in tasks:
                result["semantic"] = semantic_inference(cls, mask)
            if "panoptic" in tasks:
                result["panoptic"] = panoptic_inference(
                    cls, mask, thing_classes=thing_classes,
                    object_mask_threshold=object_mask_threshold, overlap_threshold=overlap_threshold,
                )
            if "instance" in tasks:
                result["instance"] = instance_inference(
                    cls, mask, thing_classes=thing_classes, num_queries=cls.shape[0],
                    test_topk_per_image=test_topk_per_image,
                )
            results.append(result)
        return results

    @torch.no_grad()
    def predict(self, images: torch.Tensor, image_sizes: torch.Tensor | None = None, **kwargs) -> list[dict]:
        """Forward + :meth:`postprocess`; ``image_sizes`` defaults to the full input size."""
        if image_sizes is None:
            image_sizes = torch.tensor([images.shape[-2:]] * images.shape[0])
        return self.postprocess(self(images), tuple(images.shape[-2:]), image_sizes, **kwargs)


def mask2former_from_parts(
    *,
    backbone: nn.Module,
    pixel_decoder: nn.Module,
    num_classes: int,
    num_queries: int = 100,
    dec_layers: int = 9,
    hidden_dim: int = 256,
    nheads: int = 8,
    dim_feedforward: int = 2048,
) -> Mask2Former:
    """A :class:`Mask2Former` whose masked-attention decoder is sized from the pixel decoder.

    Args:
        backbone, pixel_decoder: as :class:`Mask2Former` (the pixel decoder gives ``conv_dim`` and ``mask_dim``).
        num_classes: categories K.
        num_queries, dec_layers, hidden_dim, nheads, dim_feedforward: the transformer decoder
            (100, 9, 256, 8, 2048 in Mask2Former §4 and PRO-SCALE supp. A).
    """
    return Mask2Former(
        backbone=backbone,
        pixel_decoder=pixel_decoder,
        transformer_decoder=MultiScaleMaskedTransformerDecoder(
            in_channels=pixel_decoder.conv_dim,
            hidden_dim=hidden_dim,
            num_classes=num_classes,
            num_queries=num_queries,
            nheads=nheads,
            dim_feedforward=dim_feedforward,
            dec_layers=dec_layers,
            mask_dim=pixel_decoder.mask_dim,
        ),
    )
