"""Click containers and click simulation for interactive segmentation.

The papers (FocSAM §4.1, HRSAM App. D.4, Inter2Former §4.2) only say that test clicks go "to the
centres of erroneously predicted regions, with the binary label determined by the maximum
distance to the boundaries of the false negative and false positive regions", and that training
uses "InterFormer's click simulation". The exact rules below follow the authors' shared
simulator (``engine/utils/click_fast.py`` in the Inter2Former/HRSAM/FocSAM repositories,
``interformer/utils/click.py``), re-implemented on batched tensors:

* :func:`next_click` with ``inner_k=1.0`` is the standard evaluation protocol; ``inner_k=1.7``
  (:data:`TRAIN_INNER_K`) is the training rule for every click after the first.
* :func:`sample_num_clicks` draws how many prediction-driven clicks a training step simulates.
* :func:`sample_initial_clicks` draws several first clicks at once (Inter2Former's optional
  ``sample_init_clicks``).

Randomness comes from a ``numpy.random.Generator`` or a ``torch.Generator`` passed in (a torch
generator seeds a numpy one with a single draw), or from torch's global RNG when ``None``.
:func:`next_click` also takes one numpy generator per sample (:func:`sample_generators` keys them
by ``(seed, dataset index)``), so that a sample's clicks do not depend on the other samples of its
batch, their order, or the process that evaluates it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt

from segblocks.ops._checks import check_int, check_int_sequence

__all__ = [
    "Clicks",
    "Generator",
    "TRAIN_INNER_K",
    "next_click",
    "sample_generators",
    "sample_initial_clicks",
    "sample_num_clicks",
]

Generator = Union[np.random.Generator, torch.Generator, None]
#: One shared generator (or None), or one numpy generator per sample of the batch.
ClickGenerator = Union[Generator, Sequence[np.random.Generator]]

#: ``sfc_inner_k`` the authors use for every training click after the first.
TRAIN_INNER_K = 1.7


@dataclass(frozen=True, eq=False)
class Clicks:
    """A batch of click sequences of different lengths (immutable).

    Clicks are stored in the order they were made, left-packed: the valid clicks of a sample
    come first and padding (label ``-1``) fills the rest.

    Attributes:
        coords: ``(B, N, 2)`` int64 pixel indices ``(y, x)``; ignored where ``labels == -1``.
        labels: ``(B, N)`` int64, 1 = positive, 0 = negative, -1 = padding.
    """

    coords: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        c, lab = self.coords, self.labels
        if not isinstance(c, torch.Tensor) or c.dtype != torch.int64 or c.dim() != 3 or c.shape[-1] != 2:
            raise TypeError(f"coords must be an int64 tensor (B, N, 2); got {_describe(c)}")
        if not isinstance(lab, torch.Tensor) or lab.dtype != torch.int64 or lab.shape != c.shape[:2]:
            raise TypeError(f"labels must be an int64 tensor of shape {tuple(c.shape[:2])}; got {_describe(lab)}")
        if lab.device != c.device:
            raise ValueError(f"coords and labels must share a device; got {c.device} and {lab.device}")
        if lab.numel() and bool(((lab < -1) | (lab > 1)).any()):
            raise ValueError(f"labels must be in {{-1, 0, 1}}; got values {torch.unique(lab).tolist()}")
        valid = lab >= 0
        if bool((valid[:, 1:] & ~valid[:, :-1]).any()):
            raise ValueError("clicks must be left-packed: a padding label -1 is followed by a valid click")

    @classmethod
    def empty(cls, batch_size: int, *, device: torch.device | str | None = None) -> "Clicks":
        """``batch_size`` samples with no clicks (``N = 0``)."""
        return cls(
            coords=torch.zeros(batch_size, 0, 2, dtype=torch.int64, device=device),
            labels=torch.zeros(batch_size, 0, dtype=torch.int64, device=device),
        )

    @classmethod
    def from_lists(
        cls, clicks: Sequence[Sequence[tuple[int, int, int]]], *, device: torch.device | str | None = None
    ) -> "Clicks":
        """Build from per-sample lists of ``(y, x, label)`` with label 1 (positive) or 0 (negative)."""
        n = max((len(s) for s in clicks), default=0)
        coords = torch.zeros(len(clicks), n, 2, dtype=torch.int64)
        labels = torch.full((len(clicks), n), -1, dtype=torch.int64)
        for b, sample in enumerate(clicks):
            for i, (y, x, label) in enumerate(sample):
                if label not in (0, 1):
                    raise ValueError(f"click label must be 0 or 1; got {label!r} (sample {b}, click {i})")
                coords[b, i, 0], coords[b, i, 1], labels[b, i] = y, x, int(label)
        return cls(coords=coords.to(device), labels=labels.to(device))

    @property
    def batch_size(self) -> int:
        return self.labels.shape[0]

    @property
    def num_clicks(self) -> torch.Tensor:
        """``(B,)`` int64 number of valid clicks per sample."""
        return (self.labels >= 0).sum(dim=1)

    def to(self, device: torch.device | str) -> "Clicks":
        return Clicks(coords=self.coords.to(device), labels=self.labels.to(device))

    def append(self, new_coords: torch.Tensor, new_labels: torch.Tensor, valid: torch.Tensor) -> "Clicks":
        """Add one click to the samples where ``valid`` (e.g. the output of :func:`next_click`).

        Args:
            new_coords: ``(B, 2)`` integer ``(y, x)``.
            new_labels: ``(B,)`` bool (True = positive) or integer 1/0.
            valid: ``(B,)`` bool; samples with False keep their clicks unchanged.

        Returns:
            A new :class:`Clicks`, one column wider if some sample needs it.
        """
        B = self.batch_size
        device = self.coords.device
        if new_coords.shape != (B, 2) or new_coords.dtype.is_floating_point or new_coords.dtype == torch.bool:
            raise TypeError(f"new_coords must be an integer tensor ({B}, 2); got {_describe(new_coords)}")
        if new_labels.shape != (B,) or new_labels.dtype.is_floating_point:
            raise TypeError(f"new_labels must be a bool or integer tensor ({B},); got {_describe(new_labels)}")
        if valid.shape != (B,) or valid.dtype != torch.bool:
            raise TypeError(f"valid must be a bool tensor ({B},); got {_describe(valid)}")
        new_labels, valid = new_labels.to(device, torch.int64), valid.to(device)
        if bool(((new_labels[valid] != 0) & (new_labels[valid] != 1)).any()):
            raise ValueError(f"new_labels must be 0 or 1 where valid; got {torch.unique(new_labels[valid]).tolist()}")
        n = self.num_clicks
        width = max(self.labels.shape[1], int((n + valid.long()).max()) if B else 0)
        pad = width - self.labels.shape[1]
        coords = F.pad(self.coords, (0, 0, 0, pad))  # B x width x 2
        labels = F.pad(self.labels, (0, pad), value=-1)  # B x width
        rows = valid.nonzero().squeeze(1)
        coords[rows, n[rows]] = new_coords.to(device, torch.int64)[rows]
        labels[rows, n[rows]] = new_labels[rows]
        return Clicks(coords=coords, labels=labels)

    def to_mask(self, height: int, width: int) -> torch.Tensor:
        """``(B, H, W)`` bool map of the clicked pixels (the ``clicked`` input of :func:`next_click`)."""
        valid = self.labels >= 0
        b, i = valid.nonzero(as_tuple=True)
        y, x = self.coords[b, i, 0], self.coords[b, i, 1]
        if bool(((y < 0) | (y >= height) | (x < 0) | (x >= width)).any()):
            raise ValueError(f"click coordinates must lie in a {height}x{width} map; got (y, x) outside it")
        mask = torch.zeros(self.batch_size, height, width, dtype=torch.bool, device=self.coords.device)
        mask[b, y, x] = True
        return mask


def next_click(
    pred: torch.Tensor,
    gt: torch.Tensor,
    *,
    ignore: torch.Tensor | None = None,
    clicked: torch.Tensor | None = None,
    generator: ClickGenerator = None,
    inner_k: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Simulate the next click of each sample from its current error.

    FN = ``gt & ~pred`` and FP = ``pred & ~gt``, both without ``ignore`` and ``clicked`` pixels
    (which therefore act as region boundary). Each region gets an exact Euclidean distance
    transform in which the image border counts as boundary (the authors zero-pad by 1 px before
    ``cv2.distanceTransform``). The click is positive iff ``max dist(FN) > max dist(FP)`` (ties
    are negative), placed uniformly at random among the candidates of that region:

    * ``inner_k == 1``: the pixels of maximal distance (evaluation; random tie-break),
    * ``inner_k > 1``: the pixels with ``dist > max / inner_k`` (training uses 1.7).

    The choice is ``candidates[rng.integers(n)]`` with the ``n`` candidates in row-major order,
    one draw per sample that gets a click (none for the others). Padding a map at the bottom or
    right with ``ignore`` pixels therefore changes neither the candidates, their order, nor the
    draws: with per-sample generators a sample gets the same click alone or in any batch.

    Args:
        pred: ``(B, H, W)`` bool current prediction (all False before the first click).
        gt: ``(B, H, W)`` bool ground truth.
        ignore: ``(B, H, W)`` bool pixels never clicked (e.g. GrabCut's 128 band), or None.
        clicked: ``(B, H, W)`` bool pixels already clicked (see :meth:`Clicks.to_mask`), or None.
        generator: numpy or torch generator shared by the batch (drawn from sample by sample);
            None uses torch's global RNG; or a sequence of ``B`` numpy generators, one per
            sample (see :func:`sample_generators`).
        inner_k: candidate threshold ``sfc_inner_k`` (>= 1).

    Returns:
        ``coords`` ``(B, 2)`` int64 ``(y, x)``, ``is_positive`` ``(B,)`` bool and ``valid``
        ``(B,)`` bool; ``valid`` is False (and the other two zero) when both error regions are
        empty.
    """
    _check_masks(pred=pred, gt=gt, ignore=ignore, clicked=clicked)
    if not inner_k >= 1.0:
        raise ValueError(f"inner_k must be >= 1; got {inner_k}")
    B, H, W = gt.shape
    rngs = _per_sample_rngs(generator, B)
    device = gt.device
    if B == 0 or H == 0 or W == 0:  # no sample or no pixel: no click anywhere (valid all False)
        none = torch.zeros(B, dtype=torch.bool, device=device)
        return torch.zeros(B, 2, dtype=torch.int64, device=device), none, none.clone()
    p, g = pred.cpu().numpy(), gt.cpu().numpy()
    allowed = np.ones_like(g)
    for extra in (ignore, clicked):
        if extra is not None:
            allowed &= ~extra.cpu().numpy()
    regions = np.concatenate([g & ~p & allowed, p & ~g & allowed])  # 2B x H x W (FN then FP)
    dist = _edt_with_border(regions)  # 2B x H x W
    dmax = dist.reshape(2 * B, -1).max(axis=1, initial=0.0)  # 2B x HW -> 2B
    fn_max, fp_max = dmax[:B], dmax[B:]
    positive = fn_max > fp_max
    valid = np.maximum(fn_max, fp_max) > 0
    chosen = np.where(positive[:, None, None], dist[:B], dist[B:])  # B x H x W
    best = np.maximum(fn_max, fp_max)[:, None, None]
    cand = (chosen == best) if inner_k == 1.0 else (chosen > best / inner_k)
    coords = np.zeros((B, 2), dtype=np.int64)
    for b in np.flatnonzero(valid):  # uniform choice among the row-major candidates, one draw per clicked sample
        flat = np.flatnonzero(cand[b])  # (n,) indices into H x W
        coords[b] = divmod(int(flat[rngs[b].integers(flat.size)]), W)
    return (
        torch.from_numpy(coords.astype(np.int64)).to(device),
        torch.from_numpy(positive & valid).to(device),
        torch.from_numpy(valid).to(device),
    )


