"""Shared runner of the bad-input cases (``tests/test_bad_inputs*.py``); not a test module itself.

Each case is ``(block, kind, call, expected)``: ``expected`` is ``(exception type, regex of the
message)`` for a refusal, or a callable checking the output of an empty input (see :func:`empty_shape`).
"""
from __future__ import annotations

import re

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


def edge_case_failures(call, expected) -> list[str]:
    """Run one case; what went wrong (empty when the block behaved): a refusal must be ours (the
    expected type, a matching message, no nested traceback), an empty input's output must pass its check.

    Other exceptions propagate, so a crash inside torch or numpy fails the test with its traceback.
    """
    torch.manual_seed(0)
    if isinstance(expected, tuple):
        exc, match = expected
        try:
            call()
        except exc as err:
            message = str(err)
            failures = [] if re.search(match, message) else [f"message {message!r} does not match {match!r}"]
            return failures + (["the message holds a nested traceback"] if "Traceback" in message else [])
        return [f"no {exc.__name__} raised"]
    try:
        ok = expected(call())
    except AssertionError as err:
        return [f"output check failed: {err}"]
    return ["output check returned False"] if ok is False else []
