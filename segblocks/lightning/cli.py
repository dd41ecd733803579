"""Command-line entry points: ``segblocks``, ``python -m segblocks`` and ``lightning``.

All three run a :class:`~lightning.pytorch.cli.LightningCLI` in subclass mode for the model and
the data, so recipes are ordinary LightningCLI YAML (``class_path`` / ``init_args``), several
``-c`` files compose left to right, and dotted overrides work (``--trainer.max_steps=5``)::

    segblocks fit -c recipes/pro_scale.yaml
    lightning fit -c recipes/pro_scale.yaml -c recipes/coco_panoptic.yaml --data.root /data/coco
    lightning validate -c recipes/pro_scale.yaml --ckpt_path runs/pro_scale/last.ckpt

What this module adds to LightningCLI:

* **Shipped recipes.** The wheel installs ``recipes/*.yaml`` as ``segblocks/recipes``. A ``-c``
  value that does not exist relative to the working directory but names a shipped recipe
  (``recipes/pro_scale.yaml``, ``pro_scale.yaml`` or ``pro_scale``) resolves to the installed
  copy, so the README's commands work from any directory. ``segblocks recipes`` lists them.
* **Composition.** A recipe may start from other files with a top-level key
  ``__base__: file.yaml`` (or a list of files): each base is looked up next to the including
  file first, then among the shipped recipes, and is applied before it, exactly as if it had
  been given as an earlier ``-c`` (jsonargparse merges ``model.init_args`` of the same class and
  appends to lists written ``callbacks+:``). Every recipe composes ``_base_trainer.yaml``.
* **One run directory.** ``trainer.logger: true`` (the base file's value) means segblocks'
  loggers: a CSV logger (plus TensorBoard when the ``tensorboard`` package is installed) in
  ``<default_root_dir>/version_N/``; checkpoints follow the first logger into
  ``version_N/checkpoints/``, and :class:`LatestCheckpointLink` points
  ``<default_root_dir>/last.ckpt`` at the latest run's ``last.ckpt``. ``--trainer.default_root_dir``
  therefore moves logs and checkpoints together. Two top-level groups configure the checkpoint
  callbacks (:data:`CHECKPOINT_DEFAULTS`): ``best_checkpoint`` (the recipe names its ``monitor``;
  it also refreshes ``last.ckpt`` at each validation) and ``last_checkpoint`` (``last.ckpt`` every
  ``every_n_train_steps``). Callbacks that cannot work in the configured trainer are left out with
  a note (``LearningRateMonitor`` without a logger, a progress bar with
  ``enable_progress_bar=false``, the checkpoint groups with ``enable_checkpointing=false``).
* **Threads.** ``--threads N`` sets torch's intra-op threads; without it and without
  ``OMP_NUM_THREADS`` the CLI uses :func:`default_num_threads` (one core left free), because a
  training step whose OpenMP team is as large as the machine collapses when any other process
  shares the cores (``benchmarks/bench_threads.py`` measures it).
* ``--version``, a help text of our own, and extra subcommands (:func:`register_subcommand`).

The ``lightning`` script: Lightning 2.x installs no ``lightning`` console script (only
``fabric``); the name belongs to the ``lightning-sdk`` package's cloud CLI. Ours handles the
subcommands above itself and forwards every other one to lightning-sdk's CLI when that package
is installed.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Optional, Union

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
import yaml  # noqa: E402
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer  # noqa: E402
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar  # noqa: E402
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI  # noqa: E402
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn  # noqa: E402

import segblocks  # noqa: E402

__all__ = [
    "BASE_KEY",
    "CHECKPOINT_DEFAULTS",
    "LatestCheckpointLink",
    "SegblocksArgumentParser",
    "SegblocksCLI",
    "Subcommand",
    "apply_thread_policy",
    "default_loggers",
    "default_num_threads",
    "expand_config_args",
    "lightning_main",
    "list_recipes",
    "main",
    "recipes_dir",
    "register_subcommand",
    "resolve_config_path",
]


RUN_SUBCOMMANDS = ("fit", "validate", "test", "predict")
BASE_KEY = "__base__"
_RECIPE_SUFFIXES = (".yaml", ".yml")


# ----------------------------------------------------------------------------- shipped recipes
def recipes_dir() -> Path:
    """The folder of the recipes installed with the package.

    A wheel installs them as ``segblocks/recipes/``; an editable install or a source checkout
    maps that package to the repository's top-level ``recipes/`` folder.
    """
    installed = Path(__file__).resolve().parents[1] / "recipes"
    if installed.is_dir():
        return installed
    try:  # editable install: the package finder maps segblocks.recipes -> <repo>/recipes
        spec = importlib.util.find_spec("segblocks.recipes")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            if Path(location).is_dir():
                return Path(location)
    return Path(__file__).resolve().parents[2] / "recipes"  # source checkout without install


def _first_comment_line(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            return stripped.lstrip("#").strip()
        if stripped:
            break
    return ""


def list_recipes(*, include_private: bool = False) -> dict[str, str]:
    """``{name: one-line description}`` of the shipped recipes (the first comment line of each).

    Files starting with ``_`` (``_base_trainer.yaml``) are building blocks of the others and are
    left out unless ``include_private``.
    """
    folder = recipes_dir()
    files = sorted(p for p in folder.iterdir() if p.suffix in _RECIPE_SUFFIXES) if folder.is_dir() else []
    return {p.stem: _first_comment_line(p) for p in files if include_private or not p.name.startswith("_")}


def _looks_inline(value: str) -> bool:
    """jsonargparse also takes a config as a YAML/JSON string (``-c '{trainer: {max_steps: 5}}'``)."""
    return "\n" in value or value.lstrip().startswith(("{", "[")) or ": " in value


def resolve_config_path(value: str | os.PathLike) -> str:
    """The file a ``-c`` value refers to.

    An existing path (relative to the working directory) is returned unchanged. Otherwise a value
    naming a shipped recipe -- ``recipes/NAME.yaml``, ``NAME.yaml`` or ``NAME`` -- resolves to the
    installed copy. An inline YAML string is returned unchanged (jsonargparse parses it).

    Raises:
        FileNotFoundError: the file exists neither there nor among the shipped recipes.
    """
    value = os.fspath(value)
    if os.path.exists(value) or _looks_inline(value):
        return value
    path = Path(value)
    if path.parent in (Path("."), Path("recipes")):
        names = [path.name] if path.suffix in _RECIPE_SUFFIXES else [path.name + s for s in _RECIPE_SUFFIXES]
        for name in names:
            shipped = recipes_dir() / name
            if shipped.is_file():
                return str(shipped)
    raise FileNotFoundError(
        f"config file {value!r} not found (relative to {os.getcwd()}) and it is not a shipped recipe; "
        f"shipped recipes: {', '.join(list_recipes(include_private=True)) or 'none'} (in {recipes_dir()})"
    )


def _expand_one(value: str, stack: tuple[str, ...]) -> list[str]:
    """``value`` as a list of ``-c`` values with its ``__base__`` files first (depth first)."""
    resolved = resolve_config_path(value)
    if _looks_inline(resolved):
        return [resolved]
    key = os.path.realpath(resolved)
    if key in stack:
        chain = " -> ".join([*stack[stack.index(key):], key])
        raise ValueError(f"{BASE_KEY} cycle: {chain}")
    with open(resolved, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    if not isinstance(data, dict) or BASE_KEY not in data:
        return [resolved]
    bases = data.pop(BASE_KEY)
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise TypeError(f"{resolved}: {BASE_KEY} must be a file name or a list of file names, got {bases!r}")
    out: list[str] = []
    for base in bases:
        sibling = Path(resolved).parent / base
        out += _expand_one(str(sibling) if sibling.is_file() else base, (*stack, key))
    # the file itself without its __base__ key, as a config string (jsonargparse parses both)
    out.append(yaml.safe_dump(data, sort_keys=False) if data else "{}")
    return out


def expand_config_args(args: list[str]) -> list[str]:
    """Rewrite every ``-c``/``--config`` value: shipped-recipe resolution and ``__base__`` expansion.

    ``-c hrsam_pp.yaml`` becomes ``-c <shipped>/_base_trainer.yaml -c <hrsam.yaml> -c
    <hrsam_pp.yaml content>``: the bases first, in the order the ``__base__`` list gives them.
    """
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-c", "--config") and i + 1 < len(args):
            for value in _expand_one(args[i + 1], ()):
                out += [arg, value]
            i += 2
            continue
        if arg.startswith("--config="):
            out += [f"--config={v}" for v in _expand_one(arg.split("=", 1)[1], ())]
        else:
            out.append(arg)
        i += 1
    return out


# ----------------------------------------------------------------------------- threads
def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        return os.cpu_count() or 1


def default_num_threads(*, available: int | None = None) -> int:
    """The CLI's default number of torch intra-op threads: every usable core but one, at least 1.

    torch's own default is one thread per core. A training step runs a chain of short OpenMP
    parallel regions, each ending at a barrier, so when another process takes one core the whole
    team waits at every barrier for its descheduled member: on a 2-core machine sharing its cores
    with one CPU-bound process, ``pro_scale.yaml`` fell from 1.3 to 0.18 it/s with 2 threads, while
    1 thread kept running at its idle speed. Leaving one core free costs little when idle and keeps
    the run usable when the machine is shared (figures: ``benchmarks/bench_threads.py``).
    """
    available = _available_cores() if available is None else available
    return max(1, int(available) - 1)


def apply_thread_policy(threads: int | None = None) -> int:
    """Set torch's intra-op thread count for a run; returns the count in use.

    ``threads`` given: that many (also exported as ``OMP_NUM_THREADS`` so that DDP worker
    processes inherit it). Else ``OMP_NUM_THREADS`` set: torch already honours it, nothing
    changes. Else: ``min(torch's default, default_num_threads())``. DDP on CPU then divides the
    cores among its processes (Lightning does so when ``OMP_NUM_THREADS`` is unset).
    """
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an int >= 1, got {threads!r}")
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(min(torch.get_num_threads(), default_num_threads()))
    return torch.get_num_threads()


# ----------------------------------------------------------------------------- run directory
def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules[name] is None (import blocked)
        return False


def default_loggers(root_dir: str | os.PathLike) -> list:
    """The loggers ``trainer.logger: true`` stands for: CSV in ``<root_dir>/version_N/``, plus
    TensorBoard in ``version_N/tensorboard/`` when the ``tensorboard`` package is installed
    (``pip install 'segblocks[tensorboard]'``)."""
    from lightning.pytorch.loggers import CSVLogger

    csv = CSVLogger(save_dir=os.fspath(root_dir), name="")
    loggers: list = [csv]
    if _installed("tensorboard"):
        from lightning.pytorch.loggers import TensorBoardLogger
        from lightning.pytorch.utilities.rank_zero import rank_zero_only

        # the same version folder as the CSV logger (resolved on rank 0, the only one that writes)
        version = csv.version if rank_zero_only.rank == 0 else None
        loggers.append(TensorBoardLogger(save_dir=os.fspath(root_dir), name="", version=version, sub_dir="tensorboard"))
    return loggers


class LatestCheckpointLink(Callback):
    """Keeps ``<default_root_dir>/<link_name>`` pointing at the newest ``last.ckpt`` of this run.

    Every run writes its checkpoints into its own ``version_N/checkpoints/`` folder, so a second
    ``fit`` never writes ``last-v1.ckpt`` next to the first run's file; this link is the stable
    path for ``--ckpt_path``. It is a relative symbolic link, replaced atomically on global rank 0
    as soon as a :class:`~lightning.pytorch.callbacks.ModelCheckpoint` has written its
    ``last_model_path`` (where symbolic links are unavailable it warns once and does nothing).

    Args:
        link_name: file name of the link inside ``trainer.default_root_dir``.
    """

    def __init__(self, *, link_name: str = "last.ckpt") -> None:
        if not isinstance(link_name, str) or not link_name or os.sep in link_name:
            raise ValueError(f"link_name must be a plain file name, got {link_name!r}")
        self.link_name = link_name
        self._target: str | None = None
        self._warned = False

    def _update(self, trainer: Trainer) -> None:
        if not trainer.is_global_zero:
            return
        target = next((cb.last_model_path for cb in trainer.checkpoint_callbacks if getattr(cb, "last_model_path", "")), "")
        if not target or target == self._target or not os.path.isfile(target):
            return
        link = Path(trainer.default_root_dir) / self.link_name
        if os.path.realpath(link) == os.path.realpath(target) and not link.is_symlink():
            self._target = target  # the checkpoint is written at the link's place itself
            return
        if link.exists() and not link.is_symlink():
            if not self._warned:
                rank_zero_warn(f"{link} is a regular file, not replaced by a link to {target}")
                self._warned = True
            return
        tmp = link.with_name(f".{self.link_name}.{os.getpid()}.tmp")
        try:
            link.parent.mkdir(parents=True, exist_ok=True)
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
            os.symlink(os.path.relpath(target, link.parent), tmp)
            os.replace(tmp, link)
        except OSError as err:
            if not self._warned:
                rank_zero_warn(f"could not link {link} -> {target} ({err}); use the version folder's path")
                self._warned = True
            return
        self._target = target

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._update(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._update(trainer)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._update(trainer)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._update(trainer)  # after ModelCheckpoint.on_train_end's last save


# ----------------------------------------------------------------------------- the CLI
# Two checkpoint callbacks configured as top-level groups (dicts, so an overlay changes one key):
# `best_checkpoint` keeps the best validation score and refreshes last.ckpt at each validation,
# `last_checkpoint` writes last.ckpt every N training steps so that a killed run loses at most N.
# No version counter: each run has its own folder, and both write the same last.ckpt.
CHECKPOINT_DEFAULTS: dict[str, dict[str, Any]] = {
    "best_checkpoint": {"save_top_k": 1, "save_last": True, "enable_version_counter": False},
    "last_checkpoint": {"every_n_train_steps": 50, "save_top_k": 0, "save_last": True, "enable_version_counter": False},
}

_CONFIG_HELP = (
    "Path to a configuration file in json or yaml format (repeatable; later files override earlier ones). "
    "A path that does not exist relative to the working directory but names a shipped recipe "
    "(recipes/NAME.yaml, NAME.yaml or NAME; see `segblocks recipes`) resolves to the copy installed with "
    f"segblocks. A file may start from others with a top-level `{BASE_KEY}: other.yaml` (or a list), "
    "looked up next to it first, then among the shipped recipes."
)
_THREADS_HELP = (
    "torch intra-op threads for this run (also exported as OMP_NUM_THREADS). Default: OMP_NUM_THREADS "
    "when set, else every usable core but one (at least 1), which keeps a run fast when other "
    "processes share the machine."
)


class SegblocksArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, accepting link targets for ``class_path`` entries that are functions.

    :class:`SegblocksCLI` links ``data.num_classes`` / ``data.thing_classes`` into
    ``model.init_args``; jsonargparse (4.x, ``_typehints.cached_get_class_parser``) then builds
    the parser of a ``class_path`` with its parent's ``sub_add_kwargs``, link targets included,
    and for a *function* (a registered model entry such as ``segblocks.models.focsam.focsam_tiny``,
    at the top level or nested, as soon as a dotted override re-parses it) passes them to
    ``add_function_arguments``, which takes no ``linked_targets``: every ``--model.init_args.*``
    override then failed. The targets are dropped here; jsonargparse marks them not required right
    after building the parser, and the link still fills them at instantiation.
    """

    def add_function_arguments(self, function, *args: Any, linked_targets: Any = None, **kwargs: Any) -> list[str]:
        return super().add_function_arguments(function, *args, **kwargs)


class SegblocksCLI(LightningCLI):
    """LightningCLI with shipped recipes, ``__base__`` composition, run folders and a thread policy.

    Also links dataset metadata into models that take it: ``data.num_classes`` /
    ``data.thing_classes`` are passed to the model at instantiation when the model's constructor
    has those parameters (ignored otherwise), so a recipe never repeats the category list of its
    dataset. See the module docstring for the rest.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parser_class", SegblocksArgumentParser)
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.thing_classes", "model.init_args.thing_classes", apply_on="instantiate")
        parser.add_argument("--threads", type=Optional[int], default=None, help=_THREADS_HELP)
        for key, defaults in CHECKPOINT_DEFAULTS.items():
            parser.add_class_arguments(ModelCheckpoint, key, fail_untyped=False, instantiate=True, sub_configs=True)
            parser.set_defaults({f"{key}.{k}": v for k, v in defaults.items()})
        for action in parser._actions:  # LightningCLI adds -c/--config with a generic help text
            if "--config" in action.option_strings:
                action.help = _CONFIG_HELP

    def _prepare_subcommand_parser(self, klass, subcommand, **kwargs):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand in ("validate", "test"):
            # Our modules print their own metric table; Lightning's verbose one repeats it at 16 digits.
            parser.set_defaults(verbose=False)
        return parser

    def parse_arguments(self, parser, args) -> None:
        if args is None:
            args = sys.argv[1:]
        if isinstance(args, (list, tuple)):
            args = expand_config_args([str(a) for a in args])
        with _quiet_args_warning():
            super().parse_arguments(parser, args)

    def before_instantiate_classes(self) -> None:
        config = self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config
        threads = apply_thread_policy(config.get("threads"))
        rank_zero_info(f"segblocks {segblocks.__version__}: {threads} torch thread(s)")

    def _parse_ckpt_path(self) -> None:
        # Lightning reads --ckpt_path here (for its hyperparameters) with torch.load: check the file first
        # so that an empty, truncated or foreign file is named with what is wrong, not an unpickler error.
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if isinstance(ckpt_path, (str, os.PathLike)) and str(ckpt_path) not in ("last", "best", "hpc", "registry"):
            from segblocks.models.checkpoint import check_checkpoint_file

            try:
                check_checkpoint_file(ckpt_path)
            except (FileNotFoundError, ValueError) as err:
                raise SystemExit(f"{self.parser.prog} {subcommand}: error: --ckpt_path: {err}") from None
        super()._parse_ckpt_path()

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        logger = config.get("logger")
        if logger is None or logger is True:
            kwargs["logger"] = logger = default_loggers(config.get("default_root_dir") or os.getcwd())
        callbacks = config.get("callbacks")
        callbacks = [] if callbacks is None else list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        if config.get("enable_checkpointing") is not False:
            callbacks += [cb for key in CHECKPOINT_DEFAULTS if (cb := self._get(self.config_init, key)) is not None]
        dropped = []
        if not logger:  # False or []
            dropped += [cb for cb in callbacks if isinstance(cb, LearningRateMonitor)]
        if config.get("enable_progress_bar") is False:
            dropped += [cb for cb in callbacks if isinstance(cb, ProgressBar)]
        if dropped:
            rank_zero_info(
                "segblocks: not using " + ", ".join(type(cb).__name__ for cb in dropped)
                + " (no logger / progress bar disabled in this run)"
            )
        kwargs["callbacks"] = [cb for cb in callbacks if all(cb is not d for d in dropped)]
        return super().instantiate_trainer(**kwargs)


@contextlib.contextmanager
def _quiet_args_warning():
    """Silence LightningCLI's warning about ``args`` given while ``sys.argv`` has arguments: ours hold them.

    ``sys.argv`` itself must stay: Lightning's DDP launcher starts the other processes with it.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        yield


def _run_lightning_cli(args: list[str], prog: str) -> None:
    SegblocksCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": prog},
        args=args,
    )