def sample_num_clicks(*, gamma: float = 0.6, max_clicks: int = 20, generator: Generator = None) -> int:
    """Number ``k`` of prediction-driven clicks to simulate in one training step.

    ``P(k) ∝ gamma**k`` for ``k in {0, ..., max_clicks}`` (authors' ``sample_num_clicks``).
    ``k`` starts at 0 because it counts the no-grad iterations *after* the first click: the
    InterFormer/Inter2Former/HRSAM/FocSAM loops always place a first click (or initial clicks),
    then run ``k`` rounds of predict -> click, so ``k = 0`` trains on the first click alone.
    The weights are normalised in log space, so any finite ``gamma > 0`` works (``gamma**k``
    itself overflows for large ``gamma``).
    """
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float, np.floating, np.integer)):
        raise TypeError(f"gamma must be a real number; got {type(gamma).__name__}")
    if not 0.0 < gamma < float("inf"):
        raise ValueError(f"gamma must be positive; got {gamma}")
    max_clicks = check_int(max_clicks, "max_clicks", minimum=0)
    log_w = np.arange(max_clicks + 1, dtype=np.float64) * np.log(float(gamma))
    probs = np.exp(log_w - log_w.max())  # the largest weight is 1: no overflow, no 0/0
    return int(_as_numpy_rng(generator).choice(max_clicks + 1, p=probs / probs.sum()))


