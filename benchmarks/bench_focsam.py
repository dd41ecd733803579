"""FocSAM costs side by side from one run: refiner overhead per click vs SAM's decoder alone,
Dwin cost vs the number of selected windows, and the DCNv2 reference vs the Triton kernel.

* **Per-click overhead** (FocSAM §4.2 / Table 1: "adding only about 10 % computational costs"): the
  paper's 256-d decoder and refiner (12 blocks, window 16, 8 heads) on 64 × 64 embeddings
  (a 1024-px input), untrained weights. The refiner runs once per object (at the 2nd click), so
  over a 20-click session its cost per click is ``refiner / 20``; printed both ways.
* **Dwin scaling**: one refine block with a focus box covering 1..16 of the 16 windows; the time
  should grow about linearly with the selected windows (work is done only on them).
* **DCN**: the grid-sample im2col reference vs the Triton kernel, forward + backward, on the
  refiner's window batch (CUDA only; skipped with the reason on CPU).

    python benchmarks/bench_focsam.py --iters 3            # CPU: overhead + Dwin scaling
    python benchmarks/bench_focsam.py --device cuda        # all three
"""
from __future__ import annotations

import argparse

import torch

from segblocks.blocks.focsam import FocusRefiner, RefineBlock, focus_box_mask
from segblocks.models.sam.sam import sam_vit_b_decoder
from segblocks.ops._dispatch import triton_usable
from segblocks.ops.deform_conv import modulated_deform_conv2d
from _timing import time_ms  # benchmarks/_timing.py (the script folder is on sys.path)

__all__ = ["main"]


def overhead(device: torch.device, iters: int, clicks: int) -> None:
    torch.manual_seed(0)
    dec = sam_vit_b_decoder().to(device).eval()
    ref = FocusRefiner().to(device).eval()
    emb = torch.randn(1, 256, 64, 64, device=device)
    pts = torch.tensor([[[300.5, 400.5], [500.5, 520.5]]], device=device)
    lab = torch.tensor([[1, 0]], device=device)
    pe = dec.prompt_encoder.get_dense_pe((64, 64))
    with torch.no_grad():
        prompts = dec.prompt_encoder(pts, lab, image_embedding_size=(64, 64), masks=None)
        out = dec.mask_decoder(emb, pe, prompts)
        logits = torch.full_like(out.masks, -5.0)
        logits[..., 60:140, 80:170] = 5.0  # an object of about 20 % x 22 % of the image

        def decode():
            p = dec.prompt_encoder(pts, lab, image_embedding_size=(64, 64), masks=logits)
            return dec.mask_decoder(emb, pe, p)

        t_dec = time_ms(decode, device, iters)
        t_ref = time_ms(lambda: ref(emb, logits, out.mask_tokens, (1024, 1024)), device, iters)
        grid = torch.nn.functional.adaptive_max_pool2d(focus_box_mask(logits, (1024, 1024)), (64, 64))
        n_sel = ref.blocks[0].dwin.partition(emb, grid).index.numel()
        full = torch.ones_like(logits)
        t_full = time_ms(lambda: ref(emb, full, out.mask_tokens, (1024, 1024)), device, iters)
    print(f"== per-click cost on {device} (256-d decoder, 12-block refiner, 64x64 embeddings)")
    print(f"{'SAM decoder per click':<44}{t_dec:10.2f} ms")
    print(f"{f'refiner once, object box ({n_sel} of 16 windows)':<44}{t_ref:10.2f} ms   = {t_ref / t_dec:6.2f}x one decode")
    print(f"{'refiner once, whole image (16 windows)':<44}{t_full:10.2f} ms   = {t_full / t_dec:6.2f}x one decode")
    amortised = (clicks * t_dec + t_dec + t_ref) / clicks  # one extra (coarse) decode at the refine step
    print(f"{f'FocSAM per click over {clicks} clicks':<44}{amortised:10.2f} ms   = {amortised / t_dec:6.2f}x SAM's decoder")


def dwin_scaling(device: torch.device, iters: int) -> None:
    torch.manual_seed(0)
    blk = RefineBlock().to(device).eval()
    x = torch.randn(1, 256, 64, 64, device=device)
    q = torch.randn(1, 1, 256, device=device)
    print(f"== Dwin cost vs selected windows on {device} (one plain refine block, 4x4 windows of 16)")
    base = None
    with torch.no_grad():
        for n in (1, 2, 4, 8, 16):
            box = torch.zeros(1, 1, 64, 64, device=device)
            for w in range(n):
                r, c = divmod(w, 4)
                box[..., r * 16, c * 16] = 1
            t = time_ms(lambda: blk(x, q, box), device, iters)
            base = base or t
            print(f"{n:3d} windows{t:10.2f} ms   {t / base:6.2f}x the 1-window time (linear: {n}x)")


def dcn(device: torch.device, iters: int) -> None:
    reasons = triton_usable(device)
    if device.type != "cuda" or reasons:
        print(f"== DCN reference vs Triton: skipped ({'; '.join(reasons) or 'needs CUDA; the CPU interpreter is a test tool'})")
        return
    torch.manual_seed(0)
    x = torch.randn(9, 256, 16, 16, device=device, requires_grad=True)
    off = torch.randn(9, 18, 16, 16, device=device, requires_grad=True)
    m = torch.rand(9, 9, 16, 16, device=device, requires_grad=True)
    w = torch.randn(256, 256, 3, 3, device=device, requires_grad=True)
    print(f"== DCNv2 forward+backward on {device}, 9 windows x 256 x 16 x 16 (one refine block's DeformLayer)")
    times = {}
    for backend in ("pytorch", "triton"):
        def step():
            y = modulated_deform_conv2d(x, off, m, w, padding=1, backend=backend)
            torch.autograd.grad(y.sum(), (x, off, m, w))
        times[backend] = time_ms(step, device, iters)
    print(f"{'reference (grid_sample)':<28}{times['pytorch']:10.2f} ms")
    print(f"{'triton':<28}{times['triton']:10.2f} ms   speed-up {times['pytorch'] / times['triton']:5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--clicks", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    overhead(device, args.iters, args.clicks)
    dwin_scaling(device, args.iters)
    dcn(device, args.iters)


if __name__ == "__main__":
    main()
