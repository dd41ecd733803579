"""Time the selective scan: chunked vs sequential reference (and mamba-ssm on CUDA), side by side.

Shapes follow HRSAM's Cycle-scan: ``D`` channels (768 for ViT-B), state ``N = 32`` (supp. D.2),
and a cycled sequence of ``R · tokens`` (R = 3; 196 tokens = a 224² image at stride 16; 4096 =
1024²). All backends are timed in the same run on the same inputs and the ratios are printed.
On CPU the mamba kernel is skipped (it needs CUDA and ``mamba_ssm``).

    python benchmarks/bench_selective_scan.py --dim 768 --tokens 196
    python benchmarks/bench_selective_scan.py --dim 96 --state 16 --tokens 256 --threads 1
"""
from __future__ import annotations

import argparse

import torch

from segblocks.ops._dispatch import module_available
from segblocks.ops.selective_scan import selective_scan
from _timing import time_ms  # benchmarks/_timing.py (the script folder is on sys.path)

__all__ = ["main"]


def _inputs(batch: int, dim: int, state: int, length: int, dtype: torch.dtype, device: torch.device):
    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, dtype=dtype)

    u = rand(batch, dim, length).requires_grad_()
    delta = rand(batch, dim, length).requires_grad_()
    A = -torch.arange(1, state + 1, device=device, dtype=torch.float32).repeat(dim, 1).requires_grad_()
    B, C = rand(batch, 1, state, length).requires_grad_(), rand(batch, 1, state, length).requires_grad_()
    D = torch.ones(dim, device=device, requires_grad=True)
    delta_bias = torch.full((dim,), -3.0, device=device, requires_grad=True)  # softplus ≈ 0.05, Mamba's range
    return u, delta, A, B, C, D, None, delta_bias, True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dim", type=int, default=768, help="channels D")
    parser.add_argument("--state", type=int, default=32, help="state size N")
    parser.add_argument("--tokens", type=int, default=196, help="tokens per image before cycling")
    parser.add_argument("--repeats", type=int, default=3, help="Cycle-scan's R")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    length = args.repeats * args.tokens
    inputs = _inputs(args.batch, args.dim, args.state, length, dtype, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name} | dtype {args.dtype} | u (B, D, L) = {(args.batch, args.dim, length)} | N = {args.state}")
    backends = ["reference", "chunked"]
    if device.type == "cuda" and module_available("mamba_ssm"):
        backends.append("mamba")
    else:
        print("mamba: skipped (needs CUDA and mamba_ssm)")
    grad = torch.randn(args.batch, args.dim, length, device=device, dtype=dtype)
    results = {}
    for backend in backends:
        fwd = time_ms(lambda: selective_scan(*inputs, backend=backend), device, args.iters)
        fwd_bwd = time_ms(lambda: selective_scan(*inputs, backend=backend).backward(grad), device, args.iters)
        results[backend] = (fwd, fwd_bwd)
        print(f"{backend:>9}: forward {fwd:9.2f} ms | forward+backward {fwd_bwd:9.2f} ms")
    rf, rb = results["reference"]
    for backend in backends[1:]:
        f, b = results[backend]
        print(f"speed-up {backend} vs reference: forward x{rf / f:.2f} | forward+backward x{rb / b:.2f}")


if __name__ == "__main__":
    main()