# ----------------------------------------------------------------------------- extra subcommands
@dataclass(frozen=True)
class Subcommand:
    """A subcommand besides fit/validate/test/predict.

    ``target`` is ``"module:function"`` (imported only when the subcommand runs) or a callable;
    it receives the remaining arguments (``list[str]``) and returns an exit status or None.
    """

    name: str
    target: Union[str, Callable[[list[str]], Optional[int]]]
    help: str

    def run(self, argv: list[str]) -> Optional[int]:
        fn = self.target
        if isinstance(fn, str):
            module, _, attr = fn.partition(":")
            fn = getattr(importlib.import_module(module), attr)
        return fn(argv)


SUBCOMMANDS: dict[str, Subcommand] = {}


def register_subcommand(name: str, target: Union[str, Callable[[list[str]], Optional[int]]], help: str) -> None:
    """Add ``segblocks NAME ...`` (and ``lightning NAME ...``); see :class:`Subcommand`."""
    if not isinstance(name, str) or not name or name.startswith("-") or name in RUN_SUBCOMMANDS:
        raise ValueError(f"invalid subcommand name {name!r} (not empty, no leading '-', not one of {RUN_SUBCOMMANDS})")
    SUBCOMMANDS[name] = Subcommand(name, target, help)


def _recipes_command(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="segblocks recipes", description="List the recipes shipped with segblocks.")
    parser.add_argument("--path", action="store_true", help="print the folder they are installed in")
    ns = parser.parse_args(argv)
    if ns.path:
        print(recipes_dir())
        return 0
    recipes = list_recipes()
    width = max(map(len, recipes), default=0)
    for name, line in recipes.items():
        print(f"{name:<{width}}  {line}")
    print(f"\nrun one with `segblocks fit -c recipes/NAME.yaml` (or -c NAME) from any directory; files in {recipes_dir()}")
    return 0


