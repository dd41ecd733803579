"""Click container, click simulators and click encodings vs brute-force references."""
import math

import numpy as np
import pytest
import torch

from segblocks.interactive import (
    TRAIN_INNER_K,
    Clicks,
    clicks_to_points,
    disk_maps,
    longest_side_shape,
    next_click,
    sample_generators,
    sample_initial_clicks,
    sample_num_clicks,
    scale_points,
)


# ----------------------------------------------------------------------------- references
def brute_dist(region: np.ndarray) -> np.ndarray:
    """Distance of each region pixel to the nearest non-region pixel or to outside the image."""
    H, W = region.shape
    out = np.zeros((H, W), dtype=np.float64)
    for i in range(H):
        for j in range(W):
            if not region[i, j]:
                continue
            best = float(min(i + 1, H - i, j + 1, W - j))  # nearest pixel beyond the border
            for k in range(H):
                for m in range(W):
                    if not region[k, m]:
                        best = min(best, math.hypot(i - k, j - m))
            out[i, j] = best
    return out


def brute_click(pred, gt, ignore=None, clicked=None, inner_k=1.0):
    """(valid, positive, set of candidate (y, x)) for one sample, from the protocol's wording."""
    allowed = np.ones_like(gt)
    for extra in (ignore, clicked):
        if extra is not None:
            allowed = allowed & ~extra
    fn_d = brute_dist(gt & ~pred & allowed)
    fp_d = brute_dist(pred & ~gt & allowed)
    fn_max, fp_max = fn_d.max(), fp_d.max()
    if fn_max == 0 and fp_max == 0:
        return False, False, set()
    positive = fn_max > fp_max
    d = fn_d if positive else fp_d
    dmax = d.max()
    if inner_k == 1.0:
        cand = np.abs(d - dmax) < 1e-9
    else:
        cand = d > dmax / inner_k
    return True, positive, {tuple(p) for p in np.argwhere(cand)}


def t(a):
    return torch.from_numpy(np.asarray(a, dtype=bool))


# ----------------------------------------------------------------------------- Clicks
def test_clicks_from_lists_append_and_mask():
    c = Clicks.from_lists([[(1, 2, 1), (0, 0, 0)], [], [(3, 1, 0)]])
    assert c.coords.dtype == torch.int64 and c.coords.shape == (3, 2, 2)
    assert c.labels.tolist() == [[1, 0], [-1, -1], [0, -1]]
    assert c.num_clicks.tolist() == [2, 0, 1]
    c2 = c.append(torch.tensor([[4, 4], [2, 3], [0, 1]]), torch.tensor([True, False, True]),
                  torch.tensor([True, True, False]))
    assert c2.labels.tolist() == [[1, 0, 1], [0, -1, -1], [0, -1, -1]]
    assert c2.coords[0, 2].tolist() == [4, 4] and c2.coords[1, 0].tolist() == [2, 3]
    assert c2.coords[2, 0].tolist() == [3, 1]
    assert c.labels.shape == (3, 2)  # immutable: the original is unchanged
    mask = c2.to_mask(5, 5)
    expected = np.zeros((3, 5, 5), dtype=bool)
    for b, sample in enumerate([[(1, 2), (0, 0), (4, 4)], [(2, 3)], [(3, 1)]]):
        for y, x in sample:
            expected[b, y, x] = True
    assert np.array_equal(mask.numpy(), expected)
    # nothing valid: width does not grow
    none = torch.zeros(3, dtype=torch.bool)
    c3 = c.append(torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, dtype=torch.long), none)
    assert c3.labels.shape == (3, 2)


