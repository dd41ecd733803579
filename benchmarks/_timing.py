"""Shared timing helper for the benchmark scripts (run them as ``python benchmarks/<script>.py``)."""
from __future__ import annotations

import time
from typing import Callable

import torch

__all__ = ["time_ms"]


def time_ms(fn: Callable[[], object], device: torch.device, iters: int, *, clock: Callable[[], float] = time.perf_counter) -> float:
    """Median wall time of ``fn()`` in milliseconds after one warm-up call (compilation, caches).

    On CUDA the device is synchronised around every call so asynchronous kernels are counted.
    ``clock=time.thread_time`` measures the calling thread's CPU time instead: on a shared,
    loaded machine it leaves out the time other processes hold the core (single-threaded CPU
    runs only; it misses work done on other threads).
    """
    fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = clock()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((clock() - start) * 1e3)
    return sorted(times)[len(times) // 2]
