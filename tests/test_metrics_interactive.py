"""Interactive metrics on hand-made IoU curves (values worked out by hand below)."""
import math
import warnings

import pytest
import torch

from segblocks.metrics.interactive import (
    InteractiveMetrics,
    binary_iou,
    clicks_to_reach,
    iou_delta_histogram,
    iou_drop_stats,
    miou_at_clicks,
    noc,
    nof,
    seconds_per_click,
)


def _curves():
    """(3, 20) curves.

    s0: 0.5, 0.86, 0.91, 0.96, 0.90 (a 6-point drop), then 0.96 → reaches 85/90/95 at clicks 2/3/4.
    s1: 0.8 everywhere except 0.795 at click 10 (a 0.5-point dip) → never reaches 85.
    s2: 0.1 for 19 clicks, 0.92 at click 20 → reaches 85/90 at click 20, never 95.
    """
    s0 = [0.5, 0.86, 0.91, 0.96, 0.90] + [0.96] * 15
    s1 = [0.8] * 20
    s1[9] = 0.795
    s2 = [0.1] * 19 + [0.92]
    return torch.tensor([s0, s1, s2], dtype=torch.float64)


def test_noc_nof_miou_by_hand():
    ious = _curves()
    assert clicks_to_reach(ious, 0.85).tolist() == [2, 20, 20]
    assert clicks_to_reach(ious, 0.95).tolist() == [4, 20, 20]
    assert noc(ious, 0.85).item() == pytest.approx((2 + 20 + 20) / 3)
    assert noc(ious, 0.90).item() == pytest.approx((3 + 20 + 20) / 3)
    assert noc(ious, 0.95).item() == pytest.approx((4 + 20 + 20) / 3)
    # s2 reaches 85/90 at the last click: inside the budget, so not a failure.
    assert [nof(ious, t).item() for t in (0.85, 0.90, 0.95)] == [1, 1, 2]
    miou = miou_at_clicks(ious)
    assert miou.shape == (20,)
    assert miou[0].item() == pytest.approx((0.5 + 0.8 + 0.1) / 3)
    assert miou[4].item() == pytest.approx((0.90 + 0.8 + 0.1) / 3)
    assert miou[9].item() == pytest.approx((0.96 + 0.795 + 0.1) / 3)
    assert miou[19].item() == pytest.approx((0.96 + 0.8 + 0.92) / 3)


def test_threshold_is_inclusive_and_never_reached_counts_budget():
    ious = torch.tensor([[0.2, 0.9, 0.9], [0.1, 0.2, 0.3]])
    assert clicks_to_reach(ious, 0.9).tolist() == [2, 3]  # IoU == τ counts as reached
    assert nof(ious, 0.9).item() == 1
    empty = torch.zeros(0, 20)
    assert clicks_to_reach(empty, 0.9).shape == (0,) and nof(empty, 0.9).item() == 0


def test_stability_drops_by_hand():
    curve = torch.tensor([[0.9, 0.83, 0.825, 0.70, 0.71, 0.60]])
    # ΔIoU: -0.07, -0.005, -0.125, +0.01, -0.11 → three drops of at least 1 point out of 5 steps
    count, fraction = iou_drop_stats(curve)
    assert count.item() == 3 and fraction.item() == pytest.approx(3 / 5)
    count, _ = iou_drop_stats(curve, drop_threshold=0.1)
    assert count.item() == 2
    counts, edges = iou_delta_histogram(curve, bins=4, value_range=(-0.2, 0.0), drop_threshold=0.01)
    assert counts.tolist() == [0, 2, 1, 0]  # bins [-.2,-.15) [-.15,-.1) [-.1,-.05) [-.05,0]
    torch.testing.assert_close(edges, torch.tensor([-0.2, -0.15, -0.1, -0.05, 0.0], dtype=torch.float64))
    counts, _ = iou_delta_histogram(curve, bins=8)
    assert counts.sum().item() == 5
    count, fraction = iou_drop_stats(torch.tensor([[0.5]]))
    assert count.item() == 0 and math.isnan(fraction.item())


def test_seconds_per_click_by_hand():
    dec = torch.tensor([[0.1] * 20, [0.05] * 20])
    enc = torch.tensor([2.0, 1.0])
    # 20-SPC: (2 + 20·0.1)/20 = 0.2 and (1 + 20·0.05)/20 = 0.1 → 0.15; online: mean click time 0.075.
    assert seconds_per_click(dec, enc).item() == pytest.approx(0.15)
    assert seconds_per_click(dec).item() == pytest.approx(0.075)
    with pytest.raises(ValueError, match="encode_seconds"):
        seconds_per_click(dec, enc[:1])