def test_clicks_empty_and_errors():
    e = Clicks.empty(2)
    assert e.coords.shape == (2, 0, 2) and e.num_clicks.tolist() == [0, 0]
    assert e.to_mask(3, 4).shape == (2, 3, 4) and not e.to_mask(3, 4).any()
    with pytest.raises(ValueError, match="left-packed"):
        Clicks(coords=torch.zeros(1, 2, 2, dtype=torch.long), labels=torch.tensor([[-1, 1]]))
    with pytest.raises(ValueError, match="-1, 0, 1"):
        Clicks(coords=torch.zeros(1, 1, 2, dtype=torch.long), labels=torch.tensor([[2]]))
    with pytest.raises(TypeError, match="int64"):
        Clicks(coords=torch.zeros(1, 1, 2), labels=torch.tensor([[1]]))
    with pytest.raises(ValueError, match="0 or 1"):
        Clicks.from_lists([[(0, 0, 5)]])
    with pytest.raises(ValueError, match="0 or 1"):
        e.append(torch.zeros(2, 2, dtype=torch.long), torch.tensor([2, 0]), torch.tensor([True, False]))
    with pytest.raises(TypeError, match="valid"):
        e.append(torch.zeros(2, 2, dtype=torch.long), torch.tensor([1, 0]), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="3x3"):
        Clicks.from_lists([[(3, 0, 1)]]).to_mask(3, 3)


# ----------------------------------------------------------------------------- evaluation clicker
def test_next_click_matches_brute_force_random_batches():
    rng = np.random.default_rng(123)
    for trial in range(12):
        B, H, W = 4, 7, 9
        gt = rng.random((B, H, W)) < 0.55
        pred = rng.random((B, H, W)) < 0.35
        pred[0] = False  # first-click situation
        pred[1] = gt[1]  # perfect prediction: no error at all
        ignore = rng.random((B, H, W)) < 0.08
        clicked = rng.random((B, H, W)) < 0.05
        gen = np.random.default_rng(trial)
        coords, pos, valid = next_click(t(pred), t(gt), ignore=t(ignore), clicked=t(clicked), generator=gen)
        assert coords.dtype == torch.int64 and pos.dtype == torch.bool and valid.dtype == torch.bool
        assert coords.shape == (B, 2) and pos.shape == (B,) and valid.shape == (B,)
        for b in range(B):
            v, p, cand = brute_click(pred[b], gt[b], ignore[b], clicked[b])
            assert bool(valid[b]) == v
            if not v:
                assert coords[b].tolist() == [0, 0] and not pos[b]
                continue
            assert bool(pos[b]) == p
            y, x = coords[b].tolist()
            assert (y, x) in cand
            assert not ignore[b, y, x] and not clicked[b, y, x]


@pytest.mark.parametrize("use_torch_gen", [False, True])
def test_ties_choose_every_maximum_and_nothing_else(use_torch_gen):
    H, W = 7, 9
    full = np.ones((H, W), dtype=bool)  # maxima = 4 at (3, 3), (3, 4), (3, 5) (border is boundary)
    twins = np.zeros((H, W), dtype=bool)  # mirror-image squares: maxima at both centres
    twins[2:5, 1:4] = True
    twins[2:5, 5:8] = True
    gt = np.stack([full, twins])
    pred = np.zeros_like(gt)
    expected = [brute_click(pred[b], gt[b])[2] for b in range(2)]
    assert expected[0] == {(3, 3), (3, 4), (3, 5)} and expected[1] == {(3, 2), (3, 6)}
    seen = [dict(), dict()]
    for seed in range(120):
        gen = torch.Generator().manual_seed(seed) if use_torch_gen else np.random.default_rng(seed)
        coords, pos, valid = next_click(t(pred), t(gt), generator=gen)
        assert valid.all() and pos.all()
        for b in range(2):
            key = tuple(coords[b].tolist())
            seen[b][key] = seen[b].get(key, 0) + 1
    for b in range(2):
        assert set(seen[b]) == expected[b]
        # roughly uniform: each tied pixel gets at least a third of its fair share
        assert min(seen[b].values()) > 120 / len(expected[b]) / 3


def test_generators_are_reproducible():
    gt = t(np.ones((1, 7, 9)))
    pred = t(np.zeros((1, 7, 9)))
    a = [next_click(pred, gt, generator=torch.Generator().manual_seed(s))[0] for s in (5, 5)]
    assert torch.equal(a[0], a[1])
    torch.manual_seed(3)
    b1 = next_click(pred, gt)[0]
    torch.manual_seed(3)
    assert torch.equal(b1, next_click(pred, gt)[0])
    with pytest.raises(TypeError, match="generator"):
        next_click(pred, gt, generator=7)


