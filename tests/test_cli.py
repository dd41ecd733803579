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
    # only default_root_dir: the recipe's loggers and checkpoints follow it (version_N/, last.ckpt link)
    return [
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.max_steps=2",
        "--trainer.log_every_n_steps=1",
        "--trainer.limit_val_batches=1",
        "--trainer.check_val_every_n_epoch=1",
        "--trainer.enable_progress_bar=false",
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
    ckpt = fit_dir / "last.ckpt"
    assert ckpt.is_file() and ckpt.resolve().parent == fit_dir / "version_0" / "checkpoints"
    rows = _csv_metrics(fit_dir)
    assert any(r.get("train/loss") for r in rows), rows
    fit_metrics = _val_metrics(rows)
    assert {"val/PQ", "val/SQ", "val/RQ", "val/mIoU"} <= set(fit_metrics)
    out = _run(["validate", "-c", f"recipes/{recipe}", *_tiny_args(val_dir, tmp_path / "cache"), f"--ckpt_path={ckpt}"])
    assert "PQ" in out.stdout + out.stderr  # our table (logging); Lightning's 16-digit one is off
    assert "────" not in out.stdout  # Lightning's verbose results table
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
    assert (tmp_path / "last.ckpt").is_file()


def test_lightning_script_forwards_other_subcommands(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the forwarding rewrites sys.argv
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


# ----------------------------------------------------------------------------- recipes, composition, run folders
SHIPPED = sorted(p.stem for p in (REPO / "recipes").glob("*.yaml"))
BORING = """# a tiny recipe over the shipped base
__base__: _base_trainer.yaml
trainer:
  default_root_dir: {root}
  max_steps: 60
  limit_val_batches: 0
  enable_model_summary: false
model:
  class_path: lightning.pytorch.demos.boring_classes.BoringModel
data:
  class_path: lightning.pytorch.demos.boring_classes.BoringDataModule
"""


def _boring(tmp_path: Path) -> Path:
    recipe = tmp_path / "boring.yaml"
    recipe.write_text(BORING.format(root=tmp_path / "runs"))
    return recipe


def _print_config(args: list[str], capsys) -> dict:
    import yaml

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli.main([*args, "--print_config"])
    assert not exc.value.code
    return yaml.safe_load(capsys.readouterr().out)


def test_shipped_recipes_resolve_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = cli.recipes_dir() / "pro_scale.yaml"
    assert shipped.is_file() and set(cli.list_recipes(include_private=True)) == set(SHIPPED)
    for value in ("recipes/pro_scale.yaml", "pro_scale.yaml", "pro_scale"):
        assert Path(cli.resolve_config_path(value)) == shipped, value
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "pro_scale.yaml").write_text("trainer: {max_steps: 1}\n")
    assert cli.resolve_config_path("recipes/pro_scale.yaml") == "recipes/pro_scale.yaml"  # a local file wins
    with pytest.raises(FileNotFoundError, match="not a shipped recipe.*pro_scale"):
        cli.resolve_config_path("recipes/no_such_recipe.yaml")
    with pytest.raises(FileNotFoundError):
        cli.resolve_config_path("elsewhere/pro_scale.yaml")  # only bare names or recipes/NAME
    inline = "{trainer: {max_steps: 1}}"
    assert cli.resolve_config_path(inline) == inline


def test_base_files_expand_first_and_cycles_are_named(tmp_path, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)
    (tmp_path / "b.yaml").write_text("__base__: _base_trainer.yaml\ntrainer: {max_steps: 3}\n")
    (tmp_path / "a.yaml").write_text("__base__: [b.yaml]\ntrainer: {max_steps: 4}\n")
    (tmp_path / "plain.yaml").write_text("trainer: {max_steps: 5}\n")
    out = cli.expand_config_args(["fit", "-c", "a.yaml", "--config=plain.yaml", "--trainer.max_steps=6"])
    assert out[:2] == ["fit", "-c"] and Path(out[2]) == cli.recipes_dir() / "_base_trainer.yaml"
    assert out[3] == "-c" and yaml.safe_load(out[4]) == {"trainer": {"max_steps": 3}}
    assert out[5] == "-c" and yaml.safe_load(out[6]) == {"trainer": {"max_steps": 4}}
    assert out[7:] == ["--config=plain.yaml", "--trainer.max_steps=6"]
    assert cli.expand_config_args(out) == out  # idempotent (main and SegblocksCLI both expand)
    (tmp_path / "b.yaml").write_text("__base__: a.yaml\n")
    with pytest.raises(ValueError, match=r"cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        cli.expand_config_args(["-c", "a.yaml"])
    (tmp_path / "c.yaml").write_text("__base__: {x: 1}\n")
    with pytest.raises(TypeError, match="__base__ must be"):
        cli.expand_config_args(["-c", "c.yaml"])


@pytest.mark.parametrize("recipe", [r for r in SHIPPED if not r.startswith("_") and r != "coco_panoptic"])
def test_every_recipe_composes_the_base_trainer(recipe, capsys):
    cfg = _print_config(["fit", "-c", f"{recipe}.yaml"], capsys)
    assert cfg["seed_everything"] == 0 and cfg["trainer"]["logger"] is True
    assert cfg["trainer"]["default_root_dir"] == f"runs/{recipe}"  # the run name, once, in the recipe
    paths = [c["class_path"] for c in cfg["trainer"]["callbacks"]]
    assert "segblocks.lightning.cli.LatestCheckpointLink" in paths
    assert "lightning.pytorch.callbacks.LearningRateMonitor" in paths
    assert cfg["best_checkpoint"]["monitor"] and cfg["best_checkpoint"]["save_last"] is True
    assert cfg["last_checkpoint"]["every_n_train_steps"] >= 1 and cfg["last_checkpoint"]["save_last"] is True


def test_overlay_recipes_differ_from_their_sibling_only_where_they_say(capsys):
    def flat(tree, prefix=""):
        if isinstance(tree, dict):
            return {k: v for key, sub in tree.items() for k, v in flat(sub, f"{prefix}.{key}").items()}
        return {prefix: tree}

    for variant, sibling in [("hrsam_pp", "hrsam"), ("hrsam_pp_distill", "hrsam_distill")]:
        a = flat(_print_config(["fit", "-c", f"recipes/{sibling}.yaml"], capsys))
        b = flat(_print_config(["fit", "-c", f"recipes/{variant}.yaml"], capsys))
        changed = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
        assert changed and all(k == ".trainer.default_root_dir" or "class_path" in k for k in changed), changed
        assert all("hrsam_pp" in str(b[k]) for k in changed if "class_path" in k), changed
    composed = _print_config(["fit", "-c", "pro_scale", "-c", "coco_panoptic", "--data.root=/data/coco"], capsys)
    assert composed["last_checkpoint"]["every_n_train_steps"] == 1000  # an overlay changes one key of a group
    assert composed["best_checkpoint"]["monitor"] == "val/PQ" and composed["trainer"]["default_root_dir"] == "runs/coco_panoptic"


def test_runs_get_version_folders_and_a_link_to_the_latest_last_ckpt(tmp_path):
    import torch

    recipe, runs = _boring(tmp_path), tmp_path / "runs"
    for _ in range(2):
        cli.main(["fit", "-c", str(recipe), "--trainer.enable_progress_bar=false"])
    for version in ("version_0", "version_1"):
        assert (runs / version / "metrics.csv").is_file() and (runs / version / "checkpoints" / "last.ckpt").is_file()
    assert not list(runs.rglob("last-v*.ckpt"))
    link = runs / "last.ckpt"
    assert link.is_symlink() and link.resolve() == (runs / "version_1" / "checkpoints" / "last.ckpt").resolve()
    assert torch.load(link, weights_only=False)["global_step"] == 60
    cli.main(["validate", "-c", str(recipe), f"--ckpt_path={link}", "--trainer.limit_val_batches=2",
              "--trainer.enable_progress_bar=false"])


def test_last_ckpt_is_written_every_n_training_steps(tmp_path):
    import torch

    recipe = _boring(tmp_path)
    # no validation and the best-checkpoint callback's last.ckpt off: only the periodic save remains
    cli.main(["fit", "-c", str(recipe), "--best_checkpoint.save_last=false", "--trainer.enable_progress_bar=false"])
    last = tmp_path / "runs" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 50  # every_n_train_steps of the base, max_steps 60


def test_default_root_dir_moves_logs_and_checkpoints_and_logger_false_works(tmp_path):
    recipe, moved = _boring(tmp_path), tmp_path / "moved"
    cli.main(["fit", "-c", str(recipe), f"--trainer.default_root_dir={moved}", "--trainer.logger=false",
              "--trainer.enable_progress_bar=false"])  # LearningRateMonitor and the progress bar are left out
    assert (moved / "checkpoints" / "last.ckpt").is_file() and (moved / "last.ckpt").is_file()
    assert not (tmp_path / "runs").exists()
    cli.main(["fit", "-c", str(recipe), "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false"])
    assert not list((tmp_path / "runs").rglob("*.ckpt"))


def test_help_version_and_recipes_subcommand(capsys):
    import segblocks

    cli.main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: segblocks") and "recipes" in out and "names a" in out
    assert all(name in out for name in ("fit", "validate", "test", "predict", "pro_scale", "hrsam_pp"))
    for argv in (["--version"], ["-V"]):
        cli.main(argv)
        assert capsys.readouterr().out.startswith(f"segblocks {segblocks.__version__}")
    cli.lightning_main(["--version"])
    assert segblocks.__version__ in capsys.readouterr().out
    cli.main(["recipes"])
    out = capsys.readouterr().out
    for name, line in cli.list_recipes().items():
        assert f"{name} " in out and line and line in out
    assert "_base_trainer" not in out


def test_python_dash_m_prints_our_usage():
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "segblocks"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith("usage: segblocks"), proc.stderr[-2000:]
    proc = subprocess.run([sys.executable, "-m", "segblocks", "fit", "-c", "recipes/typo.yaml"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "recipes/typo.yaml" in proc.stderr and "shipped recipes" in proc.stderr


def test_thread_policy(monkeypatch):
    import torch

    assert [cli.default_num_threads(available=n) for n in (1, 2, 4, 16)] == [1, 1, 3, 15]
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(2)
        assert cli.apply_thread_policy(None) == 2  # the user's OMP_NUM_THREADS decides: nothing changes
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert cli.apply_thread_policy(None) == min(2, cli.default_num_threads())
        assert cli.apply_thread_policy(1) == 1 and os.environ["OMP_NUM_THREADS"] == "1"
        for bad in (0, 1.5, True):
            with pytest.raises(ValueError, match="threads"):
                cli.apply_thread_policy(bad)
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- dotted overrides
def _first_leaf(init_args: dict, prefix: str, *, nested: bool):
    """``(dotted key, value)`` of a number / bool argument: directly in ``init_args`` (``nested=False``)
    or inside the first sub-module spec (``class_path`` + ``init_args``) found depth first."""
    for key, value in init_args.items():
        if not nested and isinstance(value, (bool, int, float)):
            return f"{prefix}.{key}", value
        if nested and isinstance(value, dict) and "class_path" in value:
            found = _first_leaf(value.get("init_args") or {}, f"{prefix}.{key}.init_args", nested=False)
            found = found or _first_leaf(value.get("init_args") or {}, f"{prefix}.{key}.init_args", nested=True)
            if found:
                return found
    return None


def _changed(value):
    return (not value) if isinstance(value, bool) else value + 1 if isinstance(value, int) else value * 0.5


def _lookup(cfg: dict, dotted: str):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


@pytest.mark.parametrize("recipe", [r for r in SHIPPED if not r.startswith("_")])
def test_dotted_model_overrides_reach_every_recipe(recipe, capsys):
    # SegblocksCLI links data.num_classes / thing_classes into model.init_args; jsonargparse handed
    # those link targets to the parser of a function class_path (the registered entries of
    # focsam.yaml, sam.yaml, ...), so any --model.init_args.* override failed with
    # "add_function_arguments() got an unexpected keyword argument 'linked_targets'".
    base = ["fit", "-c", "pro_scale", "-c", recipe] if recipe == "coco_panoptic" else ["fit", "-c", recipe]
    cfg = _print_config(base, capsys)
    for nested in (False, True):  # one top-level model argument, one argument of a sub-module
        found = _first_leaf(cfg["model"]["init_args"], "model.init_args", nested=nested)
        assert found, (recipe, nested, cfg["model"])
        key, value = found
        out = _print_config([*base, f"--{key}={_changed(value)}"], capsys)
        assert _lookup(out, key) == _changed(value), (recipe, key)
        assert _lookup(out, "model.class_path") == cfg["model"]["class_path"]
    if "test_clicks" in cfg["model"]["init_args"]:  # interactive recipes: from `test` too
        out = _print_config(["test", *base[1:], "--model.init_args.test_clicks=7"], capsys)
        assert out["model"]["init_args"]["test_clicks"] == 7


def test_registered_function_as_the_top_level_model(monkeypatch, capsys):
    from lightning.pytorch.demos.boring_classes import BoringModel

    from segblocks.models import _registry

    class Boring(BoringModel):
        def __init__(self, *, width: int = 32, num_classes: int = 2) -> None:
            super().__init__()
            self.width, self.num_classes = width, num_classes

    def boring_entry(*, width: int = 32, num_classes: int = 2) -> Boring:
        """A registered entry building a LightningModule."""
        return Boring(width=width, num_classes=num_classes)

    monkeypatch.setattr(_registry, "_entrypoints", dict(_registry._entrypoints))  # registry left as it was
    monkeypatch.setattr(sys.modules[__name__], "boring_entry", _registry.register_model(boring_entry), raising=False)
    out = _print_config(["fit", f"--model.class_path={__name__}.boring_entry", "--model.init_args.width=7",
                         "--data.class_path=lightning.pytorch.demos.boring_classes.BoringDataModule"], capsys)
    assert out["model"]["init_args"]["width"] == 7 and out["model"]["init_args"]["checkpoint"] is None