def sample_initial_clicks(
    gt: torch.Tensor,
    *,
    max_pos: int = 5,
    max_neg: int = 3,
    min_spacing: float = 40.0,
    erode_radius: int = 5,
    ring_radii: tuple[int, int] = (5, 10),
    box_expand: float = 1.4,
    min_area: int = 1000,
    generator: Generator = None,
) -> Clicks:
    """Several first clicks per object (Inter2Former's optional ``sample_init_clicks``; YouHuang67/inter2former,
    ``inter2former/utils/init_clk.py``, used by ``inter2former/segmentors/interseg_bsqa.py``).

    Per sample with ``gt.sum() >= min_area``:

    * positives, ``n ~ U{1..max_pos}``, inside ``gt`` eroded by a square of radius
      ``erode_radius`` (the radius is halved until the eroded area is ``>= min_area``; radius 0
      is ``gt`` itself); the image border does not erode (as ``cv2.erode``);
    * box negatives, ``n ~ U{0..max_neg}``, in the object's bounding box scaled by
      ``box_expand`` about its centre, outside ``gt`` dilated by ``ring_radii[1]``;
    * ring negatives, ``n ~ U{0..max_neg}``, in ``dilate(gt, ring_radii[1]) - dilate(gt, ring_radii[0])``;

    each negative region is used only if its area is ``>= min_area``; dilations are squares of
    the given radius. Points of one polarity are drawn one by one, uniformly among region pixels
    at Euclidean distance ``>= min_spacing`` from the points already drawn, stopping early when
    none is left. (The authors instead draw 10 random groups and keep the first whose minimum
    pairwise distance reaches the spacing, else the best one; sequential drawing makes the
    spacing a guarantee.) Samples below ``min_area`` get no clicks; the authors then fall back
    to a standard :func:`next_click` for the whole batch.

    Args:
        gt: ``(B, H, W)`` bool object masks.

    Returns:
        :class:`Clicks` with, per sample, the positives, then box negatives, then ring negatives.
    """
    _check_masks(gt=gt)
    max_pos, max_neg = check_int(max_pos, "max_pos"), check_int(max_neg, "max_neg")
    erode_radius, min_area = check_int(erode_radius, "erode_radius"), check_int(min_area, "min_area")
    if max_pos < 1 or max_neg < 0 or min_spacing < 0 or erode_radius < 0 or min_area < 1 or box_expand <= 0:
        raise ValueError(
            "need max_pos >= 1, max_neg >= 0, min_spacing >= 0, erode_radius >= 0, min_area >= 1, box_expand > 0; "
            f"got {max_pos}, {max_neg}, {min_spacing}, {erode_radius}, {min_area}, {box_expand}"
        )
    inner, outer = check_int_sequence(ring_radii, "ring_radii")
    if not 0 <= inner < outer:
        raise ValueError(f"ring_radii must satisfy 0 <= inner < outer; got {ring_radii}")
    if gt.shape[0] == 0 or gt.shape[1] == 0 or gt.shape[2] == 0:  # no sample or no pixel: no clicks
        return Clicks.empty(gt.shape[0], device=gt.device)
    rng = _as_numpy_rng(generator)
    masks = gt.cpu()
    near, far = _dilate(masks, inner).numpy(), _dilate(masks, outer).numpy()
    boxes = _expanded_boxes(masks, box_expand).numpy()
    result = []
    for b, mask in enumerate(masks.numpy()):
        if mask.sum() < min_area:
            result.append([])
            continue
        radius = erode_radius
        pos_region = _erode(masks[b : b + 1], radius)[0].numpy()
        while radius > 0 and pos_region.sum() < min_area:
            radius //= 2
            pos_region = _erode(masks[b : b + 1], radius)[0].numpy()
        clicks = [(y, x, 1) for y, x in _spaced_points(pos_region, rng.integers(1, max_pos + 1), min_spacing, [], rng)]
        negatives: list[tuple[int, int]] = []
        for region in (boxes[b] & ~far[b], far[b] & ~near[b]):
            n = rng.integers(0, max_neg + 1)
            if region.sum() >= min_area:
                negatives += _spaced_points(region, n, min_spacing, negatives, rng)
        result.append(clicks + [(y, x, 0) for y, x in negatives])
    return Clicks.from_lists(result, device=gt.device)


