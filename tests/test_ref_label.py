"""M_ref reference-label rules (Inter2Former §3.3 as coded in YouHuang67/inter2former update_ref_labels.py), one rule per test, vs hand tables and naive loops."""
import math

import numpy as np
import pytest
import torch

from segblocks.interactive import (
    Clicks,
    RefLabel,
    initial_ref_label,
    points_to_ref_label,
    update_ref_label,
    update_ref_label_by_prediction,
)

DBG, PBG, UNK, PFG, DFG = 0, 1, 2, 3, 4


def naive_points_to_ref(sample, H, W, inner, outer):
    """Per-pixel statement of the rules for one sample's list of (y, x, label)."""
    first = {lab: next((i for i, c in enumerate(sample) if c[2] == lab), math.inf) for lab in (0, 1)}
    out = np.full((H, W), UNK, dtype=np.int64)
    for i in range(H):
        for j in range(W):
            d = {lab: min((math.hypot(i - y, j - x) for y, x, l in sample if l == lab), default=math.inf)
                 for lab in (0, 1)}
            po, no = d[1] <= inner + outer, d[0] <= inner + outer
            if po and not no:
                out[i, j] = PFG
            elif no and not po:
                out[i, j] = PBG
            pi, ni = d[1] <= inner, d[0] <= inner
            if pi and ni:
                out[i, j] = DFG if first[1] > first[0] else DBG
            elif pi:
                out[i, j] = DFG
            elif ni:
                out[i, j] = DBG
    return out


def test_label_values_and_initial_map():
    assert [int(v) for v in RefLabel] == [0, 1, 2, 3, 4]
    assert (RefLabel.DEFINITE_BG, RefLabel.POSSIBLE_BG, RefLabel.UNKNOWN) == (0, 1, 2)
    m = initial_ref_label(2, 3, 4)
    assert m.shape == (2, 3, 4) and m.dtype == torch.uint8 and (m == UNK).all()


def test_inner_disk_is_definite_rest_unknown():
    out = points_to_ref_label(Clicks.from_lists([[(2, 2, 1)], [(0, 4, 0)]]), 5, 5, inner_radius=1, outer_radius=0)
    expected = np.full((2, 5, 5), UNK)
    for y, x in ((2, 2), (1, 2), (3, 2), (2, 1), (2, 3)):
        expected[0, y, x] = DFG
    for y, x in ((0, 4), (1, 4), (0, 3)):
        expected[1, y, x] = DBG
    assert out.dtype == torch.uint8 and np.array_equal(out.numpy(), expected)


def test_outer_ring_is_possible():
    out = points_to_ref_label(Clicks.from_lists([[(3, 3, 1)], [(3, 3, 0)]]), 7, 7, inner_radius=1, outer_radius=1.5)
    for b, (definite, possible) in enumerate(((DFG, PFG), (DBG, PBG))):
        for i in range(7):
            for j in range(7):
                d = math.hypot(i - 3, j - 3)
                want = definite if d <= 1 else possible if d <= 2.5 else UNK
                assert out[b, i, j] == want, (b, i, j)


def test_outer_overlap_of_both_polarities_is_unknown():
    out = points_to_ref_label(Clicks.from_lists([[(2, 1, 1), (2, 5, 0)]]), 5, 7, inner_radius=1, outer_radius=1)
    # pixel (2, 3) is at distance 2 from both clicks: outer of both -> UNKNOWN
    assert out[0, 2, 3] == UNK
    assert out[0, 2, 2] == DFG and out[0, 2, 4] == DBG
    assert out[0, 1, 3] == UNK  # sqrt(5) > 2 from both
    assert out[0, 0, 1] == PFG and out[0, 0, 5] == PBG


@pytest.mark.parametrize(
    "sample, winner",
    [
        ([(2, 2, 1), (2, 3, 0)], DBG),  # positive first, negative later -> negative overwrites
        ([(2, 3, 0), (2, 2, 1)], DFG),  # negative first -> positive overwrites
        ([(2, 3, 0), (2, 2, 1), (3, 3, 0)], DFG),  # order of *first* clicks, not of the last one
        ([(0, 0, 1), (2, 3, 0), (2, 2, 1)], DBG),
    ],
)
def test_inner_conflict_later_first_polarity_wins(sample, winner):
    out = points_to_ref_label(Clicks.from_lists([sample]), 5, 6, inner_radius=1.5, outer_radius=0)
    # (2, 2) and (2, 3) are inside both inner disks whenever both polarities clicked there
    overlap = [(y, x) for y in range(5) for x in range(6)
               if math.hypot(y - 2, x - 2) <= 1.5 and math.hypot(y - 2, x - 3) <= 1.5]
    assert overlap
    for p in overlap:
        assert out[0][p] == winner


def test_points_to_ref_label_random_batches_match_naive():
    rng = np.random.default_rng(0)
    H, W = 9, 11
    for inner, outer in ((5, 0), (1.5, 2), (2, 1), (0, 1)):
        samples = []
        for b in range(4):
            n = int(rng.integers(0, 5))
            samples.append([(int(rng.integers(-1, H + 1)), int(rng.integers(-1, W + 1)), int(rng.integers(0, 2)))
                            for _ in range(n)])
        out = points_to_ref_label(Clicks.from_lists(samples), H, W, inner_radius=inner, outer_radius=outer)
        for b, s in enumerate(samples):
            assert np.array_equal(out[b].numpy(), naive_points_to_ref(s, H, W, inner, outer)), (inner, outer, s)


