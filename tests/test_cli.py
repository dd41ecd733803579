"""End-to-end CLI runs of the panoptic recipes (a few steps on a tiny synthetic dataset)."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from segblocks.lightning import cli

REPO = Path(__file__).resolve().parents[1]
RECIPES = ["pro_scale.yaml", "mask2former.yaml"]  # panoptic recipes; interactive ones have their own tests

pytestmark = pytest.mark.slow


def _tiny_args(tmp_path: Path, cache_dir: Path | None = None) -> list[str]:
    return [
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.max_steps=2",
        "--trainer.log_every_n_steps=1",
        "--trainer.limit_val_batches=1",
        "--trainer.check_val_every_n_epoch=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.save_dir={tmp_path}",
        "--trainer.callbacks=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={tmp_path}/ckpt",
        "--trainer.callbacks.save_last=true",
        f"--data.cache_dir={cache_dir or tmp_path / 'cache'}",
        "--data.synthetic_num_train=4",
        "--data.synthetic_num_val=2",
        "--data.batch_size=2",
    ]


BIN = Path(sys.executable).parent
COMMANDS = {
    "lightning": [str(BIN / "lightning")],  # the console scripts pip installed
    "segblocks": [str(BIN / "segblocks")],
    "module": [sys.executable, "-m", "segblocks"],
}


def _run(args: list[str], command: str = "segblocks") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(COMMANDS[command] + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _csv_metrics(tmp_path: Path) -> list[dict]:
    rows = []
    for f in sorted(tmp_path.rglob("metrics.csv")):
        with open(f) as fh:
            rows += list(csv.DictReader(fh))
    return rows


def _val_metrics(rows: list[dict]) -> dict[str, float]:
    last = [r for r in rows if r.get("val/PQ")][-1]
    return {k: float(v) for k, v in last.items() if k.startswith("val/") and v not in ("", "nan")}


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_fit_then_validate_reproduces_metrics(recipe, tmp_path):
    fit_dir, val_dir = tmp_path / "fit", tmp_path / "validate"
    _run(["fit", "-c", f"recipes/{recipe}", *_tiny_args(fit_dir, tmp_path / "cache")], "lightning")
    ckpt = fit_dir / "ckpt" / "last.ckpt"
    assert ckpt.is_file()
    rows = _csv_metrics(fit_dir)
    assert any(r.get("train/loss") for r in rows), rows
    fit_metrics = _val_metrics(rows)
    assert {"val/PQ", "val/SQ", "val/RQ", "val/mIoU"} <= set(fit_metrics)
    out = _run(["validate", "-c", f"recipes/{recipe}", *_tiny_args(val_dir, tmp_path / "cache"), f"--ckpt_path={ckpt}"])
    assert "PQ" in out.stdout
    val_metrics = _val_metrics(_csv_metrics(val_dir))
    assert val_metrics.keys() == fit_metrics.keys()
    for key, value in fit_metrics.items():
        assert val_metrics[key] == pytest.approx(value, abs=1e-4), key


def test_print_config_composes_coco_recipe(tmp_path):
    out = _run(["fit", "-c", "recipes/pro_scale.yaml", "-c", "recipes/coco_panoptic.yaml", "--data.root=/data/coco", "--print_config"])
    assert "root: /data/coco" in out.stdout
    assert "batch_size: 16" in out.stdout and "layers_per_stage" in out.stdout


def test_ddp_two_cpu_processes(tmp_path):
    _run(
        ["fit", "-c", "recipes/pro_scale.yaml", *_tiny_args(tmp_path),
         "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"],
        "module",
    )
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()


def test_lightning_script_forwards_other_subcommands(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_lightning_sdk_entry", lambda: None)
    with pytest.raises(SystemExit) as exc:
        cli.lightning_main(["login"])
    assert exc.value.code == 2
    assert "lightning-sdk" in capsys.readouterr().err

    called = {}

    class _Entry:
        def load(self):
            return lambda: called.setdefault("argv", list(sys.argv))

    monkeypatch.setattr(cli, "_lightning_sdk_entry", lambda: _Entry())
    with pytest.raises(SystemExit):
        cli.lightning_main(["studio", "list"])
    assert called["argv"][1:] == ["studio", "list"]
