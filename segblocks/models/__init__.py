"""Models composed from blocks, one registry of named presets, one way to load weights.

* :func:`create_model` / :func:`list_models` / :func:`register_model`: every preset is a name
  (``list_models()``), built with ``create_model(name, checkpoint=..., checkpoint_prefix=...,
  **overrides)``; see :mod:`segblocks.models._registry`.
* :func:`load_checkpoint`: the one checkpoint convention (:mod:`segblocks.models.checkpoint`).

Importing this package is cheap: the model modules load on first use of the registry.
"""
from segblocks.models._registry import create_model, is_model, list_models, model_entrypoint, register_model
from segblocks.models.checkpoint import CheckpointReport, load_checkpoint, read_state_dict

__all__ = [
    "CheckpointReport",
    "create_model",
    "is_model",
    "list_models",
    "load_checkpoint",
    "model_entrypoint",
    "read_state_dict",
    "register_model",
]
