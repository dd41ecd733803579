"""The one optimiser / learning-rate schedule helper of segblocks, used by every LightningModule.

**Parameter groups** (:func:`param_groups`): AdamW groups with

* no weight decay on 1-D parameters (norm weights, biases), on norm and embedding modules, on
  position tables and learned queries (names in :data:`NO_DECAY_NAMES`; detectron2's
  ``WEIGHT_DECAY_NORM = WEIGHT_DECAY_EMBED = 0`` as Mask2Former trains) and on parameters tagged
  ``_no_weight_decay = True`` (the Cycle-scan's ``A_log`` / ``D``, as Mamba does);
* a learning-rate multiplier for the parameters under given name prefixes (Mask2Former's backbone
  ×0.1, Mask2Former §4 / PRO-SCALE supp. A);
* layer-wise lr decay for ViT-style encoders (BEiT / MAE fine-tuning): block ``i`` of ``L``
  (names ``…blocks.{i}.…``) gets ``decay ** (L - i)``, the patch / position embeddings
  ``decay ** (L + 1)``, everything after the blocks 1; names matching ``layer_decay_ignore``
  keep 1. HRSAM stage 1 uses decay 0.9 over 12 layers with the Mamba (Cycle-scan), ``pos_embed``
  and ``patch_embed`` parameters excluded (HRSAM supp. D.3; HRSAM code,
  YouHuang67/High-Resolution-Segment-Anything, ``configs/hrsam/`` distillation config).

**Schedule** (:func:`lr_schedule`), per optimiser step ``t`` of ``T`` with ``W`` warm-up steps and
start factor ``s``, as a factor of each group's lr, built from torch's schedulers::

    warm-up  (LinearLR)     f(t) = s + (1 - s) t / W                       t < W
    "poly"   (PolynomialLR) f(t) = (1 - (t - W) / (T - W)) ** power        W <= t <= T
    "multistep" (MultiStepLR) f(t) = gamma ** #{m in milestones : m <= t}   t >= W

``SequentialLR`` chains the warm-up and the decay. HRSAM: AdamW 1e-4, wd 0.05, LinearLR from
1e-6 over 1500 steps, then poly (power 1) to 0 (supp. D.3). Mask2Former / PRO-SCALE: no warm-up,
×0.1 at 0.9 and 0.95 of the steps.
"""
from __future__ import annotations

import fnmatch
import re
from typing import Iterable, Literal, Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LinearLR, LRScheduler, MultiStepLR, PolynomialLR, SequentialLR

__all__ = [
    "NO_DECAY_NAMES",
    "configure_adamw",
    "layer_id",
    "lr_schedule",
    "param_groups",
]

#: Parameter names (last component) never weight-decayed: position tables and learned queries.
NO_DECAY_NAMES = (
    "pos_embed", "absolute_pos_embed", "relative_position_bias_table", "rel_pos_h", "rel_pos_w",
    "level_embed", "query_feat", "query_embed", "cls_token", "mask_token",
)
_NO_DECAY_MODULES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.Embedding)
_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_EMBED = ("patch_embed", "pos_embed", "cls_token")


def layer_id(name: str, num_layers: int) -> int:
    """Layer index of parameter ``name`` for layer-wise lr decay in a ViT-style encoder.

    ``0`` for the patch / position embeddings (``patch_embed``, ``pos_embed``, ``cls_token``),
    ``i + 1`` for ``…blocks.{i}.…``, ``num_layers + 1`` for everything else (necks, heads).
    """
    match = _BLOCK.search(name)
    if match:
        return int(match.group(1)) + 1
    if any(part in _EMBED for part in name.split(".")):
        return 0
    return num_layers + 1


def _no_decay(module: nn.Module, short_name: str, param: nn.Parameter) -> bool:
    return (
        param.dim() <= 1
        or isinstance(module, _NO_DECAY_MODULES)
        or short_name in NO_DECAY_NAMES
        or bool(getattr(param, "_no_weight_decay", False))
    )