def _spaced_points(
    region: np.ndarray, n: int, spacing: float, taken: list[tuple[int, int]], rng: np.random.Generator
) -> list[tuple[int, int]]:
    """Up to ``n`` pixels of ``region``, each ``>= spacing`` from every other and from ``taken``."""
    H, W = region.shape
    rows, cols = np.arange(H)[:, None], np.arange(W)[None, :]
    free = region.copy()

    def exclude(y: int, x: int) -> None:
        free[(rows - y) ** 2 + (cols - x) ** 2 < spacing**2] = False
        free[y, x] = False  # spacing 0 must still not repeat a pixel

    for y, x in taken:
        exclude(y, x)
    points = []
    for _ in range(n):
        idx = np.flatnonzero(free)
        if idx.size == 0:
            break
        y, x = divmod(int(idx[rng.integers(idx.size)]), W)
        points.append((y, x))
        exclude(y, x)
    return points


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Square dilation of a ``(B, H, W)`` bool mask; outside the image counts as background."""
    k = 2 * radius + 1
    return F.max_pool2d(mask[:, None].float(), k, stride=1, padding=radius)[:, 0] > 0


def _erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Square erosion; the image border does not erode (max-pool pads with -inf)."""
    return ~_dilate(~mask, radius)


def _expanded_boxes(mask: torch.Tensor, scale: float) -> torch.Tensor:
    """``(B, H, W)`` bool: each mask's bounding box scaled by ``scale`` about its centre, clipped.

    A pixel row ``i`` is inside when ``floor(c - s h / 2) <= i < ceil(c + s h / 2)`` with
    ``c`` the box centre and ``h`` its height in pixels (same for columns); empty masks give an
    empty box.
    """
    B, H, W = mask.shape
    out = torch.zeros_like(mask)
    for b in range(B):
        ys, xs = mask[b].nonzero(as_tuple=True)
        if ys.numel() == 0:
            continue
        (y0, y1), (x0, x1) = _scaled_span(ys, scale, H), _scaled_span(xs, scale, W)
        out[b, y0:y1, x0:x1] = True
    return out


