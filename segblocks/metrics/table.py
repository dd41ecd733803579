"""A small aligned text table for logging metric dicts (e.g. at the end of validation)."""
from __future__ import annotations

import math
from collections.abc import Mapping

from torch import Tensor

__all__ = ["format_metrics_table"]


def format_metrics_table(metrics: Mapping[str, float | Tensor], *, title: str = "metrics", digits: int = 2) -> str:
    """Format ``{name: value}`` as a two-column table, names left-aligned and values right-aligned.

    Args:
        metrics: scalar values (floats or one-element tensors), shown in the given order.
        title: first line of the table.
        digits: decimals shown for each value; NaN shows as ``nan``.

    Returns:
        The table as a multi-line string without a trailing newline.

    Example:
        >>> print(format_metrics_table({"PQ": 52.123, "mIoU": float("nan")}, title="val"))
        val
        metric  value
        ------  -----
        PQ      52.12
        mIoU      nan
    """
    cells = []
    for name, value in metrics.items():
        if isinstance(value, Tensor):
            if value.numel() != 1:
                raise ValueError(f"expected a scalar value for metric {name!r}, got shape {tuple(value.shape)}")
            value = value.item()
        if not isinstance(value, (int, float)):
            raise TypeError(f"expected a number for metric {name!r}, got {type(value).__name__}")
        cells.append((str(name), "nan" if math.isnan(value) else f"{value:.{digits}f}"))
    name_width = max([len("metric")] + [len(n) for n, _ in cells])
    value_width = max([len("value")] + [len(v) for _, v in cells])
    rows = [f"{'metric':<{name_width}}  {'value':>{value_width}}", f"{'-' * name_width}  {'-' * value_width}"]
    rows += [f"{n:<{name_width}}  {v:>{value_width}}" for n, v in cells]
    return "\n".join([title, *rows])
