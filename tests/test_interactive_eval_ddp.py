"""Interactive evaluation gives every sample the same clicks and IoU curve whatever else is evaluated.

A sample's click tie-breaks are seeded from ``(eval_seed, dataset index)``, so the per-sample
report (``per_sample_iou.csv``) of a subset, of another batch size, or of two DDP processes (CPU,
gloo) must hold exactly the rows of the one-process full run, in dataset-index order; the summary
metrics must be equal too. Timing columns (``encode_seconds``, SPC) are left out of the
comparisons. The references are the runs themselves under other splits: nothing is compared with
a stored number.

The batch-size comparison uses :class:`ClickDisks`, a model computed pixel by pixel (so that a
batch of three gives each sample bit-identical logits); the DDP comparison runs the real
``sam_tiny`` one sample per forward, as the SAM recipe does (``eval_batch_size: 1``).
"""
from __future__ import annotations

import csv
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, Subset

from segblocks.data.interactive import collate_interactive
from segblocks.lightning.interactive_datamodule import InteractiveDataModule
from segblocks.lightning.interactive_module import InteractiveSegmentation

EVAL_SIZE, K = 64, 8
REPO = Path(__file__).resolve().parents[1]
TIMING = ("encode_seconds", "spc")  # columns / keys that measure time, not quality

pytestmark = pytest.mark.slow


class ClickDisks:
    """Foreground = input pixels within ``radius`` of a positive click and of no negative click.

    Each output pixel depends only on its own sample's clicks (no reduction across the batch), so
    the logits of a sample are the same alone or in a batch.
    """

    def __init__(self, radius: float = 6.0) -> None:
        self.radius = radius

    def encode(self, images: torch.Tensor, valid_size: torch.Tensor) -> torch.Tensor:
        return images

    def decode(self, state, prompts, previous) -> torch.Tensor:
        B, _, H, W = state.shape
        points, labels = prompts.points()  # B x N x 2 (x, y) in input pixels, B x N
        yy = torch.arange(H).view(1, 1, H, 1) + 0.5  # 1 x 1 x H x 1 pixel centres
        xx = torch.arange(W).view(1, 1, 1, W) + 0.5  # 1 x 1 x 1 x W
        d2 = (xx - points[..., 0, None, None]) ** 2 + (yy - points[..., 1, None, None]) ** 2  # B x N x H x W
        near = d2 < self.radius**2
        pos = (near & (labels == 1)[..., None, None]).any(1)  # B x H x W
        neg = (near & (labels == 0)[..., None, None]).any(1)  # B x H x W
        return ((pos & ~neg).float() * 20 - 10).unsqueeze(1)  # B x 1 x H x W


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "per_sample_iou.csv") as fh:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(fh)]


def _summary(folder: Path) -> dict[str, float]:
    metrics = json.loads((folder / "per_sample_iou.json").read_text())["metrics"]
    return {k: v for k, v in metrics.items() if not any(t in k for t in TIMING)}


def _trainer(root: Path, **kwargs) -> Trainer:
    return Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(root), **kwargs,
    )


def _datamodule(grabcut: Path, **kwargs) -> InteractiveDataModule:
    return InteractiveDataModule(root=str(grabcut), layout="grabcut", eval_size=EVAL_SIZE, **kwargs)


# ----------------------------------------------------------------------------- one process
def _test_run(out: Path, *, grabcut: Path, seed: int = 42, loader_indices: list[int] | None = None, **dm_kwargs):
    module = InteractiveSegmentation(model=ClickDisks(), test_clicks=K, eval_seed=seed)
    dm = _datamodule(grabcut, **dm_kwargs)
    if loader_indices is None:
        _trainer(out).test(module, datamodule=dm)
    else:  # only these dataset samples, in this order
        dm.setup("test")
        loader = DataLoader(Subset(dm.test_dataset, loader_indices), batch_size=1, collate_fn=collate_interactive)
        _trainer(out).test(module, dataloaders=loader)
    return _rows(out)


def test_subsets_orders_and_batch_sizes_give_the_rows_of_the_full_run(tmp_path, shared_data):
    grabcut = shared_data / "GrabCut"
    full = _test_run(tmp_path / "full", grabcut=grabcut, max_test_samples=4)
    assert [r["sample_index"] for r in full] == ["0", "1", "2", "3"]
    assert _test_run(tmp_path / "batch3", grabcut=grabcut, max_test_samples=4, eval_batch_size=3) == full
    assert _test_run(tmp_path / "first2", grabcut=grabcut, max_test_samples=2) == full[:2]
    # samples 3 then 1 only: each row equal to the full run's (the same clicks), and rows in dataset order
    subset = _test_run(tmp_path / "three_one", grabcut=grabcut, max_test_samples=4, loader_indices=[3, 1])
    assert sorted(subset, key=lambda r: int(r["sample_index"])) == [full[1], full[3]]
    assert subset == [full[1], full[3]]
    # the tie-breaks matter here: another seed changes some curve (so a shared generator would too)
    assert _test_run(tmp_path / "seed43", grabcut=grabcut, seed=43, max_test_samples=4) != full


