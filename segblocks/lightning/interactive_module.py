"""Reusable LightningModule for click-based interactive segmentation: iterative training, K-click evaluation.

Subclasses implement the :class:`~segblocks.interactive.protocol.InteractiveModel` pair
``encode`` / ``decode`` (see :class:`~segblocks.lightning.sam_module.SamInteractive`); this base
class owns everything around it.

**Iterative training** (RITM's scheme as InterFormer / Inter2Former §4.2 / HRSAM / FocSAM use it;
details from the authors' code, notes §0.4, §1.8, §2.4). Per batch:

1. draw ``k`` with ``P(k) ∝ γ^k``, ``k ∈ {0..max_train_clicks}`` (one ``k`` for the whole batch,
   as the authors do);
2. without gradients and in eval mode: place the first click from an empty prediction with the
   evaluation rule (``inner_k=1``), then ``k`` times decode → ``logit > 0`` → add a click with the
   training rule (``inner_k=1.7``), feeding the previous decode output back. Samples whose error
   vanished get no further click, so click counts differ within a batch (padding label −1);
3. one decode with gradients on all the clicks and the last previous output, then NFL (+ the
   optional FocSAM point loss, Eq. 10) on the logits resized to the crop.

The image is encoded **once per step, with gradients**, and the simulated decodes reuse that
state under ``no_grad`` (no graph is built for them). Inter2Former instead runs its backbone
twice (no-grad in eval mode for the simulation, then with gradients); the two agree unless the
encoder has batch-norm or dropout, and encoding once halves the encoder cost.

**Evaluation** (``validation_step`` with ``val_clicks``, ``test_step`` with ``test_clicks``):
:func:`~segblocks.interactive.evaluation.evaluate_clicks` per batch into
:class:`~segblocks.metrics.InteractiveMetrics`; at epoch end the metrics are logged and printed as
a table, and the test writes ``per_sample_iou.csv`` / ``.json`` and ``miou_vs_clicks.png`` into
the trainer's log dir.

Optimisation: AdamW (lr 1e-4, weight decay 0.05), linear warm-up then polynomial (power 1) decay
to 0, as the HRSAM / FocSAM configs (notes §2.1, §3.1).
"""
from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info

from segblocks.interactive.clicker import TRAIN_INNER_K, Clicks, next_click, sample_num_clicks
from segblocks.interactive.evaluation import evaluate_clicks, write_click_report
from segblocks.interactive.protocol import ClickPrompts, logits_to_input
from segblocks.losses import normalized_focal_loss, point_loss
from segblocks.metrics import InteractiveMetrics, format_metrics_table

__all__ = ["InteractiveSegmentation"]

#: mIoU@k logged besides 5-mIoU (the authors' ``click_indices``); the report files keep every k.
_LOGGED_MIOU = (1, 2, 3, 4, 10, 15, 20)
#: Metrics shown in the printed table.
_TABLE_KEYS = ("num_samples", "noc@85", "noc@90", "noc@95", "nof@85", "nof@90", "nof@95", "miou@1", "5-miou",
               "stability/drop_fraction")


