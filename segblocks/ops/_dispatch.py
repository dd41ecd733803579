"""Capability-based backend dispatch shared by every functional op.

Each op (e.g. ``ms_deform_attn``) owns an ordered list of :class:`Backend` objects. A backend
declares what it supports (devices, dtypes, gradients, an importable module) and answers
:meth:`Backend.not_supported_reasons` with human-readable reasons, in the spirit of xformers'
``not_supported_reasons``. :func:`dispatch` picks the first backend with no reasons, or the one
the caller names, and otherwise raises one error that lists why every backend refused.

Optional modules (triton, xformers, mamba_ssm) are only imported when a backend is actually
loaded, so ``import segblocks`` never imports them. Process-wide state: the cached answer of
:func:`module_available` (installed packages do not change while a process runs) and, for ops
that opt in with a ``memo_key`` (the grouped GEMM, asked on every sub-millisecond HMoE call),
the remembered choice per key (``_CHOICES``: a pure function of the key, which holds everything
their checks read). Every other choice is made per call from the inputs (and the ``backend=``
argument the caller passes).
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch

__all__ = [
    "Backend",
    "BackendUnavailable",
    "dispatch",
    "explain",
    "module_available",
    "triton_check",
    "triton_usable",
]


class BackendUnavailable(RuntimeError):
    """No backend (or not the requested one) can run the given inputs."""


@functools.lru_cache(maxsize=None)
def module_available(name: str) -> bool:
    """True when ``name`` can be imported (checked without importing it).

    Probed once per process and cached (``find_spec`` walks ``sys.path``, tens of µs, and the
    dispatch asks on every call); ``module_available.cache_clear()`` re-probes after installing
    a package into a running interpreter.
    """
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def triton_usable(device: torch.device) -> list[str]:
    """Reasons why a Triton kernel cannot run on ``device`` (empty list: it can).

    Triton runs on CUDA devices, and on CPU tensors only under ``TRITON_INTERPRET=1``
    (the interpreter used by the test-suite).
    """
    reasons = [] if module_available("triton") else ["triton is not installed"]
    kind = device.type
    if kind == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            reasons.append("device=cpu needs TRITON_INTERPRET=1 (Triton compiles for CUDA only)")
    elif kind != "cuda":
        reasons.append(f"device={kind} (supported: cuda, or cpu with TRITON_INTERPRET=1)")
    return reasons


#: dtypes the Triton interpreter runs on CPU tensors (no bf16; fp64 is not a kernel dtype).
_INTERPRETER_DTYPES = (torch.float32, torch.float16)


def triton_check(first: torch.Tensor, *tensors: torch.Tensor, requested: str = "auto", **_: Any) -> list[str]:
    """Shared ``Backend.check`` of every Triton backend (empty list: it can run).

    Reasons: no triton / wrong device (:func:`triton_usable`); on CPU, a floating input the
    interpreter does not run (bf16, fp64); and, on CPU, ``backend="auto"`` never picks the
    interpreter (it is for testing: only used when asked for with ``backend="triton"``).
    Op-specific limits (head-dim caps) stay in the op's own check, which calls this first.
    """
    device = first.device
    reasons = triton_usable(device)
    if device.type == "cpu":
        bad = sorted({str(t.dtype) for t in (first, *tensors) if t.dtype not in _INTERPRETER_DTYPES and t.is_floating_point()})
        if bad:
            reasons.append(f"dtype={bad} is not run by the Triton interpreter on cpu (fp32/fp16 only)")
        if requested == "auto" and not reasons:
            reasons.append("the Triton interpreter on cpu is only used when asked for (backend='triton')")
    return reasons


@dataclass(frozen=True)
class Backend:
    """One implementation of an op, loaded lazily.

    Args:
        name: short name users pass as ``backend=``.
        loader: ``"package.module:function"`` (imported on first use) or a callable.
        devices: device types it runs on (``{"cpu", "cuda"}``).
        dtypes: supported floating dtypes of the inputs.
        supports_grad: False if the backend has no backward.
        requires: importable module names it needs (e.g. ``("xformers",)``).
        check: extra ``check(*tensors, **kwargs) -> list[str]`` for op-specific limits.
        auto: whether automatic selection may pick it (the reference oracle sets False when a
            faster always-available path exists, but it is still selectable by name).
    """

    name: str
    loader: str | Callable
    devices: frozenset[str] = frozenset({"cpu", "cuda"})
    dtypes: frozenset[torch.dtype] = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
    supports_grad: bool = True
    requires: tuple[str, ...] = ()
    check: Callable[..., list[str]] | None = None
    auto: bool = True
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def not_supported_reasons(self, tensors: Sequence[torch.Tensor], **kwargs: Any) -> list[str]:
        reasons = [f"{m} is not installed" for m in self.requires if not module_available(m)] if self.requires else []
        bad_devices = {t.device.type for t in tensors} - self.devices
        if bad_devices:
            reasons.append(f"device={', '.join(sorted(bad_devices))} (supported: {sorted(self.devices)})")
        bad = {t.dtype for t in tensors if t.dtype not in self.dtypes and t.is_floating_point()}
        if bad:
            reasons.append(f"dtype={sorted(map(str, bad))} (supported: {sorted(map(str, self.dtypes))})")
        if not self.supports_grad and torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            reasons.append("has no backward (inputs require grad)")
        if self.check is not None and not reasons:
            reasons.extend(self.check(*tensors, **kwargs))
        return reasons

    def load(self) -> Callable:
        if callable(self.loader):
            return self.loader
        if "fn" not in self._cache:
            module, _, attr = self.loader.partition(":")
            self._cache["fn"] = getattr(importlib.import_module(module), attr)
        return self._cache["fn"]


#: Choices remembered by :func:`_select` for callers that pass a ``memo_key``; refusals are never
#: remembered (the error is rebuilt with its reasons every time).
_CHOICES: dict[tuple, Backend] = {}


def _select(op: str, backends: Iterable[Backend], tensors: Sequence[torch.Tensor], backend: str, kwargs: dict,
            memo_key: tuple | None = None) -> Backend:
    """First backend (in order, or the named one) with no refusal reason; raises with every reason.

    ``memo_key``: for ops called in tight loops (sub-millisecond HMoE calls, where the checks cost
    as much as a small kernel), a tuple of everything the op's backend checks read from
    ``tensors``, ``kwargs`` and the process (device, dtypes, autograd, environment): the choice is
    then computed once per key. The op vouches for the key (and tests it against fresh choices).
    """
    if memo_key is not None:
        memo_key = (op, backend, *memo_key)
        chosen = _CHOICES.get(memo_key)
        if chosen is not None:
            return chosen
    backends = tuple(backends)
    if backend != "auto" and all(b.name != backend for b in backends):
        names = [b.name for b in backends]
        raise ValueError(f"{op}: unknown backend {backend!r}; expected 'auto' or one of {names}")
    refusals = []  # (name, reasons): the message is only built when no backend can run
    for b in backends:
        if backend != "auto" and b.name != backend:
            continue
        if backend == "auto" and not b.auto:
            continue
        reasons = b.not_supported_reasons(tensors, **kwargs)
        if not reasons:
            if memo_key is not None:
                _CHOICES[memo_key] = b
            return b
        refusals.append((b.name, reasons))
    lines = [f"`{name}` is not supported because: " + "; ".join(reasons) for name, reasons in refusals]
    raise BackendUnavailable(f"No backend found for `{op}` with backend={backend!r}:\n  " + "\n  ".join(lines))


def explain(op: str, backends: Iterable[Backend], tensors: Sequence[torch.Tensor], **kwargs: Any) -> dict[str, list[str]]:
    """Map every backend name to its refusal reasons for these inputs (empty list = usable)."""
    return {b.name: b.not_supported_reasons(tensors, **kwargs) for b in backends}


def dispatch(
    op: str,
    backends: Iterable[Backend],
    tensors: Sequence[torch.Tensor],
    backend: str = "auto",
    **kwargs: Any,
) -> Callable:
    """Return the implementation to run for ``tensors`` (first usable backend in order).

    ``kwargs`` are forwarded to the backends' ``check`` callables (op-specific limits such as a
    maximum head dimension).
    """
    return _select(op, backends, tensors, backend, kwargs).load()
