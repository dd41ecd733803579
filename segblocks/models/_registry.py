"""The model registry: every preset of segblocks is a name, built by :func:`create_model`.

timm's convention (huggingface/pytorch-image-models, ``timm/models/_registry.py`` and
``_factory.py``): model files define small entry functions and decorate them with
:func:`register_model`; the function's ``__name__`` is the model name::

    @register_model
    def sam_tiny() -> SamModel:
        ...

    model = create_model("sam_tiny", checkpoint="runs/sam/checkpoints/last.ckpt", checkpoint_prefix="model.sam.")
    list_models("hrsam*")

:func:`register_model` returns the entry function with the checkpoint convention added
(keyword-only ``checkpoint``, ``checkpoint_prefix``, ``strict``; see
:mod:`segblocks.models.checkpoint`), so the entry functions are usable directly, from Python
and as a ``class_path`` in a recipe (jsonargparse instantiates functions whose return type is a
module). The model modules are imported lazily by :func:`list_models` / :func:`create_model`, so
``import segblocks.models`` stays cheap.
"""
from __future__ import annotations

import fnmatch
import functools
import importlib
import inspect
import os
import warnings
import typing
from typing import Any, Callable, Optional

from torch import nn

from segblocks.models.checkpoint import load_checkpoint

__all__ = ["create_model", "is_model", "list_models", "model_entrypoint", "register_model"]

#: Modules whose import registers the built-in models (imported on first use of the registry).
_MODEL_MODULES = (
    "segblocks.models.backbones",
    "segblocks.models.sam.sam",
    "segblocks.models.hrsam.encoder",
    "segblocks.models.hrsam.sam_hrsam",
    "segblocks.models.mask2former.presets",
    "segblocks.models.mst.model",
    "segblocks.models.focsam.model",
    "segblocks.models.inter2former.presets",
    "segblocks.models.classical",
)

_entrypoints: dict[str, Callable[..., nn.Module]] = {}
_populated = False

_CHECKPOINT_PARAMS = (
    inspect.Parameter("checkpoint", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Optional[str]),
    inspect.Parameter("checkpoint_prefix", inspect.Parameter.KEYWORD_ONLY, default="", annotation=str),
    inspect.Parameter("strict", inspect.Parameter.KEYWORD_ONLY, default=True, annotation=bool),
)
_CHECKPOINT_DOC = """
    Checkpoint arguments (added by :func:`~segblocks.models.register_model`, see
    :mod:`segblocks.models.checkpoint`):
        checkpoint: local state-dict file loaded into the built model (None: initial weights).
        checkpoint_prefix: keep only the file's keys with this prefix, prefix removed.
        strict: raise on missing/unexpected keys (default); False logs them and stores the
            :class:`~segblocks.models.checkpoint.CheckpointReport` as ``model.checkpoint_report``.
"""


def _populate() -> None:
    global _populated
    if not _populated:
        _populated = True
        for module in _MODEL_MODULES:
            importlib.import_module(module)


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under ``fn.__name__`` and return it with the checkpoint arguments added.

    The returned function has ``fn``'s parameters plus keyword-only ``checkpoint=None``,
    ``checkpoint_prefix=""`` and ``strict=True``; it builds ``fn(...)`` and loads the checkpoint
    with :func:`~segblocks.models.checkpoint.load_checkpoint`. Registering a name twice replaces
    the entry with a warning (as timm does).
    """
    if not callable(fn) or not hasattr(fn, "__name__"):
        raise TypeError(f"register_model expects a named function; got {fn!r}")
    name = fn.__name__
    sig = inspect.signature(fn)
    clash = [p for p in _CHECKPOINT_PARAMS if p.name in sig.parameters]
    if clash:
        raise TypeError(f"model entry {name!r} must not define {[p.name for p in clash]}: register_model adds them")

    @functools.wraps(fn)
    def entry(*args: Any, checkpoint: str | os.PathLike | None = None, checkpoint_prefix: str = "",
              strict: bool = True, **kwargs: Any) -> nn.Module:
        model = fn(*args, **kwargs)
        if checkpoint is not None:
            report = load_checkpoint(model, checkpoint, prefix=checkpoint_prefix, strict=strict)
            model.checkpoint_report = report
        return model

    try:  # resolve string annotations in fn's own module: the wrapper lives elsewhere
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable hints only cost jsonargparse its type checks
        hints = {}
    params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values()]
    sig = sig.replace(return_annotation=hints.get("return", sig.return_annotation))
    var_kw = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
    params = [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD] + list(_CHECKPOINT_PARAMS) + var_kw
    entry.__signature__ = sig.replace(parameters=params)
    entry.__annotations__ = {p.name: p.annotation for p in params if p.annotation is not inspect.Parameter.empty}
    entry.__annotations__["return"] = sig.return_annotation
    del entry.__wrapped__  # inspect and jsonargparse read __signature__, not fn's own
    entry.__doc__ = (fn.__doc__ or "").rstrip() + "\n" + _CHECKPOINT_DOC
    if name in _entrypoints:
        warnings.warn(f"register_model: overwriting the model {name!r} ({_entrypoints[name].__module__})", stacklevel=2)
    _entrypoints[name] = entry
    return entry


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted registered names, optionally filtered by an ``fnmatch`` pattern (``"hrsam*"``)."""
    _populate()
    names = sorted(_entrypoints)
    return names if pattern is None else [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered model."""
    _populate()
    return name in _entrypoints


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    """The registered entry function of ``name`` (with the checkpoint arguments)."""
    _populate()
    if name not in _entrypoints:
        close = [n for n in _entrypoints if n.split("_")[0] == name.split("_")[0]] or sorted(_entrypoints)
        raise ValueError(f"unknown model {name!r}; registered models include {close} (see segblocks.models.list_models())")
    return _entrypoints[name]


def create_model(
    name: str,
    *,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_prefix: str = "",
    strict: bool = True,
    **overrides: Any,
) -> nn.Module:
    """Build the registered model ``name``, optionally loading a local checkpoint.

    Args:
        name: a name from :func:`list_models`.
        checkpoint: local state-dict file (``.pth``/``.pt``/``.ckpt``); nothing is downloaded.
        checkpoint_prefix: keep only the file's keys with this prefix, prefix removed (e.g.
            ``"student."`` for a distillation checkpoint, ``"image_encoder."`` for the SAM encoder
            part of an official SAM file).
        strict: raise ``ValueError`` on missing/unexpected keys; with False they are logged and the
            :class:`~segblocks.models.checkpoint.CheckpointReport` is ``model.checkpoint_report``.
        **overrides: keyword arguments of the entry function (e.g. ``drop_path_rate=0.2``,
            ``num_classes=133``). ``None`` values are dropped, as timm does.

    Returns:
        The built ``nn.Module``.

    Example:
        >>> from segblocks.models import create_model
        >>> encoder = create_model("hrsam_tiny", drop_path_rate=0.1)
    """
    if not isinstance(name, str):
        raise TypeError(f"create_model: name must be a string; got {type(name).__name__}")
    entry = model_entrypoint(name)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return entry(checkpoint=checkpoint, checkpoint_prefix=checkpoint_prefix, strict=strict, **overrides)