class InteractiveSegmentation(LightningModule, abc.ABC):
    """Iterative click training and K-click evaluation around ``encode`` / ``decode``.

    Batches come from :class:`~segblocks.lightning.interactive_datamodule.InteractiveDataModule`
    (:func:`~segblocks.data.interactive.collate_interactive`, plus an optional ``index`` (B,) of
    dataset indices used to name rows of the test report).

    Args:
        gamma: ``γ`` of ``P(k) ∝ γ^k`` (0.6 for COCO in the authors' configs).
        max_train_clicks: largest ``k`` (20).
        train_inner_k: candidate threshold of the training clicks after the first (1.7).
        point_loss_weight: weight of the FocSAM point loss; 0 disables it.
        val_clicks: click budget of ``validation_step`` (fewer than the test's to keep it cheap).
        test_clicks: click budget of ``test_step`` (the protocol's 20).
        thresholds: IoU targets of NoC / NoF.
        eval_seed: seed of the evaluation clicker's tie-breaking, reset at each evaluation
            epoch (the authors seed 42).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to biases and 1-D parameters).
        warmup_steps: linear warm-up length, capped at a tenth of the training steps.
    """

    #: Constructor arguments (of subclasses too) kept out of ``hparams``: injected modules.
    hparams_ignore: tuple[str, ...] = ()

    def __init__(
        self,
        *,
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
    ) -> None:
        super().__init__()
        if max_train_clicks < 0 or val_clicks < 1 or test_clicks < 1:
            raise ValueError(
                f"need max_train_clicks >= 0, val_clicks >= 1 and test_clicks >= 1; got {max_train_clicks}, "
                f"{val_clicks}, {test_clicks}"
            )
        if point_loss_weight < 0 or warmup_steps < 0:
            raise ValueError(f"point_loss_weight and warmup_steps must be >= 0; got {point_loss_weight}, {warmup_steps}")
        self.save_hyperparameters(ignore=list(self.hparams_ignore))  # collects the subclass' arguments too
        self.val_metrics = InteractiveMetrics(max_clicks=val_clicks, thresholds=thresholds)
        self.test_metrics = InteractiveMetrics(max_clicks=test_clicks, thresholds=thresholds)
        self._eval_rng = np.random.default_rng(eval_seed)
        self._sample_ids: dict[int, str] = {}
        #: Files of the last test report (empty before a test run).
        self.report_paths: dict[str, Path] = {}

    # ------------------------------------------------------------------ the model
    @abc.abstractmethod
    def encode(self, images: torch.Tensor, valid_size: torch.Tensor) -> Any:
        """Once per image; see :meth:`segblocks.interactive.protocol.InteractiveModel.encode`."""

    @abc.abstractmethod
    def decode(self, state: Any, prompts: ClickPrompts, previous: torch.Tensor | None) -> torch.Tensor:
        """Once per click, ``(B, 1, h, w)`` logits; see :meth:`segblocks.interactive.protocol.InteractiveModel.decode`."""

    # ------------------------------------------------------------------ training
    def simulate_clicks(
        self, state: Any, gt: torch.Tensor, ignore: torch.Tensor, num_clicks: int
    ) -> tuple[Clicks, torch.Tensor | None]:
        """Step 2 of the module docstring: the first click, then ``num_clicks`` predict → click rounds.

        Runs without gradients and with the module in eval mode (restored afterwards).

        Args:
            state: :meth:`encode` output for the batch.
            gt: ``(B, H, W)`` bool objects in the input frame.
            ignore: ``(B, H, W)`` bool pixels never clicked.
            num_clicks: ``k``, the prediction-driven clicks after the first.

        Returns:
            The clicks (``1 + k`` at most per sample) and the last decode output (None if ``k = 0``).
        """
        B, H, W = gt.shape
        size = torch.tensor([[H, W]], device=gt.device).expand(B, 2)
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                clicks = Clicks.empty(B, device=gt.device)
                coords, positive, placed = next_click(torch.zeros_like(gt), gt, ignore=ignore, inner_k=1.0)
                clicks = clicks.append(coords, positive, placed)
                previous = None
                for _ in range(num_clicks):
                    previous = self.decode(state, ClickPrompts(clicks=clicks, frame_size=size, input_size=size), previous)
                    pred = logits_to_input(previous, (H, W))[:, 0] > 0  # B x H x W
                    coords, positive, placed = next_click(
                        pred, gt, ignore=ignore, clicked=clicks.to_mask(H, W), inner_k=self.hparams.train_inner_k
                    )
                    clicks = clicks.append(coords, positive, placed)
        finally:
            self.train(was_training)
        return clicks, previous

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images, gt, ignore = batch["image"], batch["mask"], batch["ignore"]
        B, H, W = gt.shape
        k = sample_num_clicks(gamma=self.hparams.gamma, max_clicks=self.hparams.max_train_clicks)
        state = self.encode(images, batch["valid_size"])
        clicks, previous = self.simulate_clicks(state, gt, ignore, k)
        size = torch.tensor([[H, W]], device=gt.device).expand(B, 2)
        prompts = ClickPrompts(clicks=clicks, frame_size=size, input_size=size)
        logits = logits_to_input(self.decode(state, prompts, previous), (H, W))  # B x 1 x H x W
        target = torch.where(ignore, torch.full_like(gt, 255, dtype=torch.long), gt.long())  # B x H x W
        nfl = normalized_focal_loss(logits, target)
        loss = nfl
        if self.hparams.point_loss_weight > 0:
            ptl = point_loss(logits, clicks.coords, clicks.labels)
            loss = loss + self.hparams.point_loss_weight * ptl
            self.log("train/point_loss", ptl, batch_size=B)
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        self.log("train/nfl", nfl, batch_size=B)
        self.log("train/num_clicks", clicks.num_clicks.float().mean(), batch_size=B)
        return loss

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, batch: dict, metrics: InteractiveMetrics) -> None:
        curves = evaluate_clicks(self, batch, max_clicks=metrics.max_clicks, generator=self._eval_rng)
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
        self.log_dict({f"{prefix}/{k}": v for k, v in values.items() if k not in per_click}, sync_dist=False)
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
        """AdamW without decay on biases and 1-D parameters; linear warm-up, then poly (power 1) decay."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() > 1]
        no_decay = [p for p in params if p.dim() <= 1]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr,
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = min(self.hparams.warmup_steps, total // 10)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return max(0.0, 1.0 - (step - warmup) / max(total - warmup, 1))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
