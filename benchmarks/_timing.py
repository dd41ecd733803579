"""Shared timing helper for the benchmark scripts (run them as ``python benchmarks/<script>.py``)."""
from __future__ import annotations

import time
from typing import Callable

import torch

__all__ = ["time_ms"]


def time_ms(fn: Callable[[], object], device: torch.device, iters: int) -> float:
    """Median wall time of ``fn()`` in milliseconds after one warm-up call (compilation, caches).

    On CUDA the device is synchronised around every call so asynchronous kernels are counted.
    """
    fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]
