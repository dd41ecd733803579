"""Inter2Former's image encoder: HRSAM++ without Cycle-scan (Inter2Former §3.2, §4.1).

"We simplify the HRSAM encoder by removing SSM while maintaining its visual extrapolation
capability" (§3.2): the HRSAM++ ViT (Flash Swin with KV-only padding and RoPE, multi-scale
fusion of the full-resolution tokens with one fixed-size anchor scale), with no Cycle-scan
modules. As the authors' ``HRSAMViTNoSSM`` (YouHuang67/inter2former,
``inter2former/backbones/hrsam_no_ssm.py``; config ``configs/inter2former.py``): the anchor scale is
**256²** (``downsample_sizes=[256]``, a 16 x 16 token grid), and a scale that fits in one window
is never shifted (``shift_single_window=False``) — so the anchor scale is always one unshifted
16 x 16 window.
"""
from __future__ import annotations

import torch
from torch import nn

from segblocks.models.hrsam.encoder import HRSAMPlusPlusEncoder

__all__ = ["Inter2FormerEncoder"]


class _NoScan(nn.Module):
    """Stands where HRSAM++ has a Cycle-scan: returns its input (no parameters, no state-dict keys)."""

    def forward(self, x):
        return x


class Inter2FormerEncoder(HRSAMPlusPlusEncoder):
    """HRSAM++ encoder without Cycle-scan (module docstring).

    Args:
        anchor_size: side of the square anchor scale (256).
        shift_single_window: False (Inter2Former's rule).
        **kwargs: :class:`~segblocks.models.hrsam.encoder.HRSAMEncoder` arguments (the
            Cycle-scan ones, ``d_state`` and ``cycle_repeats``, are ignored).

    Shapes:
        x: ``(B, 3, H, W)`` normalized images, ``H, W`` multiples of 16 → ``(B, out_chans, H/16, W/16)``.
    """

    def __init__(self, *, anchor_size: int = 256, shift_single_window: bool = False, **kwargs) -> None:
        super().__init__(anchor_size=anchor_size, shift_single_window=shift_single_window, **kwargs)
        n = len(self.cycle_scans)
        self.cycle_scans = nn.ModuleList(_NoScan() for _ in range(n))
        self.fusion_scans = nn.ModuleList(_NoScan() for _ in range(n))

    def _before_last_block(self, stage: int, x: torch.Tensor, shapes: list[tuple[int, int]]) -> torch.Tensor:
        return x
