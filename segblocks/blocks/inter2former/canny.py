"""CannyNet: a fixed Canny edge detector and a small ResNet over its maps (Inter2Former §3.7, Eq. 23).

``E = Canny(I)`` and ``{F_i^e} = ResNet(E)``: multi-scale edge features that DLU adds at each of
its four ×2 upsampling stages.

The fixed Canny follows the authors' code (YouHuang67/inter2former,
``inter2former/edge_detectors/canny*.py``), whose six outputs ``(blurred, grad_mag, grad_ori,
thin, thresh, early)`` are those of the common PyTorch Canny net (DCurro/CannyEdgePytorch); all
of it is frozen and runs without gradients:

1. separable 5-tap Gaussian (σ = 1) per RGB channel, zero padding, the **unnormalised** window
   ``exp(-k²/2)`` (peak 1; kornia's normalised kernel times its sum, so that the fixed threshold
   keeps the authors' scale);
2. Sobel ``[[1, 0, -1], [2, 0, -2], [1, 0, -1]]`` and its transpose (kornia's Sobel kernels
   negated), zero padding; ``grad_mag = Σ_c sqrt(gx_c² + gy_c²)``;
3. ``grad_ori = round((atan2(Σ gy, Σ gx) · 180/π + 180) / 45) · 45``;
4. non-maximum suppression with 8 directional differences ``mag(p) - mag(p + o_d)``
   (``o_0 = (0, +1)``, then clockwise in 45° steps in image coordinates, zero padding): a pixel
   is kept when both differences along its orientation (``d`` and ``d + 4``) are ``> 0``;
5. ``thresh`` = thin edges ``>= threshold`` (2.0), ``early`` = ``grad_mag >= threshold``.

The Gaussian and Sobel filtering use kornia (``kornia.filters.filter2d_separable`` /
``filter2d`` with ``border_type="constant"``); NMS is a plain 8-kernel convolution.

CannyNet (authors' ``CannyNet(depth=4, strides=(2, 2, 2, 2))``): the image in ``[0, 1]`` → Canny →
the five maps ``[grad_mag, grad_ori, thin, thresh, early]``, each L2-normalised over ``(H, W)`` →
``conv1 = Conv2d(5, dims[0], 3)`` → four stages (channels ``dims = (4, 16, 64, 256)``, the first at
full resolution, a ``Conv2d(3, stride 2)`` between stages) of ``blocks_per_stage`` ResNet blocks
(``[GroupNorm(1) → SiLU → Conv3x3] × 2`` + residual; the paper's "dual ResNet blocks", §4.1) and
a zero-initialised ``1x1`` lateral convolution per stage. Returned coarse to fine:
``[dims[3] @ H/8, dims[2] @ H/4, dims[1] @ H/2, dims[0] @ H]``.
"""
from __future__ import annotations

import math
from typing import Sequence

import kornia.filters as KF
import torch
import torch.nn.functional as F
from torch import nn

from segblocks.ops._checks import check_finite_float, check_int, check_int_sequence, check_module_dtype, check_tensor

__all__ = ["Canny", "CannyNet", "ResnetBlock"]

# Offsets (dy, dx) of the 8 NMS directions, index = orientation / 45 mod 8.
_NMS_OFFSETS = ((0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1))


