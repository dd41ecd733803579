"""FLOP counting the way detectron2 / fvcore count (one multiply-add = one FLOP).

Built on :class:`torch.utils.flop_counter.FlopCounterMode`, which counts 2 FLOPs per
multiply-add for matmuls and convolutions; we halve its totals and add fvcore's default formulas
for ops FlopCounterMode ignores (layer/group norm: 5 FLOPs per element; bilinear upsampling: 4 per
output element). As in detectron2's ``tools/analyze_model.py``, the multi-scale deformable
sampling core (a custom CUDA op there, ``grid_sample`` or a Triton kernel here) is **excluded**:
it is bilinear sampling of 4 corners per point, ≈1-2% of the encoder.

Attention runs through SDPA's math path while counting, because the CPU SDPA kernels are not in
FlopCounterMode's registry (they would count 0).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "BACKBONE_CHANNELS",
    "PAPER_TABLE1",
    "build_pixel_decoder",
    "count_gflops",
    "encoder_gflops",
    "pixel_decoder_features",
    "proscale_flop_table",
]

aten = torch.ops.aten


def _norm(input_shape, *args, **kwargs) -> int:
    return 2 * 5 * math.prod(input_shape)  # ×2: FlopCounterMode's per-MAC convention, halved below


def _upsample_bilinear(input_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * 4 * math.prod(out_shape)


_FVCORE_EXTRA = {
    aten.native_layer_norm: _norm,
    aten.native_group_norm: _norm,
    aten.upsample_bilinear2d: _upsample_bilinear,
}


def count_gflops(fn: Callable[[], object]) -> float:
    """GFLOPs (fvcore convention: 1 multiply-add = 1 FLOP) of running ``fn()``.

    Freeze the measured modules (``requires_grad_(False)``) to avoid building autograd graphs:
    running under ``torch.no_grad()`` instead trips FlopCounterMode's module tracker on views of
    parameters (torch 2.13: "Expected gradient function to be set").
    """
    counter = FlopCounterMode(display=False, custom_mapping=_FVCORE_EXTRA)
    with sdpa_kernel(SDPBackend.MATH), counter:
        fn()
    return counter.get_total_flops() / 2e9


#: PRO-SCALE paper, Table 1 (COCO): transformer-encoder GFLOPs and their reduction vs Mask2Former.
PAPER_TABLE1 = {
    "swin_tiny": {"m2f": 117.00, (1, 1, 1): 22.89, (2, 2, 2): 39.53, (3, 3, 3): 56.18},
    "resnet50": {"m2f": 135.00, (1, 1, 1): 30.25, (2, 2, 2): 48.85, (3, 3, 3): 67.45},
}
#: res2..res5 channels of the paper's backbones.
BACKBONE_CHANNELS = {"swin_tiny": (96, 192, 384, 768), "resnet50": (256, 512, 1024, 2048)}


def pixel_decoder_features(
    in_channels: tuple[int, int, int, int], image_size: tuple[int, int], *, batch: int = 1
) -> dict[str, torch.Tensor]:
    """Random backbone maps ``res2..res5`` (strides 4..32) for an input padded to a multiple of 32.

    detectron2 pads the input to a multiple of 32 (800×1333 → 800×1344); the counts and timings
    do not depend on the values.
    """
    h, w = (-(-x // 32) * 32 for x in image_size)
    return {
        f"res{i + 2}": torch.randn(batch, c, -(-h // s), -(-w // s))
        for i, (c, s) in enumerate(zip(in_channels, (4, 8, 16, 32)))
    }


def build_pixel_decoder(
    in_channels: tuple[int, int, int, int], layers_per_stage: tuple[int, int, int], *, proscale_modules: bool
) -> torch.nn.Module:
    """Mask2Former's pixel decoder (``proscale_modules=False``, pass ``(0, 0, 6)``) or PRO-SCALE's.

    ``proscale_modules`` adds TRC and swaps the res2 3×3 conv for LPE (the PRO-SCALE model).
    """
    from segblocks.blocks.proscale import ProgressiveScaleEncoder
    from segblocks.models.mask2former.pixel_decoder import MSDeformPixelDecoder

    encoder = ProgressiveScaleEncoder(
        layers_per_stage=layers_per_stage,
        token_recalibration=proscale_modules,
    )
    return MSDeformPixelDecoder(
        in_channels=in_channels,
        encoder=encoder,
        pixel_embedding="lpe" if proscale_modules else "conv",
    )


def encoder_gflops(
    in_channels: tuple[int, int, int, int],
    image_size: tuple[int, int],
    layers_per_stage: tuple[int, int, int],
    *,
    proscale_modules: bool,
) -> float:
    """GFLOPs of the pixel decoder ("Tx. Enc." incl. pixel embedding) at paper settings (d=256).

    See :func:`build_pixel_decoder` and :func:`pixel_decoder_features` (random backbone features
    of the right shapes; the count does not depend on values).
    """
    decoder = build_pixel_decoder(in_channels, layers_per_stage, proscale_modules=proscale_modules)
    decoder = decoder.eval().requires_grad_(False)
    feats = pixel_decoder_features(in_channels, image_size)
    return count_gflops(lambda: decoder(feats))


def proscale_flop_table(backbone: str, image_size: tuple[int, int] = (800, 1333)) -> list[dict]:
    """Rows (config, encoder GFLOPs, reduction %, paper GFLOPs, paper reduction %) for Table 1."""
    if backbone not in BACKBONE_CHANNELS:
        raise ValueError(f"backbone must be one of {sorted(BACKBONE_CHANNELS)}, got {backbone!r}")
    channels, paper = BACKBONE_CHANNELS[backbone], PAPER_TABLE1[backbone]
    base = encoder_gflops(channels, image_size, (0, 0, 6), proscale_modules=False)
    rows = [dict(config="M2F", gflops=base, reduction=0.0, paper_gflops=paper["m2f"], paper_reduction=0.0)]
    for cfg in ((1, 1, 1), (2, 2, 2), (3, 3, 3)):
        g = encoder_gflops(channels, image_size, cfg, proscale_modules=True)
        rows.append(dict(
            config=f"PRO-SCALE {cfg}", gflops=g, reduction=100 * (g - base) / base,
            paper_gflops=paper[cfg], paper_reduction=100 * (paper[cfg] - paper["m2f"]) / paper["m2f"],
        ))
    return rows
