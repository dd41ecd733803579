"""Inter2Former's efficiency analysis (Fig. 3) as ratios from one run, plus BSQA and per-click latency.

All with the paper's 256-d decoder sizes at a 1024² input (64 x 64 tokens), untrained weights,
``torch.no_grad``, eval mode:

* **(a) DPE vs Non-DPE** (same convolutions on the whole map) at object-area ratios 0.02-1.0;
* **(b) DHA latency** vs area ratio (edge tokens = the object's boundary band, Eq. 4);
* **(c) HMoE grouped** (one argsort, contiguous groups, the expert FFN as padded batched matmuls
  or per-group ``addmm``) vs the vanilla per-expert loop with boolean masks, 4-64 experts, at 256
  (typical) and 1024 edge tokens (paper: -56 to -85 %);
* **(d) DLU vs Non-DLU** (full upsampling) at the same area ratios;
* **BSQA** exact inference form vs full softmax attention, N = 1k-16k tokens;
* **online per-click latency**: Inter2Former's decoder (DPE, 2 x DHA/HMoE, DLU, M_ref update) vs
  SAM ViT-B's prompt encoder + mask decoder (paper Table 1: 50 vs 40 ms, about 1.25x).

    python benchmarks/bench_inter2former.py      # all cores; writes benchmarks/figures/inter2former_fig3.png
    OMP_NUM_THREADS=1 python benchmarks/bench_inter2former.py --skip fig3 bsqa online   # (c) on one thread
    python benchmarks/bench_inter2former.py --device cuda --iters 20 --plot fig3_cuda.png

``--clock cpu`` (the default for a single-threaded CPU run) times the calling thread's CPU time
(``time.thread_time``), so other processes sharing the cores do not inflate one side of a ratio;
``--clock wall`` times wall-clock. The header prints threads, clock and the load average.
"""
from __future__ import annotations

import argparse
import functools
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from segblocks.blocks.inter2former import (
    BSQAttention,
    CannyNet,
    DynamicHybridAttention,
    DynamicLocalUpsampling,
    DynamicPromptEmbedding,
    HybridMoE,
    select_edge_tokens,
)
from segblocks.models.inter2former.model import Inter2FormerBlock, Inter2FormerNeck
from segblocks.models.sam.sam import sam_vit_b_decoder
from _timing import time_ms as _time_ms  # benchmarks/_timing.py (the script folder is on sys.path)

__all__ = ["main"]

RATIOS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
#: HMoE (c) edge-token counts: the GrabCut objects at 1024² select 79-425 of the 4096 tokens
#: (median 212; Eq. 4 on the ground-truth masks, printed by ``--grabcut``), so 256 is typical and
#: 1024 (a quarter of all tokens) a worst case.
MOE_TOKENS = (256, 1024)
#: routing draws per (c) setting: the padded batch's cost follows the largest group, which varies
#: by draw (8-12 of 256 tokens over 64 experts), so (c) reports the median over draws.
MOE_DRAWS = 5
GRABCUT = Path(__file__).resolve().parents[2] / "shared" / "data" / "GrabCut"
S = 1024
FIGURE = Path(__file__).resolve().parent / "figures" / "inter2former_fig3.png"
time_ms = _time_ms  # rebound in main() with the chosen clock


def object_ref(ratio: float, device) -> torch.Tensor:
    """``(1, S, S)`` M_ref: POSSIBLE_BG, a centred square object of ``ratio`` area as POSSIBLE_FG, a click disk."""
    ref = torch.ones(1, S, S, dtype=torch.uint8, device=device)
    side = max(int(S * ratio ** 0.5), 16)
    y0 = x0 = (S - side) // 2
    ref[0, y0:y0 + side, x0:x0 + side] = 3
    c = S // 2
    ref[0, c - 5:c + 6, c - 5:c + 6] = 4
    return ref


