"""MST ViT-B vs the plain SimpleClick ViT-B at 448²: parameters, FLOPs and per-click latency (MST Table II).

MST Table II: SimpleClick-ViT-B-448 84.89 M params / 96.46 GFLOPs / 183 ms, Ours-ViT-B+MST
166.77 M / 206.82 G / 225 ms (RTX 3090, FlashAttention 2). Both models re-run the whole network at
every click, so one forward pass is one click.

Rows, from one run:

* ``simpleclick_vit_base``: :func:`segblocks.models.mst.simpleclick_vit_base` (no MST block);
* ``mst_vit_base (code)``: the authors' 448 configuration (patch sizes 8/16/32, k = N/16, MST at
  blocks 3, 7, 11), the one their checkpoints load into;
* ``mst_vit_base (paper)``: 8/16/28 px tokens, k = N/12, higher-score scale.

FLOPs follow :func:`segblocks.flops.count_gflops` (fvcore convention, 1 multiply-add = 1 FLOP;
what SimpleClick's and MST's tables report) for one click (``decode``) with one positive click.
Parameters count every weight, position embedding included. Latency: the median of ``--iters``
decodes with ``benchmarks/_timing.py``.

    OMP_NUM_THREADS=2 python benchmarks/bench_mst.py            # CPU, 448², 3 timed clicks
    python benchmarks/bench_mst.py --device cuda --iters 20
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import time_ms  # noqa: E402

from segblocks.flops import count_gflops  # noqa: E402
from segblocks.interactive.clicker import Clicks  # noqa: E402
from segblocks.interactive.protocol import ClickPrompts  # noqa: E402
from segblocks.models import create_model  # noqa: E402

PAPER = {"simpleclick_vit_base": (84.89, 96.46, 183.0), "mst_vit_base (code)": (166.77, 206.82, 225.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--no-latency", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    rows = {
        "simpleclick_vit_base": lambda: create_model("simpleclick_vit_base", img_size=args.size),
        "mst_vit_base (code)": lambda: create_model("mst_vit_base", img_size=args.size, variant="code"),
        "mst_vit_base (paper)": lambda: create_model("mst_vit_base", img_size=args.size, variant="paper"),
    }
    s = args.size
    image = torch.rand(1, 3, s, s, device=device) * 255
    size = torch.tensor([[s, s]], device=device)
    prompts = ClickPrompts(clicks=Clicks.from_lists([[(s // 2, s // 2, 1)]], device=device), frame_size=size, input_size=size)
    print(f"# MST vs SimpleClick ViT-B at {s}² — torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{device}, threads {torch.get_num_threads()}")
    results = {}
    for name, build in rows.items():
        model = build().to(device).eval().requires_grad_(False)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        state = model.encode(image, size)
        gflops = count_gflops(lambda: model.decode(state, prompts, None))
        ms = None
        if not args.no_latency:
            with torch.no_grad():
                ms = time_ms(lambda: model.decode(state, prompts, None), device, args.iters)
        results[name] = (params, gflops, ms)
        del model
    base = results["simpleclick_vit_base"]
    print(f"{'model':24s} {'params M':>9s} {'paper':>8s} {'GFLOPs':>8s} {'paper':>8s} {'ms/click':>9s} "
          f"{'paper ms':>9s} {'x params':>9s} {'x FLOPs':>8s} {'x ms':>6s}")
    for name, (p, g, ms) in results.items():
        pp, pg, pms = PAPER.get(name, (float("nan"),) * 3)
        ratio_ms = f"{ms / base[2]:6.2f}" if ms and base[2] else "     -"
        print(f"{name:24s} {p:9.2f} {pp:8.2f} {g:8.2f} {pg:8.2f} {(ms or float('nan')):9.1f} {pms:9.1f} "
              f"{p / base[0]:9.2f} {g / base[1]:8.2f} {ratio_ms}")
    print("paper ratios (Table II): x params 1.96, x FLOPs 2.14, x ms 1.23 (GPU, FlashAttention 2)")


if __name__ == "__main__":
    main()
