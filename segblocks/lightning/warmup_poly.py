"""HRSAM's optimiser: AdamW with a linear warm-up then polynomial decay (HRSAM supp. D.3).

Supp. D.3: "AdamW with weight decay of 0.05 and betas of (0.9, 0.999) ... a linear warm-up
starting from 1e-6 and a polynomial decay starting from 1e-4". The authors' configs (project
notes official_code_facts §2.1) make this mmengine's ``LinearLR(start_factor=1e-6)`` over 1500
iterations followed by ``PolyLR(power=1, eta_min=0)`` over the remaining ones, stepped per
iteration. As a learning-rate factor at optimiser step ``t`` (``T`` steps, ``W`` warm-up)::

    f(t) = s + (1 - s) * t / W                 t < W      (s = start_factor)
    f(t) = (1 - (t - W) / (T - W)) ** power    W <= t < T
    f(t) = 0                                   t >= T

Parameters tagged ``_no_weight_decay`` (the Cycle-scan's ``A_log`` and ``D``, as Mamba does)
and 1-D parameters (biases, norms) get no weight decay.
"""
from __future__ import annotations

from typing import Iterable

import torch

__all__ = ["warmup_poly_factor", "warmup_poly_optimizer"]


def warmup_poly_factor(
    step: int, *, total_steps: int, warmup_steps: int, start_factor: float = 1e-6, power: float = 1.0
) -> float:
    """Learning-rate factor ``f(step)`` of the module docstring."""
    if step < warmup_steps:
        return start_factor + (1.0 - start_factor) * step / warmup_steps
    if step >= total_steps:
        return 0.0
    return (1.0 - (step - warmup_steps) / max(total_steps - warmup_steps, 1)) ** power


def warmup_poly_optimizer(
    parameters: Iterable[torch.nn.Parameter],
    *,
    lr: float,
    weight_decay: float,
    total_steps: int,
    warmup_steps: int,
    start_factor: float = 1e-6,
    power: float = 1.0,
) -> dict:
    """AdamW + per-step :func:`warmup_poly_factor` in Lightning's ``configure_optimizers`` format.

    Args:
        parameters: the parameters to train (those without ``requires_grad`` are skipped).
        lr, weight_decay: AdamW's (1e-4 and 0.05 in HRSAM).
        total_steps: optimiser steps of the run (``trainer.estimated_stepping_batches``).
        warmup_steps: warm-up length (1500 in HRSAM), capped at ``total_steps``.
        start_factor, power: see :func:`warmup_poly_factor`.
    """
    if lr <= 0 or weight_decay < 0 or warmup_steps < 0 or total_steps < 1 or not 0 < start_factor <= 1:
        raise ValueError(
            f"need lr > 0, weight_decay >= 0, warmup_steps >= 0, total_steps >= 1, 0 < start_factor <= 1; "
            f"got {lr}, {weight_decay}, {warmup_steps}, {total_steps}, {start_factor}"
        )
    params = [p for p in parameters if p.requires_grad]
    no_decay = [p for p in params if p.dim() <= 1 or getattr(p, "_no_weight_decay", False)]
    no_decay_ids = {id(p) for p in no_decay}
    decay = [p for p in params if id(p) not in no_decay_ids]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.999),
    )
    warmup = min(warmup_steps, total_steps)

    def factor(step: int) -> float:
        return warmup_poly_factor(step, total_steps=total_steps, warmup_steps=warmup, start_factor=start_factor, power=power)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