def _recipe_datamodule(recipe_args: list[str], prog: str) -> LightningDataModule:
    """The DataModule a recipe (``-c ... --data.* ...``) builds, via the same CLI as ``fit``."""
    cli = SegblocksCLI(
        LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
        parser_kwargs={"prog": prog}, args=recipe_args, run=False, save_config_callback=None,
    )
    return cli.datamodule


def _check_data_command(argv: list[str]) -> int:
    import argparse

    from segblocks.data import DataCheckError, check_data

    parser = argparse.ArgumentParser(
        prog="segblocks check-data",
        description="Check every file a recipe's data reads (present, decodable, consistent) before training; "
        "exits 1 listing every problem. Other arguments (-c RECIPE, --data.root=...) select the data as for fit.",
    )
    parser.add_argument("--no-decode", action="store_true", help="only check that the files exist and are not empty (fast)")
    parser.add_argument("--max-samples", type=int, default=None, help="check at most this many samples per split")
    ns, rest = parser.parse_known_args(argv)
    if not rest:
        parser.error("give the data to check: -c recipes/NAME.yaml [--data.root=...]")
    datamodule = _recipe_datamodule(rest, "segblocks check-data")
    try:
        report = check_data(datamodule, decode=not ns.no_decode, max_samples=ns.max_samples)
    except DataCheckError as err:
        print(err.report)
        return 1
    print(report)
    return 0