def _full_metric(**kwargs):
    m = InteractiveMetrics(**kwargs)
    ious = _curves()
    m.update(ious[:2], encode_seconds=torch.tensor([2.0, 1.0]),
             decode_seconds=torch.tensor([[0.1] * 20, [0.05] * 20]), sample_index=torch.tensor([7, 3]))
    m.update(ious[2:])  # untimed: counts for quality, not for SPC
    return m


def test_metric_compute_by_hand():
    out = _full_metric().compute()
    assert out["num_samples"].item() == 3
    assert out["noc@85"].item() == pytest.approx(14.0)
    assert out["noc@90"].item() == pytest.approx(43 / 3)
    assert out["noc@95"].item() == pytest.approx(44 / 3)
    assert [out[f"nof@{t}"].item() for t in (85, 90, 95)] == [1, 1, 2]
    assert out["5-miou"].item() == pytest.approx(0.6, abs=1e-6)
    assert out["miou@5"].item() == out["5-miou"].item()
    assert sum(k.startswith("miou@") for k in out) == 20
    assert out["miou@20"].item() == pytest.approx((0.96 + 0.8 + 0.92) / 3, abs=1e-6)
    # One drop (s0: 0.96 → 0.90); s1's 0.5-point dip is below the 1-point cut; 3·19 steps.
    assert out["stability/drop_count"].item() == 1
    assert out["stability/drop_fraction"].item() == pytest.approx(1 / 57)
    assert out["20-spc"].item() == pytest.approx(0.15)
    assert out["online-spc"].item() == pytest.approx(0.075)


def test_metric_spc_keys_and_decode_only():
    m = InteractiveMetrics(max_clicks=2, thresholds=(0.5,))
    m.update(torch.tensor([[0.4, 0.6]]))
    out = m.compute()
    assert "2-spc" not in out and "online-spc" not in out and "5-miou" not in out
    m.update(torch.tensor([[0.7, 0.8]]), decode_seconds=torch.tensor([[0.25, 0.75]]))
    out = m.compute()  # no preprocessing: both SPCs are the mean click time
    assert out["2-spc"].item() == pytest.approx(0.5) and out["online-spc"].item() == pytest.approx(0.5)
    assert out["noc@50"].item() == pytest.approx(1.5)


def test_per_sample_curves():
    c = _full_metric().per_sample_curves()
    # rows by sample index: the unindexed sample (-1, updated last) first, then 3, then 7
    torch.testing.assert_close(c["iou"], _curves().float()[[2, 1, 0]])
    assert c["sample_index"].tolist() == [-1, 3, 7] and c["sample_index"].dtype == torch.int64
    assert c["encode_seconds"][1:].tolist() == [1.0, 2.0] and math.isnan(c["encode_seconds"][0])
    assert c["decode_seconds"].shape == (3, 20) and torch.isnan(c["decode_seconds"][0]).all()
    assert c["noc@90"].tolist() == [20, 20, 3]


def test_rows_follow_the_dataset_index_whatever_the_update_order():
    ious = torch.rand(6, 5, generator=torch.Generator().manual_seed(0))
    index = torch.tensor([4, 0, 5, 2, 1, 3])
    ranked = InteractiveMetrics(max_clicks=5)  # e.g. rank 0 held [0, 2, 4], rank 1 [1, 3, 5], pooled rank by rank
    ranked.update(ious[[1, 3, 0]], sample_index=index[[1, 3, 0]])
    ranked.update(ious[[4, 5, 2]], sample_index=index[[4, 5, 2]])
    c = ranked.per_sample_curves()
    assert c["sample_index"].tolist() == list(range(6))
    order = index.argsort()
    assert torch.equal(c["iou"], ious[order])
    in_order = InteractiveMetrics(max_clicks=5)
    in_order.update(ious[order], sample_index=index[order])
    for key, value in in_order.compute().items():  # bit for bit: the means sum in the same order
        assert torch.equal(ranked.compute()[key], value) or (value.isnan() and ranked.compute()[key].isnan()), key


def test_a_sample_index_given_twice_is_an_error():
    m = InteractiveMetrics(max_clicks=2)
    m.update(torch.rand(3, 2), sample_index=torch.tensor([0, 1, 2]))
    m.update(torch.rand(2, 2), sample_index=torch.tensor([3, 0]))  # a padded sampler repeated sample 0
    with pytest.raises(ValueError, match=r"sample_index \[0\].*DistributedSampler"):
        m.compute()
    with pytest.raises(ValueError, match="more than once"):
        m.per_sample_curves()
    unindexed = InteractiveMetrics(max_clicks=2)
    unindexed.update(torch.rand(2, 2))
    unindexed.update(torch.rand(2, 2))  # -1 (no index) may repeat
    assert unindexed.compute()["num_samples"] == 4


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


