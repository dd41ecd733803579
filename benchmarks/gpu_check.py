"""One GPU check: every Triton kernel's error and speed vs its reference and its natural peer.

Prints one table (run it whenever a GPU is lent; designed to finish in well under 8 minutes on
one GPU). Rows:

* ``msda fwd`` / ``msda fwd+bwd``: :func:`segblocks.ops.ms_deform_attn.ms_deform_attn`, Triton vs
  the ``pytorch`` (``grid_sample``) reference, Deformable DETR-sized inputs (Mask2Former encoder
  level shapes at 800×1344, 8 heads, 32 channels, 4 points); peer: none installed by default
  (the CUDA extension ``MultiScaleDeformableAttention`` of the Deformable DETR repository).
  Target (issue): Triton ≥ 5× the reference, forward+backward.
* ``varlen fwd`` / ``varlen fwd+bwd``: :func:`segblocks.ops.varlen_attention.varlen_attention`,
  Triton vs the ``reference`` loop, on Flash Swin windows (64×64 tokens, k = 16, shift 8, 12
  heads, D = 64); peers: xformers ``BlockDiagonalMask`` and SDPA over the windows (``grouped``).
  Target: Triton ≥ 1.0× xformers in bf16.
* ``scan fwd+bwd``: :func:`segblocks.ops.selective_scan.selective_scan`, ``chunked`` vs the
  ``reference``; peer: mamba-ssm.
* ``hmoe gemm fwd`` / ``fwd+bwd``: :func:`segblocks.ops.grouped_gemm.grouped_gemm` (Inter2Former
  §3.6 HMoE experts), Triton vs the per-group ``loop`` reference; peer: one padded ``bmm``.
  Sizes: 16 experts, 8192 edge tokens routed unevenly, 256 → 1024.
* ``dcnv2 fwd`` / ``fwd+bwd``: :func:`segblocks.ops.deform_conv.modulated_deform_conv2d` (FocSAM
  refine blocks), Triton im2col vs the ``pytorch`` (grid_sample im2col) path; 256 channels, 3×3,
  64×64 map, batch 2; peer: none installed by default (mmcv ``ModulatedDeformConv2d``).
* ``bsqa`` (inference): Inter2Former's BSQAttention exact ``O(N·2^S)`` inference form vs the
  training form (softmax over the quantized keys through ``varlen_attention``), same weights:
  ``max err`` between the two, ``x ref`` = training-form time / exact time; 4096 queries, 1024
  keys, D = 32, S = 8.
* ``hrsam 1024`` / ``hrsam 2048``: the HRSAM encoder forward (fp16/bf16 autocast-free, weights
  in the dtype) with each varlen backend; ratio vs ``grouped`` SDPA.

Columns: ``max err`` = max |kernel - reference| (fp64 reference values for the kernels), time
of the kernel, ``x ref`` = reference time / kernel time, ``x peer`` = peer time / kernel time.
Everything skipped says why.

    python benchmarks/gpu_check.py              # on a GPU
    python benchmarks/gpu_check.py --dry-run    # print the plan and exit (any machine)
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Callable

import torch

DTYPES = ("float32", "float16", "bfloat16")
PLAN = [
    ("msda", "Triton MSDA fwd and fwd+bwd vs grid_sample reference; peer: MultiScaleDeformableAttention (CUDA ext)"),
    ("varlen", "Triton varlen attention fwd and fwd+bwd vs reference; peers: xformers BlockDiagonalMask, SDPA (grouped)"),
    ("scan", "selective_scan chunked vs reference; peer: mamba-ssm"),
    ("gemm", "HMoE grouped GEMM fwd and fwd+bwd: Triton vs per-group loop reference; peer: padded bmm"),
    ("dcn", "DCNv2 fwd and fwd+bwd: Triton im2col vs pytorch grid_sample im2col; peer: mmcv (not installed)"),
    ("bsqa", "BSQA: exact inference form vs train-mode softmax over quantized keys (error and speed)"),
    ("hrsam", "HRSAM encoder forward at 1024² and 2048² with each varlen backend (xformers, triton, flex, grouped, padded)"),
]


def _time(fn: Callable[[], object], iters: int) -> float:
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters * 1e3


def _fmt(v, spec: str) -> str:
    return format(v, spec) if isinstance(v, float) else str(v)


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple] = []

    def add(self, check: str, dtype: str, err="", ms="", x_ref="", x_peer="", note="") -> None:
        self.rows.append((check, dtype, err, ms, x_ref, x_peer, note))

    def print(self) -> None:
        print(f"{'check':<22} {'dtype':<9} {'max err':>9} {'ms':>9} {'x ref':>7} {'x peer':>7}  note")
        for c, d, e, m, r, p, n in self.rows:
            print(f"{c:<22} {d:<9} {_fmt(e, '9.2e'):>9} {_fmt(m, '9.3f'):>9} {_fmt(r, '7.2f'):>7} {_fmt(p, '7.2f'):>7}  {n}")


def _skip(table: Table, check: str, why: str) -> None:
    table.add(check, "-", note=f"skipped: {why}")


def check_msda(table: Table, iters: int) -> None:
    from segblocks.ops.ms_deform_attn import ms_deform_attn

    dev = torch.device("cuda")
    shapes = [(25, 42), (50, 84), (100, 168)]  # Python level shapes: no host sync per call
    starts = None  # derived from the shapes
    S = sum(h * w for h, w in shapes)
    Lq, M, D, L, P = S, 8, 32, 3, 4
    for name in DTYPES:
        dtype = getattr(torch, name)
        try:
            value = torch.randn(1, S, M, D, device=dev, dtype=dtype, requires_grad=True)
            loc = torch.rand(1, Lq, M, L, P, 2, device=dev, dtype=dtype, requires_grad=True)
            w = torch.softmax(torch.randn(1, Lq, M, L * P, device=dev), -1).view(1, Lq, M, L, P).to(dtype).requires_grad_()
            ref64 = ms_deform_attn(value.double(), shapes, starts, loc.double(), w.double(), backend="pytorch")
            out = ms_deform_attn(value, shapes, starts, loc, w, backend="triton")
            err = (out.double() - ref64).abs().max().item()
            g = torch.randn_like(out)
            grads = torch.autograd.grad(out, (value, loc, w), g)
            grads64 = torch.autograd.grad(ref64, (value, loc, w), g.double())
            gerr = max((a.double() - b).abs().max().item() for a, b in zip(grads, grads64))
            for what, fn in (("fwd", lambda b: ms_deform_attn(value, shapes, starts, loc, w, backend=b)),
                             ("fwd+bwd", lambda b: ms_deform_attn(value, shapes, starts, loc, w, backend=b).backward(g))):
                t_k, t_r = _time(lambda: fn("triton"), iters), _time(lambda: fn("pytorch"), iters)
                table.add(f"msda {what}", name, err if what == "fwd" else gerr, t_k, t_r / t_k, "",
                          "peer skipped: MultiScaleDeformableAttention CUDA extension not used by segblocks")
        except Exception as exc:  # noqa: BLE001 - report and go on
            table.add("msda", name, note=f"failed: {type(exc).__name__}: {str(exc)[:120]}")


def check_varlen(table: Table, iters: int) -> None:
    from segblocks.ops._dispatch import module_available
    from segblocks.ops.fla_mapping import shift_window_mapping
    from segblocks.ops.varlen_attention import varlen_attention

    dev = torch.device("cuda")
    m = shift_window_mapping(64, 64, 16, 8, device=dev)
    n, H, D = m.num_tokens, 12, 64
    for name in DTYPES:
        dtype = getattr(torch, name)
        try:
            q, k, v = (torch.randn(n, H, D, device=dev, dtype=dtype, requires_grad=True) for _ in range(3))
            ref64 = varlen_attention(q.double(), k.double(), v.double(), m.seqlens, backend="reference")
            out = varlen_attention(q, k, v, m.seqlens, backend="triton")
            err = (out.double() - ref64).abs().max().item()
            g = torch.randn_like(out)
            grads = torch.autograd.grad(out, (q, k, v), g)
            grads64 = torch.autograd.grad(ref64, (q, k, v), g.double())
            gerr = max((a.double() - b).abs().max().item() for a, b in zip(grads, grads64))

            def run(b, bwd):
                o = varlen_attention(q, k, v, m.seqlens, backend=b)
                if bwd:
                    o.backward(g)

            for what, bwd in (("fwd", False), ("fwd+bwd", True)):
                t_k = _time(lambda: run("triton", bwd), iters)
                t_r = _time(lambda: run("reference", bwd), max(1, iters // 4))
                t_g = _time(lambda: run("grouped", bwd), iters)
                note = f"SDPA grouped x{t_g / t_k:.2f}"
                x_peer = ""
                if module_available("xformers"):
                    try:
                        t_x = _time(lambda: run("xformers", bwd), iters)
                        x_peer = t_x / t_k
                    except Exception as exc:  # noqa: BLE001
                        note += f"; xformers failed: {type(exc).__name__}"
                else:
                    note += "; xformers skipped: not installed"
                table.add(f"varlen {what}", name, err if not bwd else gerr, t_k, t_r / t_k, x_peer, note)
        except Exception as exc:  # noqa: BLE001
            table.add("varlen", name, note=f"failed: {type(exc).__name__}: {str(exc)[:120]}")


def check_scan(table: Table, iters: int) -> None:
    from segblocks.ops._dispatch import module_available
    from segblocks.ops.selective_scan import selective_scan

    dev = torch.device("cuda")
    b, d, n, length = 1, 768, 16, 4096
    try:
        args = [torch.randn(b, d, length, device=dev), torch.rand(b, d, length, device=dev) * 0.1,
                -torch.rand(d, n, device=dev), torch.randn(b, n, length, device=dev), torch.randn(b, n, length, device=dev)]
        args = [a.requires_grad_() for a in args]
        ref = selective_scan(*[a.double() for a in args], backend="chunked")
        out = selective_scan(*args, backend="chunked")
        err = (out.double() - ref).abs().max().item()

        def run(bk):
            selective_scan(*args, backend=bk).sum().backward()

        t_c = _time(lambda: run("chunked"), iters)
        peer, note = "", "mamba-ssm skipped: not installed"
        if module_available("mamba_ssm"):
            t_m = _time(lambda: run("mamba"), iters)
            peer, note = t_m / t_c, ""
        table.add("scan fwd+bwd (chunked)", "float32", err, t_c, "", peer,
                  note + ("; " if note else "") + "no Triton scan kernel; error vs chunked in float64")
    except Exception as exc:  # noqa: BLE001
        table.add("scan", "float32", note=f"failed: {type(exc).__name__}: {str(exc)[:120]}")


def _errors(out, ref64, inputs, g) -> tuple[float, float]:
    """Max |out - ref64| and max gradient error w.r.t. ``inputs`` (float64 reference)."""
    err = (out.double() - ref64).abs().max().item()
    grads = torch.autograd.grad(out, inputs, g)
    grads64 = torch.autograd.grad(ref64, inputs, g.double())
    return err, max((a.double() - b).abs().max().item() for a, b in zip(grads, grads64))


def check_gemm(table: Table, iters: int) -> None:
    from segblocks.ops.grouped_gemm import grouped_gemm

    dev = torch.device("cuda")
    E, M, K, N = 16, 8192, 256, 1024
    counts = torch.distributions.Dirichlet(torch.ones(E)).sample() * M  # uneven routing
    counts = counts.floor().long()
    counts[-1] += M - counts.sum()
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(dev)  # E + 1
    for name in DTYPES:
        dtype = getattr(torch, name)
        try:
            x = torch.randn(M, K, device=dev, dtype=dtype, requires_grad=True)
            w = (torch.randn(E, N, K, device=dev, dtype=dtype) * K ** -0.5).requires_grad_()
            b = torch.randn(E, N, device=dev, dtype=dtype, requires_grad=True)
            out = grouped_gemm(x, offsets, w, b, backend="triton")
            ref64 = grouped_gemm(x.double(), offsets, w.double(), b.double(), backend="loop")
            g = torch.randn_like(out)
            err, gerr = _errors(out, ref64, (x, w, b), g)

            def run(bk, bwd):
                o = grouped_gemm(x, offsets, w, b, backend=bk)
                if bwd:
                    o.backward(g)

            for what, bwd in (("fwd", False), ("fwd+bwd", True)):
                t_k = _time(lambda: run("triton", bwd), iters)
                t_r = _time(lambda: run("loop", bwd), iters)
                t_p = _time(lambda: run("bmm", bwd), iters)
                table.add(f"hmoe gemm {what}", name, gerr if bwd else err, t_k, t_r / t_k, t_p / t_k,
                          "ref = per-group loop, peer = padded bmm")
        except Exception as exc:  # noqa: BLE001 - report and go on
            table.add("hmoe gemm", name, note=f"failed: {type(exc).__name__}: {str(exc)[:120]}")


def check_dcn(table: Table, iters: int) -> None:
    from segblocks.ops.deform_conv import modulated_deform_conv2d

    dev = torch.device("cuda")
    B, C, H, W = 2, 256, 64, 64
    for name in DTYPES:
        dtype = getattr(torch, name)
        try:
            x = torch.randn(B, C, H, W, device=dev, dtype=dtype, requires_grad=True)
            off = (torch.randn(B, 18, H, W, device=dev, dtype=dtype) * 2).requires_grad_()
            mask = torch.rand(B, 9, H, W, device=dev, dtype=dtype, requires_grad=True)
            w = (torch.randn(C, C, 3, 3, device=dev, dtype=dtype) * (9 * C) ** -0.5).requires_grad_()

            def run(bk, bwd, cast=None):
                args = (x, off, mask, w) if cast is None else tuple(t.to(cast) for t in (x, off, mask, w))
                o = modulated_deform_conv2d(*args, padding=1, backend=bk)
                if bwd:
                    o.backward(g)
                return o

            out = run("triton", False)
            ref64 = run("pytorch", False, torch.float64)
            g = torch.randn_like(out)
            err, gerr = _errors(out, ref64, (x, off, mask, w), g)
            for what, bwd in (("fwd", False), ("fwd+bwd", True)):
                t_k = _time(lambda: run("triton", bwd), iters)
                t_r = _time(lambda: run("pytorch", bwd), iters)
                table.add(f"dcnv2 {what}", name, gerr if bwd else err, t_k, t_r / t_k, "",
                          "ref = grid_sample im2col; peer skipped: mmcv not installed")
        except Exception as exc:  # noqa: BLE001
            table.add("dcnv2", name, note=f"failed: {type(exc).__name__}: {str(exc)[:120]}")


def check_bsqa(table: Table, iters: int) -> None:
    from segblocks.blocks.inter2former.bsqa import BSQAttention

    dev = torch.device("cuda")
    nq, nk, D = 4096, 1024, 32
    for name in DTYPES:
        dtype = getattr(torch, name)
        try:
            attn = BSQAttention(head_dim=D, code_size=8).to(dev, dtype).eval()
            q, k, v = (torch.randn(n, 1, D, device=dev, dtype=dtype) for n in (nq, nk, nk))
            with torch.no_grad():
                exact, _ = attn(q, k, v, [nq], [nk], exact=True)
                soft64, _ = attn.double()(q.double(), k.double(), v.double(), [nq], [nk], exact=False)
                attn.to(dtype)
                err = (exact.double() - soft64).abs().max().item()
                t_e = _time(lambda: attn(q, k, v, [nq], [nk], exact=True), iters)
                t_s = _time(lambda: attn(q, k, v, [nq], [nk], exact=False), iters)
            table.add("bsqa inference", name, err, t_e, t_s / t_e, "",
                      "err = exact vs float64 train-mode softmax; x ref = train-mode time / exact time")
        except Exception as exc:  # noqa: BLE001
            table.add("bsqa", name, note=f"failed: {type(exc).__name__}: {str(exc)[:120]}")


def check_hrsam(table: Table, iters: int) -> None:
    from segblocks.blocks.hrsam_attention import FlexibleLocalAttention
    from segblocks.models.hrsam.encoder import HRSAMEncoder

    dev = torch.device("cuda")
    for size in (1024, 2048):
        for name in ("bfloat16",):
            dtype = getattr(torch, name)
            enc = HRSAMEncoder().to(dev, dtype).eval()
            x = torch.randn(1, 3, size, size, device=dev, dtype=dtype)
            times = {}
            for backend in ("grouped", "xformers", "triton", "flex", "padded"):
                for mod in enc.modules():
                    if isinstance(mod, FlexibleLocalAttention):
                        mod.backend = backend
                try:
                    with torch.no_grad():
                        times[backend] = _time(lambda: enc(x), max(1, iters // 4))
                except Exception as exc:  # noqa: BLE001
                    table.add(f"hrsam {size} {backend}", name, note=f"skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}")
                    continue
                table.add(f"hrsam {size} {backend}", name, "", times[backend],
                          times.get("grouped", times[backend]) / times[backend], "", "x ref = grouped SDPA / backend")
            del enc
            torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--only", nargs="+", choices=[p[0] for p in PLAN], default=None)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args(argv)
    plan = [p for p in PLAN if args.only is None or p[0] in args.only]
    print("gpu_check plan:")
    for key, what in plan:
        print(f"  {key:<7} {what}")
    if args.dry_run:
        print("dry run: nothing executed")
        return 0
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check here (run on a GPU machine; --dry-run prints the plan)")
        return 0
    print(f"device: {torch.cuda.get_device_name()} | torch {torch.__version__}")
    table = Table()
    checks = {"msda": check_msda, "varlen": check_varlen, "scan": check_scan, "gemm": check_gemm, "dcn": check_dcn,
              "bsqa": check_bsqa, "hrsam": check_hrsam}
    from segblocks.ops._dispatch import module_available

    for key, _ in plan:
        if key in ("msda", "varlen", "gemm", "dcn") and not module_available("triton"):
            _skip(table, key, "triton is not installed")
            continue
        start = time.perf_counter()
        checks[key](table, args.iters)
        print(f"  {key}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    table.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
