"""Shared runner of the bad-input cases (``tests/test_bad_inputs*.py``); not a test module itself.

Each case is ``(block, kind, call, expected)``: ``expected`` is ``(exception type, regex of the
message)`` for a refusal, or a callable checking the output of an empty input (see :func:`empty_shape`).
"""
from __future__ import annotations

import pytest
import torch


def empty_shape(shape: tuple[int, ...]):
    """Check that an output (or the first of several) has exactly ``shape``."""
    def check(out):
        out = out[0] if isinstance(out, (list, tuple)) else out
        assert tuple(out.shape) == shape, (tuple(out.shape), shape)
    return check


def case_params(cases: list) -> list:
    """``pytest.param`` per case, with a readable id."""
    return [pytest.param(*case, id=f"{case[0]}-{case[1]}-{i}") for i, case in enumerate(cases)]


def run_edge_case(call, expected) -> None:
    """Run one case: the refusal must be ours (matching message, no nested traceback), or the empty output checked."""
    torch.manual_seed(0)
    if isinstance(expected, tuple):
        exc, match = expected
        with pytest.raises(exc, match=match) as info:
            call()
        assert "Traceback" not in str(info.value)
    else:
        assert expected(call()) is not False