def _scaled_span(idx: torch.Tensor, scale: float, size: int) -> tuple[int, int]:
    lo, hi = int(idx.min()), int(idx.max()) + 1
    centre, half = (lo + hi) / 2, scale * (hi - lo) / 2
    return max(int(np.floor(centre - half)), 0), min(int(np.ceil(centre + half)), size)


def _edt_with_border(regions: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance to the nearest non-region pixel or to outside the image.

    One ``distance_transform_edt`` call for the whole stack: each ``(H, W)`` map is zero-padded
    by 1 px and the maps are stacked vertically; a padded map's zero ring lies between a pixel
    and any other map, so no distance crosses maps.
    """
    N, H, W = regions.shape
    padded = np.pad(regions, ((0, 0), (1, 1), (1, 1)))  # N x (H+2) x (W+2)
    if not padded.any():
        return np.zeros((N, H, W))
    dist = distance_transform_edt(padded.reshape(N * (H + 2), W + 2))  # N(H+2) x (W+2)
    return dist.reshape(N, H + 2, W + 2)[:, 1:-1, 1:-1]  # N x H x W


def sample_generators(seed: int, sample_index: Sequence[int] | torch.Tensor) -> list[np.random.Generator]:
    """One numpy generator per sample, keyed by ``(seed, dataset index)`` (the ``generator`` of :func:`next_click`).

    ``np.random.default_rng([seed, index])`` (a :class:`numpy.random.SeedSequence` of both), so a
    sample draws the same stream whatever else is evaluated with it, in which order, batch or
    process. The authors instead draw every tie-break from Python's global ``random`` (``random.choice``
    in ``engine/utils/click_fast.py``), seeded 42 once per test run (``tools/test_no_viz.py``; both
    in YouHuang67/inter2former, YouHuang67/focsam and YouHuang67/High-Resolution-Segment-Anything),
    which makes a sample's tie-breaks depend on the samples before it.

    Args:
        seed: non-negative integer seed of the evaluation.
        sample_index: ``(B,)`` non-negative integer dataset indices.

    Returns:
        ``B`` independent generators.
    """
    seed = check_int(seed, "seed", minimum=0)
    return [np.random.default_rng([seed, i]) for i in check_int_sequence(sample_index, "sample_index", minimum=0)]


def _per_sample_rngs(generator: ClickGenerator, batch_size: int) -> list[np.random.Generator]:
    """``batch_size`` numpy generators: the given per-sample ones, or one shared generator repeated."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch_size:
            raise ValueError(f"generator must hold one numpy generator per sample ({batch_size}); got {len(generator)}")
        if not all(isinstance(g, np.random.Generator) for g in generator):
            kinds = sorted({type(g).__name__ for g in generator})
            raise TypeError(f"per-sample generators must be numpy.random.Generator; got {kinds}")
        return list(generator)
    return [_as_numpy_rng(generator)] * batch_size


def _as_numpy_rng(generator: Generator) -> np.random.Generator:
    if isinstance(generator, np.random.Generator):
        return generator
    if generator is None or isinstance(generator, torch.Generator):
        seed = torch.randint(0, 2**62, (1,), generator=generator).item()
        return np.random.default_rng(seed)
    raise TypeError(f"generator must be a numpy.random.Generator, torch.Generator or None; got {type(generator)}")


def _check_masks(**masks: torch.Tensor | None) -> None:
    shape = None
    for name, m in masks.items():
        if m is None:
            continue
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or m.dim() != 3:
            raise TypeError(f"{name} must be a bool tensor (B, H, W); got {_describe(m)}")
        if shape is not None and m.shape != shape:
            raise ValueError(f"{name} must have shape {tuple(shape)}; got {tuple(m.shape)}")
        shape = m.shape


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__