def test_ignore_pixels_are_boundary_and_never_clicked():
    H, W = 7, 9
    gt = np.ones((1, H, W), dtype=bool)
    pred = np.zeros_like(gt)
    ignore = np.zeros_like(gt)
    ignore[0, 3, 3:6] = True  # the three maxima of the full mask
    v, p, cand = brute_click(pred[0], gt[0], ignore[0])
    for seed in range(20):
        coords, pos, valid = next_click(t(pred), t(gt), ignore=t(ignore), generator=np.random.default_rng(seed))
        assert tuple(coords[0].tolist()) in cand and bool(pos[0]) == p
    assert all(not ignore[0][c] for c in cand)
    # everything ignored -> no click
    coords, pos, valid = next_click(t(pred), t(gt), ignore=t(np.ones_like(gt)))
    assert not valid.any() and not pos.any() and (coords == 0).all()


def test_clicked_pixels_are_never_repeated():
    gt = t(np.ones((2, 2, 3)))
    gt[1] = False
    pred = torch.zeros_like(gt)
    clicks = Clicks.empty(2)
    gen = np.random.default_rng(0)
    for step in range(6):
        coords, pos, valid = next_click(pred, gt, clicked=clicks.to_mask(2, 3), generator=gen)
        assert valid.tolist() == [True, False] and pos[0]
        clicks = clicks.append(coords, pos, valid)
    assert clicks.num_clicks.tolist() == [6, 0]
    assert len({tuple(c) for c in clicks.coords[0].tolist()}) == 6
    assert not next_click(pred, gt, clicked=clicks.to_mask(2, 3))[2].any()


def test_batch_of_different_situations_and_polarity_tie():
    H, W = 7, 9
    gt = np.zeros((5, H, W), dtype=bool)
    pred = np.zeros_like(gt)
    gt[0, 1:6, 1:6] = True  # FN only -> positive
    pred[1, 2:5, 2:8] = True  # FP only -> negative
    # sample 2: both empty -> invalid
    gt[3, 2:5, 0:3] = True  # FN 3x3 square on the left ...
    pred[3, 2:5, 6:9] = True  # ... FP 3x3 square on the right: tie -> negative
    gt[4, :, 0:4] = True  # FN deeper than FP -> positive
    gt[4, :, 5:9] = True  # FN = this 7x4 block (d=2)
    pred[4, :, 0:5] = True  # FP = column 4 (d=1)
    coords, pos, valid = next_click(t(pred), t(gt), generator=np.random.default_rng(1))
    assert valid.tolist() == [True, True, False, True, True]
    assert pos.tolist() == [True, False, False, False, True]
    for b in (0, 1, 3, 4):
        assert tuple(coords[b].tolist()) in brute_click(pred[b], gt[b])[2]
    assert coords[3].tolist() == [3, 7]  # centre of the FP square


def test_training_candidates_satisfy_ratio():
    H, W = 7, 9
    gt = np.ones((1, H, W), dtype=bool)
    pred = np.zeros_like(gt)
    pred[0, 0, 0] = True  # a 1-px FP (d=1) loses against the FN (d=4)
    gt[0, 0, 0] = False
    _, _, cand = brute_click(pred[0], gt[0], inner_k=TRAIN_INNER_K)
    _, _, maxima = brute_click(pred[0], gt[0])
    d = brute_dist(gt[0] & ~pred[0])
    assert all(d[c] > d.max() / 1.7 for c in cand) and len(cand) > len(maxima)
    seen = set()
    for seed in range(150):
        coords, pos, valid = next_click(t(pred), t(gt), generator=np.random.default_rng(seed), inner_k=TRAIN_INNER_K)
        assert pos[0] and valid[0]
        seen.add(tuple(coords[0].tolist()))
    assert seen == cand


