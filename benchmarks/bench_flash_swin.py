"""Latency of Flash Swin vs plain (cyclic shift + mask) Swin attention, HRSAM Fig. 5 (§3.3).

Setting of the paper's Fig. 5: ``C = 768``, 12 heads, window ``k = 16`` (``--windows 16 32`` adds
32) with shift ``s = k/2``, batch 1, on three token maps timed side by side in one run:

* ``64x64``: a 1024² input (HRSAM's setting);
* ``128x128``: a 2048² input;
* ``64x64+32x32``: HRSAM++'s multi-scale input (§3.6): the 1024² tokens plus the 512² anchor map,
  one Flash Swin call over both scales (plain Swin: one call per scale, summed).

Implementations (same ``qkv``/``proj`` weights):

* ``plain swin``: classic Swin — roll by ``-s``, window partition, attention with an additive
  bias (relative-position bias + the shift mask, cached like Swin's ``attn_mask`` buffer),
  unpartition, roll back (``segblocks.models.backbones.swin`` helpers, SDPA);
* ``flash swin``: :class:`FlashSwinAttention` without KV padding / RoPE — the same groups of
  tokens as the plain one, no mask (its output is checked against the plain one with the
  relative-position bias zeroed), per ``varlen_attention`` backend;
* ``hrsam``: HRSAM's block, Flash Swin + KV-only padding + RoPE (``auto`` backend).

Columns: median ms of forward (no grad) and forward+backward, their ratios ``plain / impl``
(> 1: faster than plain), and ``core x``, the fwd+bwd ratio with the time of the two shared
projections (``qkv`` + ``proj`` on all tokens, timed in the same run) subtracted from both sides:
the attention part alone. On CPU the Flash Swin backends are ``grouped`` (equal-shape windows
batched, one SDPA call per shape: the CPU auto choice), ``padded`` (windows padded to ``k²``,
one masked SDPA call) and ``reference`` (a loop over windows); the dense-mask ``sdpa`` backend
(``O(N²)`` scores) only with ``--backends``; the fused kernels (xformers, triton, flex) need CUDA.

Timing: ``--rounds`` rounds, each timing every implementation once (``_timing.time_ms``: one
warm-up call, then the median of ``--iters``); the table shows the median over rounds, so a
change of machine load hits all rows alike.

    OMP_NUM_THREADS=2 python benchmarks/bench_flash_swin.py            # CPU
    python benchmarks/bench_flash_swin.py --dtype float16 --iters 20    # CUDA
"""
from __future__ import annotations

import argparse
import warnings
from typing import Callable

import torch
from torch import nn

from segblocks.blocks.hrsam_attention import FlashSwinAttention
from segblocks.layers.window import window_partition, window_unpartition
from segblocks.models.backbones.swin import WindowAttention, shifted_window_mask
from _timing import time_ms  # benchmarks/_timing.py (the script folder is on sys.path)

__all__ = ["PlainSwinAttention", "SETTINGS", "main"]

CUDA_BACKENDS = ("xformers", "triton", "flex", "grouped", "sdpa")
CPU_BACKENDS = ("grouped", "padded", "reference")
#: name -> token grids per sample (HRSAM: 16-px patches; HRSAM++ adds a 512² anchor map).
SETTINGS = {
    "64x64": ((64, 64),),
    "128x128": ((128, 128),),
    "64x64+32x32": ((64, 64), (32, 32)),
}


class PlainSwinAttention(nn.Module):
    """Classic shifted-window attention on grids that are multiples of ``k`` (cyclic shift + mask).

    Forward: x ``(B, N, C)``, shapes ``[(h_1, w_1), ...]`` with ``N = sum(h_l * w_l)`` →
    ``(B, N, C)``; several scales are attended one after the other (Swin has no multi-scale call).
    """

    def __init__(self, *, dim: int, num_heads: int, window_size: int, shift: int) -> None:
        super().__init__()
        self.attn = WindowAttention(dim=dim, num_heads=num_heads, window_size=window_size)
        self.window_size, self.shift = window_size, shift
        self._masks: dict = {}

    def _one(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        (b, _, c), k, s = x.shape, self.window_size, self.shift
        key = (h, w, x.device)
        if key not in self._masks:  # Swin precomputes this buffer once per resolution
            self._masks[key] = shifted_window_mask(h, w, k, s, device=x.device)
        x = torch.roll(x.reshape(b, h, w, c), shifts=(-s, -s), dims=(1, 2))  # B x h x w x C
        out = window_unpartition(self.attn(window_partition(x, k), self._masks[key]), k, (h, w))  # B x h x w x C
        return torch.roll(out, shifts=(s, s), dims=(1, 2)).reshape(b, h * w, c)  # B x hw x C

    def forward(self, x: torch.Tensor, shapes) -> torch.Tensor:
        parts = x.split([h * w for h, w in shapes], dim=1)  # per scale: B x hw x C
        outs = [self._one(p, h, w) for p, (h, w) in zip(parts, shapes)]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)  # B x N x C


class SharedProjections(nn.Module):
    """The ``qkv`` and ``proj`` linears every implementation runs on all tokens (for ``core x``)."""

    def __init__(self, attn: WindowAttention) -> None:
        super().__init__()
        self.qkv, self.proj = attn.qkv, attn.proj

    def forward(self, x: torch.Tensor, shapes) -> torch.Tensor:
        return self.proj(self.qkv(x)[..., : x.shape[-1]])  # B x N x C


def _passes(module: nn.Module, x: torch.Tensor, shapes, grad: torch.Tensor) -> dict[str, Callable[[], None]]:
    def fwd():
        with torch.no_grad():
            module(x, shapes)

    def fwd_bwd():
        module(x, shapes).backward(grad)

    return {"fwd": fwd, "fwd+bwd": fwd_bwd}


