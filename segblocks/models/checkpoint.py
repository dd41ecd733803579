"""Loading local state-dict files into any model: the one checkpoint convention of segblocks.

Every model takes weights the same way, by :func:`~segblocks.models.create_model` (or a registered
entry function, or :func:`load_checkpoint` on a built module)::

    create_model("sam_vit_b", checkpoint="sam_vit_b_01ec64.pth")
    create_model("hrsam_tiny", checkpoint="runs/hrsam_distill/checkpoints/last.ckpt", checkpoint_prefix="student.")

* ``checkpoint``: a local ``.pth``/``.pt``/``.ckpt`` file written by ``torch.save``, holding a
  state dict directly or nested under ``"state_dict"`` (Lightning) or ``"model"`` (detectron2,
  the official Swin releases). Nothing is ever downloaded.
* ``checkpoint_prefix``: keep only the keys that start with it, with the prefix removed (e.g.
  ``"model.backbone."`` in a Lightning checkpoint, ``"image_encoder."`` in an official SAM file).
* ``strict`` (default True): missing keys (in the model, not in the file) and unexpected keys (in
  the file, not in the model) raise one ``ValueError`` listing them; with ``strict=False`` they are
  logged and returned as a :class:`CheckpointReport`.

A module may declare ``checkpoint_ignore_keys``: ``fnmatch`` patterns, relative to that module,
of file keys that are not part of it by design (a ResNet's ImageNet classifier ``fc.*``, SAM's
box-corner embeddings in a clicks-only prompt encoder). They are dropped before matching,
wherever the module sits in the model. A module may also define
``checkpoint_absent_keys(state_dict) -> patterns``: its own keys that a file in a foreign layout
cannot provide (an HRSAM encoder loading MAE weights has no counterpart for its Cycle-scans), so
that a strict load accepts exactly those as missing (they keep their initialisation).
"""
from __future__ import annotations

import fnmatch
import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "CheckpointReport",
    "check_checkpoint_file",
    "load_checkpoint",
    "read_state_dict",
    "resolve_checkpoint_path",
]

logger = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt")
_NESTING_KEYS = ("state_dict", "model")