def test_an_empty_batch_updates_nothing(tmp_path, shared_data):
    dm = _datamodule(shared_data / "GrabCut", max_test_samples=1)
    dm.setup("test")
    empty = collate_interactive([])
    module = InteractiveSegmentation(model=ClickDisks(), test_clicks=K)
    module.test_step(empty, 0)  # the model is not called on a (0, 3, 0, 0) image
    assert module.test_metrics.iou == [] and module._sample_ids == {}
    module.test_step(next(iter(dm.test_dataloader())), 1)
    assert module.test_metrics.compute()["num_samples"] == 1


# ----------------------------------------------------------------------------- two processes
class _Recording(InteractiveSegmentation):
    """Also writes which dataset indices and batch sizes its rank evaluated to ``record_dir``."""

    def __init__(self, *, record_dir: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.record_dir = record_dir
        self.seen: list[int] = []
        self.sizes: list[int] = []

    def test_step(self, batch, batch_idx):
        assert len(batch["index"]) == len(batch["sample_id"])  # indices stay aligned, padding batch included
        self.sizes.append(len(batch["sample_id"]))
        self.seen.extend(batch["index"].tolist())
        return super().test_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        Path(self.record_dir, f"rank{self.global_rank}.json").write_text(json.dumps({"seen": self.seen, "sizes": self.sizes}))


def _sam_run(out: Path, grabcut: Path, n: int, devices: int) -> tuple[dict, list[dict]]:
    torch.manual_seed(0)  # the same random sam_tiny weights in both runs
    out.mkdir(parents=True)
    module = _Recording(model="sam_tiny", test_clicks=K, record_dir=str(out))
    strategy = "auto" if devices == 1 else DDPStrategy(
        start_method="spawn", process_group_backend="gloo", timeout=datetime.timedelta(seconds=60)
    )  # a collective mismatch fails after 60 s instead of hanging
    (results,) = _trainer(out, devices=devices, strategy=strategy).test(module, datamodule=_datamodule(grabcut, max_test_samples=n))
    records = [json.loads((out / f"rank{r}.json").read_text()) for r in range(devices)]
    return {k: v for k, v in results.items() if "spc" not in k}, records


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
@pytest.mark.timeout(240)
@pytest.mark.parametrize("n", [3, 1])
def test_two_processes_report_exactly_what_one_process_does(tmp_path, shared_data, n):
    grabcut = shared_data / "GrabCut"
    one, _ = _sam_run(tmp_path / "one", grabcut, n, devices=1)
    two, records = _sam_run(tmp_path / "two", grabcut, n, devices=2)
    # 3 samples: rank 0 evaluates 0 and 2, rank 1 sample 1; 1 sample: rank 1 gets one empty batch
    expected = {3: [([0, 2], [1, 1]), ([1], [1])], 1: [([0], [1]), ([], [0])]}[n]
    assert [(r["seen"], r["sizes"]) for r in records] == expected
    assert two == one and one["test/num_samples"] == n  # the logged metrics
    assert _summary(tmp_path / "two") == _summary(tmp_path / "one")  # the printed table's values
    rows = _rows(tmp_path / "two")
    assert rows == _rows(tmp_path / "one")  # row by row, in dataset order, named
    assert [r["sample_index"] for r in rows] == [str(i) for i in range(n)] and all(r["sample_id"] for r in rows)


def _cli_test(out: Path, grabcut: Path, *extra: str) -> str:
    """``lightning test -c recipes/sam.yaml`` on 3 GrabCut samples (random sam_tiny, seed 0); returns its output."""
    command = [
        str(Path(sys.executable).parent / "lightning"), "test", "-c", "recipes/sam.yaml", "--data.root", str(grabcut),
        "--data.max_test_samples=3", f"--data.eval_size={EVAL_SIZE}", f"--model.init_args.test_clicks={K}",
        "--trainer.accelerator=cpu", f"--trainer.default_root_dir={out}", "--trainer.enable_progress_bar=false", *extra,
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr  # Lightning's rank-zero logger writes the table to either


def _table(output: str) -> list[str]:
    """The printed metric table without its timing rows."""
    lines = output[output.index(f"test ({K} clicks)"):].splitlines()
    end = next(i for i, line in enumerate(lines) if not line.strip() or line.startswith("per-sample"))
    return [line for line in lines[:end] if "spc" not in line]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_lightning_test_command_with_two_ddp_processes(tmp_path, shared_data):
    # The command: Lightning's ddp launcher re-runs the command line for rank 1.
    grabcut = shared_data / "GrabCut"
    one = _cli_test(tmp_path / "one", grabcut, "--trainer.devices=1")
    two = _cli_test(tmp_path / "two", grabcut, "--trainer.devices=2", "--trainer.strategy=ddp")
    assert _table(two) == _table(one) and "num_samples" in _table(one)[3]
    (csv_one,), (csv_two,) = [list((tmp_path / run).rglob("per_sample_iou.csv")) for run in ("one", "two")]
    assert _rows(csv_two.parent) == _rows(csv_one.parent)
    assert [r["sample_index"] for r in _rows(csv_two.parent)] == ["0", "1", "2"]