def fig3(device, iters):
    torch.manual_seed(0)
    res = {"ratio": RATIOS, "dpe": [], "nondpe": [], "dha": [], "dlu": [], "nondlu": []}
    dpe = DynamicPromptEmbedding().to(device).eval()
    dha = DynamicHybridAttention().to(device).eval()
    dlu = DynamicLocalUpsampling().to(device).eval()
    x = torch.randn(1, 4096, 256, device=device)
    feat = torch.randn(1, 256, 64, 64, device=device)
    edges = [torch.randn(1, c, 64 * 2 ** (j + 1), 64 * 2 ** (j + 1), device=device) for j, c in enumerate((256, 64, 16, 4))]
    with torch.no_grad():
        for r in RATIOS:
            ref = object_ref(r, device)
            dpe.local = True
            res["dpe"].append(time_ms(lambda: dpe(ref), device, iters))
            dpe.local = False
            res["nondpe"].append(time_ms(lambda: dpe(ref), device, iters))
            sel = select_edge_tokens(ref, (64, 64))
            res["dha"].append(time_ms(lambda: dha(x, (64, 64), sel), device, iters))
            coarse = torch.where(F.max_pool2d((ref[:, None] == 3).float(), 16) > 0, 5.0, -10.0)
            dlu.mlp.forward = lambda t, c=coarse: c  # the coarse map of this object
            dlu.local = True
            res["dlu"].append(time_ms(lambda: dlu(feat, edges), device, iters))
            dlu.local = False
            res["nondlu"].append(time_ms(lambda: dlu(feat, edges), device, iters))
    print(f"== Fig. 3 (a, b, d) on {device}, 1024² input (64x64 tokens), ms")
    print(f"{'area':>6} {'DPE':>8} {'Non-DPE':>8} {'ratio':>6} | {'DHA':>8} | {'DLU':>8} {'Non-DLU':>8} {'ratio':>6}")
    for i, r in enumerate(RATIOS):
        print(f"{r:6.2f} {res['dpe'][i]:8.2f} {res['nondpe'][i]:8.2f} {res['dpe'][i] / res['nondpe'][i]:6.2f} | "
              f"{res['dha'][i]:8.2f} | {res['dlu'][i]:8.2f} {res['nondlu'][i]:8.2f} {res['dlu'][i] / res['nondlu'][i]:6.2f}")
    return res


