"""Bad-input cases of the FocSAM blocks (collected by the guard in tests/test_bad_inputs.py).

Same four kinds as there (shape, dtype, empty, non_integer); plus the FocSAM edge cases of the
issue: empty masks, a box covering the whole image, a one-pixel object and inputs that are not a
multiple of the window all run.
"""
from __future__ import annotations

import pytest
import torch
from _edge_cases import case_params, edge_case_failures, empty_shape as _empty

from segblocks.blocks.focsam import DynamicWindows, FocusRefiner, PDyReLU, RefineBlock
from segblocks.ops.deform_conv import modulated_deform_conv2d

F64 = torch.float64




def dwin():
    return DynamicWindows(window_size=4, shift=2)


def block():
    return RefineBlock(embed_dim=8, num_heads=2, window_size=4)


def refiner():
    return FocusRefiner(embed_dim=16, depth=2, num_heads=2, window_size=4)


def dcn(b=2, dtype=torch.float32):
    return (torch.randn(b, 4, 5, 6, dtype=dtype), torch.randn(b, 18, 5, 6, dtype=dtype), torch.rand(b, 9, 5, 6, dtype=dtype),
            torch.randn(4, 4, 3, 3, dtype=dtype))


CASES = [
    ("DynamicWindows", "shape", lambda: dwin()(torch.randn(3, 6, 7), torch.ones(3, 1, 6, 7)), (ValueError, r"x must be \(B, C, H, W\)")),
    ("DynamicWindows", "shape", lambda: dwin()(torch.randn(2, 3, 6, 7), torch.ones(2, 1, 6, 6)), (ValueError, r"box_mask must be \(B=2, 1, H=6, W=7\)")),
    ("DynamicWindows", "dtype", lambda: dwin()(torch.randn(2, 3, 6, 7).long(), torch.ones(2, 1, 6, 7)), (TypeError, "floating point")),
    ("DynamicWindows", "empty", lambda: dwin()(torch.randn(0, 3, 6, 7), torch.ones(0, 1, 6, 7)), _empty((0, 16, 3))),
    ("DynamicWindows", "empty", lambda: dwin()(torch.randn(2, 3, 6, 7), torch.zeros(2, 1, 6, 7)), _empty((0, 16, 3))),
    ("DynamicWindows", "non_integer", lambda: DynamicWindows(window_size=4.5), (TypeError, "window_size must be an int")),
    ("DynamicWindows", "non_integer", lambda: DynamicWindows(window_size=4, shift=4), (ValueError, "shift must be < window_size")),
    ("PDyReLU", "shape", lambda: PDyReLU(channels=6)(torch.randn(5, 6), torch.randn(5, 1, 6)), (ValueError, r"x must be \(n, N, C=6\)")),
    ("PDyReLU", "shape", lambda: PDyReLU(channels=6)(torch.randn(2, 5, 6), torch.randn(2, 6)), (ValueError, r"query must be \(n=2, 1, C=6\)")),
    ("PDyReLU", "dtype", lambda: PDyReLU(channels=6)(torch.randn(2, 5, 6, dtype=F64), torch.randn(2, 1, 6, dtype=F64)), (TypeError, "float64")),
    ("PDyReLU", "empty", lambda: PDyReLU(channels=6)(torch.randn(0, 5, 6), torch.randn(0, 1, 6)), _empty((0, 5, 6))),
    ("PDyReLU", "empty", lambda: PDyReLU(channels=6)(torch.randn(2, 0, 6), torch.randn(2, 1, 6)), _empty((2, 0, 6))),
    ("PDyReLU", "non_integer", lambda: PDyReLU(channels=6.0), (TypeError, "channels must be an int")),
    ("RefineBlock", "shape", lambda: block()(torch.randn(2, 4, 5, 6), torch.randn(2, 1, 8), torch.ones(2, 1, 5, 6)), (ValueError, r"x must be \(B, C=8, H, W\)")),
    ("RefineBlock", "shape", lambda: block()(torch.randn(2, 8, 5, 6), torch.randn(2, 8), torch.ones(2, 1, 5, 6)), (ValueError, r"query must be \(B=2, 1, C=8\)")),
    ("RefineBlock", "dtype", lambda: block()(torch.randn(2, 8, 5, 6, dtype=F64), torch.randn(2, 1, 8, dtype=F64), torch.ones(2, 1, 5, 6)), (TypeError, "float64")),
    ("RefineBlock", "empty", lambda: block()(torch.randn(0, 8, 5, 6), torch.randn(0, 1, 8), torch.ones(0, 1, 5, 6)), _empty((0, 8, 5, 6))),
    ("RefineBlock", "non_integer", lambda: RefineBlock(embed_dim=8, num_heads=2, window_size=4.5), (TypeError, "window_size must be an int")),
    ("FocusRefiner", "shape", lambda: refiner()(torch.randn(2, 8, 5, 7), torch.randn(2, 1, 20, 28), torch.randn(2, 16), (80, 112)), (ValueError, r"image_embeddings must be \(B, C=16, h, w\)")),
    ("FocusRefiner", "shape", lambda: refiner()(torch.randn(2, 16, 5, 7), torch.randn(2, 1, 20, 28), torch.randn(2, 3, 16), (80, 112)), (ValueError, r"mask_token must be \(B=2, 1, C=16\)")),
    ("FocusRefiner", "shape", lambda: refiner()(torch.randn(2, 16, 5, 7), torch.randn(2, 20, 28), torch.randn(2, 16), (80, 112)), (ValueError, r"coarse_logits must be \(B=2, 1, h', w'\)")),
    ("FocusRefiner", "dtype", lambda: refiner()(torch.randn(2, 16, 5, 7, dtype=F64), torch.randn(2, 1, 20, 28), torch.randn(2, 16, dtype=F64), (80, 112)), (TypeError, "float64")),
    ("FocusRefiner", "empty", lambda: refiner()(torch.randn(0, 16, 5, 7), torch.randn(0, 1, 20, 28), torch.randn(0, 16), (80, 112)), _empty((0, 16, 5, 7))),
    ("FocusRefiner", "non_integer", lambda: FocusRefiner(embed_dim=16, depth=2.5), (TypeError, "depth must be an int")),
    ("FocusRefiner", "non_integer", lambda: refiner()(torch.randn(1, 16, 5, 7), torch.randn(1, 1, 20, 28), torch.randn(1, 16), (80.5, 112)), (TypeError, "input_size must be an int")),
    ("modulated_deform_conv2d", "shape", lambda: modulated_deform_conv2d(dcn()[0][0], *dcn()[1:], padding=1), (ValueError, r"input must be \(B, C, H, W\)")),
    ("modulated_deform_conv2d", "dtype", lambda: modulated_deform_conv2d(dcn()[0].long(), *dcn()[1:], padding=1), (TypeError, "floating point")),
    ("modulated_deform_conv2d", "empty", lambda: modulated_deform_conv2d(*dcn(b=0), padding=1), _empty((0, 4, 5, 6))),
    ("modulated_deform_conv2d", "non_integer", lambda: modulated_deform_conv2d(*dcn(), padding=1.5), (TypeError, "padding must be an int")),
]


@pytest.mark.parametrize("block,kind,call,expected", case_params(CASES))
def test_focsam_block_edge(block, kind, call, expected):
    failures = edge_case_failures(call, expected)  # the message must be ours, not torch's or numpy's
    assert not failures, failures


@pytest.mark.parametrize("case", ["empty_mask", "whole_box", "one_pixel", "not_window_multiple"])
def test_focsam_edge_inputs_run(case):
    torch.manual_seed(0)
    r = refiner()
    h, w = (5, 7) if case == "not_window_multiple" else (8, 8)
    x = torch.randn(1, 16, h, w)
    logits = torch.full((1, 1, 4 * h, 4 * w), -5.0)
    if case == "whole_box":
        logits[:] = 5.0
    elif case == "one_pixel":
        logits[..., 3, 5] = 5.0
    elif case == "not_window_multiple":
        logits[..., 2:9, 3:12] = 5.0
    out = r(x, logits, torch.randn(1, 16), (16 * h, 16 * w))
    assert out.shape == x.shape and torch.isfinite(out).all()
    if case == "one_pixel":  # only the window holding the (expanded) one-pixel box changes
        changed = (out != r.embed_proj(x)).any(1)[0]
        assert changed.any() and not changed.all()
