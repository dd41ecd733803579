"""Classical, training-free click baselines as :class:`~segblocks.interactive.InteractiveModel`\\ s.

* ``random_walker_clicks``: Grady's random walker (TPAMI 2006) via scikit-image;
* ``grabcut_clicks``: GrabCut (Rother et al., SIGGRAPH 2004) via OpenCV.

Both are seeded by disks around the clicks and need no weights, so they segment real photos in the
demo and give the NoC protocol a check against published baseline figures
(``benchmarks/bench_classical_noc.py``). Their packages come with the ``classical`` extra and are
imported only when a model is built.
"""
from segblocks.models.classical.base import ClassicalClickModel, ClassicalState, click_seeds
from segblocks.models.classical.grabcut import GrabCutClickModel, grabcut_clicks
from segblocks.models.classical.random_walker import RandomWalkerClickModel, random_walker_clicks

__all__ = [
    "ClassicalClickModel",
    "ClassicalState",
    "GrabCutClickModel",
    "RandomWalkerClickModel",
    "click_seeds",
    "grabcut_clicks",
    "random_walker_clicks",
]
