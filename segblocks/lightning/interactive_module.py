"""LightningModule for click-based interactive segmentation: iterative training, K-click evaluation.

The model is injected: any :class:`~segblocks.interactive.protocol.InteractiveModel` (``encode`` /
``decode``), e.g. :class:`~segblocks.models.sam.SamClickModel` around SAM or SAM-on-HRSAM, or a
registry name resolved once with :func:`segblocks.models.create_model` (a SAM-style model is
wrapped in ``SamClickModel``). This module owns everything around it:

**Iterative training**: :func:`segblocks.interactive.training.iterative_training_loss` (RITM's
scheme as Inter2Former §4.2 / HRSAM / FocSAM train: ``k ~ P ∝ γ^k`` no-grad simulated clicks, then
one graded decode; NFL + the optional FocSAM point loss). A model whose loop differs defines
``training_loss(batch, *, gamma, max_clicks, inner_k, point_loss_weight) -> {"loss": ..., ...}``,
which replaces it (FocSAM stage 2, :meth:`segblocks.models.focsam.FocSAM.training_loss`).

**Evaluation** (``validation_step`` with ``val_clicks``, ``test_step`` with ``test_clicks``):
:func:`~segblocks.interactive.evaluation.evaluate_clicks` per batch into
:class:`~segblocks.metrics.InteractiveMetrics`; at epoch end the metrics are logged and printed as
a table, and the test writes ``per_sample_iou.csv`` / ``.json`` and ``miou_vs_clicks.png`` into
the trainer's log dir, with overlays of the 3 worst and 3 best samples in ``click_cases/``. Results do not depend on how the samples are split into batches or
processes: each sample's click tie-breaks come from its own generator keyed by
``(eval_seed, dataset index)`` (:func:`~segblocks.interactive.clicker.sample_generators`), the
metrics pool the samples of every process in dataset-index order, and the report rows follow
that order. Under DDP every process takes part in the end-of-epoch collectives (also one that
received only the empty padding batch of :class:`~segblocks.lightning._loaders.EvaluationSampler`);
rank 0 writes the report.

**Optimisation**: :func:`segblocks.optim.configure_adamw` — AdamW (lr 1e-4, weight decay 0.05,
none on norms / biases / position tables), linear warm-up from ``warmup_start_factor`` then
polynomial (power 1) decay to 0, as the HRSAM / FocSAM configs (HRSAM supp. D.3; HRSAM code,
YouHuang67/High-Resolution-Segment-Anything, ``configs/hrsam/``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from segblocks.interactive.clicker import TRAIN_INNER_K, sample_generators
from segblocks.interactive.evaluation import evaluate_clicks, write_click_cases, write_click_report
from segblocks.interactive.protocol import ClickPrompts, InteractiveModel
from segblocks.interactive.training import iterative_training_loss
from segblocks.lightning._loaders import batch_size_of
from segblocks.metrics import InteractiveMetrics, format_metrics_table
from segblocks.metrics.interactive import iou_deltas
from segblocks.models import create_model
from segblocks.models.sam import SamClickModel, SamModel
from segblocks.ops._checks import check_int
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
    (:func:`~segblocks.data.interactive.collate_interactive`, plus ``index`` (B,) dataset indices,
    which key each sample's click seed and order the rows of the test report; without it, single
    process only, samples are numbered in the order seen). An empty batch (B = 0) is skipped.

    Args:
        model: an :class:`~segblocks.interactive.protocol.InteractiveModel` (an ``nn.Module`` to
            train and checkpoint; any object for evaluation only), or a registry name (``"sam_tiny"``, ``"sam_hrsam_tiny"``; see
            :func:`segblocks.models.list_models`).
        gamma: ``γ`` of ``P(k) ∝ γ^k`` (0.6 for COCO in the authors' configs).
        max_train_clicks: largest ``k`` (20).
        train_inner_k: candidate threshold of the training clicks after the first (1.7).
        point_loss_weight: weight of the FocSAM point loss; 0 disables it.
        initial_clicks, initial_gamma: RITM-style multi-point first clicks (0: a single first
            click; MST trains with 24 and 0.8), see :mod:`segblocks.interactive.training`.
        val_clicks: click budget of ``validation_step`` (fewer than the test's to keep it cheap).
        test_clicks: click budget of ``test_step`` (the protocol's 20).
        thresholds: IoU targets of NoC / NoF.
        eval_seed: seed of the evaluation clicker's tie-breaking; sample ``i`` draws from its own
            generator seeded with ``(eval_seed, i)``, so every evaluation, subset, batch size and
            process count gives it the same clicks (the authors seed 42 once per run).
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
        initial_clicks: int = 0,
        initial_gamma: float = 0.8,
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
        check_int(eval_seed, "eval_seed", owner="InteractiveSegmentation", minimum=0)
        check_int(initial_clicks, "initial_clicks", owner="InteractiveSegmentation", minimum=0)
        self.save_hyperparameters(ignore=[] if isinstance(model, str) else ["model"])
        self.model = resolve_interactive_model(model)
        self.val_metrics = InteractiveMetrics(max_clicks=val_clicks, thresholds=thresholds)
        self.test_metrics = InteractiveMetrics(max_clicks=test_clicks, thresholds=thresholds)
        # Other views of the same weights tested side by side (FocSAM: "sam" = without its refiner).
        variants = getattr(self.model, "evaluation_variants", None)
        variants = variants() if callable(variants) else {}
        self._main_name = next((k for k, v in variants.items() if v is self.model), "model")
        self._test_variants = {k: v for k, v in variants.items() if v is not self.model}
        self.variant_test_metrics = nn.ModuleDict(
            {k: InteractiveMetrics(max_clicks=test_clicks, thresholds=thresholds) for k in self._test_variants}
        )
        self._sample_ids: dict[int, str] = {}
        #: Files of the last test report (empty before a test run and on ranks other than 0).
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
        custom = getattr(self.model, "training_loss", None)
        if callable(custom):  # a model whose loop differs (FocSAM stage 2: refine step, frozen decoder)
            out = custom(
                batch, gamma=hp.gamma, max_clicks=hp.max_train_clicks, inner_k=hp.train_inner_k,
                point_loss_weight=hp.point_loss_weight,
            )
        else:
            out = iterative_training_loss(
                self.model, batch, gamma=hp.gamma, max_clicks=hp.max_train_clicks, inner_k=hp.train_inner_k,
                point_loss_weight=hp.point_loss_weight, initial_clicks=hp.get("initial_clicks", 0),
                initial_gamma=hp.get("initial_gamma", 0.8),
            )
        B = batch["mask"].shape[0]
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=B)
        for name, value in out.items():  # nfl, num_clicks, point_loss, the model's auxiliary losses
            if name != "loss":
                self.log(f"train/{name}", value, batch_size=B)
        return out["loss"]

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, batch: dict, metrics: InteractiveMetrics, model: Any = None) -> None:
        B = batch_size_of(batch)
        if B == 0:  # the padding batch of a process without samples: nothing to score
            return
        index = batch.get("index")
        if index is None:  # no dataset indices: number the samples in the order seen
            if _world_size(metrics) > 1:
                raise ValueError(
                    "evaluation batches need 'index' (B,) dataset indices under DDP (wrap the dataset in "
                    "segblocks.data.IndexedDataset): they key the click seeds and order the report"
                )
            start = len(self._sample_ids)
            index = torch.arange(start, start + B)
        generators = sample_generators(self.hparams.eval_seed, index)
        model = self.model if model is None else model
        curves = evaluate_clicks(model, batch, max_clicks=metrics.max_clicks, generator=generators)
        self._sample_ids.update(zip(index.tolist(), batch["sample_id"]))
        metrics.update(
            curves.ious.to(self.device),
            encode_seconds=curves.encode_seconds.to(self.device),
            decode_seconds=curves.decode_seconds.to(self.device),
            sample_index=index.to(self.device),
        )

    def _start_evaluation(self) -> None:
        self._sample_ids = {}

    def _log_metrics(self, metrics: InteractiveMetrics, prefix: str) -> dict[str, float]:
        """Compute (a collective: every rank), log and print the pooled metrics."""
        values = {k: float(v) for k, v in metrics.compute().items()}
        per_click = {f"miou@{k}" for k in range(1, metrics.max_clicks + 1) if k not in _LOGGED_MIOU}
        # Already pooled over the processes, so equal on every rank: a max-reduction keeps them exact
        # (a mean would divide a sum of R equal values by R).
        self.log_dict(
            {f"{prefix}/{k}": v for k, v in values.items() if k not in per_click}, sync_dist=True, reduce_fx="max"
        )
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
        for name, variant in self._test_variants.items():
            self._evaluate(batch, self.variant_test_metrics[name], model=variant)

    def on_test_epoch_end(self) -> None:
        # Every collective on every rank, in the same order; only the writing is rank 0's.
        values = self._log_metrics(self.test_metrics, "test")
        curves = self.test_metrics.per_sample_curves()  # pooled, in dataset-index order
        if self._test_variants:
            self._compare_variants(values, curves["iou"])
        ids = self._gather_sample_ids(self.test_metrics)
        out_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # log_dir broadcasts from rank 0
        if self.trainer.is_global_zero:
            names = [ids.get(i, "") for i in curves["sample_index"].tolist()]
            self.report_paths = write_click_report(curves, out_dir, sample_ids=names, metrics=values)
            self.report_paths.update(write_click_cases(
                self.model, self.trainer.test_dataloaders, curves, out_dir, eval_seed=self.hparams.eval_seed, sample_ids=names
            ))
            rank_zero_info(f"per-sample click curves written to {out_dir}")
        self.test_metrics.reset()

    def _compare_variants(self, values: dict[str, float], ious: torch.Tensor) -> None:
        """Log each variant's metrics and print them beside the model's (collectives on every rank)."""
        columns = {self._main_name: (values, ious)}
        for name, metrics in self.variant_test_metrics.items():
            v = {k: float(x) for k, x in metrics.compute().items()}
            self.log_dict({f"test_{name}/{k}": x for k, x in v.items() if not k.startswith("miou@")},
                          sync_dist=True, reduce_fx="max")
            columns[name] = (v, metrics.per_sample_curves()["iou"])
            metrics.reset()
        rows = [k for k in ("noc@85", "noc@90", "noc@95", "5-miou", f"{self.test_metrics.max_clicks}-spc", "online-spc")
                if k in values]
        table = {}
        for name, (v, iou) in columns.items():
            deltas = iou_deltas(iou) if iou.shape[-1] > 1 else iou.new_zeros(iou.shape[0], 0)
            drops = deltas[deltas <= -self.test_metrics.drop_threshold]  # FocSAM §4.3: ΔIoU ≤ −1 %
            stats = {**{k: v[k] for k in rows}, "stability/drop_count": float(drops.numel()),
                     "stability/mean_drop": float(drops.double().mean()) if drops.numel() else 0.0}
            table[name] = stats
        names = list(table)
        width = max(len(k) for k in table[names[0]]) + 2
        lines = ["test: side by side (same weights, same clicks protocol)",
                 "metric".ljust(width) + "".join(n.rjust(12) for n in names)]
        for key in table[names[0]]:
            lines.append(key.ljust(width) + "".join(f"{table[n][key]:12.4f}" for n in names))
        rank_zero_info("\n" + "\n".join(lines))

    def _gather_sample_ids(self, metrics: InteractiveMetrics) -> dict[int, str]:
        """``{dataset index: sample id}`` of every process (a collective over the metric's process group)."""
        if _world_size(metrics) == 1:
            return dict(self._sample_ids)
        group = metrics.process_group
        gathered: list[dict[int, str] | None] = [None] * torch.distributed.get_world_size(group)
        torch.distributed.all_gather_object(gathered, self._sample_ids, group=group)  # strings: an object collective
        return {k: v for part in gathered for k, v in (part or {}).items()}

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        """:func:`segblocks.optim.configure_adamw`: warm-up then poly decay, per step."""
        hp = self.hparams
        return configure_adamw(
            self.model, lr=hp.lr, weight_decay=hp.weight_decay, layer_decay=hp.layer_decay,
            total_steps=max(int(self.trainer.estimated_stepping_batches), 1), warmup_steps=hp.warmup_steps,
            warmup_start_factor=hp.warmup_start_factor, decay="poly",
        )


def _world_size(metrics: InteractiveMetrics) -> int:
    """Processes that pool ``metrics`` (1 outside an initialised process group)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return 1
    return torch.distributed.get_world_size(metrics.process_group)


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
