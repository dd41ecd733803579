"""NoC of the classical click baselines on GrabCut, beside the published figures for these algorithms.

Runs the K-click protocol of :func:`segblocks.interactive.evaluate_clicks` (first click at the
centre of the largest error, 20 clicks, per-sample tie-break seeds as in ``lightning test``) with
the training-free models ``random_walker_clicks`` (Grady 2006, scikit-image) and
``grabcut_clicks`` (Rother et al. 2004, OpenCV) and prints NoC@85 / NoC@90 / mIoU@5 next to the
classical rows of the published tables:

Each sample's clicks stop costing time once it reaches 90 % IoU (the output is then frozen, which
leaves NoC@85 / NoC@90 unchanged); ``--full`` decodes all 20 clicks and adds mIoU@5.

* "Deep Interactive Object Selection" (Xu et al., CVPR 2016, arXiv 1603.04042), Table 1:
  mean clicks to 90 % IoU on GrabCut, 20-click cap;
* "f-BRS: Rethinking Backpropagating Refinement for Interactive Segmentation" (Sofiiuk et al.,
  CVPR 2020, arXiv 2001.10331), Table 1 (repeated in RITM, arXiv 2102.06583, Table 1): NoC@90 on
  GrabCut.

The published rows come from other implementations and a different click simulation (DIOS samples
its clicks; f-BRS / RITM use the same error-centre clicker as here), and none of the tables lists
GrabCut itself: its nearest published relative is the "Graph cut" row (Boykov & Jolly 2001, the
same energy without the iterated colour models). Agreement within a few clicks is what to expect.

    pip install 'segblocks[classical]'
    OMP_NUM_THREADS=2 python benchmarks/bench_classical_noc.py --root /path/to/GrabCut
    python benchmarks/bench_classical_noc.py --root GrabCut --max-samples 10 --models grabcut_clicks
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from segblocks.data.interactive import BenchmarkDataset, InteractiveEvalTransform, collate_interactive
from segblocks.interactive.clicker import sample_generators
from segblocks.interactive.evaluation import evaluate_clicks, original_targets, predictions_at_original
from segblocks.metrics.interactive import binary_iou, miou_at_clicks, noc
from segblocks.models import create_model

#: Published GrabCut figures: {algorithm: {column: value}}, with the table they come from.
PUBLISHED = {
    "Random walker (Grady 2006)": {
        "noc@90 DIOS T1": 12.30,
        "noc@90 f-BRS T1": 13.77,
    },
    "Graph cut (Boykov & Jolly 2001)": {
        "noc@90 DIOS T1": 11.10,
        "noc@90 f-BRS T1": 10.00,
    },
}
#: Which published row each model is compared with.
PUBLISHED_ROW = {"random_walker_clicks": "Random walker (Grady 2006)", "grabcut_clicks": "Graph cut (Boykov & Jolly 2001)"}


class _FreezeAtTarget:
    """Wraps a model for one sample: once its prediction reaches ``target`` IoU, later decodes return
    that output again without running the algorithm (``--full`` turns this off).

    NoC@85 / NoC@90 depend only on the first click reaching each threshold, so they are unchanged
    for ``target = 0.90``; the IoU after that click stays frozen (mIoU@k is then not reported).
    """

    def __init__(self, model, batch, target: float) -> None:
        self.model, self.target, self.done = model, target, None
        self.gt, self.ignore = original_targets(batch)  # 1 x H0 x W0 each
        self.input_hw = tuple(batch["image"].shape[-2:])
        self.valid_size, self.original_size = batch["valid_size"], batch["original_size"]

    def encode(self, images, valid_size):
        return self.model.encode(images, valid_size)

    def decode(self, state, prompts, previous):
        if self.done is not None:
            return self.done
        out = self.model.decode(state, prompts, previous)
        pred = predictions_at_original(out, self.input_hw, self.valid_size, self.original_size, tuple(self.gt.shape[-2:]))
        if float(binary_iou(pred, self.gt, self.ignore)[0]) >= self.target:
            self.done = out
        return out


def evaluate(model_name: str, dataset, *, max_clicks: int, seed: int, overrides: dict, full: bool) -> dict[str, float]:
    """NoC@85/90 (and mIoU@5 with ``full``) and seconds per decode of one model (batch size 1)."""
    model = create_model(model_name, **overrides).eval()
    ious, seconds, decodes = [], 0.0, 0
    for index in range(len(dataset)):
        batch = collate_interactive([dataset[index]])
        wrapped = model if full else _FreezeAtTarget(model, batch, 0.90)
        start = time.perf_counter()
        curves = evaluate_clicks(wrapped, batch, max_clicks=max_clicks, generator=sample_generators(seed, [index]))
        seconds += time.perf_counter() - start
        reached = int(noc(curves.ious, 0.90))
        decodes += max_clicks if full else reached
        ious.append(curves.ious)
        print(f"  {model_name} {index + 1}/{len(dataset)}: IoU@1 {curves.ious[0, 0]:.3f}, clicks to 85/90 % "
              f"{int(noc(curves.ious, 0.85))}/{reached}", file=sys.stderr, flush=True)
    curves = torch.cat(ious)  # N x K
    out = {"noc@85": float(noc(curves, 0.85)), "noc@90": float(noc(curves, 0.90)), "s/click": seconds / max(decodes, 1)}
    if full:
        out["miou@5"] = float(miou_at_clicks(curves)[min(5, max_clicks) - 1])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="/work/shared/data/GrabCut", help="GrabCut folder (data_GT/ + boundary_GT/)")
    parser.add_argument("--layout", default="grabcut")
    parser.add_argument("--models", nargs="+", default=["random_walker_clicks", "grabcut_clicks"])
    parser.add_argument("--max-clicks", type=int, default=20)
    parser.add_argument("--max-samples", type=int, default=None, help="only the first N samples")
    parser.add_argument("--target-size", type=int, default=640, help="longest side of the padded input (GrabCut's largest side is 640)")
    parser.add_argument("--max-side", type=int, default=320, help="working resolution of the classical models")
    parser.add_argument("--seed", type=int, default=42, help="click tie-break seed (as lightning test)")
    parser.add_argument("--full", action="store_true",
                        help="decode all clicks even after 90 %% IoU (slower; adds mIoU@5; NoC is the same)")
    args = parser.parse_args(argv)

    dataset = BenchmarkDataset(root=args.root, layout=args.layout, transform=InteractiveEvalTransform(target_size=args.target_size))
    if args.max_samples is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(args.max_samples, len(dataset))))
    results = {name: evaluate(name, dataset, max_clicks=args.max_clicks, seed=args.seed, overrides={"max_side": args.max_side},
                              full=args.full) for name in args.models}

    columns = ["noc@85", "noc@90", "s/click"] + (["miou@5"] if args.full else [])
    published = sorted({c for row in PUBLISHED.values() for c in row})
    print(f"\nGrabCut ({len(dataset)} samples, {args.max_clicks} clicks, working side {args.max_side}, seed {args.seed})")
    header = f"{'model':<22}" + "".join(f"{c:>10}" for c in columns) + f"   {'published row':<32}" + "".join(f"{c:>17}" for c in published)
    print(header)
    print("-" * len(header))
    for name, values in results.items():
        row = PUBLISHED_ROW.get(name, "")
        pub = PUBLISHED.get(row, {})
        print(f"{name:<22}" + "".join(f"{values[c]:>10.3f}" for c in columns) + f"   {row:<32}"
              + "".join(f"{pub[c]:>17.2f}" if c in pub else f"{'-':>17}" for c in published))
    print("published: DIOS = Xu et al. CVPR 2016 Table 1; f-BRS = Sofiiuk et al. CVPR 2020 Table 1 (also RITM Table 1). "
          "No table lists GrabCut itself; its row is Graph cut (Boykov & Jolly 2001).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
