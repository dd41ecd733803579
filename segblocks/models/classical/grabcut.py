"""GrabCut (Rother, Kolmogorov & Blake, "GrabCut: Interactive Foreground Extraction using
Iterated Graph Cuts", SIGGRAPH 2004) seeded from clicks, with OpenCV's ``cv2.grabCut``.

GrabCut (§3) models foreground and background colours with two 5-component GMMs and alternates
GMM re-estimation with a graph-cut segmentation (Boykov & Jolly 2001) of the Gibbs energy
``E = U + V`` (Eqs. 7-11); the user's trimap fixes ``T_F`` / ``T_B`` pixels and leaves ``T_U``
to be solved. OpenCV implements exactly this with ``GC_FGD`` / ``GC_BGD`` (hard) and
``GC_PR_FGD`` / ``GC_PR_BGD`` (probable, i.e. ``T_U`` with an initial label).

Click rule (the paper's interaction, §3.3 "user editing", driven by clicks):

* **first decode** (no previous mask): the rectangle of the paper's initialisation is derived
  from the positive clicks -- their bounding box enlarged on every side by ``box_margin`` x the
  longest image side; inside it ``GC_PR_FGD``, outside ``GC_PR_BGD`` (probable, not hard
  background, so the object may grow past the box);
* **later decodes**: the previous segmentation is the initial labelling (``GC_PR_FGD`` inside,
  ``GC_PR_BGD`` outside) -- the paper's "further user editing" on top of the current result;
* every click is a brush stroke: a disk of ``seed_radius`` pixels, ``GC_FGD`` for a positive
  click, ``GC_BGD`` for a negative one (hard constraints, never relabelled).

GrabCut then runs ``iterations`` rounds from that mask (``GC_INIT_WITH_MASK``); the GMMs are
re-fitted from scratch at every click, so ``decode`` depends only on the clicks and the previous
mask. The output is hard (``±10`` logits).

Limitation of this rule: after the first click the probable foreground is the previous mask, so a
positive click on a second, disconnected object adds its seed disk and whatever the colour models
pull in around it, not the whole object (the benchmarks hold one object per image).
"""
from __future__ import annotations

import numpy as np

from segblocks.models._registry import register_model
from segblocks.models.classical.base import HARD_LOGIT, ClassicalClickModel, border_ring, require_module
from segblocks.ops._checks import check_finite_float, check_int

__all__ = ["GrabCutClickModel", "grabcut_clicks"]

#: Fewest pixels each of the two GMMs needs (OpenCV fits 5 components with k-means).
_MIN_SAMPLES = 10


class GrabCutClickModel(ClassicalClickModel):
    """GrabCut behind the click protocol (see the module docstring for the click rule).

    Args:
        iterations: GrabCut rounds per click (GMM re-estimation + graph cut), OpenCV's ``iterCount``.
        box_margin: enlargement of the first box around the positive clicks, as a fraction of the
            longest image side on every side.
        seed_radius, max_side: see :class:`~segblocks.models.classical.base.ClassicalClickModel`.
    """

    def __init__(
        self, *, iterations: int = 5, box_margin: float = 0.2, seed_radius: float = 5.0, max_side: int | None = 320
    ) -> None:
        super().__init__(seed_radius=seed_radius, max_side=max_side)
        self.iterations = check_int(iterations, "iterations", owner="GrabCutClickModel", minimum=1)
        self.box_margin = check_finite_float(box_margin, "box_margin", owner="GrabCutClickModel")
        if self.box_margin < 0:
            raise ValueError(f"GrabCutClickModel: box_margin must be >= 0, got {box_margin}")
        require_module("cv2", package="opencv-python-headless", owner="grabcut_clicks")

    def extra_repr(self) -> str:
        return f"iterations={self.iterations}, box_margin={self.box_margin}, " + super().extra_repr()

    def initial_mask(self, positive: np.ndarray, negative: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
        """The trimap handed to ``cv2.grabCut``: ``(h, w)`` uint8 of OpenCV's ``GC_*`` values."""
        cv2 = require_module("cv2", package="opencv-python-headless", owner="grabcut_clicks")
        h, w = positive.shape
        mask = np.full((h, w), cv2.GC_PR_BGD, dtype=np.uint8)
        if previous is None:  # the paper's rectangle, from the positive clicks
            ys, xs = np.nonzero(positive)
            margin = int(round(self.box_margin * max(h, w)))
            mask[max(ys.min() - margin, 0) : ys.max() + margin + 1, max(xs.min() - margin, 0) : xs.max() + margin + 1] = cv2.GC_PR_FGD
        else:
            mask[previous] = cv2.GC_PR_FGD
        if (mask == cv2.GC_PR_BGD).sum() + negative.sum() < _MIN_SAMPLES:  # keep some background to fit its GMM
            mask[border_ring(h, w)] = cv2.GC_PR_BGD
        mask[negative] = cv2.GC_BGD
        mask[positive] = cv2.GC_FGD
        return mask

    def segment(self, image: np.ndarray, positive: np.ndarray, negative: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
        """Foreground logits ``(h, w)`` (``±10``) of one image."""
        cv2 = require_module("cv2", package="opencv-python-headless", owner="grabcut_clicks")
        mask = self.initial_mask(positive, negative, previous)
        fg_like = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
        if fg_like.sum() >= _MIN_SAMPLES and (~fg_like).sum() >= _MIN_SAMPLES:  # both GMMs can be fitted
            bgd_model, fgd_model = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
            bgr = np.ascontiguousarray(image[..., ::-1])  # OpenCV's channel order; h x w x 3
            cv2.grabCut(bgr, mask, None, bgd_model, fgd_model, self.iterations, cv2.GC_INIT_WITH_MASK)
            fg_like = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
        return np.where(fg_like, HARD_LOGIT, -HARD_LOGIT).astype(np.float32)


@register_model
def grabcut_clicks(
    *, iterations: int = 5, box_margin: float = 0.2, seed_radius: float = 5.0, max_side: int | None = 320
) -> GrabCutClickModel:
    """Training-free GrabCut (Rother et al. 2004) driven by clicks (OpenCV ``cv2.grabCut``).

    Needs the ``classical`` extra (``pip install 'segblocks[classical]'``).
    """
    return GrabCutClickModel(iterations=iterations, box_margin=box_margin, seed_radius=seed_radius, max_side=max_side)
