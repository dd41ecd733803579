"""Random walker (Grady, "Random Walks for Image Segmentation", TPAMI 2006) seeded from clicks.

Grady §2: each unseeded pixel gets the probability that a random walker leaving it first reaches
a foreground seed, on the 4-connected pixel graph with Gaussian edge weights
``w_ij = exp(-beta (g_i - g_j)^2)`` (Eq. 1), which is the solution of the Dirichlet problem
``L_U x = -B^T m`` on the graph Laplacian (Eq. 10). Implementation: scikit-image's
``skimage.segmentation.random_walker`` (which normalises ``beta`` by the image's spread), with
``return_full_prob=True``.

Seeds (see :mod:`segblocks.models.classical.base`): disks around the positive clicks are label 1,
disks around the negative clicks label 2. Before the first negative click the random walker has
no background seed, so the one-pixel border of the image is used as background seed (the object
is assumed not to fill the frame); it is dropped as soon as a negative click exists. The logits
are ``log(p / (1 - p))`` of the foreground probability ``p`` (clipped to ``[1e-6, 1 - 1e-6]``).
"""
from __future__ import annotations

import numpy as np

from segblocks.models._registry import register_model
from segblocks.models.classical.base import HARD_LOGIT, ClassicalClickModel, border_ring, require_module
from segblocks.ops._checks import check_finite_float

__all__ = ["RandomWalkerClickModel", "random_walker_clicks"]

_MODES = ("cg", "cg_j", "cg_mg", "bf")
_EPS = 1e-6


class RandomWalkerClickModel(ClassicalClickModel):
    """Grady's random walker behind the click protocol (see the module docstring).

    Args:
        beta: edge-weight sharpness of Grady Eq. 1 (scikit-image's default 130).
        mode: scikit-image solver: ``"bf"`` (direct sparse solve, exact; the default, about as fast
            as the iterative ones on a 320-pixel grid), ``"cg_j"`` (conjugate gradient, Jacobi
            preconditioner; its probabilities may leave [0, 1] at ``tol=1e-3``), ``"cg"`` or
            ``"cg_mg"`` (needs pyamg).
        tol: tolerance of the iterative solvers.
        seed_radius, max_side: see :class:`~segblocks.models.classical.base.ClassicalClickModel`.
    """

    def __init__(
        self, *, beta: float = 130.0, mode: str = "bf", tol: float = 1e-3, seed_radius: float = 5.0,
        max_side: int | None = 320,
    ) -> None:
        super().__init__(seed_radius=seed_radius, max_side=max_side)
        self.beta = check_finite_float(beta, "beta", owner="RandomWalkerClickModel", positive=True)
        self.tol = check_finite_float(tol, "tol", owner="RandomWalkerClickModel", positive=True)
        if mode not in _MODES:
            raise ValueError(f"RandomWalkerClickModel: mode must be one of {_MODES}, got {mode!r}")
        self.mode = mode
        require_module("skimage.segmentation", package="scikit-image", owner="random_walker_clicks")

    def extra_repr(self) -> str:
        return f"beta={self.beta}, mode={self.mode!r}, tol={self.tol}, " + super().extra_repr()

    def segment(self, image: np.ndarray, positive: np.ndarray, negative: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
        """Foreground logits ``(h, w)`` of one image (``previous`` is not used: the walk depends on the seeds only)."""
        segmentation = require_module("skimage.segmentation", package="scikit-image", owner="random_walker_clicks")
        markers = np.zeros(positive.shape, dtype=np.int32)
        if not negative.any():  # no background seed yet: the image border stands in for one
            markers[border_ring(*positive.shape)] = 2
        markers[negative] = 2
        markers[positive] = 1
        if not (markers == 2).any():  # a one- or two-pixel-wide image covered by the positive disk
            return np.full(positive.shape, HARD_LOGIT, dtype=np.float32)
        data = image.astype(np.float64) / 255.0  # h x w x 3
        prob = segmentation.random_walker(
            data, markers, beta=self.beta, mode=self.mode, tol=self.tol, channel_axis=-1, return_full_prob=True
        )[0]  # h x w, probability of label 1
        prob = np.clip(prob, _EPS, 1.0 - _EPS)
        return (np.log(prob) - np.log1p(-prob)).astype(np.float32)


@register_model
def random_walker_clicks(
    *, beta: float = 130.0, mode: str = "bf", tol: float = 1e-3, seed_radius: float = 5.0, max_side: int | None = 320
) -> RandomWalkerClickModel:
    """Training-free random walker (Grady 2006) seeded by disks around the clicks (scikit-image).

    Needs the ``classical`` extra (``pip install 'segblocks[classical]'``).
    """
    return RandomWalkerClickModel(beta=beta, mode=mode, tol=tol, seed_radius=seed_radius, max_side=max_side)