def _precompute_embeddings_command(argv: list[str]) -> int:
    import argparse

    from segblocks.lightning.distill_module import precompute_teacher_embeddings
    from segblocks.models import create_model

    parser = argparse.ArgumentParser(
        prog="segblocks precompute-embeddings",
        description="Write a frozen teacher's image embeddings of a distillation recipe's images, for "
        "SamDistillation(embeddings_dir=OUT). Other arguments (-c RECIPE, --data.*) select the images as for fit.",
    )
    parser.add_argument("--teacher", required=True, help="registered encoder name, e.g. sam_vit_h_encoder (segblocks.models.list_models())")
    parser.add_argument("--checkpoint", default=None, help="local teacher weights (e.g. an official SAM file)")
    parser.add_argument("--checkpoint-prefix", default="", help="key prefix to strip (image_encoder. for official SAM files)")
    parser.add_argument("--out-dir", required=True, help="destination; one sub-folder per split")
    parser.add_argument("--splits", nargs="+", default=["train", "val"], choices=["train", "val"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="stored dtype")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--overwrite", action="store_true", help="recompute files that exist")
    ns, rest = parser.parse_known_args(argv)
    if not rest:
        parser.error("give the images: -c recipes/NAME_distill.yaml [--data.*=...]")
    datamodule = _recipe_datamodule(rest, "segblocks precompute-embeddings")
    teacher = create_model(ns.teacher, checkpoint=ns.checkpoint, checkpoint_prefix=ns.checkpoint_prefix)
    written = precompute_teacher_embeddings(
        teacher=teacher, out_dir=ns.out_dir, datamodule=datamodule, splits=tuple(ns.splits),
        batch_size=ns.batch_size, dtype=getattr(torch, ns.dtype), overwrite=ns.overwrite,
    )
    for split, count in written.items():
        print(f"{split}: {count} embedding file(s) written under {Path(ns.out_dir) / split}")
    return 0


register_subcommand("recipes", _recipes_command, "list the recipes shipped with segblocks (one line each)")
register_subcommand("check-data", _check_data_command, "check every file of a recipe's data before training (-c RECIPE)")
register_subcommand("demo", "segblocks.demo.app:main", "serve the click-to-segment demo page on 127.0.0.1 (needs the demo extra)")
register_subcommand("export", "segblocks.export:main", "export a per-click decoder to ONNX and check it in onnxruntime (--model sam_tiny --out decoder.onnx)")
register_subcommand(
    "precompute-embeddings", _precompute_embeddings_command, "write a frozen teacher's embeddings for distillation (-c RECIPE)"
)


# ----------------------------------------------------------------------------- entry points
_RUN_HELP = {
    "fit": "train: segblocks fit -c recipes/pro_scale.yaml",
    "validate": "evaluate on the validation split: ... --ckpt_path runs/NAME/last.ckpt",
    "test": "evaluate on the test split (interactive recipes: the K-click NoC protocol)",
    "predict": "predict: PRO-SCALE/Mask2Former recipes + --data.predict_dir DIR write <default_root_dir>/predictions/",
}


def _version_text() -> str:
    return f"segblocks {segblocks.__version__} (lightning {metadata.version('lightning')}, torch {torch.__version__})"


def _help_text(prog: str) -> str:
    names = [*RUN_SUBCOMMANDS, *SUBCOMMANDS]
    width = max(map(len, names)) + 2
    lines = [
        f"usage: {prog} [-h] [-V] {{{','.join(names)}}} ...",
        "",
        f"segblocks {segblocks.__version__}: segmentation building blocks with Lightning recipes.",
        "",
        "subcommands:",
        *(f"  {n:<{width}}{_RUN_HELP[n]}" for n in RUN_SUBCOMMANDS),
        *(f"  {n:<{width}}{s.help}" for n, s in SUBCOMMANDS.items()),
        "",
        "options:",
        "  -h, --help     this text; every option of a subcommand: " + f"{prog} fit --help",
        "  -V, --version  print the version",
        "",
        "recipes (-c): a -c path that does not exist relative to the working directory but names a",
        "shipped recipe (recipes/NAME.yaml, NAME.yaml or NAME) resolves to the copy installed with",
        "segblocks, so the commands below work from any directory. Several -c files compose left to",
        f"right; a recipe starts from others with a top-level `{BASE_KEY}: file.yaml`.",
        *(f"  {n:<18}{d}" for n, d in list_recipes().items()),
        "",
        "runs: logs in runs/NAME/version_N/ (metrics.csv; TensorBoard too when installed),",
        "checkpoints in runs/NAME/version_N/checkpoints/ (last.ckpt also every 50 training steps),",
        "runs/NAME/last.ckpt links to the latest run's; --trainer.default_root_dir moves them all.",
        "threads: --threads N; default OMP_NUM_THREADS, else every usable core but one.",
        "",
        "examples:",
        f"  {prog} fit -c recipes/pro_scale.yaml",
        f"  {prog} validate -c recipes/pro_scale.yaml --ckpt_path runs/pro_scale/last.ckpt",
        f"  {prog} fit -c recipes/pro_scale.yaml --print_config",
    ]
    return "\n".join(lines) + "\n"


def main(args: list[str] | None = None, *, prog: str = "segblocks") -> None:
    """``segblocks fit|validate|test|predict -c recipe.yaml [--overrides]`` and the extra subcommands.

    Returns None: console-script wrappers pass the return value to ``sys.exit``; an extra
    subcommand's non-zero status is raised as :class:`SystemExit`.
    """
    argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
    first = argv[0] if argv else None
    if first in ("-V", "--version"):
        print(_version_text())
        return
    if first in ("-h", "--help"):
        sys.stdout.write(_help_text(prog))
        return
    if first is None:
        sys.stderr.write(_help_text(prog) + f"{prog}: error: a subcommand is required\n")
        raise SystemExit(2)
    if first in SUBCOMMANDS:
        status = SUBCOMMANDS[first].run(argv[1:])
        if status:
            raise SystemExit(status)
        return
    try:
        argv = expand_config_args(argv)  # here for a clean error; SegblocksCLI expands idempotently
    except (FileNotFoundError, ValueError, TypeError, yaml.YAMLError) as err:
        sys.stderr.write(f"{prog}: error: {err}\n")
        raise SystemExit(2) from None
    _run_lightning_cli(argv, prog)


def _lightning_sdk_entry():
    """The console script named ``lightning`` that lightning-sdk declares, or None."""
    try:
        dist = metadata.distribution("lightning-sdk")
    except metadata.PackageNotFoundError:
        return None
    for ep in dist.entry_points:
        if ep.group == "console_scripts" and ep.name == "lightning":
            return ep
    return None


def lightning_main(argv: list[str] | None = None) -> None:
    """The ``lightning`` console script (see module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    first = argv[0] if argv else None
    ours = (None, *RUN_SUBCOMMANDS, *SUBCOMMANDS, "-h", "--help", "-V", "--version")
    if first in ours:
        main(argv, prog="lightning")
        return
    entry = _lightning_sdk_entry()
    if entry is None:
        sys.stderr.write(
            f"lightning: '{first}' is not one of {', '.join([*RUN_SUBCOMMANDS, *SUBCOMMANDS])}.\n"
            "segblocks' `lightning` script runs those itself; other sub-commands belong to the "
            "Lightning cloud CLI: `pip install lightning-sdk` to use them.\n"
        )
        raise SystemExit(2)
    sys.argv = [sys.argv[0], *argv]
    sys.exit(entry.load()())