def test_per_sample_generators_pick_the_documented_candidate():
    # Reference: candidate number rng.integers(n) in row-major order, from a generator keyed by (seed, index).
    rng = np.random.default_rng(7)
    B, H, W = 5, 6, 8
    gt = rng.random((B, H, W)) < 0.5
    pred = rng.random((B, H, W)) < 0.3
    pred[2] = gt[2]  # no error: no click and no draw
    index = [11, 0, 4, 3, 250]
    coords, pos, valid = next_click(t(pred), t(gt), generator=sample_generators(42, index))
    for b in range(B):
        v, p, cand = brute_click(pred[b], gt[b])
        assert bool(valid[b]) == v and bool(pos[b]) == p
        if v:
            expected = sorted(cand)[np.random.default_rng([42, index[b]]).integers(len(cand))]
            assert tuple(coords[b].tolist()) == expected


def test_per_sample_generators_make_a_click_independent_of_the_batch():
    # The same sample alone, in another batch position, or on a canvas padded with ignore pixels.
    rng = np.random.default_rng(3)
    gts = [np.ones((5, 7), dtype=bool), rng.random((6, 4)) < 0.6, rng.random((4, 6)) < 0.6]
    Hc, Wc = 6, 7
    gt = np.zeros((3, Hc, Wc), dtype=bool)
    ignore = np.ones((3, Hc, Wc), dtype=bool)
    for b, g in enumerate(gts):
        gt[b, : g.shape[0], : g.shape[1]] = g
        ignore[b, : g.shape[0], : g.shape[1]] = False
    pred = np.zeros_like(gt)
    batched = next_click(t(pred), t(gt), ignore=t(ignore), generator=sample_generators(5, [0, 1, 2]))
    flipped = next_click(t(pred[::-1].copy()), t(gt[::-1].copy()), ignore=t(ignore[::-1].copy()),
                         generator=sample_generators(5, [2, 1, 0]))
    for b, g in enumerate(gts):
        alone = next_click(t(np.zeros((1, *g.shape))), t(g[None]), generator=sample_generators(5, [b]))
        for got in (batched, [x.flip(0) for x in flipped]):
            assert [x[b].tolist() for x in got] == [x[0].tolist() for x in alone], b
    # a shared generator, by contrast, makes sample 0's tie-break depend on the samples drawn before it
    first = [next_click(t(pred), t(gt), ignore=t(ignore), generator=np.random.default_rng(s))[0][0] for s in range(20)]
    last = [next_click(t(pred[::-1].copy()), t(gt[::-1].copy()), ignore=t(ignore[::-1].copy()),
                       generator=np.random.default_rng(s))[0][2] for s in range(20)]
    assert any(not torch.equal(f, l) for f, l in zip(first, last))


def test_sample_generators_and_their_errors():
    a, b = sample_generators(42, torch.tensor([3, 0])), sample_generators(42, [3, 0])
    assert [g.random() for g in a] == [g.random() for g in b] == [np.random.default_rng([42, i]).random() for i in (3, 0)]
    assert sample_generators(1, []) == []
    with pytest.raises(ValueError, match="sample_index"):
        sample_generators(0, [-1])
    with pytest.raises(TypeError, match="sample_index"):
        sample_generators(0, torch.tensor([0.5]))
    with pytest.raises(ValueError, match="seed"):
        sample_generators(-1, [0])
    m = torch.zeros(2, 3, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="one numpy generator per sample"):
        next_click(m, m, generator=sample_generators(0, [0]))
    with pytest.raises(TypeError, match="per-sample generators"):
        next_click(m, m, generator=[torch.Generator(), torch.Generator()])
    coords, pos, valid = next_click(m[:0], m[:0], generator=[])  # an empty batch needs no generator
    assert coords.shape == (0, 2) and not valid.any()


