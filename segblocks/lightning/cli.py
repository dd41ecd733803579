"""Command-line entry points: ``segblocks``, ``python -m segblocks`` and ``lightning``.

All three run a :class:`~lightning.pytorch.cli.LightningCLI` in subclass mode for the model and
the data, so recipes are ordinary LightningCLI YAML (``class_path`` / ``init_args``), several
``-c`` files compose, and dotted overrides work (``--trainer.max_steps=5``)::

    segblocks fit -c recipes/pro_scale.yaml
    lightning fit -c recipes/pro_scale.yaml -c recipes/coco_panoptic.yaml --data.root /data/coco
    lightning validate -c recipes/pro_scale.yaml --ckpt_path last.ckpt

The ``lightning`` script: Lightning 2.x installs no ``lightning`` console script (only
``fabric``); the name belongs to the ``lightning-sdk`` package's cloud CLI. Ours handles
fit/validate/test/predict itself and forwards every other sub-command to lightning-sdk's CLI when
that package is installed.
"""
from __future__ import annotations

import os
import sys
from importlib import metadata

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from lightning.pytorch import LightningDataModule, LightningModule  # noqa: E402
from lightning.pytorch.cli import LightningCLI  # noqa: E402

__all__ = ["SegblocksCLI", "lightning_main", "main"]

RUN_SUBCOMMANDS = ("fit", "validate", "test", "predict")


class SegblocksCLI(LightningCLI):
    """LightningCLI that links dataset metadata into models that take it.

    ``data.num_classes`` / ``data.thing_classes`` are passed to the model at instantiation when
    the model's constructor has those parameters (ignored otherwise), so a recipe never repeats
    the category list of its dataset.
    """

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.thing_classes", "model.init_args.thing_classes", apply_on="instantiate")


def main(args: list[str] | None = None) -> None:
    """``segblocks fit|validate|test|predict -c recipe.yaml [--overrides]``.

    Returns None: console-script wrappers pass the return value to ``sys.exit``.
    """
    SegblocksCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


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
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    first = argv[0] if argv else None
    if first is None or first in RUN_SUBCOMMANDS or first in ("-h", "--help", "--version"):
        main(None if from_command_line else argv)  # None: LightningCLI reads sys.argv itself
        return
    entry = _lightning_sdk_entry()
    if entry is None:
        sys.stderr.write(
            f"lightning: '{first}' is not one of {', '.join(RUN_SUBCOMMANDS)}.\n"
            "segblocks' `lightning` script runs those itself; other sub-commands belong to the "
            "Lightning cloud CLI: `pip install lightning-sdk` to use them.\n"
        )
        raise SystemExit(2)
    sys.argv = [sys.argv[0], *argv]
    sys.exit(entry.load()())
