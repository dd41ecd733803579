"""FLOP report: Mask2Former vs PRO-SCALE at 800×1333 (PRO-SCALE Table 1), fvcore convention.

    python benchmarks/flops_proscale.py [--size 800 1333] [--backbones swin_tiny resnet50]

Counts (GFLOPs, one multiply-add = one FLOP, deformable sampling core excluded as in detectron2;
the input is padded to a multiple of 32 as detectron2 does, i.e. 800×1344)
the backbone, the transformer encoder incl. pixel embedding (the whole pixel decoder) and the
total with the masked-attention decoder (100 queries, 9 layers), next to the paper's numbers. The
paper averages over COCO val images (shorter side 800), so absolute GFLOPs differ; the encoder
reductions are what Table 1 compares.
"""
from __future__ import annotations

import argparse

import torch

from segblocks.flops import PAPER_TABLE1, count_gflops, proscale_flop_table
from segblocks.models.backbones import ResNet50, swin_tiny
from segblocks.models.mask2former.transformer_decoder import MultiScaleMaskedTransformerDecoder

BACKBONES = {"swin_tiny": swin_tiny, "resnet50": ResNet50}


def backbone_and_decoder_gflops(name: str, size: tuple[int, int]) -> tuple[float, float]:
    backbone = BACKBONES[name]().eval().requires_grad_(False)
    h, w = (-(-x // 32) * 32 for x in size)  # detectron2 pads the input to a multiple of 32
    image = torch.randn(1, 3, h, w)
    g_backbone = count_gflops(lambda: backbone(image))
    multi_scale = [torch.randn(1, 256, -(-h // s), -(-w // s)) for s in (32, 16, 8)]
    mask_features = torch.randn(1, 256, -(-h // 4), -(-w // 4))
    decoder = MultiScaleMaskedTransformerDecoder(num_classes=133).eval().requires_grad_(False)
    g_decoder = count_gflops(lambda: decoder(multi_scale, mask_features))
    return g_backbone, g_decoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1333), metavar=("H", "W"))
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    args = parser.parse_args()
    size = tuple(args.size)
    print(f"GFLOPs at {size[0]}x{size[1]} (fvcore convention; MSDeformAttn sampling core excluded)")
    header = f"{'backbone':<10} {'model':<20} {'backbone':>9} {'Tx.Enc':>8} {'decoder':>8} {'total':>8} {'enc. Δ%':>8} {'paper Tx.Enc':>12} {'paper Δ%':>9}"
    print(header)
    print("-" * len(header))
    for name in args.backbones:
        g_backbone, g_decoder = backbone_and_decoder_gflops(name, size)
        for row in proscale_flop_table(name, size):
            total = g_backbone + row["gflops"] + g_decoder
            print(
                f"{name:<10} {row['config']:<20} {g_backbone:9.2f} {row['gflops']:8.2f} {g_decoder:8.2f} {total:8.2f} "
                f"{row['reduction']:8.2f} {row['paper_gflops']:12.2f} {row['paper_reduction']:9.2f}"
            )
    print(f"paper Table 1 encoder GFLOPs: {PAPER_TABLE1}")


if __name__ == "__main__":
    main()