def test_next_click_input_errors():
    m = torch.zeros(1, 3, 3, dtype=torch.bool)
    with pytest.raises(TypeError, match="pred must be a bool"):
        next_click(m.float(), m)
    with pytest.raises(ValueError, match="gt must have shape"):
        next_click(m, torch.zeros(1, 3, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="ignore"):
        next_click(m, m, ignore=torch.zeros(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="inner_k"):
        next_click(m, m, inner_k=0.5)


# ----------------------------------------------------------------------------- training samplers
def test_sample_num_clicks_distribution():
    gen = np.random.default_rng(0)
    for gamma, max_clicks in ((0.6, 20), (0.9, 5)):
        n = 20000
        counts = np.bincount([sample_num_clicks(gamma=gamma, max_clicks=max_clicks, generator=gen) for _ in range(n)],
                             minlength=max_clicks + 1)
        assert counts.size == max_clicks + 1  # nothing above max_clicks
        probs = np.array([gamma**k for k in range(max_clicks + 1)])
        probs /= probs.sum()
        assert np.abs(counts / n - probs).max() < 0.015
        assert counts[0] > 0  # k starts at 0
    with pytest.raises(ValueError, match="gamma"):
        sample_num_clicks(gamma=0.0)
    with pytest.raises(ValueError, match="max_clicks"):
        sample_num_clicks(max_clicks=-1)


def shift_or(mask: np.ndarray, r: int) -> np.ndarray:
    """Square dilation by shifting (outside the image is background)."""
    H, W = mask.shape
    out = np.zeros_like(mask)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            src = mask[max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)]
            out[max(-dy, 0):H + min(-dy, 0), max(-dx, 0):W + min(-dx, 0)] |= src
    return out


def naive_erode(mask: np.ndarray, r: int) -> np.ndarray:
    """Keep a pixel iff every window pixel that lies inside the image is in the mask."""
    H, W = mask.shape
    out = np.zeros_like(mask)
    for i in range(H):
        for j in range(W):
            out[i, j] = mask[max(i - r, 0):i + r + 1, max(j - r, 0):j + r + 1].all()
    return out


def test_sample_initial_clicks_regions_and_spacing():
    H, W = 48, 40
    gt = np.zeros((3, H, W), dtype=bool)
    gt[0, 10:34, 12:30] = True  # area 432
    gt[1, 20:24, 20:24] = True  # area 16 < min_area -> no clicks
    gt[2, 0:13, 0:13] = True  # 169 px at the corner: radius 5 -> 2 (halved, not decremented to 3)
    kw = dict(max_pos=4, max_neg=3, min_spacing=6.0, erode_radius=5, ring_radii=(2, 4), box_expand=2.0, min_area=100)
    pos_seen = [set(), set(), set()]
    neg_seen = {"box": 0, "ring": 0}
    for seed in range(15):
        clicks = sample_initial_clicks(t(gt), generator=np.random.default_rng(seed), **kw)
        assert clicks.num_clicks[1] == 0
        for b in (0, 2):
            labels = clicks.labels[b][clicks.labels[b] >= 0].tolist()
            pts = [tuple(p) for p in clicks.coords[b][: len(labels)].tolist()]
            n_pos = labels.count(1)
            assert 1 <= n_pos <= 4 and labels == [1] * n_pos + [0] * (len(labels) - n_pos)
            assert len(labels) - n_pos <= 6
            for group in (pts[:n_pos], pts[n_pos:]):
                for i in range(len(group)):
                    for j in range(i):
                        assert math.dist(group[i], group[j]) >= 6.0
            pos_seen[b] |= set(pts[:n_pos])
            m = gt[b]
            near, far = shift_or(m, 2), shift_or(m, 4)
            ys, xs = np.nonzero(m)
            cy, hy = (ys.min() + ys.max() + 1) / 2, 2.0 * (ys.max() + 1 - ys.min()) / 2
            cx, hx = (xs.min() + xs.max() + 1) / 2, 2.0 * (xs.max() + 1 - xs.min()) / 2
            for y, x in pts[n_pos:]:
                in_box = math.floor(cy - hy) <= y < math.ceil(cy + hy) and math.floor(cx - hx) <= x < math.ceil(cx + hx)
                kind = "box" if in_box and not far[y, x] else "ring" if far[y, x] and not near[y, x] else None
                assert kind is not None, (b, y, x)
                neg_seen[kind] += 1
    # sample 0: radius 5 keeps 14 x 8 = 112 >= 100 px; sample 2: radius 2 keeps 11 x 11 (the border does
    # not erode) while radius 3 would keep 10 x 10 = 100
    assert all(naive_erode(gt[0], 5)[p] for p in pos_seen[0])
    assert all(naive_erode(gt[2], 2)[p] for p in pos_seen[2])
    assert any(not naive_erode(gt[2], 3)[p] for p in pos_seen[2])
    assert neg_seen["box"] > 0 and neg_seen["ring"] > 0


def test_sample_initial_clicks_small_negative_regions_are_skipped():
    gt = np.zeros((1, 20, 20), dtype=bool)
    gt[0, 5:15, 5:15] = True  # ring 14^2 - 12^2 = 52 px and box-minus-dilation 0 px < min_area
    for seed in range(10):
        clicks = sample_initial_clicks(t(gt), min_area=100, min_spacing=0, ring_radii=(1, 2),
                                       generator=np.random.default_rng(seed))
        assert (clicks.labels[0][clicks.labels[0] >= 0] == 1).all()
    with pytest.raises(ValueError, match="ring_radii"):
        sample_initial_clicks(t(gt), ring_radii=(4, 2))
    with pytest.raises(TypeError, match="gt must be a bool"):
        sample_initial_clicks(torch.zeros(1, 4, 4))


# ----------------------------------------------------------------------------- encodings
def test_disk_maps_match_naive_loop():
    H, W = 5, 7
    clicks = Clicks.from_lists([[(0, 0, 1), (4, 6, 0), (2, 3, 1)], [(-2, 3, 0)], [], [(2, 2, 0), (2, 4, 0)]])
    for radius in (0.0, 1.5, 2.0, 3.0):
        out = disk_maps(clicks, H, W, radius=radius)
        assert out.shape == (4, 2, H, W) and out.dtype == torch.float32
        ref = np.zeros((4, 2, H, W))
        for b in range(4):
            for n in range(clicks.labels.shape[1]):
                lab = int(clicks.labels[b, n])
                if lab < 0:
                    continue
                y, x = clicks.coords[b, n].tolist()
                for i in range(H):
                    for j in range(W):
                        if math.hypot(i - y, j - x) <= radius + 1e-12:
                            ref[b, 0 if lab == 1 else 1, i, j] = 1.0
        assert np.array_equal(out.numpy(), ref), radius
    assert disk_maps(Clicks.empty(2), 3, 3).abs().sum() == 0
    with pytest.raises(ValueError, match="radius"):
        disk_maps(clicks, H, W, radius=-1)


def test_clicks_to_points_and_scaling():
    clicks = Clicks.from_lists([[(1, 2, 1), (3, 0, 0)], [(4, 5, 0)]])
    points, labels = clicks_to_points(clicks)
    assert points.dtype == torch.float32 and points.shape == (2, 2, 2)
    assert points.tolist() == [[[2.5, 1.5], [0.5, 3.5]], [[5.5, 4.5], [0.0, 0.0]]]
    assert labels.tolist() == [[1, 0], [0, -1]]
    # SAM: ResizeLongestSide.apply_coords on pixel indices, then +0.5 in the prompt encoder
    H, W, L = 600, 450, 1024
    new_h, new_w = int(H * L / H + 0.5), int(W * L / H + 0.5)
    assert longest_side_shape(H, W, L) == (new_h, new_w)
    idx = torch.tensor([[0, 0], [449, 599], [17, 300]], dtype=torch.float64)  # (x, y) indices
    sam = torch.stack([idx[:, 0] * new_w / W + 0.5, idx[:, 1] * new_h / H + 0.5], dim=1)
    assert torch.allclose(scale_points(idx + 0.5, (H, W), L), sam)
    with pytest.raises(TypeError, match="points"):
        scale_points(idx.long(), (H, W), L)
    with pytest.raises(ValueError, match="positive"):
        longest_side_shape(0, 3, 8)
