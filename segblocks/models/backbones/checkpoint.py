"""Loading local state-dict files into backbones. Nothing is ever downloaded.

A checkpoint is a ``.pth``/``.pt``/``.ckpt`` file written by ``torch.save`` that holds a state dict
either directly or nested under ``"state_dict"`` (Lightning) or ``"model"`` (detectron2 and the
official Swin releases). ``prefix`` selects and strips the backbone's part of a larger model's
state dict (e.g. ``"model.backbone."`` in a Lightning checkpoint, ``"backbone."`` in detectron2).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

__all__ = ["CHECKPOINT_SUFFIXES", "load_checkpoint", "read_state_dict", "resolve_checkpoint_path"]

logger = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt")
_NESTING_KEYS = ("state_dict", "model")


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """Check that ``path`` is an existing checkpoint file with a supported suffix.

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        ValueError: the suffix is not one of ``CHECKPOINT_SUFFIXES``.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {file}")
    if file.suffix not in CHECKPOINT_SUFFIXES:
        raise ValueError(
            f"checkpoint {file}: expected a torch.save file ending in {'/'.join(CHECKPOINT_SUFFIXES)}, "
            f"got suffix {file.suffix!r}"
        )
    return file


def read_state_dict(path: str | os.PathLike, *, prefix: str = "") -> dict[str, torch.Tensor]:
    """Read a state dict from a local file (``torch.load(weights_only=True)`` on CPU).

    Args:
        path: checkpoint file.
        prefix: if given, keep only keys starting with it, with the prefix removed.

    Returns:
        ``{name: tensor}``.

    Raises:
        FileNotFoundError: missing file.
        ValueError: unreadable file, no state dict inside, or no key with ``prefix``.
    """
    file = resolve_checkpoint_path(path)
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several exception types for corrupt or unsafe pickles
        raise ValueError(
            f"could not read checkpoint {file} with torch.load(weights_only=True): {err}. "
            "Re-save it with torch.save(model.state_dict(), path)."
        ) from err
    while isinstance(obj, dict):
        nested = next((k for k in _NESTING_KEYS if isinstance(obj.get(k), dict)), None)
        if nested is None:
            break
        obj = obj[nested]
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"checkpoint {file}: expected a non-empty state dict, found {type(obj).__name__}")
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"checkpoint {file}: state-dict entries must be tensors, these are not: {not_tensors[:10]}")
    if prefix:
        obj = {k[len(prefix):]: v for k, v in obj.items() if k.startswith(prefix)}
        if not obj:
            raise ValueError(f"checkpoint {file}: no key starts with prefix {prefix!r}")
    return obj


def _prefix_hint(model_keys: list[str], ckpt_keys: list[str]) -> str:
    """Suggest a prefix when checkpoint keys look like ``<prefix><model key>``."""
    for key in model_keys[:1]:
        for ckpt_key in ckpt_keys:
            if ckpt_key.endswith("." + key):
                return f"; its keys look prefixed, try prefix {ckpt_key[: -len(key)]!r}"
    return ""


def load_checkpoint(
    module: nn.Module, path: str | os.PathLike, *, prefix: str = "", strict: bool = False
) -> tuple[list[str], list[str]]:
    """Load a local checkpoint into ``module`` and report key mismatches.

    Missing keys (in the module, not in the file) and unexpected keys (in the file, not in the
    module) are logged as one warning listing them, or raised with ``strict=True`` (after loading
    the matching keys). Shape mismatches and a file sharing no key with the module always raise.

    Args:
        module: target module.
        path: ``.pth``/``.pt``/``.ckpt`` file (see the module docstring for accepted layouts).
        prefix: strip this prefix (keys without it are ignored).
        strict: raise ``ValueError`` on missing or unexpected keys instead of warning.

    Returns:
        The named tuple ``(missing_keys, unexpected_keys)`` of ``nn.Module.load_state_dict``.
    """
    state = read_state_dict(path, prefix=prefix)
    own = module.state_dict()
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if mismatched:
        raise ValueError(f"checkpoint {path}: shape mismatch for {len(mismatched)} keys: {mismatched}")
    if not own.keys() & state.keys():
        hint = _prefix_hint(list(own), list(state))
        raise ValueError(
            f"checkpoint {path}: none of its {len(state)} keys matches {type(module).__name__} "
            f"(first file key {next(iter(state))!r}, first model key {next(iter(own), None)!r}){hint}"
        )
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        msg = (
            f"checkpoint {path} into {type(module).__name__}: "
            f"{len(result.missing_keys)} missing keys {result.missing_keys}; "
            f"{len(result.unexpected_keys)} unexpected keys {result.unexpected_keys}"
        )
        if strict:
            raise ValueError(msg)
        logger.warning(msg)
    return result
