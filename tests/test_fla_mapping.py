"""FLA index mappings (HRSAM §3.2–3.4, App. A–C) against brute-force constructions.

Property tests (hypothesis) build every token's window from its coordinates independently of
the implementation; fixed cases check the paper's Figure 6, Swin's shifted-window mask and the
end-to-end KV-padded window attention.
"""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from segblocks.ops.fla_mapping import (
    kv_padding_mapping,
    multi_scale_kv_padding_mapping,
    multi_scale_mapping,
    shift_window_mapping,
)
from segblocks.ops.varlen_attention import varlen_attention


def pad_of(h, w, k, s, shift_single_window):
    """Top/left padding of one grid: ``(k - s) % k``, no shift for a grid inside one window when
    ``shift_single_window`` is False (Inter2Former's rule; HRSAM's Listing 1 shifts every grid)."""
    return (k - (0 if (not shift_single_window and h <= k and w <= k) else s)) % k


def brute_force_windows(shapes, k, s, batch, shift_single_window=True):
    """Windows in raster order, each a list of (global index, padded y, padded x) in raster order.

    Every token's window id comes from its own coordinates: the top/left padding is
    ``pad_of(...)``, window ``((y + p) // k, (x + p) // k)``.
    """
    per_sample = sum(h * w for h, w in shapes)
    windows = {}
    for b in range(batch):
        offset = 0
        for lvl, (h, w) in enumerate(shapes):
            p = pad_of(h, w, k, s, shift_single_window)
            for y in range(h):
                for x in range(w):
                    key = (b, lvl, (y + p) // k, (x + p) // k)
                    windows.setdefault(key, []).append((b * per_sample + offset + y * w + x, y + p, x + p))
            offset += h * w
    return [windows[key] for key in sorted(windows)]


def expected_num_windows(shapes, k, s, batch, shift_single_window=True):
    total = 0
    for h, w in shapes:
        p = pad_of(h, w, k, s, shift_single_window)
        total += math.ceil((h + p) / k) * math.ceil((w + p) / k)
    return total * batch


def split(t, lengths):
    return list(torch.split(t, list(lengths)))


@st.composite
def configs(draw):
    k = draw(st.sampled_from([2, 3, 4, 7, 8]))
    s = draw(st.sampled_from([0, k // 2]))
    shapes = draw(st.lists(st.tuples(st.integers(1, 40), st.integers(1, 40)), min_size=1, max_size=3))
    return shapes, k, s, draw(st.integers(1, 3)), draw(st.booleans())


@settings(max_examples=80, deadline=None)
@given(configs())
def test_query_mapping_matches_brute_force(config):
    shapes, k, s, batch, ssw = config
    m = multi_scale_mapping(shapes, k, s, batch=batch, shift_single_window=ssw)
    windows = brute_force_windows(shapes, k, s, batch, ssw)
    n = batch * sum(h * w for h, w in shapes)

    assert m.num_tokens == n and m.kv_indices is None
    assert m.q_indices.shape == (n,) and m.q_indices.dtype == torch.long
    assert list(m.q_seqlens) == [len(win) for win in windows]  # also: no empty segment
    assert min(m.q_seqlens) >= 1 and sum(m.q_seqlens) == n
    assert len(m.q_seqlens) == expected_num_windows(shapes, k, s, batch, ssw)  # no all-virtual window
    for seg, coords, win in zip(split(m.q_indices, m.q_seqlens), split(m.q_coords, m.q_seqlens), windows):
        assert seg.tolist() == [idx for idx, _, _ in win]
        assert coords.tolist() == [[y, x] for _, y, x in win]
    x = torch.randn(n, 3)
    assert torch.equal(x[m.q_indices][m.inv_indices], x)
    assert torch.equal(m.q_indices[m.inv_indices], torch.arange(n))
    assert m.seqlens.q_seqlens == m.q_seqlens == m.seqlens.kv_seqlens


@settings(max_examples=60, deadline=None)
@given(configs())
def test_kv_padding_mapping_properties(config):
    shapes, k, s, batch, ssw = config
    m = multi_scale_kv_padding_mapping(shapes, k, s, batch=batch, shift_single_window=ssw)
    q_only = multi_scale_mapping(shapes, k, s, batch=batch, shift_single_window=ssw)
    n = m.num_tokens
    nw = len(m.q_seqlens)

    assert torch.equal(m.q_indices, q_only.q_indices) and m.q_seqlens == q_only.q_seqlens
    assert m.kv_seqlens == (k * k,) * nw
    assert m.kv_indices.shape == (nw * k * k,) and m.kv_coords.shape == (nw * k * k, 2)
    assert m.seqlens.q_seqlens == m.q_seqlens and m.seqlens.kv_seqlens == m.kv_seqlens
    kv = m.kv_indices.view(nw, k * k)
    kv_coords = m.kv_coords.view(nw, k * k, 2)
    square = torch.stack(torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij"), -1).view(k * k, 2)
    for i, (q_seg, q_coords) in enumerate(zip(split(m.q_indices, m.q_seqlens), split(m.q_coords, m.q_seqlens))):
        real = kv[i] < n
        assert torch.equal(kv[i][real], q_seg)  # the window's tokens, in the same order
        assert torch.all(kv[i][~real] == n)  # every pad points at the appended token
        # The k*k key slots are a k x k square of the padded grid, in raster order, and the real
        # tokens sit at their own padded coordinates.
        assert torch.equal(kv_coords[i] - kv_coords[i][0], square)
        assert kv_coords[i][0, 0] % k == 0 and kv_coords[i][0, 1] % k == 0
        assert torch.equal(kv_coords[i][real], q_coords)


def test_paper_figure_6_example():
    """4x4 tokens, k=2, s=1: Figure 6's KV row (1-based, pad = 17) and the query windows."""
    m = kv_padding_mapping(4, 4, 2, 1)
    assert (m.kv_indices[:8] + 1).tolist() == [17, 17, 17, 1, 17, 17, 2, 3]
    assert (m.kv_indices[-4:] + 1).tolist() == [16, 17, 17, 17]
    assert [t.tolist() for t in split(m.q_indices, m.q_seqlens)] == [
        [0], [1, 2], [3], [4, 8], [5, 6, 9, 10], [7, 11], [12], [13, 14], [15],
    ]
    plain = shift_window_mapping(4, 4, 2, 0)
    assert [t.tolist() for t in split(plain.q_indices, plain.q_seqlens)] == [
        [0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15],
    ]


def listing_1(h, w, k):
    """HRSAM App. A, Listing 1 transcribed (pad k/2 on every side of every grid, h, w multiples of k)."""
    inf = 10 * (h + k) * (w + k)
    hs, ws = torch.arange(-(k // 2), h + k // 2), torch.arange(-(k // 2), w + k // 2)
    hs[: k // 2], hs[-(k // 2):], ws[: k // 2], ws[-(k // 2):] = -inf, -inf, -inf, -inf
    ys, xs = torch.meshgrid(hs, ws, indexing="ij")
    coords = (ys * w + xs).reshape((h + k) // k, k, (w + k) // k, k).permute(0, 2, 1, 3).reshape(-1, k * k)
    lengths = (coords >= 0).sum(-1).tolist()
    indices = coords.reshape(-1)
    return indices[indices >= 0], lengths


@pytest.mark.parametrize("h,w,k", [(4, 4, 4), (2, 2, 2), (8, 4, 4), (4, 12, 4), (6, 6, 2)])
def test_hrsam_rule_equals_listing_1(h, w, k):
    """Default rule = HRSAM's Listing 1, also for a grid that is exactly one window (4x4, k=4)."""
    indices, lengths = listing_1(h, w, k)
    m = shift_window_mapping(h, w, k, k // 2)
    assert m.q_indices.tolist() == indices.tolist() and list(m.q_seqlens) == lengths
    assert shift_window_mapping(h, w, k, k // 2, shift_single_window=True) is m


def test_inter2former_rule_keeps_a_single_window_grid_whole_and_batch_offsets():
    m = kv_padding_mapping(3, 2, 4, 2, batch=2, shift_single_window=False)
    assert m.q_seqlens == (6, 6) and m.q_indices.tolist() == list(range(12))
    assert m.kv_indices.view(2, 16)[1].tolist() == [6, 7, 12, 12, 8, 9, 12, 12, 10, 11] + [12] * 6
    wide = shift_window_mapping(1, 5, 4, 2, shift_single_window=False)  # wider than a window: shifted, p = 2
    assert [t.tolist() for t in split(wide.q_indices, wide.q_seqlens)] == [[0, 1], [2, 3, 4]]
    # HRSAM's rule shifts the 3x2 grid too: p = 2 puts rows 0-1 / 2 and columns 0-1 in 2 windows
    hrsam = kv_padding_mapping(3, 2, 4, 2, batch=2)
    assert [t.tolist() for t in split(hrsam.q_indices, hrsam.q_seqlens)][:2] == [[0, 1, 2, 3], [4, 5]]
    # both rules agree on plain windows and on grids larger than a window
    for shapes in ([(3, 2)], [(9, 5), (2, 2)]):
        assert multi_scale_mapping(shapes, 4, 0).q_indices.tolist() == multi_scale_mapping(
            shapes, 4, 0, shift_single_window=False
        ).q_indices.tolist()
    assert multi_scale_mapping([(9, 5)], 4, 2).q_seqlens == multi_scale_mapping(
        [(9, 5)], 4, 2, shift_single_window=False
    ).q_seqlens


@pytest.mark.parametrize("h,w,k", [(8, 8, 4), (6, 9, 3), (4, 8, 2), (14, 7, 7)])
def test_shifted_windows_match_swin_cyclic_shift_mask(h, w, k):
    """For h, w multiples of k, "same FLA window" equals Swin's shifted-window attention mask."""
    s = k // 2
    # Swin (Liu et al. 2021): label regions of the rolled map, roll by -s, partition into windows;
    # two tokens may attend iff they share a window and a region label.
    labels = torch.zeros(h, w, dtype=torch.long)
    cnt = 0
    for ys in (slice(0, -k), slice(-k, -s), slice(-s, None)):
        for xs in (slice(0, -k), slice(-k, -s), slice(-s, None)):
            labels[ys, xs] = cnt
            cnt += 1
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ry, rx = (ys - s) % h, (xs - s) % w  # position after torch.roll(x, (-s, -s))
    win = (ry // k) * (w // k) + rx // k
    lab = labels[ry, rx]
    swin = (win.flatten()[:, None] == win.flatten()[None, :]) & (lab.flatten()[:, None] == lab.flatten()[None, :])

    m = shift_window_mapping(h, w, k, s)
    seg = torch.empty(h * w, dtype=torch.long)
    seg[m.q_indices] = torch.arange(len(m.q_seqlens)).repeat_interleave(torch.tensor(m.q_seqlens))
    assert torch.equal(seg[:, None] == seg[None, :], swin)


def kv_padded_attention(m, q, kk, v, pad_k, pad_v, backend):
    """Window attention through the mapping: gather, varlen_attention, back to token order."""
    kp, vp = torch.cat([kk, pad_k]), torch.cat([v, pad_v])  # (n + 1) x H x D
    return varlen_attention(q[m.q_indices], kp[m.kv_indices], vp[m.kv_indices], m.seqlens, backend=backend)[m.inv_indices]


def brute_force_kv_padded_attention(q, kk, v, pad_k, pad_v, h, w, k, s, batch):
    """Per-window softmax attention over the window's tokens plus ``k*k - len`` pad copies."""
    H, D = q.shape[1:]
    rows = {}
    for win in brute_force_windows([(h, w)], k, s, batch):
        idx = torch.tensor([i for i, _, _ in win])
        n_pad = k * k - len(idx)
        keys = torch.cat([kk[idx], pad_k.expand(n_pad, H, D)])  # L x H x D
        vals = torch.cat([v[idx], pad_v.expand(n_pad, H, D)])
        attn = torch.softmax(torch.einsum("qhd,khd->hqk", q[idx], keys) / math.sqrt(D), -1)
        rows.update(zip(idx.tolist(), torch.einsum("hqk,khd->qhd", attn, vals)))
    return torch.stack([rows[i] for i in range(q.shape[0])])  # token order


@pytest.mark.parametrize("backend", ["sdpa", "padded"])
def test_kv_padded_window_attention_end_to_end(backend):
    """Mapping + varlen_attention == per-token attention over its window plus pad copies."""
    h, w, k, s, B, H, D = 5, 6, 3, 1, 2, 2, 4
    m = kv_padding_mapping(h, w, k, s, batch=B)
    n = B * h * w
    q, kk, v = (torch.randn(n, H, D, dtype=torch.float64) for _ in range(3))
    pad_k, pad_v = torch.randn(1, H, D, dtype=torch.float64), torch.randn(1, H, D, dtype=torch.float64)
    out = kv_padded_attention(m, q, kk, v, pad_k, pad_v, backend)
    torch.testing.assert_close(out, brute_force_kv_padded_attention(q, kk, v, pad_k, pad_v, h, w, k, s, B))


def mapping_tensors(m):
    return [t for t in (m.q_indices, m.inv_indices, m.q_coords, m.kv_indices, m.kv_coords, m.seqlens.q_start) if t is not None]


@pytest.mark.parametrize("backend", ["auto", "sdpa", "padded"])
def test_mapped_under_inference_mode_then_trained(backend):
    """Lightning's sanity check maps a geometry under inference_mode; training on it must work."""
    # k=5 and these sizes are drawn by no other test here, so the lru_cache entry is fresh.
    h, w, k, s, B, H, D = 7, 9, 5, 2, 2, 2, 3
    n = B * h * w
    with torch.inference_mode():
        m = kv_padding_mapping(h, w, k, s, batch=B)
        x = torch.randn(n, H, D)
        kv_padded_attention(m, x, x, x, x[:1], x[:1], backend)  # fills the SeqLens caches too
    assert kv_padding_mapping(h, w, k, s, batch=B) is m  # the cached mapping is what training gets
    assert not any(t.is_inference() for t in mapping_tensors(m))
    q, kk, v, pad_k, pad_v = (torch.randn(r, H, D, dtype=torch.float64, requires_grad=True) for r in (n, n, n, 1, 1))
    inputs = (q, kk, v, pad_k, pad_v)
    grad_out = torch.randn(n, H, D, dtype=torch.float64)
    got = torch.autograd.grad(kv_padded_attention(m, *inputs, backend), inputs, grad_out)
    want = torch.autograd.grad(brute_force_kv_padded_attention(*inputs, h, w, k, s, B), inputs, grad_out)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_copy_made_under_inference_mode_is_a_normal_tensor():
    with torch.inference_mode():
        m = multi_scale_kv_padding_mapping([(6, 11)], 5, 2, batch=3, device="cuda")
    assert m.q_indices.is_cuda and not any(t.is_inference() for t in mapping_tensors(m))


def test_cached_per_arguments_and_device():
    a = multi_scale_mapping([(5, 7), (3, 3)], 4, 2, batch=2)
    assert multi_scale_mapping(((5, 7), (3, 3)), 4, 2, batch=2) is a
    assert multi_scale_mapping([(5, 7), (3, 3)], 4, 2, batch=2, device="cpu") is a
    assert multi_scale_mapping([(5, 7), (3, 3)], 4, 0, batch=2) is not a
    assert a.q_indices.device.type == "cpu" and a.seqlens.q_start.device.type == "cpu"


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: shift_window_mapping(0, 4, 2), "h, w >= 1"),
        (lambda: shift_window_mapping(4, 4, 0), "window size k"),
        (lambda: shift_window_mapping(4, 4, 4, 4), r"shift s must be in \[0, k\)"),
        (lambda: shift_window_mapping(4, 4, 4, 2, batch=0), "batch must be >= 1"),
        (lambda: multi_scale_mapping([], 4), "non-empty"),
        (lambda: multi_scale_mapping([(4, 4, 4)], 4), r"\(h, w\) pairs"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "call",
    [
        lambda: shift_window_mapping(4.5, 4, 2),  # would be truncated to 4
        lambda: shift_window_mapping(4, 4, 2.0),
        lambda: shift_window_mapping(4, 4, 4, True),
        lambda: shift_window_mapping(4, 4, 4, 2, batch=1.5),
        lambda: multi_scale_mapping([(4, 4.9)], 4),
        lambda: multi_scale_mapping([(4, 4)], 4, 2, shift_single_window=1),
    ],
)
def test_non_integer_arguments_are_refused(call):
    with pytest.raises(TypeError):
        call()
