"""segblocks.ops.geometry against naive float64 loop references written here.

Bilinear resizing is the half-pixel (``align_corners=False``) formula: output pixel ``i`` samples
the source at ``(i + 0.5) * in / out - 0.5`` clamped to ``[0, in - 1]``, interpolating linearly
between its two neighbours; nearest-exact takes source ``min(floor((i + 0.5) * in / out), in - 1)``.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from segblocks.ops.geometry import (
    crop_and_resize_back,
    longest_side_shape,
    pad_bottom_right,
    padded_size,
    resize,
    resize_longest_side,
    resize_longest_side_and_pad,
)

D = torch.float64


def _src(i, n_out, n_in):
    s = min(max((i + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1)
    i0 = int(math.floor(s))
    i1 = min(i0 + 1, n_in - 1)
    return i0, i1, s - i0


def naive_bilinear(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """(..., H, W) → (..., h, w), float64 loops."""
    H, W = img.shape[-2:]
    out = np.zeros(img.shape[:-2] + (h, w))
    for y in range(h):
        y0, y1, fy = _src(y, h, H)
        for x in range(w):
            x0, x1, fx = _src(x, w, W)
            top = (1 - fx) * img[..., y0, x0] + fx * img[..., y0, x1]
            bottom = (1 - fx) * img[..., y1, x0] + fx * img[..., y1, x1]
            out[..., y, x] = (1 - fy) * top + fy * bottom
    return out


def naive_nearest_exact(img: np.ndarray, h: int, w: int) -> np.ndarray:
    H, W = img.shape[-2:]
    out = np.zeros(img.shape[:-2] + (h, w))
    for y in range(h):
        for x in range(w):
            out[..., y, x] = img[..., min(int((y + 0.5) * H / h), H - 1), min(int((x + 0.5) * W / w), W - 1)]
    return out


def naive_longest_side(h, w, t):
    """SAM's rounding; a side that would round to 0 pixels keeps 1."""
    scale = t / max(h, w)
    return max(int(h * scale + 0.5), 1), max(int(w * scale + 0.5), 1)


SIZES = [(7, 13, 32), (13, 7, 10), (9, 9, 5), (1, 11, 4), (30, 17, 17), (5, 3, 64)]


@pytest.mark.parametrize("h,w,t", SIZES)
def test_longest_side_shape(h, w, t):
    assert longest_side_shape(h, w, t) == naive_longest_side(h, w, t)
    assert max(longest_side_shape(h, w, t)) == t


def test_longest_side_shape_rejects_bad_sizes():
    with pytest.raises(ValueError, match="positive"):
        longest_side_shape(0, 3, 8)
    with pytest.raises(ValueError, match="positive"):
        longest_side_shape(3, 3, 0)


@pytest.mark.parametrize("h,w,t", SIZES)
def test_resize_pad_crop_back_vs_naive(h, w, t):
    """The whole round trip on a batch with two leading dims, against the naive composition."""
    torch.manual_seed(h * 100 + w)
    x = torch.randn(2, 3, h, w, dtype=D)
    padded, valid = resize_longest_side_and_pad(x, t)
    nh, nw = naive_longest_side(h, w, t)
    assert valid == (nh, nw) and padded.shape == (2, 3, t, t)
    ref = np.zeros((2, 3, t, t))
    ref[..., :nh, :nw] = naive_bilinear(x.numpy(), nh, nw)  # resize, then zeros at the bottom/right
    np.testing.assert_allclose(padded.numpy(), ref, atol=1e-10)
    back = crop_and_resize_back(padded, valid, (h, w))
    assert back.shape == (2, 3, h, w)
    np.testing.assert_allclose(back.numpy(), naive_bilinear(ref[..., :nh, :nw], h, w), atol=1e-10)


def test_round_trip_is_exact_without_resizing_and_close_for_smooth_maps():
    x = torch.randn(4, 11, 7, dtype=D)
    padded, valid = resize_longest_side_and_pad(x, 11)  # longer side already T: pad only
    assert valid == (11, 7) and torch.equal(padded[..., :11, :7], x) and not padded[..., 7:].any()
    assert torch.equal(crop_and_resize_back(padded, valid, (11, 7)), x)
    yy, xx = np.mgrid[0:91, 0:61] / 10.0
    smooth = torch.from_numpy(np.sin(yy) * np.cos(0.7 * xx))  # H x W, no leading dims
    padded, valid = resize_longest_side_and_pad(smooth, 48)
    back = crop_and_resize_back(padded, valid, (91, 61))
    assert (back - smooth)[2:-2, 2:-2].abs().max() < 0.05


def test_nearest_exact_for_masks():
    mask = (torch.rand(2, 9, 14) > 0.5).double()
    padded, valid = resize_longest_side_and_pad(mask, 20, mode="nearest-exact")
    ref = np.zeros((2, 20, 20))
    ref[:, : valid[0], : valid[1]] = naive_nearest_exact(mask.numpy(), *valid)
    np.testing.assert_array_equal(padded.numpy(), ref)


def test_resize_helpers():
    x = torch.rand(1, 3, 30, 60)
    assert resize_longest_side(x, 128).shape == (1, 3, 64, 128)
    assert resize(x, (30, 60)) is x  # no-op when the size matches
    down = torch.rand(2, 40, 40, dtype=D)
    aa = resize(down, (10, 10), antialias=True)
    plain = resize(down, (10, 10))
    np.testing.assert_allclose(plain.numpy(), naive_bilinear(down.numpy(), 10, 10), atol=1e-10)
    assert not torch.allclose(aa, plain)  # antialias low-passes when downscaling (SAM's resize)


def test_padded_size_and_pad_bottom_right():
    assert padded_size(20, 30, size_divisor=16) == (32, 32)
    assert padded_size(17, 33, size_divisor=16) == (32, 48)
    assert padded_size(20, 30, pad_size=64) == (64, 64)
    with pytest.raises(ValueError, match="larger than pad_size"):
        padded_size(20, 70, pad_size=64)
    with pytest.raises(ValueError, match="positive"):
        padded_size(0, 4)
    x = torch.randn(2, 3, 5, 4)
    out = pad_bottom_right(x, (7, 9), value=-1.0)
    assert out.shape == (2, 3, 7, 9) and torch.equal(out[..., :5, :4], x)
    assert (out[..., 5:, :] == -1).all() and (out[..., :, 4:] == -1).all()
    with pytest.raises(ValueError, match="smaller"):
        pad_bottom_right(x, (4, 9))


def test_bad_inputs():
    logits = torch.randn(1, 16, 16, dtype=D)
    with pytest.raises(ValueError, match="resized_size"):
        crop_and_resize_back(logits, (17, 16), (23, 31))
    with pytest.raises(ValueError, match="resized_size"):
        crop_and_resize_back(logits, (16, 16), (0, 31))
    with pytest.raises(TypeError, match="float"):
        crop_and_resize_back(torch.zeros(4, 4, dtype=torch.long), (4, 4), (4, 4))
    with pytest.raises(TypeError, match="float"):
        resize_longest_side_and_pad(torch.zeros(3, 4, dtype=torch.uint8), 8)
    with pytest.raises(TypeError, match="float"):
        resize_longest_side(torch.zeros(4), 8)