def _time(fn: Callable[[], None], device: torch.device, iters: int) -> float | str:
    try:
        return time_ms(fn, device, iters)
    except Exception as exc:  # e.g. FlexAttention has no CPU backward: report it, keep going
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1].strip()[:100]}"


def _median(values: list) -> float | str:
    nums = sorted(v for v in values if isinstance(v, float))
    return nums[len(nums) // 2] if len(nums) == len(values) else next(v for v in values if isinstance(v, str))


def _cell(t: float | str, width: int) -> str:
    return f"{t:>{width}.2f}" if isinstance(t, float) else f"{'n/a':>{width}}"


def _ratio(base: float | str, t: float | str, width: int, minus: float | str = 0.0) -> str:
    ok = all(isinstance(v, float) for v in (base, t, minus)) and t - minus > 0
    return _cell((base - minus) / (t - minus) if ok else "", width)


def build_rows(shapes, k: int, args, device, dtype, backends) -> list[tuple[str, str, nn.Module]]:
    """``(implementation, backend, module)`` rows for one setting; prints the equivalence check."""
    plain = PlainSwinAttention(dim=args.dim, num_heads=args.heads, window_size=k, shift=k // 2).to(device, dtype)
    rows = [("plain swin", "sdpa+mask", plain), ("(qkv+proj)", "linears", SharedProjections(plain.attn))]
    fs = FlashSwinAttention(dim=args.dim, num_heads=args.heads, window_size=k, kv_padding=False, rope=False)
    fs = fs.to(device, dtype)
    fs.qkv.load_state_dict(plain.attn.qkv.state_dict())
    fs.proj.load_state_dict(plain.attn.proj.state_dict())
    x = torch.randn(1, sum(h * w for h, w in shapes), args.dim, device=device, dtype=dtype)
    table = plain.attn.relative_position_bias_table
    with torch.no_grad():  # same weights, zero position bias: the outputs must agree
        saved = table.clone()
        table.zero_()
        diff = (fs(x, shapes) - plain(x, shapes)).abs().max().item()
        table.copy_(saved)
    print(f"    check: max |flash swin - plain swin| = {diff:.2e} (relative-position bias zeroed)")
    for backend in backends:
        clone = FlashSwinAttention(dim=args.dim, num_heads=args.heads, window_size=k, kv_padding=False, rope=False,
                                   backend=backend).to(device, dtype)
        clone.load_state_dict(fs.state_dict())
        rows.append(("flash swin", backend, clone))
    hrsam = FlashSwinAttention(dim=args.dim, num_heads=args.heads, window_size=k).to(device, dtype)
    rows.append(("hrsam", "auto", hrsam))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--windows", type=int, nargs="+", default=[16])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--iters", type=int, default=None, help="timed repeats per round (default 1 on CPU, 20 on CUDA)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median over rounds)")
    parser.add_argument("--backends", nargs="+", default=None, help="varlen_attention backends for Flash Swin")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*flex_attention.*")  # eager-CPU FlexAttention nag
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    iters = args.iters or (20 if device.type == "cuda" else 1)
    backends = args.backends or (CUDA_BACKENDS if device.type == "cuda" else CPU_BACKENDS)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"device: {name} | torch {torch.__version__} | B=1 C={args.dim} heads={args.heads} {args.dtype} | "
        f"median over {args.rounds} interleaved rounds of median-of-{iters}"
    )
    header = f"{'setting':<12} {'k':>3} {'implementation':<14} {'backend':<10} {'fwd ms':>10} {'fwd+bwd ms':>11}"
    lines = [header + f" {'x fwd':>7} {'x fwd+bwd':>9} {'core x':>7}"]
    notes = []
    for setting in args.settings:
        shapes = SETTINGS[setting]
        for k in args.windows:
            if any(h % k or w % k for h, w in shapes):
                notes.append(f"{setting} k={k}: skipped, the plain Swin baseline needs h, w multiples of k")
                continue
            print(f"{setting} k={k}:")
            rows = build_rows(shapes, k, args, device, dtype, backends)
            n = sum(h * w for h, w in shapes)
            x = torch.randn(1, n, args.dim, device=device, dtype=dtype, requires_grad=True)
            grad = torch.randn_like(x)
            times: list[dict[str, list]] = [{"fwd": [], "fwd+bwd": []} for _ in rows]
            for _ in range(args.rounds):
                for (_, _, module), t in zip(rows, times):
                    for what, fn in _passes(module, x, list(shapes), grad).items():
                        t[what].append(_time(fn, device, iters))
            med = [{what: _median(v) for what, v in t.items()} for t in times]
            base, lin = med[0], med[1]
            for (impl, backend, _), t in zip(rows, med):
                core = "" if impl == "(qkv+proj)" else _ratio(base["fwd+bwd"], t["fwd+bwd"], 7, lin["fwd+bwd"])
                lines.append(
                    f"{setting:<12} {k:>3} {impl:<14} {backend:<10} {_cell(t['fwd'], 10)} {_cell(t['fwd+bwd'], 11)} "
                    f"{_ratio(base['fwd'], t['fwd'], 7)} {_ratio(base['fwd+bwd'], t['fwd+bwd'], 9)} {core:>7}"
                )
                notes += [f"{setting} k={k} {impl} {backend} {what}: {r}" for what, r in t.items() if isinstance(r, str)]
    print("\n".join(lines))
    for note in notes:
        print("  n/a:", note)
    print("paper (Fig. 5, GPU with xformers): Flash Swin 35% faster at k=16, 52% at k=32")


if __name__ == "__main__":
    main()
