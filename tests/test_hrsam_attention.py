"""HRSAM attention (HRSAM paper §3.2-3.4, App. A-C): FLA, KV-only padding, 2-D RoPE, Flash Swin.

Every reference here is written independently of the code under test: RoPE as explicit 2x2
rotation matrices per position, FLA as a loop over explicitly padded windows in float64, and
classic Swin shifted-window attention (cyclic shift + region mask) from Liu et al. 2021.

How Flash Swin relates to classic Swin (checked below):

* Swin zero-pads the map bottom/right to ``Hp, Wp`` (multiples of ``k``), rolls it by
  ``(-s, -s)`` and masks attention between the three cyclic-shift regions of each axis
  (``[0, Hp-k)``, ``[Hp-k, Hp-s)``, ``[Hp-s, Hp)`` of the rolled map). Because ``Hp`` is a
  multiple of ``k``, the allowed groups of *real* tokens have boundaries at ``y = s mod k`` (and
  ``x = s mod k``), exactly FLA's windows with top/left padding ``k - s`` — for grids that are
  multiples of ``k`` *and* for those that are not.
* For multiples of ``k`` the outputs are equal. For other grids they are equal once Swin's zero
  padding is excluded from the keys; with the padding visible as keys (Swin's detection code,
  ``segblocks.models.backbones.swin.SwinBlock``) they differ wherever a window holds padding.
* A grid that fits in one window (``h, w <= k``) is shifted by default (HRSAM's Listing 1), and
  then grouped like Swin with shift; with ``shift_single_window=False`` (Inter2Former's code) it
  is not shifted and equals Swin *without* shift, where Swin with shift splits it into up to four
  groups.
* With KV-only padding, ``shift = 0`` and the pad token at its zero init, FLA equals Swin's
  unshifted window attention with the zero padding visible as keys.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from segblocks.blocks.hrsam_attention import FlashSwinAttention, FlexibleLocalAttention
from segblocks.layers.rope import VisionRotaryEmbedding2d, apply_rope_2d, rope_2d_tables
from segblocks.ops.fla_mapping import shift_window_mapping

# ----------------------------------------------------------------------------- references


def rotation_matrices(coords, head_dim, theta=1e4, scale=0.5):
    """(N, D, D) float64 block-diagonal rotations of the authors' RoPE, one entry at a time.

    Pair ``j`` = channels ``(2j, 2j+1)``; pairs ``j < D/4`` follow the row ``y``, the others the
    column ``x``; frequency ``theta^(-2i / (D/2))`` with ``i = j mod D/4``; angle ``scale * pos *
    f``; ``(a, b) -> (a cos + b sin, -a sin + b cos)``.
    """
    n, quarter = coords.shape[0], head_dim // 4
    rot = torch.zeros(n, head_dim, head_dim, dtype=torch.float64)
    for t in range(n):
        for j in range(head_dim // 2):
            pos = float(coords[t, 0] if j < quarter else coords[t, 1])
            angle = scale * pos * theta ** (-2 * (j % quarter) / (head_dim / 2))
            c, s = math.cos(angle), math.sin(angle)
            rot[t, 2 * j, 2 * j], rot[t, 2 * j, 2 * j + 1] = c, s
            rot[t, 2 * j + 1, 2 * j], rot[t, 2 * j + 1, 2 * j + 1] = -s, c
    return rot


def naive_fla(module, x, shapes):
    """FLA by explicit padding, float64: loop over samples, scales and k x k windows.

    Each scale's grid is padded with ``p = (k - s) % k`` pad tokens top/left (``p = 0`` for a grid
    inside one window when ``module.shift_single_window`` is False) and bottom/right up to multiples of ``k``; pad positions hold the pad token
    and get their padded coordinates for RoPE. Queries: the window's real tokens; keys: all k^2
    positions (KV-only padding) or the real tokens only.
    """
    b_, _, c = x.shape
    k, s, heads = module.window_size, module.shift, module.num_heads
    d = c // heads
    w_qkv, b_qkv = module.qkv.weight.double(), module.qkv.bias.double()
    out = torch.zeros(b_, x.shape[1], c, dtype=torch.float64)
    for b in range(b_):
        offset = 0
        for h, w in shapes:
            p = (k - s) % k if (h > k or w > k or module.shift_single_window) else 0
            ph, pw = math.ceil((p + h) / k) * k, math.ceil((p + w) / k) * k
            fill = module.pad_token[0].double() if module.kv_padding else torch.zeros(c, dtype=torch.float64)
            grid = fill.expand(ph * pw, c).clone()
            token_of = {}  # padded flat position -> token index in x[b]
            for y in range(h):
                for xx in range(w):
                    pos = (y + p) * pw + xx + p
                    grid[pos] = x[b, offset + y * w + xx].double()
                    token_of[pos] = offset + y * w + xx
            q, kk, v = F.linear(grid, w_qkv, b_qkv).view(ph * pw, 3, heads, d).unbind(1)
            if module.rope is not None:
                coords = torch.tensor([(y, xx) for y in range(ph) for xx in range(pw)])
                rot = rotation_matrices(coords, d)
                q = torch.einsum("nij,nhj->nhi", rot, q)
                kk = torch.einsum("nij,nhj->nhi", rot, kk)
            for wy in range(ph // k):
                for wx in range(pw // k):
                    window = [(wy * k + i) * pw + wx * k + j for i in range(k) for j in range(k)]
                    queries = [pos for pos in window if pos in token_of]
                    keys = window if module.kv_padding else queries
                    logits = torch.einsum("qhd,khd->hqk", q[queries], kk[keys]) / math.sqrt(d)
                    res = torch.einsum("hqk,khd->qhd", logits.softmax(-1), v[keys])
                    for row, pos in enumerate(queries):
                        out[b, token_of[pos]] = res[row].reshape(c)
            offset += h * w
    return F.linear(out, module.proj.weight.double(), module.proj.bias.double())


def swin_regions(hp, wp, k, s):
    """Swin's cyclic-shift region labels on the rolled (Hp, Wp) map (its ``img_mask``)."""
    region = torch.zeros(hp, wp, dtype=torch.long)
    if s:
        cnt = 0
        for ys in (slice(0, -k), slice(-k, -s), slice(-s, None)):
            for xs in (slice(0, -k), slice(-k, -s), slice(-s, None)):
                region[ys, xs] = cnt
                cnt += 1
    return region


