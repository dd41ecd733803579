"""Latency of Flash Swin vs plain (cyclic shift + mask) Swin attention, HRSAM Fig. 5 (§3.3).

Setting of the paper's Fig. 5: an ``h = w = 64`` token map, ``C = 768``, 12 heads, windows
``k = 16, 32`` with shift ``s = k/2``. Three implementations, timed side by side in one run:

* ``plain swin``: classic Swin — roll by ``-s``, window partition, attention with an additive
  bias (relative-position bias + the shift mask, cached like Swin's ``attn_mask`` buffer),
  unpartition, roll back (``segblocks.models.backbones.swin`` helpers, SDPA);
* ``flash swin``: :class:`FlashSwinAttention` without KV padding / RoPE — the same groups of
  tokens as the plain one, no mask (its output is checked against the plain one with the
  relative-position bias zeroed);
* ``hrsam``: HRSAM's block, Flash Swin + KV-only padding + RoPE.

Ratios are ``plain / impl`` (> 1: faster than plain). On CPU the Flash Swin backends are
``padded`` (windows gathered into a padded batch, one SDPA call: the CPU auto choice), the
dense-mask ``sdpa`` (``O(N^2)`` scores: slower than plain) and, if asked, ``reference`` (a loop
over windows); the fused kernels (xformers, triton, flex) need CUDA.

    OMP_NUM_THREADS=1 python benchmarks/bench_flash_swin.py            # CPU
    python benchmarks/bench_flash_swin.py --dtype float16 --iters 20    # CUDA
"""
from __future__ import annotations

import argparse
import warnings

import torch
from torch import nn

from segblocks.blocks.hrsam_attention import FlashSwinAttention
from segblocks.layers.window import window_partition, window_unpartition
from segblocks.models.backbones.swin import WindowAttention, shifted_window_mask
from _timing import time_ms  # benchmarks/_timing.py (the script folder is on sys.path)

__all__ = ["PlainSwinAttention", "main"]

CUDA_BACKENDS = ("xformers", "triton", "flex", "sdpa")
CPU_BACKENDS = ("padded", "sdpa", "reference")


class PlainSwinAttention(nn.Module):
    """Classic shifted-window attention on a grid that is a multiple of ``k`` (cyclic shift + mask).

    Forward: x ``(B, h*w, C)``, shapes ``[(h, w)]`` → ``(B, h*w, C)``.
    """

    def __init__(self, *, dim: int, num_heads: int, window_size: int, shift: int) -> None:
        super().__init__()
        self.attn = WindowAttention(dim=dim, num_heads=num_heads, window_size=window_size)
        self.window_size, self.shift = window_size, shift
        self._masks: dict = {}

    def forward(self, x: torch.Tensor, shapes) -> torch.Tensor:
        (h, w), (b, _, c), k, s = shapes[0], x.shape, self.window_size, self.shift
        key = (h, w, x.device)
        if key not in self._masks:  # Swin precomputes this buffer once per resolution
            self._masks[key] = shifted_window_mask(h, w, k, s, device=x.device)
        x = torch.roll(x.view(b, h, w, c), shifts=(-s, -s), dims=(1, 2))  # B x h x w x C
        out = window_unpartition(self.attn(window_partition(x, k), self._masks[key]), k, (h, w))  # B x h x w x C
        return torch.roll(out, shifts=(s, s), dims=(1, 2)).reshape(b, h * w, c)  # B x hw x C


def _measure(module, x, shapes, grad, device, iters) -> tuple[float | str, float | str]:
    """Median forward and forward+backward ms; a pass a backend cannot run gives its reason."""

    def fwd():
        with torch.no_grad():
            module(x, shapes)

    def fwd_bwd():
        module(x, shapes).backward(grad)

    times = []
    for fn in (fwd, fwd_bwd):
        try:
            times.append(time_ms(fn, device, iters))
        except Exception as exc:  # e.g. FlexAttention has no CPU backward: report it, keep going
            times.append(f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1].strip()[:80]}")
    return times[0], times[1]


def _cell(t: float | str, width: int) -> str:
    return f"{t:>{width}.2f}" if isinstance(t, float) else f"{'n/a':>{width}}"


def _ratio(base: float | str, t: float | str, width: int) -> str:
    return _cell(base / t if isinstance(base, float) and isinstance(t, float) else "", width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="token grid side h = w")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--windows", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--iters", type=int, default=None, help="timed repeats (default 3 on CPU, 20 on CUDA)")
    parser.add_argument("--backends", nargs="+", default=None, help="varlen_attention backends for Flash Swin")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*flex_attention.*")  # eager-CPU FlexAttention nag
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    iters = args.iters or (20 if device.type == "cuda" else 3)
    backends = args.backends or (CUDA_BACKENDS if device.type == "cuda" else CPU_BACKENDS)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    h = w = args.size
    print(
        f"device: {name} | torch {torch.__version__} | B={args.batch} h=w={h} C={args.dim} "
        f"heads={args.heads} {args.dtype} | median of {iters}"
    )
    header = f"{'k':>3} {'implementation':<12} {'backend':<10} {'fwd ms':>10} {'fwd+bwd ms':>11}"
    print(header + f" {'x fwd':>7} {'x fwd+bwd':>9}")
    x = torch.randn(args.batch, h * w, args.dim, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn_like(x)
    shapes = [(h, w)]
    for k in args.windows:
        if h % k or w % k:
            raise ValueError(f"the plain Swin baseline needs h, w multiples of k, got {h}x{w}, k={k}")
        plain = PlainSwinAttention(dim=args.dim, num_heads=args.heads, window_size=k, shift=k // 2)
        plain = plain.to(device, dtype)
        base = _measure(plain, x, shapes, grad, device, iters)
        row = f"{k:>3} {'plain swin':<12} {'sdpa+mask':<10} {_cell(base[0], 10)} {_cell(base[1], 11)}"
        print(row + f" {1:>7.2f} {1:>9.2f}")
        for impl, extras in (("flash swin", dict(kv_padding=False, rope=False)), ("hrsam", {})):
            fs = FlashSwinAttention(dim=args.dim, num_heads=args.heads, window_size=k, **extras).to(device, dtype)
            if impl == "flash swin":  # same weights, zero position bias: the outputs must agree
                fs.qkv.load_state_dict(plain.attn.qkv.state_dict())
                fs.proj.load_state_dict(plain.attn.proj.state_dict())
                with torch.no_grad():
                    plain.attn.relative_position_bias_table.zero_()
                    diff = (fs(x, shapes) - plain(x, shapes)).abs().max().item()
                print(f"    check: max |flash swin - plain swin| = {diff:.2e}")
            for backend in backends:
                fs.backend = backend
                t = _measure(fs, x, shapes, grad, device, iters)
                print(
                    f"{k:>3} {impl:<12} {backend:<10} {_cell(t[0], 10)} {_cell(t[1], 11)} "
                    f"{_ratio(base[0], t[0], 7)} {_ratio(base[1], t[1], 9)}"
                )
                for what, r in zip(("fwd", "fwd+bwd"), t):
                    if isinstance(r, str):
                        print(f"    {backend} {what} n/a: {r}")
    print("paper (Fig. 5, GPU with xformers): Flash Swin 35% faster at k=16, 52% at k=32")


if __name__ == "__main__":
    main()
