"""Click-based interactive-segmentation metrics: NoC, NoF, mIoU@k, SPC and IoU stability.

Everything is computed from per-sample IoU curves ``ious`` of shape (N, K): ``ious[i, k-1]`` is
the IoU of sample ``i`` after its ``k``-th simulated click, with a budget of ``K`` clicks
(20 in FocSAM/Inter2Former, 100 for FocSAM's stability study and 100NoC@95).

* **NoC@τ** — clicks needed to reach IoU ≥ τ; a sample that never does counts as ``K``
  (FocSAM §4.1 "capped at 20"; the authors' test loop sets the last column to 1 before an argmax).
* **NoF@τ** — number of samples that never reach τ within the ``K`` clicks (MST: Adaptive Multi-Scale Tokens Guided Interactive Segmentation, §IV).
  RITM-style code also counts a sample that first reaches τ *at* click ``K``; here it succeeded.
* **mIoU@k** — mean IoU after ``k`` clicks; Inter2Former's "5-mIoU" is mIoU@5 (Inter2Former §4).
* **SPC** — seconds per click (Inter2Former §4): ``K``-SPC (20-SPC) averages the time of ``K`` clicks
  *including* once-per-image preprocessing such as SAM's image encoding; online SPC is the
  per-click latency *excluding* it. The two coincide for models without preprocessing.
* **Stability** — FocSAM §4.3 / Fig. 4: ΔIoU between consecutive clicks (from the second click
  on); steps with ΔIoU ≤ −1% are significant deteriorations ("filter out ΔIoU greater than −1%").
"""
from __future__ import annotations

from typing import Sequence

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = [
    "InteractiveMetrics",
    "binary_iou",
    "clicks_to_reach",
    "iou_delta_histogram",
    "iou_deltas",
    "iou_drop_stats",
    "miou_at_clicks",
    "noc",
    "nof",
    "seconds_per_click",
]


def _as_mask(t: torch.Tensor, name: str) -> torch.Tensor:
    """Bool masks pass through; integer label maps mean foreground where ``== 1`` (ignore 255 is not)."""
    if t.dtype == torch.bool:
        return t
    if t.is_floating_point() or t.is_complex():
        raise TypeError(f"{name} must be a bool mask or an integer label map, got {t.dtype} (threshold it first)")
    return t == 1


def binary_iou(pred: torch.Tensor, gt: torch.Tensor, ignore: torch.Tensor | None = None) -> torch.Tensor:
    """IoU of binary masks over their last two dims, as in the authors' evaluation.

    The IoU is 0 when the ground truth has no foreground (whatever the prediction; the authors'
    ``calculate_binary_iou_single_sample`` warns and returns 0) and when the intersection is empty.

    Args:
        pred: (..., H, W) bool mask, or integer label map with foreground ``== 1``.
        gt: (..., H, W) same.
        ignore: optional (..., H, W) bool mask of pixels excluded from both counts.

    Returns:
        (...) float IoU.
    """
    pred, gt = _as_mask(pred, "pred"), _as_mask(gt, "gt")
    if pred.shape != gt.shape or pred.dim() < 2:
        raise ValueError(f"pred and gt must share a (..., H, W) shape, got {tuple(pred.shape)} and {tuple(gt.shape)}")
    if ignore is not None:
        if ignore.dtype != torch.bool or ignore.shape != gt.shape:
            raise ValueError(f"ignore must be a bool mask of shape {tuple(gt.shape)}, got {ignore.dtype} "
                             f"{tuple(ignore.shape)}")
        pred, gt = pred & ~ignore, gt & ~ignore
    inter = (pred & gt).sum((-2, -1))
    union = (pred | gt).sum((-2, -1))
    iou = inter / union.clamp(min=1)
    return torch.where(gt.any(-1).any(-1), iou, torch.zeros_like(iou))