def test_merge_halves_equals_single():
    ious = _curves()
    whole = _full_metric()
    first = InteractiveMetrics()
    first.update(ious[:2], encode_seconds=torch.tensor([2.0, 1.0]),
                 decode_seconds=torch.tensor([[0.1] * 20, [0.05] * 20]), sample_index=torch.tensor([7, 3]))
    second = InteractiveMetrics()
    second.update(ious[2:])
    first.merge_state(second)
    _assert_same(first.compute(), whole.compute())


def test_ddp_sync_path():
    """Run torchmetrics' real gather/reduce path with a fake all-gather."""
    two_ranks = _full_metric(dist_sync_fn=lambda t, group=None: [t, t], distributed_available_fn=lambda: True)
    with pytest.raises(ValueError, match="more than once"):  # rank 2 holds the same indexed samples again
        two_ranks.compute()
    ref = InteractiveMetrics()
    ref.update(_curves())
    ref.update(_curves())
    two_ranks = InteractiveMetrics(dist_sync_fn=lambda t, group=None: [t, t], distributed_available_fn=lambda: True)
    two_ranks.update(_curves())  # unindexed: pooled as given
    _assert_same(two_ranks.compute(), ref.compute())
    assert two_ranks.per_sample_curves()["iou"].shape == (6, 20)
    assert len(two_ranks.iou) == 1  # local state restored after the sync

    # A rank without samples contributes a 1-D empty tensor; the flat states must absorb it.
    lonely = _full_metric(dist_sync_fn=lambda t, group=None: [t, t.new_zeros(0)], distributed_available_fn=lambda: True)
    _assert_same(lonely.compute(), _full_metric().compute())


def test_metric_without_updates_is_nan():
    m = InteractiveMetrics()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns about compute before update
        out = m.compute()
    assert out["num_samples"].item() == 0 and math.isnan(out["noc@90"].item()) and out["nof@90"].item() == 0


def test_metric_bad_inputs():
    m = InteractiveMetrics(max_clicks=3)
    with pytest.raises(ValueError, match="max_clicks=3"):
        m.update(torch.rand(2, 4))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.update(torch.tensor([[0.1, 1.2, 0.3]]))
    with pytest.raises(ValueError, match="float"):
        m.update(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="needs decode_seconds"):
        m.update(torch.rand(1, 3), encode_seconds=torch.ones(1))
    with pytest.raises(ValueError, match="decode_seconds must be"):
        m.update(torch.rand(1, 3), decode_seconds=torch.ones(1, 2))
    with pytest.raises(ValueError, match="non-negative"):
        m.update(torch.rand(1, 3), decode_seconds=-torch.ones(1, 3))
    with pytest.raises(ValueError, match="sample_index"):
        m.update(torch.rand(1, 3), sample_index=torch.ones(1))
    with pytest.raises(ValueError, match="thresholds"):
        InteractiveMetrics(thresholds=(90,))
    with pytest.raises(ValueError, match="max_clicks"):
        InteractiveMetrics(max_clicks=0)


def naive_iou(pred, gt, ignore):
    inter = union = gt_count = 0
    for i in range(pred.shape[0]):
        for j in range(pred.shape[1]):
            if ignore is not None and ignore[i, j]:
                continue
            p, g = bool(pred[i, j]), bool(gt[i, j])
            inter += p and g
            union += p or g
            gt_count += g
    return 0.0 if gt_count == 0 or inter == 0 else inter / union


def test_binary_iou_against_loops():
    g = torch.Generator().manual_seed(5)
    pred = torch.rand(4, 5, 7, generator=g) > 0.5
    gt = torch.rand(4, 5, 7, generator=g) > 0.6
    ignore = torch.rand(4, 5, 7, generator=g) > 0.8
    gt[2] = False  # empty GT → 0 even though pred is not empty
    gt[3] = False
    pred[3] = False  # empty GT and empty pred → 0 as well
    for ign in (None, ignore):
        out = binary_iou(pred, gt, ign)
        assert out.shape == (4,)
        expected = [naive_iou(pred[b], gt[b], None if ign is None else ign[b]) for b in range(4)]
        torch.testing.assert_close(out.double(), torch.tensor(expected, dtype=torch.float64))
    assert out[2].item() == 0 and out[3].item() == 0
    # Integer label maps: foreground is 1; 255 (ignore label) is not foreground.
    label = torch.tensor([[1, 1], [0, 255]])
    assert binary_iou(torch.tensor([[1, 0], [0, 1]]), label).item() == pytest.approx(1 / 3)
    assert binary_iou(label == 1, label == 1).item() == 1.0


def test_binary_iou_bad_inputs():
    m = torch.zeros(3, 3, dtype=torch.bool)
    with pytest.raises(TypeError, match="threshold it first"):
        binary_iou(torch.zeros(3, 3), m)
    with pytest.raises(ValueError, match="shape"):
        binary_iou(m, m[:2])
    with pytest.raises(ValueError, match="ignore"):
        binary_iou(m, m, torch.zeros(3, 3))