class CheckpointReport(NamedTuple):
    """What :func:`load_checkpoint` did not match (same fields as ``nn.Module.load_state_dict``'s result).

    Attributes:
        missing_keys: model keys the file did not provide (left at their current values), except
            those its layout cannot provide (``checkpoint_absent_keys``).
        unexpected_keys: file keys (after the prefix and ignore patterns) the model has no slot for.
        ignored_keys: file keys dropped by the model's ``checkpoint_ignore_keys``.
    """

    missing_keys: list[str]
    unexpected_keys: list[str]
    ignored_keys: list[str] = []


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """Check that ``path`` is an existing, non-empty checkpoint file with a supported suffix.

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        ValueError: the suffix is not one of ``CHECKPOINT_SUFFIXES``, or the file is empty.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {file}")
    if file.suffix not in CHECKPOINT_SUFFIXES:
        raise ValueError(
            f"checkpoint {file}: expected a torch.save file ending in {'/'.join(CHECKPOINT_SUFFIXES)}, "
            f"got suffix {file.suffix!r}"
        )
    if file.stat().st_size == 0:
        raise ValueError(f"checkpoint {file}: the file is empty (0 bytes); an interrupted download or copy?")
    return file


def _describe_load_error(file: Path, err: Exception) -> str:
    """Name what is wrong with a file ``torch.load`` rejected: truncated, not a torch file, or unsafe pickle."""
    size = file.stat().st_size
    if zipfile.is_zipfile(file):
        try:
            with zipfile.ZipFile(file) as zf:
                bad = zf.testzip()
        except Exception:  # noqa: BLE001 - any failure here means a damaged archive
            bad = "?"
        if bad is not None:
            return f"the torch zip archive is damaged (member {bad!r}); the file ({size} bytes) is probably truncated"
        return f"torch.load(weights_only=True) refused it ({err}); re-save it with torch.save(model.state_dict(), path)"
    with open(file, "rb") as fh:
        head = fh.read(2)
    if head[:1] == b"\x80":  # a legacy (non-zip) pickle: truncation shows as an unexpected end
        if isinstance(err, (EOFError, pickle.UnpicklingError)) or "EOF" in str(err) or "truncated" in str(err):
            return f"the legacy pickle ends early; the file ({size} bytes) is probably truncated ({err})"
        return f"torch.load(weights_only=True) refused it ({err}); re-save it with torch.save(model.state_dict(), path)"
    if head == b"PK":  # zip signature but no central directory: cut before its end
        return f"the torch zip archive has no end record; the file ({size} bytes) is probably truncated"
    return f"it is not a file written by torch.save (first bytes {head!r}; {err})"


def check_checkpoint_file(path: str | os.PathLike) -> Path:
    """Refuse, before anything loads it, a checkpoint that is missing, empty, truncated or not from ``torch.save``.

    Cheap structural checks only (the zip archive's records and checksums, or a pickle header),
    so that ``--ckpt_path`` of a Lightning run fails with the file's name and what is wrong
    instead of an unpickler's ``EOFError``.

    Raises:
        FileNotFoundError, ValueError: naming the file and the problem.
    """
    file = resolve_checkpoint_path(path)
    with open(file, "rb") as fh:
        head = fh.read(2)
    if zipfile.is_zipfile(file):
        try:
            with zipfile.ZipFile(file) as zf:
                bad = zf.testzip()
                names = zf.namelist()
        except Exception as err:  # noqa: BLE001 - any failure here means a damaged archive
            raise ValueError(f"checkpoint {file}: the zip archive is damaged ({err})") from err
        if bad is not None:
            raise ValueError(f"checkpoint {file}: the torch zip archive is damaged (member {bad!r}); probably truncated")
        if not any(n.endswith("data.pkl") for n in names):
            raise ValueError(f"checkpoint {file}: a zip archive but not one written by torch.save (no data.pkl)")
        return file
    if head == b"PK":
        raise ValueError(
            f"checkpoint {file}: the torch zip archive has no end record; the file ({file.stat().st_size} bytes) is probably truncated"
        )
    if head[:1] != b"\x80":
        raise ValueError(f"checkpoint {file}: not a file written by torch.save (first bytes {head!r})")
    return file


def read_state_dict(path: str | os.PathLike, *, prefix: str = "") -> dict[str, torch.Tensor]:
    """Read a state dict from a local file (``torch.load(weights_only=True)`` on CPU).

    Args:
        path: checkpoint file (layouts in the module docstring).
        prefix: if given, keep only keys starting with it, with the prefix removed.

    Returns:
        ``{name: tensor}``.

    Raises:
        FileNotFoundError: missing file.
        ValueError: empty, truncated or foreign file, no state dict inside, or no key with ``prefix``;
            the message names the file and what is wrong.
    """
    file = resolve_checkpoint_path(path)
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several exception types for corrupt or unsafe pickles
        raise ValueError(f"could not read checkpoint {file}: {_describe_load_error(file, err)}") from err
    while isinstance(obj, dict):
        nested = next((k for k in _NESTING_KEYS if isinstance(obj.get(k), dict)), None)
        if nested is None:
            break
        obj = obj[nested]
    if not isinstance(obj, dict) or not obj:
        raise ValueError(
            f"checkpoint {file}: expected a non-empty state dict (possibly under 'state_dict' or 'model'), "
            f"found {type(obj).__name__}{' (empty)' if isinstance(obj, dict) else ''}"
        )
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(
            f"checkpoint {file}: not a state dict, these entries are not tensors: {not_tensors[:10]}"
        )
    if prefix:
        obj = {k[len(prefix):]: v for k, v in obj.items() if k.startswith(prefix)}
        if not obj:
            raise ValueError(f"checkpoint {file}: no key starts with checkpoint_prefix {prefix!r}")
    return obj


def _ignore_patterns(module: nn.Module) -> list[str]:
    """Every ``checkpoint_ignore_keys`` pattern of ``module`` and its sub-modules, as full key patterns."""
    patterns = []
    for name, sub in module.named_modules():
        for pattern in getattr(sub, "checkpoint_ignore_keys", ()):
            patterns.append(f"{name}.{pattern}" if name else pattern)
    return patterns


def _absent_patterns(module: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Every ``checkpoint_absent_keys(state)`` pattern of ``module`` and its sub-modules, as full key patterns."""
    patterns = []
    for name, sub in module.named_modules():
        hook = getattr(sub, "checkpoint_absent_keys", None)
        if callable(hook):
            sub_state = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")} if name else state
            patterns.extend(f"{name}.{p}" if name else p for p in hook(sub_state))
    return patterns


def _prefix_hint(model_keys: list[str], ckpt_keys: list[str]) -> str:
    """Suggest a prefix when checkpoint keys look like ``<prefix><model key>``."""
    for key in model_keys[:1]:
        for ckpt_key in ckpt_keys:
            if ckpt_key.endswith("." + key):
                return f"; its keys look prefixed, try checkpoint_prefix={ckpt_key[: -len(key)]!r}"
    return ""


def load_checkpoint(
    module: nn.Module, path: str | os.PathLike, *, prefix: str = "", strict: bool = True
) -> CheckpointReport:
    """Load a local checkpoint into ``module`` and report key mismatches.

    Args:
        module: target module.
        path: ``.pth``/``.pt``/``.ckpt`` file (see the module docstring for accepted layouts).
        prefix: strip this prefix (keys without it are ignored).
        strict: raise ``ValueError`` listing missing and unexpected keys (after loading the
            matching ones); with False, log the mismatches and return them.

    Returns:
        :class:`CheckpointReport` (empty lists when everything matched).

    Raises:
        FileNotFoundError, ValueError: see :func:`read_state_dict`; also a file sharing no key with
            the module and shape mismatches (always, naming the keys).
    """
    state = read_state_dict(path, prefix=prefix)
    patterns = _ignore_patterns(module)
    ignored = [k for k in state if any(fnmatch.fnmatchcase(k, p) for p in patterns)]
    for k in ignored:
        del state[k]
    own = module.state_dict()
    absent = _absent_patterns(module, state)
    if not own.keys() & state.keys():
        hint = _prefix_hint(list(own), list(state))
        first = next(iter(state), None)
        raise ValueError(
            f"checkpoint {path}: none of its {len(state)} keys matches {type(module).__name__} "
            f"(first file key {first!r}, first model key {next(iter(own), None)!r}){hint}"
        )
    try:
        result = module.load_state_dict(state, strict=False)  # load hooks may resize or drop keys
    except RuntimeError as err:  # size mismatches
        raise ValueError(f"checkpoint {path}: shapes do not match {type(module).__name__}: {err}") from err
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if not any(fnmatch.fnmatchcase(k, p) for p in absent)]
    report = CheckpointReport(missing_keys=missing, unexpected_keys=unexpected, ignored_keys=ignored)
    if missing or unexpected:
        msg = (
            f"checkpoint {path} does not match {type(module).__name__}: "
            f"{len(missing)} missing keys {missing}; {len(unexpected)} unexpected keys {unexpected}"
        )
        if strict:
            raise ValueError(
                msg + ". Pass checkpoint_prefix= to select a sub-model, or strict=False to keep the matching keys."
            )
        logger.warning(msg)
    return report
