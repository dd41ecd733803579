"""Eager vs ``torch.compile`` (Inductor) CPU time of the main blocks, forward, small sizes.

Blocks: Flash Swin (HRSAM §3.3, KV-only padding + RoPE), Cycle-scan (HRSAM §3.5), the PRO-SCALE
encoder (3,3,3) with TRC. Each is called once eagerly (warm mapping caches), compiled with
``torch.compile(block)`` (default Inductor backend; the compilation itself is not timed: one
warm-up call), then timed with ``_timing.time_ms`` under ``torch.no_grad()``. Graph breaks are
counted by ``tests/test_compile.py``; the PRO-SCALE encoder still breaks at every MSDeformAttn
(its ``spatial_shapes`` tensor is read on the host), so it compiles in pieces.

    OMP_NUM_THREADS=2 python benchmarks/bench_compile.py
"""
from __future__ import annotations

import argparse

import torch

from _timing import time_ms  # benchmarks/_timing.py (the script folder is on sys.path)

__all__ = ["main"]


def _blocks(scale: int):
    from segblocks.blocks.hrsam_attention import FlashSwinAttention
    from segblocks.blocks.hrsam_cyclescan import CycleScan
    from segblocks.blocks.proscale import ProgressiveScaleEncoder

    h = w = 16 * scale
    yield ("FlashSwinAttention C=192 k=16", FlashSwinAttention(dim=192, num_heads=3, window_size=16),
           (torch.randn(1, h * w, 192), [(h, w)]))
    yield ("CycleScan C=192", CycleScan(dim=192, d_state=16), (torch.randn(1, h * w, 192),))
    feats = [torch.randn(1, 256, s * scale, s * scale) for s in (2, 4, 8)]
    yield ("ProgressiveScaleEncoder (3,3,3)", ProgressiveScaleEncoder(), (feats,))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=2, help="token grid = 16*scale per side")
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    device = torch.device("cpu")
    print(f"cpu ({torch.get_num_threads()} threads) | torch {torch.__version__} | forward, no grad, median of {args.iters}")
    print(f"{'block':<34} {'eager ms':>9} {'compiled ms':>12} {'x':>6}")
    for name, block, inputs in _blocks(args.scale):
        block.eval()
        with torch.no_grad():
            block(*inputs)  # warm caches before tracing
            eager = time_ms(lambda: block(*inputs), device, args.iters)
            compiled_block = torch.compile(block)
            compiled = time_ms(lambda: compiled_block(*inputs), device, args.iters)
        print(f"{name:<34} {eager:9.2f} {compiled:12.2f} {eager / compiled:6.2f}")


if __name__ == "__main__":
    main()
