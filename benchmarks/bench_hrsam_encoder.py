"""Image-encoder latency: global-attention ViT vs HRSAM / HRSAM++ at 1024² and 2048² (HRSAM Table 3 style).

HRSAM Table 3 times the image encoder alone for the ablation rows: a Global-attn ViT-B (RoPE +
memory-efficient attention), Flash Swin, + KV-only padding, + Cycle-scan (= HRSAM), + the
multi-scale anchor map (= HRSAM++): 104 / 37 / 53 / 90 ms at 1024² and 1338 / 122 / 185 / 269
ms at 2048² on their GPU. Rows timed here, side by side in one run at the same width and depth:

* ``global ViT``: SAM's :class:`~segblocks.models.sam.ViTImageEncoder` with every block global
  and no relative-position bias (the paper's Global-attn ViT has none: its bias is a dense
  ``N x N`` tensor, 12 GB per block at 2048²), SDPA attention;
* ``flash swin``: the HRSAM encoder without KV-only padding and without Cycle-scan;
* ``hrsam``: :class:`~segblocks.models.hrsam.HRSAMEncoder`;
* ``hrsam++``: :class:`~segblocks.models.hrsam.HRSAMPlusPlusEncoder` (512² anchor map).

Ratios are ``global / row`` (> 1: faster than global attention). On CPU the full ViT-B is too slow
for global attention at 2048², so the width defaults to 96 (3 heads) there and the output says
so; the local attention runs the per-window ``reference`` backend there (the ``auto`` choice on
CPU, ``sdpa``, materialises an ``N x N`` mask) and the Cycle-scan the ``chunked`` pure-PyTorch
scan, so CPU numbers rank the designs only roughly; the paper's setting needs CUDA (xformers or
the Triton kernel, mamba-ssm).

    OMP_NUM_THREADS=1 python benchmarks/bench_hrsam_encoder.py           # CPU, reduced width
    python benchmarks/bench_hrsam_encoder.py --dtype float16 --iters 20   # CUDA, ViT-B
"""
from __future__ import annotations

import argparse
import platform

import torch
from torch import nn

from _timing import time_ms  # benchmarks/_timing.py (the script folder is on sys.path)

from segblocks.models.hrsam import HRSAMEncoder, HRSAMPlusPlusEncoder
from segblocks.models.sam import ViTImageEncoder

__all__ = ["build_encoders", "main"]


def build_encoders(*, embed_dim: int, num_heads: int, attn_backend: str) -> dict[str, nn.Module]:
    """The four rows at ViT-B depth (12 blocks, 4 stages x 3) and the given width."""
    common = dict(embed_dim=embed_dim, num_heads=num_heads)
    flash = HRSAMEncoder(**common, kv_padding=False, attn_backend=attn_backend)
    flash.cycle_scans = nn.ModuleList(nn.Identity() for _ in flash.cycle_scans)  # Table 3 row 2: no Cycle-scan
    return {
        "global ViT": ViTImageEncoder(**common, depth=12, global_attn_indexes=tuple(range(12)), use_rel_pos=False),
        "flash swin": flash,
        "hrsam": HRSAMEncoder(**common, attn_backend=attn_backend),
        "hrsam++": HRSAMPlusPlusEncoder(**common, attn_backend=attn_backend),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    p.add_argument("--embed-dim", type=int, help="default: 768 on CUDA (ViT-B), 96 on CPU")
    p.add_argument("--num-heads", type=int, help="default: head dim 64 from width 384 on, else 32 (12 for 768, 3 for 96)")
    p.add_argument("--iters", type=int, help="timed runs per row after one warm-up (default: 10 CUDA, 1 CPU)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--attn-backend", help="Flash Swin varlen backend (default: auto on CUDA, reference on CPU)")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    cpu = device.type == "cpu"
    embed_dim = args.embed_dim or (96 if cpu else 768)
    num_heads = args.num_heads or max(embed_dim // (64 if embed_dim >= 384 else 32), 1)  # head dim 64 (ViT-B) or 32
    iters = args.iters or (1 if cpu else 10)
    backend = args.attn_backend or ("reference" if cpu else "auto")
    dtype = getattr(torch, args.dtype)

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; dtype {args.dtype}; median of {iters} run(s) after a warm-up")
    print(f"width {embed_dim}, {num_heads} heads, depth 12 (4 stages x 3), patch 16, window 16; attention backend {backend!r}")
    if embed_dim != 768:
        print(f"NOTE: reduced width {embed_dim} instead of ViT-B's 768 "
              "(full ViT-B global attention at 2048² is too slow here)")

    torch.manual_seed(0)
    encoders = {k: m.to(device=device, dtype=dtype).eval() for k, m in build_encoders(
        embed_dim=embed_dim, num_heads=num_heads, attn_backend=backend).items()}
    results: dict[int, dict[str, float | str]] = {}
    for size in args.sizes:
        x = torch.randn(1, 3, size, size, device=device, dtype=dtype)
        results[size] = {}
        for row, model in encoders.items():
            try:
                with torch.no_grad():
                    results[size][row] = time_ms(lambda: model(x), device, iters)
            except (RuntimeError, MemoryError) as err:  # e.g. out of memory, or no backend for this dtype
                results[size][row] = f"failed: {str(err).splitlines()[0][:60]}"
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            value = results[size][row]
            print(f"  {size}² {row}: {value if isinstance(value, str) else f'{value:.1f} ms'}", flush=True)

    header = f"{'encoder':<12}" + "".join(f"{f'{s}² ms':>12}{'global/row':>12}" for s in args.sizes)
    print("\n" + header + "\n" + "-" * len(header))
    for row in encoders:
        line = f"{row:<12}"
        for s in args.sizes:
            v, g = results[s][row], results[s]["global ViT"]
            ratio = f"{g / v:.2f}x" if isinstance(v, float) and isinstance(g, float) else "-"
            line += f"{v:>12.1f}{ratio:>12}" if isinstance(v, float) else f"{'failed':>12}{ratio:>12}"
        print(line)


if __name__ == "__main__":
    main()