class Canny(nn.Module):
    """The fixed Canny operator (module docstring, steps 1-5); no parameters, no gradients.

    Args:
        threshold: edge threshold on the gradient magnitude (2.0).
        sigma, kernel_size: Gaussian (1.0, 5).

    Forward:
        x: ``(B, 3, H, W)`` images in ``[0, 1]``.
        Returns ``(blurred (B, 3, H, W), grad_mag, grad_ori, thin, thresh, early)``, the last five
        ``(B, 1, H, W)``.
    """

    def __init__(self, *, threshold: float = 2.0, sigma: float = 1.0, kernel_size: int = 5) -> None:
        super().__init__()
        self.threshold = check_finite_float(threshold, "threshold", owner="Canny")
        sigma = check_finite_float(sigma, "sigma", owner="Canny", positive=True)
        k = check_int(kernel_size, "kernel_size", owner="Canny", minimum=1)
        taps = torch.arange(k, dtype=torch.float64) - k // 2
        scale = float(torch.exp(-taps ** 2 / (2 * sigma ** 2)).sum())  # unnormalised window: peak 1
        # kept as float64 values and cast per call (a float32 buffer would cost float64 inputs precision)
        self._gaussian = (KF.get_gaussian_kernel1d(k, sigma, dtype=torch.float64) * scale).tolist()
        self.register_buffer("sobel", -KF.get_sobel_kernel2d(), persistent=False)  # 2 x 3 x 3: (x, y)
        nms = torch.zeros(8, 1, 3, 3)
        for d, (dy, dx) in enumerate(_NMS_OFFSETS):
            nms[d, 0, 1, 1] = 1.0
            nms[d, 0, 1 + dy, 1 + dx] = -1.0
        self.register_buffer("nms", nms, persistent=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        check_tensor(x, "x", owner="Canny", shape=("B", ("3", 3), "H", "W"))
        g = torch.tensor(self._gaussian, dtype=x.dtype, device=x.device)  # 1 x k
        blurred = KF.filter2d_separable(x, g, g, border_type="constant")  # B x 3 x H x W
        gx = KF.filter2d(blurred, self.sobel[:1].to(x.dtype), border_type="constant")  # B x 3 x H x W
        gy = KF.filter2d(blurred, self.sobel[1:].to(x.dtype), border_type="constant")
        grad_mag = torch.sqrt(gx ** 2 + gy ** 2).sum(1, keepdim=True)  # B x 1 x H x W
        angle = torch.atan2(gy.sum(1, keepdim=True), gx.sum(1, keepdim=True)) * (180.0 / math.pi) + 180.0
        grad_ori = torch.round(angle / 45.0) * 45.0  # B x 1 x H x W
        diffs = F.conv2d(grad_mag, self.nms.to(x.dtype), padding=1)  # B x 8 x H x W
        pos = (grad_ori / 45.0).long() % 8
        neg = (pos + 4) % 8
        is_max = torch.minimum(diffs.gather(1, pos), diffs.gather(1, neg)) > 0
        thin = torch.where(is_max, grad_mag, 0.0)
        thresh = torch.where(thin < self.threshold, 0.0, thin)
        early = torch.where(grad_mag < self.threshold, 0.0, grad_mag)
        return blurred, grad_mag, grad_ori, thin, thresh, early


class ResnetBlock(nn.Module):
    """``x + conv(SiLU(GN(conv(SiLU(GN(x))))))`` (1x1 shortcut when the width changes)."""

    def __init__(self, *, in_chans: int, out_chans: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(1, in_chans)
        self.conv1 = nn.Conv2d(in_chans, out_chans, 3, padding=1)
        self.norm2 = nn.GroupNorm(1, out_chans)
        self.conv2 = nn.Conv2d(out_chans, out_chans, 3, padding=1)
        self.shortcut = nn.Conv2d(in_chans, out_chans, 1) if in_chans != out_chans else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.shortcut(x) + h


class CannyNet(nn.Module):
    """CannyNet (Eq. 23; module docstring): image → 4 edge-feature maps, coarse to fine.

    Args:
        dims: channels per stage, finest first ((4, 16, 64, 256); the coarsest equals DLU's width).
        blocks_per_stage: ResNet blocks per stage (2, "dual ResNet blocks").
        threshold: Canny threshold (2.0).

    Forward:
        x: ``(B, 3, H, W)`` images in ``[0, 1]``, ``H, W`` multiples of ``2^(len(dims) - 1)``.
        Returns ``[(B, dims[-1], H/8, W/8), ..., (B, dims[0], H, W)]``.
    """

    def __init__(self, *, dims: Sequence[int] = (4, 16, 64, 256), blocks_per_stage: int = 2, threshold: float = 2.0) -> None:
        super().__init__()
        owner = type(self).__name__
        dims = check_int_sequence(dims, "dims", owner=owner, minimum=1)
        if not dims:
            raise ValueError(f"{owner}: dims must not be empty")
        blocks_per_stage = check_int(blocks_per_stage, "blocks_per_stage", owner=owner, minimum=0)
        self.dims = dims
        self.canny = Canny(threshold=threshold)
        self.conv1 = nn.Conv2d(5, dims[0], 3, padding=1)
        self.stages = nn.ModuleList(
            nn.Sequential(*(ResnetBlock(in_chans=c, out_chans=c) for _ in range(blocks_per_stage))) for c in dims
        )
        self.laterals = nn.ModuleList(nn.Conv2d(c, c, 1) for c in dims)
        for lateral in self.laterals:
            nn.init.zeros_(lateral.weight)
            nn.init.zeros_(lateral.bias)
        self.downsamplers = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(dims[:-1], dims[1:]))

    def edge_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The five L2-normalised Canny maps ``(B, 5, H, W)``."""
        _, grad_mag, grad_ori, thin, thresh, early = self.canny(x)
        maps = torch.cat([grad_mag, grad_ori, thin, thresh, early], dim=1)  # B x 5 x H x W
        return F.normalize(maps.flatten(2), p=2, dim=-1).view_as(maps)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        owner = type(self).__name__
        _, _, H, W = check_tensor(x, "x", owner=owner, shape=("B", ("3", 3), "H", "W"))
        check_module_dtype(x, self, owner=owner)
        f = 2 ** (len(self.dims) - 1)
        if H % f or W % f:
            raise ValueError(f"{owner}: image height and width must be multiples of {f}; got {H}x{W}")
        n = len(self.dims)
        if x.shape[0] == 0:  # empty batch: empty maps of the documented shapes
            return [x.new_zeros(0, c, H // 2 ** i, W // 2 ** i) for i, c in enumerate(self.dims)][::-1]
        h = self.conv1(self.edge_maps(x))
        outs = []
        for i, (stage, lateral) in enumerate(zip(self.stages, self.laterals)):
            h = stage(h)
            outs.append(lateral(h))
            if i < len(self.downsamplers):
                h = self.downsamplers[i](h)
        return outs[::-1]
