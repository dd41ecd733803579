"""LightningModule for click-based interactive segmentation: iterative training, K-click evaluation.

The model is injected: any :class:`~segblocks.interactive.protocol.InteractiveModel` (``encode`` /
``decode``), e.g. :class:`~segblocks.models.sam.SamClickModel` around SAM or SAM-on-HRSAM, or a
registry name resolved once with :func:`segblocks.models.create_model` (a SAM-style model is
wrapped in ``SamClickModel``). This module owns everything around it:

**Iterative training**: :func:`segblocks.interactive.training.iterative_training_loss` (RITM's
scheme as Inter2Former §4.2 / HRSAM / FocSAM train: ``k ~ P ∝ γ^k`` no-grad simulated clicks, then
one graded decode; NFL + the optional FocSAM point loss).

**Evaluation** (``validation_step`` with ``val_clicks``, ``test_step`` with ``test_clicks``):
:func:`~segblocks.interactive.evaluation.evaluate_clicks` per batch into
:class:`~segblocks.metrics.InteractiveMetrics`; at epoch end the metrics are logged and printed as
a table, and the test writes ``per_sample_iou.csv`` / ``.json`` and ``miou_vs_clicks.png`` into
the trainer's log dir.

**Optimisation**: :func:`segblocks.optim.configure_adamw` — AdamW (lr 1e-4, weight decay 0.05,
none on norms / biases / position tables), linear warm-up from ``warmup_start_factor`` then
polynomial (power 1) decay to 0, as the HRSAM / FocSAM configs (HRSAM supp. D.3; HRSAM code,
YouHuang67/High-Resolution-Segment-Anything, ``configs/hrsam/``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from segblocks.interactive.clicker import TRAIN_INNER_K
from segblocks.interactive.evaluation import evaluate_clicks, write_click_report
from segblocks.interactive.protocol import ClickPrompts, InteractiveModel
from segblocks.interactive.training import iterative_training_loss
from segblocks.metrics import InteractiveMetrics, format_metrics_table
from segblocks.models import create_model
from segblocks.models.sam import SamClickModel, SamModel
from segblocks.optim import configure_adamw

__all__ = ["InteractiveSegmentation", "resolve_interactive_model"]

#: mIoU@k logged besides 5-mIoU (the authors' ``click_indices``); the report files keep every k.
_LOGGED_MIOU = (1, 2, 3, 4, 10, 15, 20)
#: Metrics shown in the printed table.
_TABLE_KEYS = ("num_samples", "noc@85", "noc@90", "noc@95", "nof@85", "nof@90", "nof@95", "miou@1", "5-miou",
               "stability/drop_fraction")


class InteractiveSegmentation(LightningModule):
    """Iterative click training and K-click evaluation of an injected ``encode`` / ``decode`` model.

    Batches come from :class:`~segblocks.lightning.interactive_datamodule.InteractiveDataModule`
    (:func:`~segblocks.data.interactive.collate_interactive`, plus an optional ``index`` (B,) of
    dataset indices used to name rows of the test report).

    Args:
        model: an :class:`~segblocks.interactive.protocol.InteractiveModel` (an ``nn.Module`` to
            train and checkpoint; any object for evaluation only), or a registry name (``"sam_tiny"``, ``"sam_hrsam_tiny"``; see
            :func:`segblocks.models.list_models`).
        gamma: ``γ`` of ``P(k) ∝ γ^k`` (0.6 for COCO in the authors' configs).
        max_train_clicks: largest ``k`` (20).
        train_inner_k: candidate threshold of the training clicks after the first (1.7).
        point_loss_weight: weight of the FocSAM point loss; 0 disables it.
        val_clicks: click budget of ``validation_step`` (fewer than the test's to keep it cheap).
        test_clicks: click budget of ``test_step`` (the protocol's 20).
        thresholds: IoU targets of NoC / NoF.
        eval_seed: seed of the evaluation clicker's tie-breaking, reset at each evaluation
            epoch (the authors seed 42).
        lr, weight_decay: AdamW (1e-4, 0.05).
        warmup_steps, warmup_start_factor: linear warm-up length and first-step lr factor (1500, 1e-6).
        layer_decay: layer-wise lr decay of the ``blocks.{i}`` of the image encoder (None: off).
    """

    def __init__(
        self,
        *,
        model: nn.Module | str,
        gamma: float = 0.6,
        max_train_clicks: int = 20,
        train_inner_k: float = TRAIN_INNER_K,
        point_loss_weight: float = 0.0,
        val_clicks: int = 5,
        test_clicks: int = 20,
        thresholds: Sequence[float] = (0.85, 0.90, 0.95),
        eval_seed: int = 42,
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        warmup_steps: int = 1500,
        warmup_start_factor: float = 1e-6,
        layer_decay: float | None = None,
    ) -> None:
        super().__init__()
        if max_train_clicks < 0 or val_clicks < 1 or test_clicks < 1:
            raise ValueError(
                f"need max_train_clicks >= 0, val_clicks >= 1 and test_clicks >= 1; got {max_train_clicks}, "
                f"{val_clicks}, {test_clicks}"
            )
        if point_loss_weight < 0 or warmup_steps < 0:
            raise ValueError(f"point_loss_weight and warmup_steps must be >= 0; got {point_loss_weight}, {warmup_steps}")
        self.save_hyperparameters(ignore=[] if isinstance(model, str) else ["model"])
        self.model = resolve_interactive_model(model)
        self.val_metrics = InteractiveMetrics(max_clicks=val_clicks, thresholds=thresholds)
        self.test_metrics = InteractiveMetrics(max_clicks=test_clicks, thresholds=thresholds)
        self._eval_rng = np.random.default_rng(eval_seed)
        self._sample_ids: dict[int, str] = {}
        #: Files of the last test report (empty before a test run).
        self.report_paths: dict[str, Path] = {}

    # ------------------------------------------------------------------ the model
    def encode(self, images: torch.Tensor, valid_size: torch.Tensor) -> Any:
        """Once per image: ``self.model.encode`` (:meth:`segblocks.interactive.protocol.InteractiveModel.encode`)."""
        return self.model.encode(images, valid_size)

    def decode(self, state: Any, prompts: ClickPrompts, previous: torch.Tensor | None) -> torch.Tensor:
        """Once per click: ``self.model.decode`` (:meth:`segblocks.interactive.protocol.InteractiveModel.decode`)."""
        return self.model.decode(state, prompts, previous)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        out = iterative_training_loss(
            self.model, batch, gamma=hp.gamma, max_clicks=hp.max_train_clicks, inner_k=hp.train_inner_k,
            point_loss_weight=hp.point_loss_weight,
        )
        B = batch["mask"].shape[0]
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=B)
        self.log("train/nfl", out["nfl"], batch_size=B)
        self.log("train/num_clicks", out["num_clicks"], batch_size=B)
        if "point_loss" in out:
            self.log("train/point_loss", out["point_loss"], batch_size=B)
        return out["loss"]

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, batch: dict, metrics: InteractiveMetrics) -> None:
        curves = evaluate_clicks(self.model, batch, max_clicks=metrics.max_clicks, generator=self._eval_rng)
        index = batch.get("index")
        if index is None:  # no dataset indices: number the samples in the order seen
            start = len(self._sample_ids)
            index = torch.arange(start, start + len(batch["sample_id"]))
        self._sample_ids.update(zip(index.tolist(), batch["sample_id"]))
        metrics.update(
            curves.ious.to(self.device),
            encode_seconds=curves.encode_seconds.to(self.device),
            decode_seconds=curves.decode_seconds.to(self.device),
            sample_index=index.to(self.device),
        )

    def _start_evaluation(self) -> None:
        self._eval_rng = np.random.default_rng(self.hparams.eval_seed)
        self._sample_ids = {}

    def _log_metrics(self, metrics: InteractiveMetrics, prefix: str) -> dict[str, float]:
        values = {k: float(v) for k, v in metrics.compute().items()}
        per_click = {f"miou@{k}" for k in range(1, metrics.max_clicks + 1) if k not in _LOGGED_MIOU}
        self.log_dict({f"{prefix}/{k}": v for k, v in values.items() if k not in per_click}, sync_dist=True)
        if not self.trainer.sanity_checking:
            spc = (f"{metrics.max_clicks}-spc", "online-spc")
            shown = {k: values[k] for k in (*_TABLE_KEYS, *spc) if k in values}
            rank_zero_info("\n" + format_metrics_table(shown, title=f"{prefix} ({metrics.max_clicks} clicks)", digits=3))
        return values

    def on_validation_epoch_start(self) -> None:
        self._start_evaluation()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val")
        self.val_metrics.reset()

    def on_test_epoch_start(self) -> None:
        self._start_evaluation()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics)

    def on_test_epoch_end(self) -> None:
        values = self._log_metrics(self.test_metrics, "test")
        curves = self.test_metrics.per_sample_curves()  # synced across ranks
        ids = self._gather_sample_ids()
        if self.trainer.is_global_zero:
            out_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
            names = [ids.get(i, "") for i in curves["sample_index"].tolist()]
            self.report_paths = write_click_report(curves, out_dir, sample_ids=names, metrics=values)
            rank_zero_info(f"per-sample click curves written to {out_dir}")
        self.test_metrics.reset()

    def _gather_sample_ids(self) -> dict[int, str]:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return dict(self._sample_ids)
        gathered: list[dict[int, str]] = [{} for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather_object(gathered, self._sample_ids)
        return {k: v for part in gathered for k, v in part.items()}

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        """:func:`segblocks.optim.configure_adamw`: warm-up then poly decay, per step."""
        hp = self.hparams
        return configure_adamw(
            self.model, lr=hp.lr, weight_decay=hp.weight_decay, layer_decay=hp.layer_decay,
            total_steps=max(int(self.trainer.estimated_stepping_batches), 1), warmup_steps=hp.warmup_steps,
            warmup_start_factor=hp.warmup_start_factor, decay="poly",
        )


def resolve_interactive_model(model: nn.Module | str) -> InteractiveModel:
    """The ``model`` argument of :class:`InteractiveSegmentation` as a module implementing the click protocol.

    A string is built once with :func:`segblocks.models.create_model`; a SAM-style
    :class:`~segblocks.models.sam.SamModel` (built or named) is wrapped in
    :class:`~segblocks.models.sam.SamClickModel`.
    """
    if isinstance(model, str):
        model = create_model(model)
    if isinstance(model, SamModel):
        model = SamClickModel(sam=model)
    if not isinstance(model, InteractiveModel):
        raise TypeError(
            f"model must implement encode(images, valid_size) and decode(state, prompts, previous) "
            f"(segblocks.interactive.InteractiveModel); got {type(model).__name__}"
        )
    return model