def _check_curves(ious: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(ious) or not ious.is_floating_point() or ious.dim() != 2 or ious.shape[1] < 1:
        got = f"{ious.dtype} {tuple(ious.shape)}" if torch.is_tensor(ious) else type(ious).__name__
        raise ValueError(f"ious must be a float (N_samples, K_clicks) tensor with K >= 1, got {got}")
    return ious


def clicks_to_reach(ious: torch.Tensor, threshold: float) -> torch.Tensor:
    """Per-sample NoC: the first click (1-based) with IoU ≥ ``threshold``, or ``K`` if never.

    Args:
        ious: (N, K) IoU curves.
        threshold: target IoU τ.

    Returns:
        (N,) int64 click counts in [1, K].
    """
    reached = _check_curves(ious) >= threshold  # N x K
    reached[:, -1] = True  # never reaching τ counts as the whole budget
    return reached.to(torch.uint8).argmax(1) + 1  # argmax returns the first maximum


def noc(ious: torch.Tensor, threshold: float) -> torch.Tensor:
    """NoC@τ: mean of :func:`clicks_to_reach` over samples (NaN for N = 0). ious: (N, K) → scalar."""
    return clicks_to_reach(ious, threshold).double().mean()


def nof(ious: torch.Tensor, threshold: float) -> torch.Tensor:
    """NoF@τ: number of samples whose IoU never reaches ``threshold`` within the K clicks. ious: (N, K) → scalar."""
    return (~(_check_curves(ious) >= threshold).any(1)).sum()


def miou_at_clicks(ious: torch.Tensor) -> torch.Tensor:
    """mIoU@k for k = 1..K: mean over samples of the IoU after k clicks. ious: (N, K) → (K,)."""
    return _check_curves(ious).double().mean(0)


def seconds_per_click(decode_seconds: torch.Tensor, encode_seconds: torch.Tensor | None = None) -> torch.Tensor:
    """Seconds per click (Inter2Former §4).

    With ``encode_seconds`` this is K-SPC (20-SPC for K = 20): the once-per-image preprocessing
    time (e.g. SAM's image encoder, FocSAM's refiner if it runs once) plus the K per-click times,
    divided by K, averaged over samples. Without it, it is the online SPC: the mean per-click
    latency during interaction.

    Args:
        decode_seconds: (N, K) time of every click's interactive step.
        encode_seconds: optional (N,) once-per-image preprocessing time.

    Returns:
        Scalar float64 seconds (NaN for N = 0).
    """
    if decode_seconds.dim() != 2:
        raise ValueError(f"decode_seconds must be (N, K), got {tuple(decode_seconds.shape)}")
    total = decode_seconds.double().sum(1)  # N
    if encode_seconds is not None:
        if encode_seconds.shape != total.shape:
            raise ValueError(f"encode_seconds must be (N,) = {tuple(total.shape)}, got {tuple(encode_seconds.shape)}")
        total = total + encode_seconds.double()
    return (total / decode_seconds.shape[1]).mean()


def iou_deltas(ious: torch.Tensor) -> torch.Tensor:
    """ΔIoU between consecutive clicks, from the second click on. ious: (N, K) → (N, K - 1)."""
    ious = _check_curves(ious)
    return ious[:, 1:] - ious[:, :-1]


def iou_drop_stats(ious: torch.Tensor, *, drop_threshold: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Count and fraction of click steps whose IoU falls by at least ``drop_threshold`` (FocSAM §4.3).

    Args:
        ious: (N, K) IoU curves.
        drop_threshold: a step is a significant drop when ΔIoU ≤ −drop_threshold (FocSAM: 1%).

    Returns:
        ``(count, fraction)``: int64 number of such steps and their share of the N·(K−1) steps
        (NaN when there is no step).
    """
    drops = iou_deltas(ious) <= -drop_threshold  # N x K-1
    count = drops.sum()
    nan = torch.full_like(count, float("nan"), dtype=torch.float64)
    fraction = count.double() / drops.numel() if drops.numel() else nan
    return count, fraction


def iou_delta_histogram(
    ious: torch.Tensor,
    *,
    bins: int = 100,
    value_range: tuple[float, float] = (-1.0, 1.0),
    drop_threshold: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Histogram of consecutive-click ΔIoU, the distribution plotted in FocSAM Fig. 4.

    Args:
        ious: (N, K) IoU curves.
        bins: number of equal-width bins.
        value_range: ``(low, high)`` of the bins; values outside are not counted.
        drop_threshold: if given, keep only ΔIoU ≤ −drop_threshold (Fig. 4 uses 0.01).

    Returns:
        ``(counts, edges)``: (bins,) float64 counts and (bins + 1,) float64 edges, on CPU.
    """
    deltas = iou_deltas(ious).detach().flatten().double().cpu()  # (N·(K−1),)
    if drop_threshold is not None:
        deltas = deltas[deltas <= -drop_threshold]
    return torch.histogram(deltas, bins=bins, range=value_range)


def _percent(t: float) -> str:
    return f"{100 * t:g}"


class InteractiveMetrics(Metric):
    """Collects per-sample IoU curves and click timings; reports NoC/NoF/mIoU@k/SPC/stability.

    States are flat lists reduced by concatenation, so DDP ranks (and :meth:`merge_state`) simply
    pool their samples. Samples updated without timings are left out of the SPC only.

    ``sample_index`` identifies a sample: an index given twice (a sampler that repeats samples
    to even out processes, as :class:`~torch.utils.data.DistributedSampler` does) is an error in
    :meth:`compute` and :meth:`per_sample_curves` rather than a silently double-counted sample.

    Args:
        max_clicks: click budget K; every curve must have exactly K entries.
        thresholds: IoU targets τ for NoC@τ / NoF@τ (keys use percent, e.g. ``noc@90``).
        drop_threshold: ΔIoU ≤ −drop_threshold counts as a significant drop (FocSAM: 0.01).
        **kwargs: passed to :class:`torchmetrics.Metric` (``dist_sync_fn``, ``process_group``...).

    Example:
        >>> m = InteractiveMetrics(max_clicks=3, thresholds=(0.9,))
        >>> m.update(torch.tensor([[0.5, 0.92, 0.95], [0.3, 0.4, 0.5]]))
        >>> m.compute()["noc@90"]
        tensor(2.5000, dtype=torch.float64)
    """

    is_differentiable = False
    higher_is_better = None  # NoC/SPC are lower-better, mIoU higher-better
    full_state_update = False

    def __init__(
        self,
        *,
        max_clicks: int = 20,
        thresholds: Sequence[float] = (0.85, 0.90, 0.95),
        drop_threshold: float = 0.01,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if max_clicks < 1:
            raise ValueError(f"max_clicks must be >= 1, got {max_clicks}")
        if not thresholds or any(not 0 < t <= 1 for t in thresholds):
            raise ValueError(f"thresholds must be a non-empty sequence of IoUs in (0, 1], got {thresholds}")
        self.max_clicks, self.thresholds, self.drop_threshold = max_clicks, tuple(thresholds), drop_threshold
        # Flat 1-D states: a rank without samples syncs a 1-D empty tensor, which must concatenate.
        self.add_state("iou", default=[], dist_reduce_fx="cat")  # (N·K,)
        self.add_state("encode_seconds", default=[], dist_reduce_fx="cat")  # (N,), NaN when untimed
        self.add_state("decode_seconds", default=[], dist_reduce_fx="cat")  # (N·K,), NaN when untimed
        self.add_state("sample_index", default=[], dist_reduce_fx="cat")  # (N,), -1 when not given

    def update(
        self,
        ious: torch.Tensor,
        *,
        encode_seconds: torch.Tensor | None = None,
        decode_seconds: torch.Tensor | None = None,
        sample_index: torch.Tensor | None = None,
    ) -> None:
        """Add a batch of samples.

        Args:
            ious: (B, K) IoU after each click, K = ``max_clicks``.
            encode_seconds: (B,) once-per-image preprocessing time (needs ``decode_seconds``);
                taken as 0 when only ``decode_seconds`` is given.
            decode_seconds: (B, K) time of each click's interactive step.
            sample_index: (B,) integer dataset index of each sample, kept for
                :meth:`per_sample_curves` (DDP gathers samples rank by rank).
        """
        ious = _check_curves(ious)
        b, k = ious.shape
        if k != self.max_clicks:
            raise ValueError(f"ious must have max_clicks={self.max_clicks} columns, got {tuple(ious.shape)}")
        if ((ious < 0) | (ious > 1) | ious.isnan()).any():
            raise ValueError("ious must lie in [0, 1]")
        if encode_seconds is not None and decode_seconds is None:
            raise ValueError("encode_seconds needs decode_seconds: SPC counts the per-click time too")
        if decode_seconds is None:
            decode_seconds = torch.full_like(ious, float("nan"))
            encode_seconds = torch.full((b,), float("nan"), device=ious.device)
        else:
            if decode_seconds.shape != ious.shape:
                raise ValueError(f"decode_seconds must be (B, K) = {(b, k)}, got {tuple(decode_seconds.shape)}")
            if encode_seconds is None:
                encode_seconds = torch.zeros(b, device=ious.device)
            elif encode_seconds.shape != (b,):
                raise ValueError(f"encode_seconds must be (B,) = ({b},), got {tuple(encode_seconds.shape)}")
            if (decode_seconds < 0).any() or (encode_seconds < 0).any():
                raise ValueError("timings must be non-negative seconds")
        if sample_index is None:
            sample_index = torch.full((b,), -1, device=ious.device)
        elif sample_index.shape != (b,) or sample_index.is_floating_point():
            raise ValueError(f"sample_index must be an integer (B,) = ({b},) tensor, got {sample_index.dtype} "
                             f"{tuple(sample_index.shape)}")
        # Every state in the metric dtype, so DDP gathers uniform tensors (indices exact below 2**24).
        self.iou.append(ious.detach().flatten().to(self.dtype))  # (B·K,)
        self.decode_seconds.append(decode_seconds.detach().flatten().to(self.dtype))  # (B·K,)
        self.encode_seconds.append(encode_seconds.detach().to(self.dtype))
        self.sample_index.append(sample_index.detach().to(self.dtype))

    def _state(self, name: str) -> torch.Tensor:
        value = getattr(self, name)
        if isinstance(value, list):
            return dim_zero_cat(value) if value else torch.zeros(0, dtype=self.dtype, device=self.device)
        return value

    def _curves(self) -> dict[str, torch.Tensor]:
        k = self.max_clicks
        curves = {
            "iou": self._state("iou").reshape(-1, k),  # N x K
            "encode_seconds": self._state("encode_seconds"),  # N
            "decode_seconds": self._state("decode_seconds").reshape(-1, k),  # N x K
            "sample_index": self._state("sample_index").long(),  # N
        }
        index = curves["sample_index"]
        given = index[index >= 0]
        values, counts = torch.unique(given, return_counts=True)
        if bool((counts > 1).any()):
            repeated = values[counts > 1][:5].tolist()
            raise ValueError(
                f"sample_index {repeated} was updated more than once: each sample must be evaluated once "
                "(under DDP use an unrepeated sampler such as segblocks.lightning._loaders.EvaluationSampler, not "
                "DistributedSampler, which repeats samples to even out the processes)"
            )
        order = torch.sort(index, stable=True).indices  # by dataset index, whatever process held the sample
        return {name: value[order] for name, value in curves.items()}

    def compute(self) -> dict[str, torch.Tensor]:
        """All metrics as float64 scalars.

        Keys: ``num_samples``; ``noc@T`` and ``nof@T`` per threshold (T in percent); ``miou@k``
        for k = 1..K and ``5-miou`` (= ``miou@5``) when K ≥ 5; ``stability/drop_count`` and
        ``stability/drop_fraction``; ``{K}-spc`` and ``online-spc`` when some samples were timed.
        """
        c = self._curves()
        ious = c["iou"]  # kept in the stored dtype: an IoU equal to τ must compare as reached
        out = {"num_samples": torch.tensor(float(ious.shape[0]), dtype=torch.float64, device=ious.device)}
        for t in self.thresholds:
            out[f"noc@{_percent(t)}"] = noc(ious, t)
            out[f"nof@{_percent(t)}"] = nof(ious, t).double()
        miou = miou_at_clicks(ious)
        out.update({f"miou@{k + 1}": v for k, v in enumerate(miou)})
        if self.max_clicks >= 5:
            out["5-miou"] = miou[4]
        count, fraction = iou_drop_stats(ious, drop_threshold=self.drop_threshold)
        out["stability/drop_count"] = count.double()
        out["stability/drop_fraction"] = fraction
        timed = c["decode_seconds"].isfinite().all(1) & c["encode_seconds"].isfinite()  # N
        if timed.any():
            dec, enc = c["decode_seconds"][timed], c["encode_seconds"][timed]
            out[f"{self.max_clicks}-spc"] = seconds_per_click(dec, enc)
            out["online-spc"] = seconds_per_click(dec)
        return out

    def per_sample_curves(self) -> dict[str, torch.Tensor]:
        """Per-sample data (synced across DDP ranks like :meth:`compute`), on CPU, for CSV/JSON.

        Rows are sorted by ``sample_index`` (stably; samples without an index, -1, come first in
        the order of their updates), so one process and several give the same rows.

        Returns:
            ``iou`` (N, K), ``decode_seconds`` (N, K) and ``encode_seconds`` (N,) (NaN when
            untimed), ``sample_index`` (N,) int64 (-1 when not given), and ``noc@T`` (N,) int64
            clicks to reach each threshold.
        """
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync,
                               should_unsync=self._should_unsync):
            c = {name: value.cpu() for name, value in self._curves().items()}
        for t in self.thresholds:
            c[f"noc@{_percent(t)}"] = clicks_to_reach(c["iou"], t)
        return c