def param_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    lr_multipliers: dict[str, float] | None = None,
    layer_decay: float | None = None,
    num_layers: int | None = None,
    layer_decay_ignore: Sequence[str] = (),
) -> list[dict]:
    """AdamW parameter groups of ``model``'s trainable parameters (see the module docstring).

    Args:
        model: the module whose ``requires_grad`` parameters are optimised.
        lr, weight_decay: base values.
        lr_multipliers: ``{name prefix: factor}``, e.g. ``{"model.backbone.": 0.1}``; the longest
            matching prefix wins.
        layer_decay: layer-wise decay factor (None or 1: off).
        num_layers: ``L`` for layer decay (default: the number of ``blocks.{i}`` indices found).
        layer_decay_ignore: ``fnmatch`` patterns of names that keep factor 1 (e.g. ``"*cycle_scans*"``).

    Returns:
        Groups ``{"params", "lr", "weight_decay", "lr_scale", "layer_id", "names"}`` with equal
        settings merged; ``lr_scale`` is the product of the multiplier and the layer decay.
    """
    if lr <= 0 or weight_decay < 0:
        raise ValueError(f"need lr > 0 and weight_decay >= 0; got {lr}, {weight_decay}")
    if layer_decay is not None and not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1]; got {layer_decay}")
    named = []
    for module_name, module in model.named_modules():
        for short, param in module.named_parameters(recurse=False):
            if param.requires_grad:
                named.append((f"{module_name}.{short}" if module_name else short, module, short, param))
    use_layers = layer_decay is not None and layer_decay != 1
    if use_layers and num_layers is None:
        ids = [int(m.group(1)) for n, *_ in named if (m := _BLOCK.search(n))]
        if not ids:
            raise ValueError("layer_decay needs `blocks.{i}` parameters or an explicit num_layers")
        num_layers = max(ids) + 1
    multipliers = sorted((lr_multipliers or {}).items(), key=lambda kv: -len(kv[0]))
    groups: dict[tuple, dict] = {}
    for name, module, short, param in named:
        scale = next((f for prefix, f in multipliers if name.startswith(prefix)), 1.0)
        lid = None
        if use_layers and not any(fnmatch.fnmatchcase(name, p) for p in layer_decay_ignore):
            lid = layer_id(name, num_layers)
            scale *= layer_decay ** (num_layers + 1 - lid)
        wd = 0.0 if _no_decay(module, short, param) else weight_decay
        group = groups.setdefault(
            (scale, wd), {"params": [], "names": [], "lr": lr * scale, "weight_decay": wd, "lr_scale": scale, "layer_id": lid}
        )
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def lr_schedule(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    warmup_steps: int = 0,
    warmup_start_factor: float = 1e-6,
    decay: Literal["poly", "multistep"] = "poly",
    power: float = 1.0,
    milestones: Sequence[float] = (0.9, 0.95),
    gamma: float = 0.1,
) -> LRScheduler:
    """Warm-up then poly or multistep decay, stepped once per optimiser step (module docstring).

    Args:
        optimizer: its groups' current ``lr`` are the peak values.
        total_steps: ``T`` (``trainer.estimated_stepping_batches``).
        warmup_steps: ``W`` (capped at ``T``; 0: no warm-up).
        warmup_start_factor: ``s`` in (0, 1].
        decay: ``"poly"`` or ``"multistep"``.
        power: poly exponent.
        milestones: multistep milestones as fractions of ``T`` (Mask2Former: 0.9, 0.95).
        gamma: multistep factor.
    """
    if total_steps < 1 or warmup_steps < 0 or not 0 < warmup_start_factor <= 1:
        raise ValueError(
            f"need total_steps >= 1, warmup_steps >= 0, 0 < warmup_start_factor <= 1; "
            f"got {total_steps}, {warmup_steps}, {warmup_start_factor}"
        )
    warmup = min(warmup_steps, total_steps)
    if decay == "poly":
        after = PolynomialLR(optimizer, total_iters=max(total_steps - warmup, 1), power=power)
    elif decay == "multistep":
        steps = sorted({max(int(f * total_steps), 1) - warmup for f in milestones} - {0})
        after = MultiStepLR(optimizer, milestones=[m for m in steps if m > 0], gamma=gamma)
    else:
        raise ValueError(f"decay must be 'poly' or 'multistep'; got {decay!r}")
    if warmup == 0:
        return after
    ramp = LinearLR(optimizer, start_factor=warmup_start_factor, end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [ramp, after], milestones=[warmup])


def configure_adamw(
    model: nn.Module | Iterable[dict],
    *,
    lr: float,
    weight_decay: float,
    total_steps: int,
    betas: tuple[float, float] = (0.9, 0.999),
    lr_multipliers: dict[str, float] | None = None,
    layer_decay: float | None = None,
    num_layers: int | None = None,
    layer_decay_ignore: Sequence[str] = (),
    **schedule,
) -> dict:
    """AdamW over :func:`param_groups` plus :func:`lr_schedule`, in ``configure_optimizers``' format.

    ``schedule`` holds :func:`lr_schedule`'s keyword arguments (``warmup_steps``, ``decay``, ...).
    """
    groups = param_groups(
        model, lr=lr, weight_decay=weight_decay, lr_multipliers=lr_multipliers, layer_decay=layer_decay,
        num_layers=num_layers, layer_decay_ignore=layer_decay_ignore,
    )
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas)
    scheduler = lr_schedule(optimizer, total_steps=total_steps, **schedule)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
