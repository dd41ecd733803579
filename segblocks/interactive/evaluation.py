"""The standard K-click evaluation protocol and its per-sample report.

:func:`evaluate_clicks` runs the protocol of FocSAM §4.1 / Inter2Former §4 / HRSAM App. D on a
batch from :class:`~segblocks.data.interactive.InteractiveEvalTransform` +
:func:`~segblocks.data.interactive.collate_interactive`, for any
:class:`~segblocks.interactive.protocol.InteractiveModel`. Details follow the authors' shared
``ClickTestLoop`` (YouHuang67/inter2former, ``inter2former/runners/click_test_loops.py`` with the
click simulator ``engine/utils/click_fast.py``; the same files in YouHuang67/focsam and
YouHuang67/High-Resolution-Segment-Anything):

* the image is encoded once; then, ``K`` times: simulate the next click with the evaluation rule
  (:func:`~segblocks.interactive.next_click`, ``inner_k=1``) from the current error **at the
  original resolution**, ignore pixels and already clicked pixels excluded; decode with every
  click so far and the previous output fed back; resize the logits to the input, crop the valid
  region, resize it back to the original size (bilinear) and threshold at 0;
* the IoU of each prediction is taken at the original resolution, ignore pixels excluded
  (:func:`~segblocks.metrics.binary_iou`);
* a sample whose prediction has no error left gets no new click and is decoded again as is.

Tie-breaks among equally distant click candidates are random. The authors draw them from one
generator seeded once per test run, so a sample's clicks depend on the samples evaluated before
it; passing per-sample generators (:func:`~segblocks.interactive.clicker.sample_generators`,
keyed by the dataset index, as :class:`~segblocks.lightning.InteractiveSegmentation` does) makes
each sample's clicks, hence its IoU curve, the same in any subset, order, batch or process.

Batches of differently sized originals are padded to a common canvas whose padding is ignored;
this changes nothing, since ignored pixels are excluded from the errors, the IoU and the clicks,
and bound error regions exactly as the image border does.

Timing (:func:`time.perf_counter`, CUDA-synchronised on GPU) for SPC (Inter2Former §4): the
encode time, and per click the decode plus the mapping back to a mask at the original
resolution; the click simulation and scoring are not model time. With a batch of ``B`` samples
each sample is charged ``1/B`` of the batch time, i.e. batch size 1 gives the latency and larger
batches the throughput-equivalent time.

:func:`write_click_report` writes ``per_sample_iou.csv``, ``per_sample_iou.json`` and the
``miou_vs_clicks.png`` plot (matplotlib, from the ``plot`` extra, is imported only there);
:func:`write_click_cases` the overlay pictures of the worst and best samples.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from segblocks.ops.geometry import crop_and_resize_back
from segblocks.interactive.clicker import ClickGenerator, Clicks, next_click
from segblocks.interactive.protocol import ClickPrompts, InteractiveModel, logits_to_input
from segblocks.metrics.interactive import binary_iou

__all__ = [
    "ClickCurves",
    "REPORT_FILES",
    "evaluate_clicks",
    "original_targets",
    "plot_miou_vs_clicks",
    "predictions_at_original",
    "write_click_cases",
    "write_click_report",
]

logger = logging.getLogger(__name__)

#: File names written by :func:`write_click_report`.
REPORT_FILES = {"csv": "per_sample_iou.csv", "json": "per_sample_iou.json", "png": "miou_vs_clicks.png"}


@dataclass(frozen=True)
class ClickCurves:
    """Result of :func:`evaluate_clicks` for a batch of ``B`` samples and ``K`` clicks.

    Attributes:
        ious: ``(B, K)`` float32 IoU after each click.
        encode_seconds: ``(B,)`` float64 share of the once-per-image time.
        decode_seconds: ``(B, K)`` float64 share of each click's time.
        num_clicks: ``(B,)`` int64 clicks actually placed (fewer than ``K`` once a mask is perfect).
    """

    ious: torch.Tensor
    encode_seconds: torch.Tensor
    decode_seconds: torch.Tensor
    num_clicks: torch.Tensor


class _Clock:
    """``time.perf_counter`` that first waits for queued CUDA work on ``device``."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


