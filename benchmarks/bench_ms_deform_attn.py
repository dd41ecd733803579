"""Time the MSDeformAttn core: grid_sample reference vs Triton kernel, side by side.

Shapes follow Mask2Former's pixel-decoder encoder (self-attention over res5..res3 of a square
image: 3 levels at strides 32/16/8, M=8 heads of D=32, P=4 points, Lq = S). On CUDA both backends
are timed in the same run and the speed-up is printed; on CPU only the reference is timed (the
Triton kernel needs CUDA; the CPU interpreter is a test tool, not a fast path).

    python benchmarks/bench_ms_deform_attn.py --batch 2 --image 512 --dtype float16
"""
from __future__ import annotations

import argparse

import torch

from segblocks.ops.ms_deform_attn import ms_deform_attn
from _timing import time_ms  # benchmarks/_timing.py (the script folder is on sys.path)

__all__ = ["main"]


def _inputs(batch: int, image: int, dtype: torch.dtype, device: torch.device):
    shapes = [(image // s, image // s) for s in (32, 16, 8)]
    spatial_shapes = torch.tensor(shapes, dtype=torch.long, device=device)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat((sizes.new_zeros(1), sizes.cumsum(0)[:-1]))
    S, M, D, L, P = int(sizes.sum()), 8, 32, len(shapes), 4
    value = torch.randn(batch, S, M, D, device=device, dtype=dtype, requires_grad=True)
    loc = torch.rand(batch, S, M, L, P, 2, device=device, dtype=dtype, requires_grad=True)
    attn = torch.rand(batch, S, M, L, P, device=device, dtype=dtype).softmax(-1).requires_grad_()
    return value, spatial_shapes, level_start_index, loc, attn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--image", type=int, default=512, help="square input size in pixels")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    inputs = _inputs(args.batch, args.image, dtype, device)
    B, _, M, D = inputs[0].shape
    grad = torch.randn(B, inputs[3].shape[1], M * D, device=device, dtype=dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name} | dtype {args.dtype} | value {tuple(inputs[0].shape)} | locations {tuple(inputs[3].shape)}")
    backends = ["pytorch", "triton"] if device.type == "cuda" else ["pytorch"]
    if device.type != "cuda":
        print("triton: skipped (needs CUDA)")
    results = {}
    for backend in backends:
        fwd = time_ms(lambda: ms_deform_attn(*inputs, backend=backend), device, args.iters)
        fwd_bwd = time_ms(lambda: ms_deform_attn(*inputs, backend=backend).backward(grad), device, args.iters)
        results[backend] = (fwd, fwd_bwd)
        print(f"{backend:>8}: forward {fwd:8.3f} ms | forward+backward {fwd_bwd:8.3f} ms")
    if "triton" in results:
        (rf, rb), (tf, tb) = results["pytorch"], results["triton"]
        print(f"speed-up triton vs pytorch: forward x{rf / tf:.2f} | forward+backward x{rb / tb:.2f}")


if __name__ == "__main__":
    main()