def test_no_clicks_is_all_unknown():
    out = points_to_ref_label(Clicks.empty(2), 4, 5)
    assert out.shape == (2, 4, 5) and (out == UNK).all()
    with pytest.raises(ValueError, match="radii"):
        points_to_ref_label(Clicks.empty(1), 4, 5, inner_radius=-1)


def _table_update(x_values, new_value):
    x = torch.tensor(x_values, dtype=torch.uint8).view(1, 1, -1)
    return update_ref_label(x, torch.full_like(x, new_value)).view(-1).tolist()


# The merge table of the authors' update_ref_labels.py, one row per incoming label; columns are x = 0..4.
def test_merge_definite_bg_overwrites_everything():
    assert _table_update([0, 1, 2, 3, 4], DBG) == [0, 0, 0, 0, 0]


def test_merge_definite_fg_overwrites_everything():
    assert _table_update([0, 1, 2, 3, 4], DFG) == [4, 4, 4, 4, 4]


def test_merge_unknown_is_a_no_op():
    assert _table_update([0, 1, 2, 3, 4], UNK) == [0, 1, 2, 3, 4]


def test_merge_possible_bg():
    # UNKNOWN -> POSSIBLE_BG, opposite POSSIBLE_FG -> UNKNOWN, definite kept
    assert _table_update([0, 1, 2, 3, 4], PBG) == [0, 1, 1, 2, 4]


def test_merge_possible_fg():
    assert _table_update([0, 1, 2, 3, 4], PFG) == [0, 2, 3, 3, 4]


def test_merge_is_per_pixel_and_keeps_dtype():
    rng = np.random.default_rng(1)
    table = {0: [0] * 5, 4: [4] * 5, 2: [0, 1, 2, 3, 4], 1: [0, 1, 1, 2, 4], 3: [0, 2, 3, 3, 4]}
    for dtype in (torch.uint8, torch.int64):
        x = torch.from_numpy(rng.integers(0, 5, (3, 4, 5))).to(dtype)
        new = torch.from_numpy(rng.integers(0, 5, (3, 4, 5))).to(dtype)
        x_before = x.clone()
        out = update_ref_label(x, new)
        assert out.dtype == dtype and torch.equal(x, x_before)
        ref = [[[table[int(n)][int(v)] for v, n in zip(rx, rn)] for rx, rn in zip(px, pn)] for px, pn in zip(x, new)]
        assert out.tolist() == ref


def test_prediction_feedback_rules():
    x = torch.tensor([0, 1, 2, 3, 4] * 2, dtype=torch.uint8).view(1, 2, 5)
    pred = torch.tensor([[True] * 5, [False] * 5]).view(1, 2, 5)
    out = update_ref_label_by_prediction(x, pred)
    assert out[0, 0].tolist() == [0, 2, 3, 3, 4]  # predicted FG
    assert out[0, 1].tolist() == [0, 1, 1, 2, 4]  # predicted BG
    assert x[0, 0].tolist() == [0, 1, 2, 3, 4]  # input untouched


def test_interaction_step_sequence_batch():
    """Click -> merge -> prediction feedback on two samples with different click counts."""
    H, W = 6, 6
    ref = initial_ref_label(2, H, W)
    clicks = Clicks.from_lists([[(1, 1, 1)], [(4, 4, 0), (0, 5, 1)]])
    ref = update_ref_label(ref, points_to_ref_label(clicks, H, W, inner_radius=1))
    pred = torch.zeros(2, H, W, dtype=torch.bool)
    pred[:, :3, :3] = True
    ref = update_ref_label_by_prediction(ref, pred)
    expected = np.where(pred.numpy(), PFG, PBG)
    for b, sample in enumerate([[(1, 1, 1)], [(4, 4, 0), (0, 5, 1)]]):
        for y, x, lab in sample:
            for i in range(H):
                for j in range(W):
                    if math.hypot(i - y, j - x) <= 1:
                        expected[b, i, j] = DFG if lab else DBG
    assert np.array_equal(ref.numpy(), expected)
    # a second negative click inside the predicted FG turns its disk to DEFINITE_BG, the rest stays
    new = points_to_ref_label(Clicks.from_lists([[(2, 2, 0)], []]), H, W, inner_radius=0)
    ref2 = update_ref_label(ref, new)
    expected[0, 2, 2] = DBG
    assert np.array_equal(ref2.numpy(), expected)
    # flipping the prediction: POSSIBLE_FG predicted BG -> UNKNOWN, definite labels unchanged
    ref3 = update_ref_label_by_prediction(ref2, ~pred)
    flipped = np.where(np.isin(expected, (PFG, PBG)), UNK, expected)
    assert np.array_equal(ref3.numpy(), flipped)


def test_input_errors():
    x = initial_ref_label(1, 3, 3)
    with pytest.raises(TypeError, match="integer tensor"):
        update_ref_label(x.float(), x)
    with pytest.raises(ValueError, match="0..4"):
        update_ref_label(x, torch.full_like(x, 5))
    with pytest.raises(ValueError, match="new must have shape"):
        update_ref_label(x, initial_ref_label(1, 3, 4))
    with pytest.raises(TypeError, match="pred must be a bool"):
        update_ref_label_by_prediction(x, x)