def classic_swin(x, h, w, k, s, qkv, proj, heads, pads_as_keys=False):
    """Classic Swin (shifted-)window attention (Liu et al. 2021, §3.2), float64, no position bias.

    Zero-pad bottom/right to multiples of k, roll by (-s, -s), attend within each k x k window
    where query and key share a region label, roll back, crop. ``pads_as_keys=False`` also hides
    the zero padding from the keys (pad queries are discarded anyway).
    """
    b_, _, c = x.shape
    d = c // heads
    hp, wp = math.ceil(h / k) * k, math.ceil(w / k) * k
    grid = torch.zeros(b_, hp, wp, c, dtype=torch.float64)
    grid[:, :h, :w] = x.view(b_, h, w, c)
    real = torch.zeros(hp, wp, dtype=torch.bool)
    real[:h, :w] = True
    grid, real = torch.roll(grid, (-s, -s), (1, 2)), torch.roll(real, (-s, -s), (0, 1))
    region = swin_regions(hp, wp, k, s)
    out = torch.zeros_like(grid)
    for wy in range(hp // k):
        for wx in range(wp // k):
            ys, xs = slice(wy * k, wy * k + k), slice(wx * k, wx * k + k)
            tokens = grid[:, ys, xs].reshape(b_, k * k, c)
            q, kk, v = F.linear(tokens, qkv.weight, qkv.bias).view(b_, k * k, 3, heads, d).unbind(2)
            lab, is_real = region[ys, xs].reshape(-1), real[ys, xs].reshape(-1)
            allowed = lab[:, None] == lab[None, :]
            if not pads_as_keys:
                allowed &= is_real[None, :] | ~is_real[:, None]
            logits = torch.einsum("bqhd,bkhd->bhqk", q, kk) / math.sqrt(d)
            attn = logits.masked_fill(~allowed, float("-inf")).softmax(-1)
            out[:, ys, xs] = torch.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b_, k, k, c)
    out = torch.roll(out, (s, s), (1, 2))[:, :h, :w].reshape(b_, h * w, c)
    return F.linear(out, proj.weight, proj.bias)


def swin_same_group(h, w, k, s):
    """(hw, hw) bool: real tokens Swin lets attend to each other (same window, same region)."""
    hp, wp = math.ceil(h / k) * k, math.ceil(w / k) * k
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ry, rx = (ys - s) % hp, (xs - s) % wp  # position after torch.roll(-s) of the padded map
    group = ((ry // k) * (wp // k) + rx // k) * 9 + swin_regions(hp, wp, k, s)[ry, rx]
    group = group.flatten()
    return group[:, None] == group[None, :]


def fla_same_group(h, w, k, s, shift_single_window=True):
    m = shift_window_mapping(h, w, k, s, shift_single_window=shift_single_window)
    seg = torch.empty(h * w, dtype=torch.long)
    seg[m.q_indices] = torch.arange(m.num_windows).repeat_interleave(torch.tensor(m.q_seqlens))
    return seg[:, None] == seg[None, :]


def make_fla(
    dim=16, num_heads=2, window_size=4, shift=2, kv_padding=True, rope=True, cls=FlexibleLocalAttention,
    shift_single_window=True,
):
    kwargs = dict(
        dim=dim, num_heads=num_heads, window_size=window_size, kv_padding=kv_padding, rope=rope,
        shift_single_window=shift_single_window,
    )
    m = cls(shift=shift, backend="sdpa", **kwargs).double()
    if kv_padding:
        with torch.no_grad():
            m.pad_token.normal_()  # a non-trivial pad token (the init is zeros)
    return m


# ----------------------------------------------------------------------------- RoPE


def test_rope_matches_rotation_matrices():
    coords = torch.tensor([[0, 0], [3, 7], [11, 2], [5, 5], [0, 9]])
    x = torch.randn(5, 3, 16, dtype=torch.float64)
    cos, sin = rope_2d_tables(coords, 16, dtype=torch.float64)
    expected = torch.einsum("nij,nhj->nhi", rotation_matrices(coords, 16), x)
    torch.testing.assert_close(apply_rope_2d(x, cos, sin), expected)
    rope = VisionRotaryEmbedding2d(head_dim=16)
    torch.testing.assert_close(rope(x, coords), expected)
    out32 = rope(x.float(), coords)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), expected, atol=1e-5, rtol=1e-5)


def test_rope_scores_depend_on_relative_position_only():
    rope = VisionRotaryEmbedding2d(head_dim=8)
    q, k = torch.randn(1, 2, 8, dtype=torch.float64), torch.randn(1, 2, 8, dtype=torch.float64)
    pq, pk, shift = torch.tensor([[2, 5]]), torch.tensor([[4, 1]]), torch.tensor([[7, -3]])
    score = (rope(q, pq) * rope(k, pk)).sum(-1)
    torch.testing.assert_close((rope(q, pq + shift) * rope(k, pk + shift)).sum(-1), score)
    assert not torch.allclose((rope(q, pq) * rope(k, pk + shift)).sum(-1), score)


def test_rope_cache_and_inference_mode():
    rope = VisionRotaryEmbedding2d(head_dim=8, cache_size=2)
    coords = torch.tensor([[0, 1], [2, 3]])
    with torch.inference_mode():  # e.g. a validation pass before training
        cos, _ = rope.tables(coords, torch.float32)
    assert rope.tables(coords, torch.float32)[0] is cos
    assert rope.tables(coords, torch.float64)[0] is not cos
    x = torch.randn(2, 1, 8, requires_grad=True)
    rope(x, coords).sum().backward()  # cached tables are not inference tensors
    assert x.grad is not None
    for _ in range(3):
        rope.tables(torch.tensor([[1, 1]]), torch.float32)
    assert len(rope._cache) == 2


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: VisionRotaryEmbedding2d(head_dim=6), ValueError, "divisible by 4"),
        (lambda: rope_2d_tables(torch.zeros(3, 3), 8), ValueError, r"\(N, 2\)"),
        (lambda: apply_rope_2d(torch.zeros(3, 8), torch.zeros(2, 8), torch.zeros(2, 8)), ValueError, "cos/sin"),
    ],
)
def test_rope_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ----------------------------------------------------------------------------- FLA vs naive


