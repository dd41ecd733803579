"""segblocks: reusable segmentation building blocks with Triton kernels and Lightning recipes.

Every catalogued block is importable from the top level (``from segblocks import
TokenRecalibration``); see :func:`list_blocks`. Imports are lazy: ``import segblocks`` loads no
model code and never imports triton, xformers, mamba_ssm or albumentations.
"""
from __future__ import annotations

from segblocks._catalog import BLOCKS, PAPERS, BlockInfo, list_blocks

__version__ = "0.1.0"
__all__ = ["BlockInfo", "PAPERS", "list_blocks", *(b.name for b in BLOCKS)]

_BLOCKS = {b.name: b for b in BLOCKS}


def __getattr__(name: str):
    info = _BLOCKS.get(name)
    if info is None:
        raise AttributeError(f"module 'segblocks' has no attribute {name!r}")
    value = globals()[name] = info.load()
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