def original_targets(batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground truth at the original resolution on a common canvas.

    Args:
        batch: a collated batch with ``original_mask`` / ``original_ignore`` lists of
            ``(H0_i, W0_i)`` bool (kept by ``InteractiveEvalTransform(keep_original=True)``).

    Returns:
        ``gt`` and ``ignore``, ``(B, Hc, Wc)`` bool with ``Hc, Wc`` the largest original sizes;
        the canvas outside each original is ignored.
    """
    if "original_mask" not in batch or "original_ignore" not in batch:
        raise ValueError(
            "the evaluation batch needs 'original_mask' and 'original_ignore' (use "
            f"InteractiveEvalTransform(keep_original=True)); got keys {sorted(batch)}"
        )
    masks, ignores = batch["original_mask"], batch["original_ignore"]
    device = batch["image"].device
    Hc, Wc = max(m.shape[0] for m in masks), max(m.shape[1] for m in masks)
    gt = torch.zeros(len(masks), Hc, Wc, dtype=torch.bool, device=device)
    ignore = torch.ones(len(masks), Hc, Wc, dtype=torch.bool, device=device)
    for b, (m, ig) in enumerate(zip(masks, ignores)):
        h, w = m.shape
        gt[b, :h, :w] = m.to(device)
        ignore[b, :h, :w] = ig.to(device) & ~gt[b, :h, :w]
    return gt, ignore


def predictions_at_original(
    logits: torch.Tensor,
    input_hw: tuple[int, int],
    valid_size: torch.Tensor,
    original_size: torch.Tensor,
    canvas_hw: tuple[int, int],
) -> torch.Tensor:
    """Map decode logits to binary masks at the original resolution.

    As in the HRSAM test loop (YouHuang67/High-Resolution-Segment-Anything,
    ``models/segmentors/simseg.py``): the logits are resized to the padded input, the valid region
    is cropped and resized back to the original size.

    Args:
        logits: ``(B, 1, h, w)`` decode output over the padded input.
        input_hw: ``(H, W)`` of the padded input.
        valid_size: ``(B, 2)`` ``(h', w')`` of real content in the input.
        original_size: ``(B, 2)`` ``(H0, W0)``.
        canvas_hw: ``(Hc, Wc)`` of the output canvas (at least every original size).

    Returns:
        ``(B, Hc, Wc)`` bool, ``logit > 0``; False outside each original.
    """
    full = logits_to_input(logits, input_hw)[:, 0]  # B x H x W
    pred = torch.zeros(full.shape[0], *canvas_hw, dtype=torch.bool, device=full.device)
    for b, (vs, os_) in enumerate(zip(valid_size.tolist(), original_size.tolist())):
        pred[b, : os_[0], : os_[1]] = crop_and_resize_back(full[b], vs, os_) > 0  # sizes differ per sample
    return pred


def evaluate_clicks(
    model: InteractiveModel,
    batch: Mapping[str, Any],
    *,
    max_clicks: int = 20,
    generator: ClickGenerator = None,
) -> ClickCurves:
    """Run the ``max_clicks``-click protocol on one batch (see the module docstring).

    Gradients are disabled; put ``model`` in eval mode first.

    Args:
        model: any :class:`~segblocks.interactive.protocol.InteractiveModel`.
        batch: ``image`` (B, 3, H, W) float, ``valid_size`` (B, 2), ``original_size`` (B, 2),
            ``original_mask`` / ``original_ignore`` lists (see :func:`original_targets`).
        max_clicks: click budget ``K``.
        generator: random tie-breaking among equally distant click candidates: one generator
            for the batch (the authors seed 42 once per test run), or one numpy generator per
            sample (:func:`~segblocks.interactive.clicker.sample_generators`), which makes a
            sample's curve independent of the rest of the batch.

    Returns:
        :class:`ClickCurves` on CPU; ``B = 0`` (an empty batch) gives empty curves without
        calling the model.
    """
    if max_clicks < 1:
        raise ValueError(f"max_clicks must be >= 1; got {max_clicks}")
    images, valid_size, original_size = batch["image"], batch["valid_size"], batch["original_size"]
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"batch['image'] must be a float (B, 3, H, W) tensor; got {images.dtype} {tuple(images.shape)}")
    B, device = images.shape[0], images.device
    if B == 0:  # e.g. the padding batch of a process without evaluation samples
        return ClickCurves(
            ious=torch.zeros(0, max_clicks), encode_seconds=torch.zeros(0, dtype=torch.float64),
            decode_seconds=torch.zeros(0, max_clicks, dtype=torch.float64), num_clicks=torch.zeros(0, dtype=torch.int64),
        )
    input_hw = (int(images.shape[-2]), int(images.shape[-1]))
    gt, ignore = original_targets(batch)  # B x Hc x Wc each
    canvas_hw = (int(gt.shape[-2]), int(gt.shape[-1]))
    clock = _Clock(device)
    ious = torch.zeros(B, max_clicks)
    decode_seconds = torch.zeros(B, max_clicks, dtype=torch.float64)
    with torch.no_grad():
        start = clock()
        state = model.encode(images, valid_size)
        encode_seconds = torch.full((B,), (clock() - start) / B, dtype=torch.float64)
        clicks = Clicks.empty(B, device=device)
        pred = torch.zeros_like(gt)
        previous = None
        for k in range(max_clicks):
            coords, positive, placed = next_click(
                pred, gt, ignore=ignore, clicked=clicks.to_mask(*canvas_hw), generator=generator, inner_k=1.0
            )
            clicks = clicks.append(coords, positive, placed)
            prompts = ClickPrompts(clicks=clicks, frame_size=original_size.to(device), input_size=valid_size.to(device))
            start = clock()
            previous = model.decode(state, prompts, previous)
            pred = predictions_at_original(previous, input_hw, valid_size, original_size, canvas_hw)
            decode_seconds[:, k] = (clock() - start) / B
            ious[:, k] = binary_iou(pred, gt, ignore).float().cpu()
    return ClickCurves(
        ious=ious, encode_seconds=encode_seconds, decode_seconds=decode_seconds, num_clicks=clicks.num_clicks.cpu()
    )


def write_click_report(
    curves: Mapping[str, torch.Tensor],
    out_dir: str | os.PathLike,
    *,
    sample_ids: Sequence[str] | None = None,
    metrics: Mapping[str, float | torch.Tensor] | None = None,
) -> dict[str, Path]:
    """Write the per-sample IoU curves as CSV and JSON and plot mIoU against clicks.

    Args:
        curves: :meth:`~segblocks.metrics.InteractiveMetrics.per_sample_curves` output: ``iou``
            (N, K), ``decode_seconds`` (N, K), ``encode_seconds`` (N,), ``sample_index`` (N,)
            and ``noc@T`` (N,) per threshold.
        out_dir: folder (created if missing).
        sample_ids: ``sample_ids[i]`` names row ``i``; empty names when None.
        metrics: summary scalars stored under ``"metrics"`` in the JSON.

    Returns:
        ``{"csv": path, "json": path}`` plus ``"png"`` when matplotlib is installed.
    """
    ious = curves["iou"].double()
    if ious.dim() != 2:
        raise ValueError(f"curves['iou'] must be (N, K); got {tuple(ious.shape)}")
    N, K = ious.shape
    ids = list(sample_ids) if sample_ids is not None else [""] * N
    if len(ids) != N:
        raise ValueError(f"sample_ids must name the {N} samples; got {len(ids)}")
    noc_keys = sorted(k for k in curves if k.startswith("noc@"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / REPORT_FILES["csv"], "json": out / REPORT_FILES["json"]}
    with open(paths["csv"], "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sample_index", "sample_id", *noc_keys, "encode_seconds", *(f"iou@{k + 1}" for k in range(K))])
        for i in range(N):
            writer.writerow([
                int(curves["sample_index"][i]), ids[i], *(int(curves[key][i]) for key in noc_keys),
                _number(curves["encode_seconds"][i]), *(f"{v:.6f}" for v in ious[i].tolist()),
            ])
    samples = [
        {
            "sample_index": int(curves["sample_index"][i]),
            "sample_id": ids[i],
            **{key: int(curves[key][i]) for key in noc_keys},
            "iou": ious[i].tolist(),
            "encode_seconds": _number(curves["encode_seconds"][i]),
            "decode_seconds": [_number(v) for v in curves["decode_seconds"][i]],
        }
        for i in range(N)
    ]
    summary = {k: _number(v) for k, v in (metrics or {}).items()}
    paths["json"].write_text(json.dumps({"max_clicks": K, "metrics": summary, "samples": samples}, indent=1) + "\n")
    png = plot_miou_vs_clicks(ious, out / REPORT_FILES["png"])
    if png is not None:
        paths["png"] = png
    return paths


def plot_miou_vs_clicks(ious: torch.Tensor, path: str | os.PathLike, *, title: str = "mIoU vs clicks") -> Path | None:
    """Plot mean IoU after each click, ``ious`` (N, K); returns None (with a warning) without matplotlib."""
    try:  # the object-oriented API with the Agg canvas: no pyplot, no global backend switch
        import matplotlib  # noqa: F401  (first: a missing or blocked matplotlib fails here)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("matplotlib is not installed (pip install 'segblocks[plot]'): %s not written", path)
        return None
    miou = ious.double().mean(0).tolist() if ious.shape[0] else [math.nan] * ious.shape[1]
    fig = Figure(figsize=(5, 3.5))
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    ax = fig.add_subplot()
    ax.plot(range(1, len(miou) + 1), miou, marker="o", markersize=3)
    ax.set(xlabel="clicks", ylabel="mIoU", title=f"{title} (N={ious.shape[0]})", ylim=(0, 1), xlim=(1, max(len(miou), 2)))
    ax.set_xticks(sorted({1, *range(5, len(miou) + 1, 5)}))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def _number(value: float | torch.Tensor) -> float | None:
    """A JSON-safe float: NaN (untimed) becomes None."""
    value = float(value)
    return None if math.isnan(value) else value


#: Folder (inside the report folder) of the pictures written by :func:`write_click_cases`.
CASES_DIR = "click_cases"


class _RecordLastDecode:
    """An :class:`InteractiveModel` passing through to ``model`` that keeps the last decode's prompts and logits."""

    def __init__(self, model: InteractiveModel) -> None:
        self.model, self.prompts, self.logits = model, None, None

    def encode(self, images: torch.Tensor, valid_size: torch.Tensor) -> Any:
        return self.model.encode(images, valid_size)

    def decode(self, state: Any, prompts: ClickPrompts, previous: torch.Tensor | None) -> torch.Tensor:
        self.logits = self.model.decode(state, prompts, previous)
        self.prompts = prompts
        return self.logits


def write_click_cases(
    model: InteractiveModel,
    dataloader: Any,
    curves: Mapping[str, torch.Tensor],
    out_dir: str | os.PathLike,
    *,
    eval_seed: int,
    num_cases: int = 3,
    noc_key: str = "noc@90",
    sample_ids: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Overlay pictures of the ``num_cases`` worst and best samples of a test run.

    Worst: most clicks to reach the IoU of ``noc_key`` (ties: lower final IoU); best: fewest
    (ties: higher final IoU). Each chosen sample is run through :func:`evaluate_clicks` again with
    its own click generator (:func:`~segblocks.interactive.clicker.sample_generators` keyed by
    ``(eval_seed, dataset index)``, as :class:`~segblocks.lightning.InteractiveSegmentation`
    evaluates), which reproduces the reported clicks and curve, and drawn with
    :func:`segblocks.visualize.click_case_overlay` at the original resolution: the image, the
    ground-truth outline, the final prediction and the numbered clicks.

    Args:
        model: the evaluated :class:`~segblocks.interactive.protocol.InteractiveModel` (eval mode).
        dataloader: the test loader (or a list holding it): its ``dataset`` indexed by the curves'
            ``sample_index`` and its ``collate_fn``.
        curves: :meth:`~segblocks.metrics.InteractiveMetrics.per_sample_curves` output.
        out_dir: the report folder; pictures go to ``out_dir/click_cases/{worst,best}_<rank>.png``.
        eval_seed: the seed of the evaluation's click generators.
        num_cases: pictures of each kind.
        noc_key: the NoC column ranking the samples (the final IoU alone when absent).
        sample_ids: names written in the captions (row order of ``curves``).

    Returns:
        ``{"worst_1": path, ..., "best_1": path, ...}``; empty when no sample has a dataset index.
    """
    from segblocks.interactive.clicker import sample_generators
    from segblocks.visualize import click_case_overlay

    if num_cases < 1:
        raise ValueError(f"num_cases must be >= 1; got {num_cases}")
    if isinstance(dataloader, (list, tuple)):
        dataloader = dataloader[0]
    ious = curves["iou"].double()
    index = curves["sample_index"].long()
    rows = [i for i in range(ious.shape[0]) if int(index[i]) >= 0]
    if not rows:
        return {}
    K = ious.shape[1]
    noc = curves[noc_key].double() if noc_key in curves else torch.zeros(ious.shape[0], dtype=torch.float64)
    final = ious[:, -1]
    worst = sorted(rows, key=lambda i: (-float(noc[i]), float(final[i]), i))[:num_cases]
    best = sorted(rows, key=lambda i: (float(noc[i]), -float(final[i]), i))[:num_cases]
    chosen = list(dict.fromkeys(worst + best))
    dataset, collate = dataloader.dataset, dataloader.collate_fn
    params = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
    device = params.device if params is not None else torch.device("cpu")
    batch = collate(_samples_by_index(dataset, [int(index[i]) for i in chosen]))
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    recorder = _RecordLastDecode(model)
    evaluate_clicks(recorder, batch, max_clicks=K, generator=sample_generators(eval_seed, index[chosen]))
    gt, ignore = original_targets(batch)  # B x Hc x Wc
    input_hw = (int(batch["image"].shape[-2]), int(batch["image"].shape[-1]))
    pred = predictions_at_original(recorder.logits, input_hw, batch["valid_size"], batch["original_size"], tuple(gt.shape[-2:]))
    clicks = recorder.prompts.clicks
    out = Path(out_dir) / CASES_DIR
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    ids = list(sample_ids) if sample_ids is not None else [""] * ious.shape[0]
    for kind, picked in (("worst", worst), ("best", best)):
        for rank, i in enumerate(picked, start=1):
            b = chosen.index(i)
            h0, w0 = (int(v) for v in batch["original_size"][b])
            image = crop_and_resize_back(batch["image"][b].float(), batch["valid_size"][b].tolist(), (h0, w0))  # 3 x H0 x W0
            image = image.clamp(0, 255).round().byte().permute(1, 2, 0).cpu().numpy()  # H0 x W0 x 3
            placed = [(int(y), int(x), bool(lab)) for (y, x), lab in zip(clicks.coords[b].tolist(), clicks.labels[b].tolist()) if lab >= 0]
            noc_text = f"{noc_key.upper()} {int(noc[i])}, " if noc_key in curves else ""
            caption = f"{kind} {rank}: {ids[i] or int(index[i])}  {noc_text}IoU@{K} {float(final[i]):.3f}"
            picture = click_case_overlay(
                image, gt[b, :h0, :w0].cpu().numpy(), pred[b, :h0, :w0].cpu().numpy(), placed, caption=caption,
                ignore=ignore[b, :h0, :w0].cpu().numpy(),
            )
            paths[f"{kind}_{rank}"] = out / f"{kind}_{rank}.png"
            picture.save(paths[f"{kind}_{rank}"])
    return paths


def _samples_by_index(dataset, wanted: list[int]) -> list[dict]:
    """The samples whose ``"index"`` is each of ``wanted``: position = index for the project's
    datasets; any other order (e.g. a ``Subset``) is found by one pass over the dataset."""
    samples = [dataset[i] if 0 <= i < len(dataset) else None for i in wanted]
    if all(s is not None and int(s.get("index", -1)) == i for s, i in zip(samples, wanted)):
        return samples
    by_index = {int(dataset[p].get("index", -1)): p for p in range(len(dataset))}
    missing = [i for i in wanted if i not in by_index]
    if missing:
        raise ValueError(f"the test dataset has no samples with index {missing}")
    return [dataset[by_index[i]] for i in wanted]
