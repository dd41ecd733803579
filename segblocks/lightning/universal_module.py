"""LightningModule for Mask2Former-style universal (panoptic / semantic / instance) segmentation.

The model is injected: a whole :class:`~segblocks.models.mask2former.Mask2Former` (built, or a
registry name such as ``"proscale_r50_333"`` built once with ``num_classes``), or its
``backbone`` + ``pixel_decoder`` with the transformer decoder sized here.

Training follows Mask2Former as PRO-SCALE does (supp. A): Hungarian matching, CE (no-object weight
0.1, class weight 2.0) + point-sampled mask BCE (5.0) and dice (5.0) with deep supervision,
AdamW (lr 1e-4, backbone lr × 0.1, weight decay 0.05, none on norms, biases and embeddings) and a
step decay ×0.1 at 0.9 and 0.95 of the training steps (:func:`segblocks.optim.configure_adamw`).
Validation logs PQ/SQ/RQ, mIoU and mask AP and prints them as a table; undefined entries (e.g.
AP-large on images without large objects) are left out of both.

Prediction (``lightning predict -c recipes/pro_scale.yaml --ckpt_path ... --data.predict_dir DIR``)
writes, under ``prediction_dir`` (default ``<trainer.default_root_dir>/predictions``):
``panoptic/<image>.png`` (COCO panoptic PNG, ``id = R + 256·G + 256²·B``), ``overlay/<image>.png``
(segments in their category colours with class names) and ``panoptic_predictions.json`` (COCO
panoptic ``annotations`` with ``segments_info`` and ``categories``), at each image's original size
(:mod:`segblocks.visualize`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from segblocks.data import PanopticMeta, read_rgb_image
from segblocks.metrics import MaskAP, PanopticQualityMetric, SemanticIoU, format_metrics_table
from segblocks.models.mask2former.criterion import SetCriterion
from segblocks.models.mask2former.matcher import HungarianMatcher
from segblocks.models import create_model
from segblocks.models.mask2former.model import Mask2Former, mask2former_from_parts
from segblocks.optim import configure_adamw
from segblocks.visualize import save_panoptic_prediction, write_panoptic_json

__all__ = ["UniversalSegmentation"]


class UniversalSegmentation(LightningModule):
    """Mask2Former / PRO-SCALE training and evaluation.

    Args:
        model: a whole model, or a registry name built with ``num_classes`` (e.g.
            ``"proscale_r50_333"``, :func:`segblocks.models.list_models`); exclusive with
            ``backbone`` / ``pixel_decoder``.
        backbone: image backbone returning ``res2..res5`` (e.g. ``TinyBackbone``, ``SwinTransformer``,
            or a registry name such as ``"resnet50"``).
        pixel_decoder: :class:`~segblocks.models.mask2former.MSDeformPixelDecoder` (its encoder picks
            Mask2Former or PRO-SCALE).
        num_classes: number of categories K (linked from ``data.num_classes`` by the CLI).
        thing_classes: contiguous ids of the "thing" categories (linked from the data).
        num_queries, dec_layers, hidden_dim, nheads, dim_feedforward: transformer decoder built
            with ``backbone`` + ``pixel_decoder`` (100, 9, 256, 8, 2048 in Mask2Former).
        class_weight, mask_weight, dice_weight, no_object_weight: loss weights (2, 5, 5, 0.1).
        train_num_points: points sampled per mask for the matcher and the mask losses (112²).
        object_mask_threshold, overlap_threshold: panoptic inference thresholds (0.8, 0.8).
        lr, backbone_lr_multiplier, weight_decay: AdamW settings (1e-4, 0.1, 0.05).
        lr_decay_at, lr_decay: step decay milestones as fractions of the total steps, and factor.
        eval_tasks: which predictions validation/test evaluate.
        prediction_dir: where ``predict`` writes its files (None: ``<trainer.default_root_dir>/predictions``).
    """

    def __init__(
        self,
        *,
        model: nn.Module | str | None = None,
        backbone: nn.Module | str | None = None,
        pixel_decoder: nn.Module | None = None,
        num_classes: int,
        thing_classes: Sequence[int],
        num_queries: int = 100,
        dec_layers: int = 9,
        hidden_dim: int = 256,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
        train_num_points: int = 12544,
        object_mask_threshold: float = 0.8,
        overlap_threshold: float = 0.8,
        lr: float = 1e-4,
        backbone_lr_multiplier: float = 0.1,
        weight_decay: float = 0.05,
        lr_decay_at: Sequence[float] = (0.9, 0.95),
        lr_decay: float = 0.1,
        eval_tasks: Sequence[str] = ("panoptic", "semantic", "instance"),
        prediction_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            ignore=[k for k, v in (("model", model), ("backbone", backbone), ("pixel_decoder", pixel_decoder))
                    if isinstance(v, nn.Module)]
        )
        self.thing_classes = [int(c) for c in thing_classes]
        if any(not 0 <= c < num_classes for c in self.thing_classes):
            raise ValueError(f"thing_classes must be contiguous ids in [0, {num_classes}), got {self.thing_classes}")
        if (model is None) == (backbone is None and pixel_decoder is None):
            raise ValueError("give either a whole `model` or a `backbone` and a `pixel_decoder`, not both / neither")
        if model is None:
            if backbone is None or pixel_decoder is None:
                raise ValueError("`backbone` and `pixel_decoder` go together")
            model = mask2former_from_parts(
                backbone=create_model(backbone) if isinstance(backbone, str) else backbone,
                pixel_decoder=pixel_decoder, num_classes=num_classes, num_queries=num_queries,
                dec_layers=dec_layers, hidden_dim=hidden_dim, nheads=nheads, dim_feedforward=dim_feedforward,
            )
        elif isinstance(model, str):
            model = create_model(model, num_classes=num_classes)
        if not isinstance(model, Mask2Former):
            raise TypeError(f"model must be a Mask2Former (or a registry name building one); got {type(model).__name__}")
        if model.num_classes is not None and model.num_classes != num_classes:
            raise ValueError(f"the model classifies {model.num_classes} categories but num_classes={num_classes}")
        self.model = model
        self.criterion = SetCriterion(
            num_classes=num_classes,
            matcher=HungarianMatcher(
                cost_class=class_weight, cost_mask=mask_weight, cost_dice=dice_weight, num_points=train_num_points
            ),
            class_weight=class_weight,
            mask_weight=mask_weight,
            dice_weight=dice_weight,
            no_object_weight=no_object_weight,
            num_points=train_num_points,
        )
        self.eval_tasks = tuple(eval_tasks)
        self.val_metrics = self._make_metrics()
        self.test_metrics = self._make_metrics()
        self._prediction_records: list[dict] = []
        #: Folder of the last ``predict`` run's files (None before one).
        self.prediction_path: Path | None = None

    def _make_metrics(self) -> nn.ModuleDict:
        k, things = self.hparams.num_classes, self.thing_classes
        metrics = {}
        if "panoptic" in self.eval_tasks:
            metrics["panoptic"] = PanopticQualityMetric(num_classes=k, thing_classes=things)
        if "semantic" in self.eval_tasks:
            metrics["semantic"] = SemanticIoU(num_classes=k)
        if "instance" in self.eval_tasks:
            metrics["instance"] = MaskAP(num_classes=k, thing_classes=things)
        return nn.ModuleDict(metrics)

    def forward(self, images: torch.Tensor) -> dict:
        return self.model(images)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        outputs = self.model(batch["images"])
        losses = self.criterion(outputs, batch["targets"])
        loss = sum(losses.values())
        bs = batch["images"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for name in ("loss_ce", "loss_mask", "loss_dice"):
            self.log(f"train/{name}", losses[name], batch_size=bs)
        return loss

    def _predict(self, batch: dict, *, tasks: Sequence[str] | None = None, at_original: bool | None = None) -> list[dict]:
        """Predictions of ``tasks`` (default: the eval tasks), at the original image size when
        ``at_original`` (default: when the batch carries original-size targets)."""
        at_original = "orig_targets" in batch if at_original is None else at_original
        return self.model.postprocess(
            self.model(batch["images"]),
            tuple(batch["images"].shape[-2:]),
            batch["image_sizes"],
            thing_classes=self.thing_classes,
            tasks=self.eval_tasks if tasks is None else tuple(tasks),
            object_mask_threshold=self.hparams.object_mask_threshold,
            overlap_threshold=self.hparams.overlap_threshold,
            output_sizes=batch["orig_sizes"] if at_original else None,
        )

    def _evaluate(self, batch: dict, metrics: nn.ModuleDict) -> None:
        preds = self._predict(batch)
        if "orig_targets" in batch:
            targets = [(t["labels"], t["masks"]) for t in batch["orig_targets"]]
        else:
            targets = [
                (t["labels"], t["masks"][:, :h, :w])
                for t, (h, w) in zip(batch["targets"], batch["image_sizes"].tolist())
            ]
        for task, metric in metrics.items():
            metric.update([p[task] for p in preds], targets)

    def _log_metrics(self, metrics: nn.ModuleDict, prefix: str) -> None:
        values = {}
        for metric in metrics.values():
            values.update({k: float(v) for k, v in metric.compute().items()})
            metric.reset()
        # NaN = undefined here (e.g. AP-large without large objects): neither logged nor printed.
        values = {k: v for k, v in values.items() if not math.isnan(v)}
        # Values come from synced torchmetrics (equal on every rank); sync_dist only states it.
        self.log_dict({f"{prefix}/{k}": v for k, v in values.items()}, sync_dist=True)
        if not self.trainer.sanity_checking:
            rank_zero_info("\n" + format_metrics_table(values, title=f"{prefix} (step {self.global_step})"))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, "test")

    def _prediction_meta(self) -> PanopticMeta:
        """Category names and colours: the datamodule's ``meta``, else generic ``class i`` names."""
        meta = getattr(getattr(self.trainer, "datamodule", None), "meta", None)
        if isinstance(meta, PanopticMeta) and meta.num_classes == self.hparams.num_classes:
            return meta
        things = set(self.thing_classes)
        return PanopticMeta.from_coco_categories(
            [{"id": i + 1, "name": f"class {i}", "isthing": i in things} for i in range(self.hparams.num_classes)]
        )

    def on_predict_epoch_start(self) -> None:
        self._prediction_records = []
        root = self.hparams.get("prediction_dir") or Path(self.trainer.default_root_dir) / "predictions"
        self.prediction_path = Path(root)

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """Panoptic predictions at each image's original size, ``[{"image_id", "panoptic": (seg, info)}]``.

        For batches from ``predict_dir`` (they carry ``paths``) the files of the module docstring are
        written too; the JSON at the end of the epoch (rank 0, every process's images).
        """
        if batch["images"].shape[0] == 0:  # the padding batch of a process without images
            return []
        preds = self._predict(batch, tasks=("panoptic",), at_original="orig_sizes" in batch)
        out = [{"image_id": i, "panoptic": p["panoptic"]} for i, p in zip(batch["image_ids"], preds)]
        if "paths" in batch:
            meta = self._prediction_meta()
            for path, image_id, (seg, info) in zip(batch["paths"], batch["image_ids"], (p["panoptic"] for p in out)):
                image = read_rgb_image(path)  # the original: predictions are at its size
                self._prediction_records.append(
                    save_panoptic_prediction(self.prediction_path, str(image_id), image, seg.cpu().numpy(), info, meta)
                )
        return out

    def on_predict_epoch_end(self) -> None:
        if self.prediction_path is None:
            return
        records = self._prediction_records
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, records)  # COCO records are small dicts
            records = [r for part in gathered for r in (part or [])]
        if records and self.trainer.is_global_zero:
            json_path = self.prediction_path / "panoptic_predictions.json"
            write_panoptic_json(json_path, records, self._prediction_meta())
            rank_zero_info(f"{len(records)} panoptic prediction(s) (PNG, overlay, JSON) written to {self.prediction_path}")

    def configure_optimizers(self):
        """AdamW with a backbone lr multiplier, no weight decay on norms/biases/embeddings, step decay (Mask2Former)."""
        hp = self.hparams
        return configure_adamw(
            self.model, lr=hp.lr, weight_decay=hp.weight_decay, lr_multipliers={"backbone.": hp.backbone_lr_multiplier},
            total_steps=max(int(self.trainer.estimated_stepping_batches), 1), warmup_steps=0, decay="multistep",
            milestones=tuple(hp.lr_decay_at), gamma=hp.lr_decay,
        )
