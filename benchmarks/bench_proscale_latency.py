"""Wall-clock of PRO-SCALE's encoder vs Mask2Former's 6-layer encoder, beside the FLOP reductions.

PRO-SCALE (Aich et al., "Progressive Token Length Scaling in Transformer Encoders for Efficient
Universal Segmentation"), Table 1 reports encoder GFLOPs at 800×1333 with Swin-T and R50
backbones, d = 256: (1,1,1), (2,2,2), (3,3,3) vs Mask2Former's (0,0,6). This script times the
same modules (inference, batch 1, the input padded to a multiple of 32 as detectron2 does):

* ``encoder``: :class:`ProgressiveScaleEncoder` alone on the three 256-channel levels (strides
  32, 16, 8) — the same shapes for both backbones (they differ only in channels before the
  input projections), with token recalibration as in the paper (on for PRO-SCALE, off for
  Mask2Former's ``(0, 0, 6)``, the same class);
* ``pixel decoder``: the whole pixel decoder per backbone (input projections, encoder, pixel
  embedding: LPE for PRO-SCALE, the 3×3 conv for Mask2Former) — exactly what
  ``benchmarks/flops_proscale.py`` counts, whose FLOP reductions are printed beside.

The MSDeformAttn core runs the ``auto`` backend (``pytorch``, one ``grid_sample`` per level on
CPU). Timing: ``--rounds`` interleaved rounds of ``_timing.time_ms`` (median over rounds).

    OMP_NUM_THREADS=2 python benchmarks/bench_proscale_latency.py
"""
from __future__ import annotations

import argparse

import torch

from segblocks.blocks.proscale import ProgressiveScaleEncoder
from segblocks.flops import BACKBONE_CHANNELS, build_pixel_decoder, pixel_decoder_features, proscale_flop_table
from _timing import time_ms  # benchmarks/_timing.py (the script folder is on sys.path)

__all__ = ["CONFIGS", "main"]

#: Mask2Former's encoder first (the baseline of every ratio), then PRO-SCALE's Table 1 rows.
CONFIGS = ((0, 0, 6), (3, 3, 3), (2, 2, 2), (1, 1, 1))


def _name(cfg: tuple[int, int, int]) -> str:
    return "M2F (0,0,6)" if cfg == (0, 0, 6) else f"PRO-SCALE {cfg}".replace(" ", "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1333), metavar=("H", "W"))
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONE_CHANNELS), choices=list(BACKBONE_CHANNELS))
    parser.add_argument("--iters", type=int, default=1, help="timed repeats per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median over rounds)")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count (faster)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    device = torch.device("cpu")
    size = tuple(args.size)
    feats = {name: pixel_decoder_features(BACKBONE_CHANNELS[name], size) for name in args.backbones}
    any_feats = next(iter(feats.values()))
    # encoder inputs: the projected 256-channel levels res5, res4, res3 (coarse → fine)
    levels = [torch.randn(1, 256, *any_feats[f"res{i}"].shape[-2:]) for i in (5, 4, 3)]

    rows = []  # (label, backbone, cfg, fn)
    for cfg in CONFIGS:
        enc = ProgressiveScaleEncoder(layers_per_stage=cfg, token_recalibration=cfg != (0, 0, 6)).eval()
        rows.append(("encoder", "(both)", cfg, lambda enc=enc: enc(levels)))
    for name in args.backbones:
        for cfg in CONFIGS:
            dec = build_pixel_decoder(BACKBONE_CHANNELS[name], cfg, proscale_modules=cfg != (0, 0, 6)).eval()
            rows.append(("pixel decoder", name, cfg, lambda dec=dec, f=feats[name]: dec(f)))

    times: list[list[float]] = [[] for _ in rows]
    with torch.inference_mode():
        for _ in range(args.rounds):
            for (_, _, _, fn), t in zip(rows, times):
                t.append(time_ms(fn, device, args.iters))
    med = [sorted(t)[len(t) // 2] for t in times]

    flops = {}
    if not args.no_flops:
        for name in args.backbones:
            for row in proscale_flop_table(name, size):
                cfg = (0, 0, 6) if row["config"] == "M2F" else tuple(int(c) for c in row["config"][11:-1].split(","))
                flops[(name, cfg)] = (row["reduction"], row["paper_reduction"])

    h, w = (-(-x // 32) * 32 for x in size)
    shapes = [tuple(lv.shape[-2:]) for lv in levels]
    print(
        f"cpu ({torch.get_num_threads()} threads) | torch {torch.__version__} | {size[0]}x{size[1]} padded to {h}x{w}, "
        f"d=256, batch 1, inference | encoder levels {shapes} | median over {args.rounds} interleaved rounds"
    )
    header = f"{'module':<14} {'backbone':<10} {'config':<20} {'ms':>9} {'x speed':>8} {'time Δ%':>8} {'FLOPs Δ%':>9} {'paper FLOPs Δ%':>15}"
    print(header)
    print("-" * len(header))
    base = {}
    for (label, backbone, cfg, _), t in zip(rows, med):
        if cfg == (0, 0, 6):
            base[(label, backbone)] = t
        b = base[(label, backbone)]
        fl = flops.get((backbone, cfg)) if label == "pixel decoder" else None
        fl_text = f"{fl[0]:9.1f} {fl[1]:15.1f}" if fl else f"{'':>9} {'':>15}"
        print(f"{label:<14} {backbone:<10} {_name(cfg):<20} {t:9.1f} {b / t:8.2f} {100 * (t - b) / b:8.1f} {fl_text}")


if __name__ == "__main__":
    main()
