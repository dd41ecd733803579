"""Input validation shared by every public block and op: clear errors from Python ints only.

Every check here reads Python values and tensor *metadata* (``shape``, ``dtype``, ``device``),
never tensor contents, so validating a CUDA input costs no host synchronisation. Messages name
the owner (``"varlen_attention: ..."``), the argument and what was expected, e.g.
``"FlexibleLocalAttention: x must be (B, N, C=16), got shape (35, 16)"``.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Sequence, Union

import torch

__all__ = [
    "check_finite_float",
    "check_int",
    "check_int_pairs",
    "check_int_sequence",
    "check_module_dtype",
    "check_positive_int",
    "check_same",
    "check_tensor",
]

#: One entry of a ``shape=`` spec: a free named size (``"B"``), a fixed size (``16``), a named
#: fixed size (``("C", 16)``, shown ``C=16``) or ``None`` (free, shown ``*``).
Dim = Union[str, int, tuple[str, int], None]


def _prefix(owner: str) -> str:
    return f"{owner}: " if owner else ""


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return f"{type(x).__name__} {x!r}"


def _shape_text(shape: Sequence[Dim]) -> str:
    parts = []
    for d in shape:
        if d is None:
            parts.append("*")
        elif isinstance(d, tuple):
            parts.append(f"{d[0]}={d[1]}")
        else:
            parts.append(str(d))
    return "(" + ", ".join(parts) + (",)" if len(parts) == 1 else ")")


def check_tensor(
    x: Any,
    name: str,
    *,
    owner: str = "",
    ndim: int | Iterable[int] | None = None,
    shape: Sequence[Dim] | None = None,
    dtype: str | torch.dtype | Iterable[torch.dtype] | None = "floating",
) -> tuple[int, ...]:
    """Check that ``x`` is a tensor of the expected rank, sizes and dtype; return its shape.

    Args:
        x: the value to check.
        name: argument name used in the message.
        owner: block or op name prefixed to the message.
        ndim: required rank (or set of ranks); implied by ``shape``.
        shape: per-dimension spec (see :data:`Dim`); named free sizes only document the message.
        dtype: ``"floating"`` (any real floating dtype), ``"integer"`` (any integer dtype, not
            bool), ``"bool"``, one ``torch.dtype``, a collection of them, or None (any).

    Raises:
        TypeError: not a tensor, or a wrong dtype.
        ValueError: a wrong rank or size.
    """
    p = _prefix(owner)
    expected = _shape_text(shape) if shape is not None else None
    if not isinstance(x, torch.Tensor):
        what = f"a tensor {expected}" if expected else "a tensor"
        raise TypeError(f"{p}{name} must be {what}, got {_describe(x)}")
    if dtype is not None:
        if dtype == "floating":
            ok, want = x.is_floating_point(), "a floating point dtype"
        elif dtype == "integer":
            ok = not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool
            want = "an integer dtype"
        elif dtype == "bool":
            ok, want = x.dtype == torch.bool, "torch.bool"
        elif isinstance(dtype, torch.dtype):
            ok, want = x.dtype == dtype, str(dtype)
        else:
            allowed = tuple(dtype)
            ok, want = x.dtype in allowed, "one of " + ", ".join(map(str, allowed))
        if not ok:
            raise TypeError(f"{p}{name} must have {want}, got {_describe(x)}")
    if shape is not None:
        ndim = len(shape)
    if ndim is not None:
        ranks = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in ranks:
            what = expected or f"a {' or '.join(map(str, ranks))}-D tensor"
            raise ValueError(f"{p}{name} must be {what}, got shape {tuple(x.shape)}")
    if shape is not None:
        for size, d in zip(x.shape, shape):
            want_size = d[1] if isinstance(d, tuple) else d if isinstance(d, int) else None
            if want_size is not None and size != want_size:
                raise ValueError(f"{p}{name} must be {expected}, got shape {tuple(x.shape)}")
    return tuple(x.shape)


def check_same(tensors: dict[str, torch.Tensor], *, owner: str = "", dtype: bool = True, device: bool = True) -> None:
    """All named tensors share a dtype (``dtype=True``) and a device (``device=True``)."""
    p = _prefix(owner)
    items = [(n, t) for n, t in tensors.items() if t is not None]
    if dtype and len({t.dtype for _, t in items}) > 1:
        got = ", ".join(f"{n} {t.dtype}" for n, t in items)
        raise TypeError(f"{p}inputs must share a dtype, got {got}")
    if device and len({t.device for _, t in items}) > 1:
        got = ", ".join(f"{n} on {t.device}" for n, t in items)
        raise ValueError(f"{p}inputs must be on one device, got {got}")


def check_module_dtype(x: torch.Tensor, module: torch.nn.Module, name: str = "x", *, owner: str = "") -> None:
    """``x`` has the dtype of ``module``'s floating parameters (skipped under autocast).

    Without this a float64 input to a float32 module fails deep inside a matmul with a message
    that names neither the block nor the fix.
    """
    if torch.is_autocast_enabled(x.device.type):
        return
    param = next((t for t in module.parameters() if t.is_floating_point()), None)
    if param is not None and param.dtype != x.dtype:
        raise TypeError(
            f"{_prefix(owner)}{name} has dtype {x.dtype} but the module's parameters are {param.dtype}; "
            f"cast one to the other (e.g. module.to({x.dtype}) or {name}.to({param.dtype})) or run under torch.autocast"
        )


def check_int(value: Any, name: str, *, owner: str = "", minimum: int | None = None) -> int:
    """``value`` as a Python int; rejects bools, floats (``2.5`` would be truncated) and tensors.

    Raises:
        TypeError: not an integer (``numbers.Integral``; numpy integers are accepted).
        ValueError: below ``minimum``.
    """
    p = _prefix(owner)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{p}{name} must be an int, got {_describe(value)}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{p}{name} must be >= {minimum}, got {value}")
    return value


def check_positive_int(value: Any, name: str, *, owner: str = "") -> int:
    """``value`` as a Python int ``>= 1`` (see :func:`check_int`)."""
    return check_int(value, name, owner=owner, minimum=1)


def check_int_sequence(values: Any, name: str, *, owner: str = "", minimum: int | None = None) -> tuple[int, ...]:
    """A sequence of ints (an integer tensor is read once with ``tolist``) as a tuple of Python ints."""
    p = _prefix(owner)
    if isinstance(values, torch.Tensor):
        if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool or values.dim() != 1:
            raise TypeError(f"{p}{name} must be a sequence of ints or a 1-D integer tensor, got {_describe(values)}")
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{p}{name} must be a sequence of ints, got {_describe(values)}")
    values = list(values)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{p}{name} must be a sequence of ints, got {values!r}")
    out = tuple(int(v) for v in values)
    if minimum is not None and any(v < minimum for v in out):
        bound = "non-negative" if minimum == 0 else f">= {minimum}"
        raise ValueError(f"{p}{name} must be {bound}, got {list(out)}")
    return out


def check_int_pairs(values: Any, name: str, *, owner: str = "", minimum: int | None = None) -> tuple[tuple[int, int], ...]:
    """A non-empty sequence of ``(h, w)`` int pairs, each ``>= minimum``."""
    p = _prefix(owner)
    try:
        pairs = [tuple(v) for v in values]
    except TypeError:
        raise TypeError(f"{p}{name} must be a sequence of (h, w) pairs, got {values!r}") from None
    if not pairs:
        raise ValueError(f"{p}{name} must be a non-empty sequence of (h, w) pairs, got {values!r}")
    if any(len(v) != 2 for v in pairs):
        raise ValueError(f"{p}{name} must be a sequence of (h, w) pairs, got {values!r}")
    out = tuple(
        (check_int(h, name, owner=owner), check_int(w, name, owner=owner)) for h, w in pairs
    )
    if minimum is not None and any(h < minimum or w < minimum for h, w in out):
        raise ValueError(f"{p}{name} must be (h, w) pairs with h, w >= {minimum}, got {list(out)}")
    return out


def check_finite_float(value: Any, name: str, *, owner: str = "", positive: bool = False) -> float:
    """``value`` as a finite Python float (NaN or inf would silently poison every output)."""
    p = _prefix(owner)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{p}{name} must be a real number, got {_describe(value)}")
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"{p}{name} must be a finite{' positive' if positive else ''} number, got {value}")
    return value