@pytest.mark.parametrize(
    "shapes,k,s,kv_padding,rope",
    [
        ([(5, 7)], 4, 2, True, True),  # odd sizes, shifted, KV-only padding + RoPE
        ([(5, 7)], 4, 0, True, True),  # plain windows: pads only bottom/right
        ([(6, 9)], 3, 1, False, True),  # odd window, plain block-diagonal
        ([(5, 7), (3, 3)], 4, 2, True, True),  # multi-scale, shared pad token, small scale
        ([(2, 3)], 4, 2, True, True),  # grid smaller than one window
        ([(4, 4)], 4, 2, False, True),  # grid of exactly one window
        ([(1, 9)], 4, 2, True, False),
        ([(7, 4)], 4, 2, False, False),
    ],
)
@pytest.mark.parametrize("shift_single_window", [True, False])
def test_fla_matches_naive_padded_windows(shapes, k, s, kv_padding, rope, shift_single_window):
    m = make_fla(window_size=k, shift=s, kv_padding=kv_padding, rope=rope, shift_single_window=shift_single_window)
    x = torch.randn(2, sum(h * w for h, w in shapes), 16, dtype=torch.float64)
    torch.testing.assert_close(m(x, shapes), naive_fla(m, x, shapes))


@pytest.mark.parametrize("kv_padding", [True, False])
def test_every_query_sees_k2_keys_with_kv_padding(kv_padding):
    """Zero queries make attention uniform over each window's keys; with v = x the output counts them.

    Channel 0 is 1 on the pad token and 0 on real tokens, so with KV-only padding output channel
    0 is (#pad keys) / k^2 = (k^2 - #real tokens of the window) / k^2; channel 1 is the window
    sum of channel 1 over k^2 (KV padding) or its mean over the real tokens (no padding).
    """
    k, s, shapes = 4, 2, [(5, 7), (2, 3)]
    m = FlexibleLocalAttention(
        dim=4, num_heads=1, window_size=k, shift=s, kv_padding=kv_padding, rope=False, shift_single_window=False
    ).double()
    with torch.no_grad():
        m.qkv.weight.zero_()
        m.qkv.bias.zero_()
        m.qkv.weight[8:] = torch.eye(4)  # v = x
        m.proj.weight.copy_(torch.eye(4))
        m.proj.bias.zero_()
        if kv_padding:
            m.pad_token.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    x = torch.zeros(2, 41, 4, dtype=torch.float64)
    x[..., 1] = torch.randn(2, 41, dtype=torch.float64)
    out = m(x, shapes)
    for b in range(2):
        offset = 0
        for h, w in shapes:
            p = (k - s) % k if (h > k or w > k) else 0
            win = {}
            for y in range(h):
                for xx in range(w):
                    win.setdefault(((y + p) // k, (xx + p) // k), []).append(offset + y * w + xx)
            for members in win.values():
                vals = x[b, members, 1]
                if kv_padding:
                    expected = torch.tensor([(k * k - len(members)) / k**2, vals.sum() / k**2])
                else:
                    expected = torch.tensor([0.0, vals.mean()])
                torch.testing.assert_close(out[b, members, :2], expected.double().expand(len(members), 2))
            offset += h * w


# ----------------------------------------------------------------------------- Flash Swin vs Swin


@pytest.mark.parametrize("h,w,k", [(8, 8, 4), (6, 9, 3), (8, 12, 4), (5, 7, 4), (7, 10, 4), (3, 9, 4), (9, 6, 4)])
def test_flash_swin_equals_classic_shifted_window_attention(h, w, k):
    s = k // 2
    fs = make_fla(dim=12, num_heads=3, window_size=k, shift=None, kv_padding=False, rope=False, cls=FlashSwinAttention)
    assert fs.shift == s
    x = torch.randn(2, h * w, 12, dtype=torch.float64)
    # Same partition of the real tokens into groups, multiples of k or not.
    assert torch.equal(fla_same_group(h, w, k, s), swin_same_group(h, w, k, s))
    out = fs(x, [(h, w)])
    torch.testing.assert_close(out, classic_swin(x, h, w, k, s, fs.qkv, fs.proj, 3))
    with_pad_keys = classic_swin(x, h, w, k, s, fs.qkv, fs.proj, 3, pads_as_keys=True)
    if h % k == 0 and w % k == 0:
        torch.testing.assert_close(out, with_pad_keys)  # no padding at all
    else:
        assert not torch.allclose(out, with_pad_keys)  # Swin's zero pads are keys there


def test_grid_inside_one_window_rules():
    """HRSAM (default, Listing 1) shifts a 3x3 grid like Swin; Inter2Former's rule keeps it whole."""
    h, w, k = 3, 3, 4
    inter2former = make_fla(
        dim=12, num_heads=3, window_size=k, shift=None, kv_padding=False, rope=False, cls=FlashSwinAttention,
        shift_single_window=False,
    )
    plain = make_fla(dim=12, num_heads=3, window_size=k, shift=0, kv_padding=False, rope=False, cls=FlashSwinAttention)
    hrsam = make_fla(dim=12, num_heads=3, window_size=k, shift=None, kv_padding=False, rope=False, cls=FlashSwinAttention)
    assert hrsam.shift_single_window and not inter2former.shift_single_window
    plain.load_state_dict(inter2former.state_dict())
    hrsam.load_state_dict(inter2former.state_dict())
    x = torch.randn(2, h * w, 12, dtype=torch.float64)
    out = inter2former(x, [(h, w)])
    torch.testing.assert_close(out, plain(x, [(h, w)]))
    torch.testing.assert_close(out, classic_swin(x, h, w, k, 0, inter2former.qkv, inter2former.proj, 3))
    # Swin's cyclic shift splits the 3x3 grid into four groups, as HRSAM's rule does.
    assert not torch.equal(fla_same_group(h, w, k, k // 2, False), swin_same_group(h, w, k, k // 2))
    assert torch.equal(fla_same_group(h, w, k, k // 2, True), swin_same_group(h, w, k, k // 2))
    shifted = hrsam(x, [(h, w)])
    assert not torch.allclose(out, shifted)
    torch.testing.assert_close(shifted, classic_swin(x, h, w, k, k // 2, hrsam.qkv, hrsam.proj, 3))


def test_zero_pad_token_equals_swin_windows_with_zero_padding():
    """KV-only padding at init (pad token 0), shift 0 == Swin W-MSA whose zero padding is a key."""
    h, w, k = 5, 7, 4
    m = FlashSwinAttention(dim=12, num_heads=3, window_size=k, shift=0, rope=False).double()
    assert torch.count_nonzero(m.pad_token) == 0
    x = torch.randn(2, h * w, 12, dtype=torch.float64)
    torch.testing.assert_close(m(x, [(h, w)]), classic_swin(x, h, w, k, 0, m.qkv, m.proj, 3, pads_as_keys=True))


# ----------------------------------------------------------------------------- structure


def test_multi_scale_equals_per_scale():
    m = make_fla()
    x1, x2 = torch.randn(2, 35, 16, dtype=torch.float64), torch.randn(2, 9, 16, dtype=torch.float64)
    out = m(torch.cat([x1, x2], 1), [(5, 7), (3, 3)])
    torch.testing.assert_close(out, torch.cat([m(x1, [(5, 7)]), m(x2, [(3, 3)])], 1))


def test_batch_independence():
    m = make_fla()
    x = torch.randn(3, 35, 16, dtype=torch.float64)
    out = m(x, [(5, 7)])
    for b in range(3):
        torch.testing.assert_close(out[b : b + 1], m(x[b : b + 1], [(5, 7)]))
    x2 = x.clone()
    x2[1] = torch.randn(35, 16, dtype=torch.float64)
    out2 = m(x2, [(5, 7)])
    torch.testing.assert_close(out2[[0, 2]], out[[0, 2]])
    assert not torch.allclose(out2[1], out[1])


def test_gradients_reach_inputs_and_pad_token():
    m = make_fla(dim=8, num_heads=2, window_size=2, shift=1)
    x = torch.randn(2, 6, 8, dtype=torch.float64, requires_grad=True)
    pad = m.pad_token.detach().clone().requires_grad_()
    fn = lambda x, pad: torch.func.functional_call(m, {"pad_token": pad}, (x, [(3, 2)]))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, pad), fast_mode=True)
    m(x, [(3, 2)]).sum().backward()
    assert m.pad_token.grad.abs().sum() > 0 and m.qkv.weight.grad.abs().sum() > 0
    # Plain windows on a grid that is a multiple of k have no pad key: the pad token gets no gradient.
    m.zero_grad()
    m.shift = 0
    m(torch.randn(2, 16, 8, dtype=torch.float64), [(4, 4)]).sum().backward()
    assert torch.count_nonzero(m.pad_token.grad) == 0


def test_dtypes_and_backends():
    m = make_fla()
    x = torch.randn(2, 44, 16, dtype=torch.float64)
    shapes = [(5, 7), (3, 3)]
    expected = m(x, shapes)
    m.backend = "reference"
    torch.testing.assert_close(m(x, shapes), expected)
    m.backend = "sdpa"
    out32 = m.float()(x.float(), shapes)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), expected, atol=1e-5, rtol=1e-4)
    out16 = m.bfloat16()(x.bfloat16(), shapes)
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.double(), expected, atol=0.1, rtol=0.05)


def test_empty_batch():
    m = make_fla()
    out = m(torch.zeros(0, 35, 16, dtype=torch.float64), [(5, 7)])
    assert out.shape == (0, 35, 16)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: FlexibleLocalAttention(dim=10, num_heads=3, window_size=4), ValueError, "multiple of num_heads"),
        (lambda: FlexibleLocalAttention(dim=12, num_heads=2, window_size=4), ValueError, "divisible by 4"),
        (lambda: FlexibleLocalAttention(dim=16, num_heads=2, window_size=0), ValueError, "window_size"),
        (lambda: FlexibleLocalAttention(dim=16, num_heads=2, window_size=4, shift=4), ValueError, "shift"),
        (lambda: FlashSwinAttention(dim=16, num_heads=2, window_size=4, shift=1), ValueError, "None, 0 or window_size"),
        (lambda: make_fla()(torch.zeros(35, 16, dtype=torch.float64), [(5, 7)]), ValueError, r"\(B, N, C=16\)"),
        (lambda: make_fla()(torch.zeros(1, 35, 8, dtype=torch.float64), [(5, 7)]), ValueError, r"\(B, N, C=16\)"),
        (lambda: make_fla()(torch.zeros(1, 35, 16, dtype=torch.long), [(5, 7)]), TypeError, "floating point"),
        (lambda: make_fla()(torch.zeros(1, 35, 16, dtype=torch.float64), [(5, 6)]), ValueError, "hold 30 tokens"),
        (lambda: make_fla()(torch.zeros(1, 35, 16, dtype=torch.float64), []), ValueError, "non-empty"),
        (lambda: make_fla()(torch.zeros(1, 35, 16, dtype=torch.float64), [(5, 7, 1)]), ValueError, r"\(h, w\) pairs"),
    ],
)
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
