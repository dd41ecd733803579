"""Non-overlapping patch embedding (ViT, Dosovitskiy et al., ICLR 2021, §3.1, Eq. 1).

A ``p × p`` patch is flattened and linearly projected, implemented as a ``Conv2d`` with kernel and
stride ``p`` (key names ``proj.weight``/``proj.bias`` as in the ViT, MAE, SAM, Swin and HRSAM
checkpoints; HRSAM's code computes the same product as unfold + linear). Output is channels-last,
the layout every ViT-style block here works in. Options cover the two variants in use:

* SAM / MAE / HRSAM: ``patch_size=16``, no normalization, sides must be multiples of 16;
* Swin (Liu et al., ICCV 2021, §3.1 "patch partition" + "linear embedding"): ``patch_size=4``,
  ``norm=nn.LayerNorm(C)`` (key ``norm.*``) and ``pad=True`` — the authors' detection code
  zero-pads the bottom/right so that any ``H, W`` works.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PatchEmbed"]


class PatchEmbed(nn.Module):
    """Images → patch tokens on a grid, channels-last.

    Args:
        patch_size: patch side ``p`` (= output stride).
        in_chans: input channels.
        embed_dim: token channels ``C``.
        norm: optional normalization over ``C`` applied to the tokens (Swin: ``nn.LayerNorm(C)``).
        pad: zero-pad the bottom/right up to multiples of ``p``; without it such inputs raise.

    Shapes:
        x: (B, in_chans, H, W) -> (B, ceil(H / p), ceil(W / p), C).
    """

    def __init__(
        self, *, patch_size: int, in_chans: int = 3, embed_dim: int, norm: nn.Module | None = None, pad: bool = False
    ) -> None:
        super().__init__()
        if min(patch_size, in_chans, embed_dim) < 1:
            raise ValueError(
                f"PatchEmbed: patch_size, in_chans and embed_dim must be >= 1; got {patch_size}, {in_chans}, {embed_dim}"
            )
        self.patch_size = patch_size
        self.pad = pad
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.proj.in_channels:
            raise ValueError(f"PatchEmbed: expected (B, {self.proj.in_channels}, H, W); got shape {tuple(x.shape)}")
        p = self.patch_size
        h, w = x.shape[-2:]
        if self.pad:
            x = F.pad(x, (0, -w % p, 0, -h % p))  # B x C_in x ceil(H/p)p x ceil(W/p)p
        elif h % p or w % p:
            raise ValueError(f"PatchEmbed: height and width must be multiples of {p} (or pad=True); got {h}x{w}")
        x = self.proj(x).permute(0, 2, 3, 1)  # B x h x w x C
        return x if self.norm is None else self.norm(x)