def grabcut_edge_tokens(root) -> list[int]:
    """Edge tokens (Eq. 4) of every GrabCut object at 1024² with its ground truth as the previous
    mask (long side resized to 1024, nearest, zero padding): the token counts HMoE routes."""
    from segblocks.data.interactive.benchmarks import BenchmarkDataset
    from segblocks.interactive.ref_label import RefLabel

    counts = []
    for sample in BenchmarkDataset(root=root, layout="grabcut"):
        mask = sample["mask"][None, None].float()  # 1 x 1 x h x w
        h, w = mask.shape[-2:]
        size = (round(h * S / max(h, w)), round(w * S / max(h, w)))
        obj = F.interpolate(mask, size=size, mode="nearest")[0, 0] > 0.5  # h' x w'
        ref = torch.full((1, S, S), int(RefLabel.POSSIBLE_BG), dtype=torch.uint8)
        ref[0, :size[0], :size[1]][obj] = int(RefLabel.POSSIBLE_FG)
        counts.append(int(select_edge_tokens(ref, (S // 16, S // 16)).lengths[0]))
    counts.sort()
    print(f"== GrabCut edge tokens at {S}² ({len(counts)} objects, Eq. 4): min {counts[0]}  "
          f"median {counts[len(counts) // 2]}  max {counts[-1]} of {(S // 16) ** 2}")
    return counts


def hmoe(device, iters, tokens=MOE_TOKENS, draws=MOE_DRAWS):
    torch.manual_seed(0)
    iters = max(iters, 30)  # sub-millisecond calls: more repeats for a stable median
    out = {"experts": (4, 8, 16, 32, 64), "tokens": tokens}
    print(f"== Fig. 3 (c) HMoE routed experts on {device}: edge tokens routed uniformly at random "
          f"(median over {draws} routings; L_max = the largest expert group), hidden 512 split over E experts, ms")
    with torch.no_grad():
        for n in tokens:
            x = torch.randn(n, 256, device=device)
            out[n] = {"grouped": [], "vanilla": []}
            for E in out["experts"]:
                m = HybridMoE(num_experts=E).to(device).eval()
                g, v, L = [], [], []
                for _ in range(draws):
                    a = torch.randint(0, E, (n,), device=device)
                    L.append(int(torch.bincount(a, minlength=E).max()))
                    g.append(time_ms(lambda: m.experts(x, a), device, iters))
                    v.append(time_ms(lambda: m.experts_vanilla(x, a), device, iters))
                g, v = sorted(g)[draws // 2], sorted(v)[draws // 2]
                out[n]["grouped"].append(g)
                out[n]["vanilla"].append(v)
                print(f"tokens={n:5d} E={E:3d} L_max {min(L):3d}-{max(L):<3d} grouped {g:8.3f}  vanilla {v:8.3f}  "
                      f"speed-up {v / g:6.2f}x  latency reduction {100 * (1 - g / v):5.1f} %")
    return out


def bsqa(device, iters):
    torch.manual_seed(0)
    m = BSQAttention(head_dim=32).to(device).eval()
    out = {"n": (1024, 4096, 16384), "bsqa": [], "full": []}
    print(f"== BSQA exact inference vs full softmax attention on {device} (1 head, 32-d), ms")
    with torch.no_grad():
        for n in out["n"]:
            q, k, v = (torch.randn(n, 1, 32, device=device) for _ in range(3))
            out["bsqa"].append(time_ms(lambda: m(q, k, v, [n], [n], exact=True), device, iters))
            full = lambda: F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1))  # noqa: E731
            out["full"].append(time_ms(full, device, iters))
            b, f = out["bsqa"][-1], out["full"][-1]
            print(f"N={n:6d}  BSQA {b:9.2f}  full {f:9.2f}  speed-up {f / b:6.2f}x")
    return out


def online(device, iters):
    torch.manual_seed(0)
    neck = Inter2FormerNeck(dpe=DynamicPromptEmbedding(),
                            blocks=[Inter2FormerBlock(attn=DynamicHybridAttention(), ffn=HybridMoE()) for _ in range(2)])
    dlu = DynamicLocalUpsampling()
    neck, dlu = neck.to(device).eval(), dlu.to(device).eval()
    feat = torch.randn(1, 256, 64, 64, device=device)
    with torch.no_grad():
        edges = CannyNet().to(device).eval()(torch.rand(1, 3, S, S, device=device))
    ref = object_ref(0.1, device)
    coarse = torch.where(F.max_pool2d((ref[:, None] == 3).float(), 16) > 0, 5.0, -10.0)
    dlu.mlp.forward = lambda t: coarse
    from segblocks.interactive.ref_label import update_ref_label_by_prediction

    def i2f():
        refined, _ = neck(feat, ref)
        logits, _ = dlu(refined, edges)
        return update_ref_label_by_prediction(ref, logits[:, 0] > 0)

    dec = sam_vit_b_decoder().to(device).eval()
    emb = torch.randn(1, 256, 64, 64, device=device)
    pts = torch.tensor([[[300.5, 400.5], [500.5, 520.5]]], device=device)
    lab = torch.tensor([[1, 0]], device=device)
    pe = dec.prompt_encoder.get_dense_pe((64, 64))
    prev = torch.randn(1, 1, 256, 256, device=device)

    def sam():
        p = dec.prompt_encoder(pts, lab, image_embedding_size=(64, 64), masks=prev)
        return dec.mask_decoder(emb, pe, p)

    with torch.no_grad():
        t_i2f, t_sam = time_ms(i2f, device, iters), time_ms(sam, device, iters)
        stages = _decode_stages(neck, dlu, feat, edges, ref, update_ref_label_by_prediction, device, iters)
    print(f"== online per-click latency on {device}, 1024² (object area 0.1)")
    print(f"Inter2Former decoder {t_i2f:8.2f} ms   SAM ViT-B decoder {t_sam:8.2f} ms   ratio {t_i2f / t_sam:5.2f}x (paper ~1.25x)")
    print("   Inter2Former stages, ms: " + "  ".join(f"{k} {v:.2f}" for k, v in stages.items()))
    return t_i2f, t_sam


def _decode_stages(neck, dlu, feat, edges, ref, update, device, iters):
    """Per-stage times of the decode above (same inputs), to show what dominates."""
    B, d, h, w = feat.shape
    prompt, _ = neck.dpe(ref)
    sel = select_edge_tokens(ref, (h, w))
    tokens = (feat + prompt).flatten(2).transpose(1, 2).contiguous()  # B x hw x d
    out = {"DPE": time_ms(lambda: neck.dpe(ref), device, iters),
           "selection": time_ms(lambda: select_edge_tokens(ref, (h, w)), device, iters)}
    for i, blk in enumerate(neck.blocks):
        out[f"DHA{i}"] = time_ms(lambda: tokens + blk.attn(blk.norm1(tokens), (h, w), sel)[0], device, iters)
        tokens = tokens + blk.attn(blk.norm1(tokens), (h, w), sel)[0]
        out[f"HMoE{i}"] = time_ms(lambda: tokens + blk.ffn(blk.norm2(tokens).reshape(B * h * w, d), sel.idxs), device, iters)
        tokens = tokens + blk.ffn(blk.norm2(tokens).reshape(B * h * w, d), sel.idxs).view(B, h * w, d)
    refined = tokens.transpose(1, 2).reshape(B, d, h, w)  # B x d x h x w
    out["DLU"] = time_ms(lambda: dlu(refined, edges), device, iters)
    logits, _ = dlu(refined, edges)
    out["M_ref update"] = time_ms(lambda: update(ref, logits[:, 0] > 0), device, iters)
    return out


def plot(res, moe, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(16, 3.6))
    ax[0].plot(res["ratio"], res["dpe"], "o-", label="DPE")
    ax[0].plot(res["ratio"], res["nondpe"], "s--", label="Non-DPE")
    ax[0].set(title="(a) prompt embedding", xlabel="area ratio", ylabel="ms")
    ax[1].plot(res["ratio"], res["dha"], "o-", label="DHA")
    ax[1].set(title="(b) DHA", xlabel="area ratio", ylabel="ms")
    for n in moe["tokens"]:
        ax[2].plot(moe["experts"], [100 * (1 - g / v) for g, v in zip(moe[n]["grouped"], moe[n]["vanilla"])], "o-",
                   label=f"{n} edge tokens")
    ax[2].set(title="(c) HMoE latency reduction", xlabel="experts", ylabel="% vs vanilla")
    ax[2].set_xscale("log", base=2)
    ax[2].minorticks_off()
    ax[2].set_xticks(moe["experts"], [str(e) for e in moe["experts"]])
    ax[3].plot(res["ratio"], res["dlu"], "o-", label="DLU")
    ax[3].plot(res["ratio"], res["nondlu"], "s--", label="Non-DLU")
    ax[3].set(title="(d) upsampling", xlabel="area ratio", ylabel="ms")
    for a in ax:
        if a.get_legend_handles_labels()[0]:
            a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    print(f"figure written to {path}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--plot", default=str(FIGURE), help="write the Fig. 3 (a)-(d) panel to this PNG ('' = none)")
    p.add_argument("--clock", default="auto", choices=("auto", "cpu", "wall"),
                   help="auto: thread CPU time on a 1-thread CPU run, wall-clock otherwise")
    p.add_argument("--skip", nargs="*", default=(), choices=("fig3", "hmoe", "bsqa", "online"))
    p.add_argument("--grabcut", default=str(GRABCUT) if GRABCUT.is_dir() else "",
                   help="GrabCut folder: print its objects' edge-token counts beside (c) ('' = skip)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    clock = args.clock
    if clock == "auto":
        clock = "cpu" if device.type == "cpu" and torch.get_num_threads() == 1 else "wall"
    global time_ms
    time_ms = functools.partial(_time_ms, clock=time.thread_time if clock == "cpu" else time.perf_counter)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"device={device} threads={torch.get_num_threads()} cores={os.cpu_count()} clock={clock} "
          f"load average (1/5/15 min) {load} | torch {torch.__version__}")
    res = fig3(device, args.iters) if "fig3" not in args.skip else None
    if args.grabcut and "hmoe" not in args.skip:
        grabcut_edge_tokens(args.grabcut)
    moe = hmoe(device, args.iters) if "hmoe" not in args.skip else None
    if "bsqa" not in args.skip:
        bsqa(device, args.iters)
    if "online" not in args.skip:
        online(device, args.iters)
    if args.plot and res is not None and moe is not None:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot(res, moe, args.plot)


if __name__ == "__main__":
    main()
