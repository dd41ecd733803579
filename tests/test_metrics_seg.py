"""Segmentation metrics against naive re-implementations written from the definitions.

PQ follows Kirillov et al. 2019 (Eq. 1) with panopticapi's void rules; mIoU follows detectron2's
SemSegEvaluator; mask AP is checked on cases whose COCO AP is derived by hand.
"""
import math

import numpy as np
import pytest
import torch

from segblocks.metrics import (
    MaskAP,
    PanopticQualityMetric,
    SemanticIoU,
    format_metrics_table,
    panoptic_from_masks,
    panoptic_from_segments,
    semantic_from_masks,
)

K = 4
THINGS = [0, 1]  # classes 2, 3 are stuff


# ----------------------------------------------------------------------------- input builders
def target_from_map(seg_map: np.ndarray, classes: dict[int, int]):
    """(labels, masks) from an id map (0 = void) and id -> class."""
    ids = [int(i) for i in np.unique(seg_map) if i != 0]
    masks = np.stack([seg_map == i for i in ids]) if ids else np.zeros((0, *seg_map.shape), bool)
    return torch.tensor([classes[i] for i in ids], dtype=torch.long), torch.from_numpy(masks)


def pred_from_map(seg_map: np.ndarray, classes: dict[int, int]):
    """(panoptic_seg, segments_info) from an id map (0 = void) and id -> class."""
    info = [dict(id=i, category_id=c, isthing=c in THINGS, score=1.0) for i, c in classes.items()]
    return torch.from_numpy(seg_map.astype(np.int64)), info


# ----------------------------------------------------------------------------- naive PQ
def naive_pq(samples, num_classes=K, things=THINGS):
    """panopticapi PQ: samples are (pred_map, pred_classes, gt_map, gt_classes), 0 = void in both maps."""
    iou_sum, tp, fp, fn = (np.zeros(num_classes) for _ in range(4))

    def segments(seg_map, classes):
        segs = {}
        for i in np.unique(seg_map):
            if i == 0:
                continue
            c = classes[int(i)]
            key = ("thing", int(i)) if c in things else ("stuff", c)  # stuff of one class is one segment
            segs[key] = (c, segs.get(key, (c, np.zeros(seg_map.shape, bool)))[1] | (seg_map == i))
        return segs

    for pred_map, pred_classes, gt_map, gt_classes in samples:
        gts, preds, void = segments(gt_map, gt_classes), segments(pred_map, pred_classes), gt_map == 0
        gt_hit, pred_hit = set(), set()
        for gk, (gc, g) in gts.items():
            for pk, (pc, p) in preds.items():
                if gc != pc:
                    continue
                inter = float((g & p).sum())
                iou = inter / (p.sum() + g.sum() - inter - (p & void).sum())
                if iou > 0.5:
                    tp[gc] += 1
                    iou_sum[gc] += iou
                    gt_hit.add(gk)
                    pred_hit.add(pk)
        for gk, (gc, _) in gts.items():
            fn[gc] += gk not in gt_hit
        for pk, (pc, p) in preds.items():
            fp[pc] += pk not in pred_hit and (p & void).sum() / p.sum() <= 0.5
    out = {}
    is_thing = np.isin(np.arange(num_classes), things)
    for suffix, group in (("", np.ones(num_classes, bool)), ("_th", is_thing), ("_st", ~is_thing)):
        pqs, sqs, rqs = [], [], []
        for c in np.flatnonzero(group):
            if tp[c] + fp[c] + fn[c] == 0:
                continue
            sq = iou_sum[c] / tp[c] if tp[c] else 0.0
            rq = tp[c] / (tp[c] + 0.5 * fp[c] + 0.5 * fn[c])
            pqs.append(sq * rq), sqs.append(sq), rqs.append(rq)
        for name, vals in (("PQ", pqs), ("SQ", sqs), ("RQ", rqs)):
            out[name + suffix] = 100 * float(np.mean(vals)) if vals else math.nan
    return out


def run_pq(samples, chunks=1):
    metric = PanopticQualityMetric(num_classes=K, thing_classes=THINGS)
    preds = [pred_from_map(p, pc) for p, pc, _, _ in samples]
    targets = [target_from_map(g, gc) for _, _, g, gc in samples]
    step = math.ceil(len(samples) / chunks)
    for i in range(0, len(samples), step):
        metric.update(preds[i : i + step], targets[i : i + step])
    return {k: float(v) for k, v in metric.compute().items()}


def assert_close_dict(got, expected):
    assert got.keys() == expected.keys()
    for key in expected:
        if math.isnan(expected[key]):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(expected[key], abs=1e-5), key  # torchmetrics: float32 IoUs


def blank(h=8, w=8):
    return np.zeros((h, w), np.int64)


# ----------------------------------------------------------------------------- PQ
def test_panoptic_from_masks_and_segments():
    labels = torch.tensor([3, 1])
    masks = torch.zeros(2, 2, 3, dtype=torch.bool)
    masks[0, 0, :2] = True
    masks[1, 1, 2] = True
    got = panoptic_from_masks(labels, masks, void_category=9)
    expected = torch.tensor([[[3, 1], [3, 1], [9, 0]], [[9, 0], [9, 0], [1, 2]]])
    assert torch.equal(got, expected) and got.dtype == torch.long
    semantic = semantic_from_masks(labels, masks, ignore_index=-1)
    assert torch.equal(semantic, torch.tensor([[3, 3, -1], [-1, -1, 1]]))
    seg = torch.tensor([[0, 5], [2, 5]])
    got = panoptic_from_segments(seg, [dict(id=5, category_id=1), dict(id=2, category_id=0)], void_category=7)
    assert torch.equal(got, torch.tensor([[[7, 0], [1, 5]], [[0, 2], [1, 5]]]))
    no_masks = torch.zeros(0, 2, 2, dtype=torch.bool)
    empty = panoptic_from_masks(torch.zeros(0, dtype=torch.long), no_masks, void_category=4)
    assert torch.equal(empty, torch.tensor([4, 0]).expand(2, 2, 2))


def test_pq_perfect_prediction_is_100():
    gt = blank(9, 7)
    gt[:3, :3], gt[5:, 4:], gt[3:5] = 1, 2, 3  # two things and a stuff band; the rest is void
    gt_classes = {1: 0, 2: 1, 3: 2}
    pred = np.where(gt > 0, gt + 10, 0)  # same segments under other ids
    out = run_pq([(pred, {11: 0, 12: 1, 13: 2}, gt, gt_classes)])
    assert all(out[k] == pytest.approx(100.0) for k in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st"))


def test_pq_shifted_segment():
    gt = np.full((8, 8), 2)
    gt[2:6, 0:4] = 1  # a 16-pixel thing on a stuff background (no void)
    classes = {1: 0, 2: 3}
    shifted = np.full((8, 8), 2)
    shifted[2:6, 1:5] = 1  # IoU 12 / 20 = 0.6: still a match
    samples = [(shifted, classes, gt, classes)]
    out = run_pq(samples)
    assert out["PQ_th"] == pytest.approx(60.0) and out["SQ_th"] == pytest.approx(60.0) and out["RQ_th"] == 100.0
    assert out["PQ_st"] == pytest.approx(100 * 44 / 52)  # the background lost 4 and gained 4 pixels
    assert_close_dict(out, naive_pq(samples))
    far = np.full((8, 8), 2)
    far[2:6, 2:6] = 1  # IoU 8 / 24: one FP and one FN
    out = run_pq([(far, classes, gt, classes)])
    assert out["PQ_th"] == 0.0 and out["RQ_th"] == 0.0
    only_thing = np.where(gt == 1, 1, 0)  # the thing alone on void: no stuff class seen
    assert math.isnan(run_pq([(only_thing, {1: 0}, only_thing, {1: 0})])["PQ_st"])


def test_pq_missed_segment_and_stuff():
    gt = blank()
    gt[:3, :3], gt[4:, 4:], gt[:, 3] = 1, 2, 3  # two things of class 0 and a stuff column of class 3
    pred = blank()
    pred[:3, :3] = 1  # second thing missed: RQ_th = 1 / (1 + 0.5)
    pred[:6, 3] = 3  # stuff IoU 6 / 8
    out = run_pq([(pred, {1: 0, 3: 3}, gt, {1: 0, 2: 0, 3: 3})])
    assert out["PQ_th"] == pytest.approx(100 * 2 / 3)
    assert out["PQ_st"] == pytest.approx(75.0)
    assert out["PQ"] == pytest.approx((100 * 2 / 3 + 75.0) / 2)


def test_pq_void_rules():
    gt = blank()
    gt[:4, :4], gt[:4, 4:] = 1, 2  # a class-0 thing and a class-2 stuff region; rows 4.. are void
    gt_classes = {1: 0, 2: 2}
    pred = gt.copy()
    pred[3, 4:7], pred[4, 4:8], pred[5, 4] = 3, 3, 3  # class 1: 3 pixels on the stuff, 5 on void
    samples = [(pred, {1: 0, 2: 2, 3: 1}, gt, gt_classes)]
    out = run_pq(samples)  # more than half on void: not a false positive (class 1 unseen)
    assert out["PQ"] == pytest.approx((100 + 100 * 13 / 16) / 2) and out == pytest.approx(naive_pq(samples))
    pred[3, 7], pred[5, 4] = 3, 0  # now 4 pixels on the stuff and 4 on void: a false positive
    samples = [(pred, {1: 0, 2: 2, 3: 1}, gt, gt_classes)]
    assert run_pq(samples)["PQ"] == pytest.approx((100 + 75 + 0) / 3)
    # gt void is removed from the prediction's area in the IoU
    pred = gt.copy()
    pred[4:6, :4] = 1  # the thing spills 8 pixels onto void: IoU stays 1
    assert run_pq([(pred, {1: 0, 2: 2}, gt, gt_classes)])["SQ"] == pytest.approx(100.0)
    # predicted void (id 0) over a gt segment is a miss, not "ignore"
    pred = gt.copy()
    pred[:2, :3] = 0  # 6 of 16 thing pixels unclaimed: IoU 10 / 16
    assert run_pq([(pred, {1: 0, 2: 2}, gt, gt_classes)])["PQ_th"] == pytest.approx(62.5)
    pred[2, :3] = 0  # 7 of 16 left: IoU 7 / 16 < 0.5, one FN and one FP
    assert run_pq([(pred, {1: 0, 2: 2}, gt, gt_classes)])["PQ_th"] == 0.0
    pred[:] = 0  # nothing predicted: FN only
    out = run_pq([(pred, {}, gt, gt_classes)])
    assert out["PQ"] == 0.0 and out["RQ"] == 0.0


def random_sample(rng, h, w, max_id=5):
    """An id map of coarse blobs (with void) and a perturbed prediction of it."""
    coarse = rng.integers(0, max_id, size=(h // 3 + 1, w // 3 + 1))
    gt = np.kron(coarse, np.ones((3, 3), np.int64))[:h, :w]
    gt_classes = {i: int(rng.integers(K)) for i in range(1, max_id)}
    pred = gt.copy()
    for _ in range(4):  # paste a few random blocks
        y, x = rng.integers(0, h - 1), rng.integers(0, w - 1)
        pred[y : y + rng.integers(1, 4), x : x + rng.integers(1, 4)] = rng.integers(0, max_id + 1)
    pred_classes = {
        i: gt_classes.get(i, 0) if rng.random() < 0.8 else int(rng.integers(K)) for i in range(1, max_id + 1)
    }
    return pred, pred_classes, gt, gt_classes


def test_pq_matches_naive_on_random_batches():
    rng = np.random.default_rng(0)
    samples = [random_sample(rng, int(rng.integers(7, 13)), int(rng.integers(7, 13))) for _ in range(24)]
    assert_close_dict(run_pq(samples, chunks=3), naive_pq(samples))


def test_pq_merge_state_equals_single_metric():
    rng = np.random.default_rng(1)
    samples = [random_sample(rng, 9, 11) for _ in range(6)]
    halves = []
    for part in (samples[:3], samples[3:]):
        metric = PanopticQualityMetric(num_classes=K, thing_classes=THINGS)
        metric.update([pred_from_map(p, pc) for p, pc, _, _ in part], [target_from_map(g, gc) for _, _, g, gc in part])
        halves.append(metric)
    halves[0].merge_state(halves[1])
    assert_close_dict({k: float(v) for k, v in halves[0].compute().items()}, run_pq(samples))


def test_pq_bad_inputs():
    metric = PanopticQualityMetric(num_classes=K, thing_classes=THINGS)
    gt = blank(4, 4)
    gt[:2] = 1
    target = target_from_map(gt, {1: 0})
    with pytest.raises(ValueError, match="segments_info does not list"):
        metric.update([(torch.from_numpy(gt), [])], [target])
    with pytest.raises(ValueError, match="integer panoptic_seg"):
        metric.update([(torch.zeros(4, 4), [])], [target])
    with pytest.raises(ValueError, match="category ids"):
        metric.update([pred_from_map(gt, {1: K})], [target])
    with pytest.raises(ValueError, match="target size"):
        metric.update([pred_from_map(blank(4, 5), {})], [target])
    with pytest.raises(ValueError, match="as many"):
        metric.update([pred_from_map(gt, {1: 0})] * 2, [target])
    overlapping = torch.ones(2, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="non-overlapping"):
        metric.update([pred_from_map(gt, {1: 0})], [(torch.tensor([0, 1]), overlapping)])
    with pytest.raises(ValueError, match="bool masks"):
        metric.update([pred_from_map(gt, {1: 0})], [(torch.tensor([0]), torch.ones(1, 4, 4))])
    with pytest.raises(ValueError, match="thing_classes"):
        PanopticQualityMetric(num_classes=2, thing_classes=[2])


# ----------------------------------------------------------------------------- mIoU
def naive_semseg(scores_list, targets, num_classes=K):
    conf = np.zeros((num_classes, num_classes))
    for scores, (labels, masks) in zip(scores_list, targets):
        s = scores.double().numpy()
        for y in range(s.shape[1]):
            for x in range(s.shape[2]):
                covering = [int(labels[n]) for n in range(len(labels)) if masks[n, y, x]]
                if covering:
                    conf[covering[0], int(np.argmax(s[:, y, x]))] += 1
    ious, accs, weights = [], [], []
    for c in range(num_classes):
        gt_c, pred_c, tp = conf[c].sum(), conf[:, c].sum(), conf[c, c]
        if gt_c > 0:  # detectron2: only classes with ground truth enter the means
            ious.append(tp / (gt_c + pred_c - tp))
            accs.append(tp / gt_c)
            weights.append(gt_c / conf.sum())
    return {
        "mIoU": 100 * np.mean(ious),
        "fwIoU": 100 * np.dot(ious, weights),
        "mACC": 100 * np.mean(accs),
        "pACC": 100 * np.trace(conf) / conf.sum(),
    }


def random_semseg(rng, h, w):
    gt = rng.integers(0, 4, size=(h, w))  # ids 1..3 of classes below; 0 = void (ignored)
    labels, masks = target_from_map(gt, {1: 0, 2: 2, 3: 0})  # two segments of class 0; class 1, 3 absent
    scores = torch.randn(K, h, w)
    scores[1, :1] += 10  # class 1 is only predicted: it must not enter the mean
    return scores, (labels, masks)


def test_semantic_iou_matches_naive():
    rng = np.random.default_rng(2)
    batch = [random_semseg(rng, h, w) for h, w in ((5, 7), (6, 4), (3, 9))]
    metric = SemanticIoU(num_classes=K)
    metric.update([s for s, _ in batch[:2]], [t for _, t in batch[:2]])
    metric.update(torch.stack([batch[2][0]]), [batch[2][1]])  # a (B, K, H, W) tensor works too
    got = {k: float(v) for k, v in metric.compute().items()}
    assert_close_dict(got, naive_semseg([s for s, _ in batch], [t for _, t in batch]))


def test_semantic_iou_perfect_merge_and_errors():
    rng = np.random.default_rng(3)
    batch = [random_semseg(rng, 6, 6) for _ in range(4)]
    perfect = SemanticIoU(num_classes=K)
    for _, (labels, masks) in batch:
        one_hot = torch.zeros(K, 6, 6)
        one_hot[:, ~masks.any(0)] = torch.arange(K, dtype=torch.float)[:, None]  # void: anything
        for label, mask in zip(labels, masks):
            one_hot[label, mask] = 1
        perfect.update([one_hot], [(labels, masks)])
    assert float(perfect.compute()["mIoU"]) == pytest.approx(100.0)

    whole, first, second = (SemanticIoU(num_classes=K) for _ in range(3))
    whole.update([s for s, _ in batch], [t for _, t in batch])
    first.update([s for s, _ in batch[:2]], [t for _, t in batch[:2]])
    second.update([s for s, _ in batch[2:]], [t for _, t in batch[2:]])
    first.merge_state(second)
    merged, reference = first.compute(), whole.compute()
    assert all(v.dtype == torch.float64 for v in merged.values())
    assert_close_dict({k: float(v) for k, v in merged.items()}, {k: float(v) for k, v in reference.items()})

    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(float(SemanticIoU(num_classes=K).compute()["mIoU"]))
    with pytest.raises(ValueError, match="semantic scores"):
        whole.update([torch.randn(K + 1, 6, 6)], [batch[0][1]])
    with pytest.raises(ValueError, match="target labels"):
        whole.update([torch.randn(K, 6, 6)], [(torch.tensor([K]), torch.ones(1, 6, 6, dtype=torch.bool))])


# ----------------------------------------------------------------------------- mask AP
def square(h, w, y0, y1, x0, x1):
    m = torch.zeros(h, w, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def ap_image(h=16, w=12):
    """Two things (classes 0 and 1) and a stuff region (class 2)."""
    masks = torch.stack([square(h, w, 0, 5, 0, 5), square(h, w, 8, 14, 4, 10), square(h, w, 14, 16, 0, 12)])
    return torch.tensor([0, 1, 2]), masks


def pred(masks, scores, labels):
    return dict(masks=masks, scores=torch.tensor(scores, dtype=torch.float), labels=torch.tensor(labels))


def ap(preds, targets):
    metric = MaskAP(num_classes=K, thing_classes=THINGS)
    metric.update(preds, targets)
    return {k: float(v) for k, v in metric.compute().items()}


def test_mask_ap_perfect_and_stuff_ignored():
    labels, masks = ap_image()
    # the stuff segment is predicted too: stuff is not evaluated, so it is dropped on both sides
    out = ap([pred(masks, [0.9, 0.8, 0.99], [0, 1, 2])], [(labels, masks)])
    assert out["AP"] == pytest.approx(100.0) and out["AP50"] == pytest.approx(100.0)
    assert out["AP75"] == pytest.approx(100.0)


def test_mask_ap_hand_derived_values():
    labels, masks = ap_image()
    # class 0: TP; class 1 predicted as class 0 (lower score): class 0 AP 100 (the FP ranks after
    # the only TP), class 1 AP 0 -> mean 50 at every IoU threshold
    out = ap([pred(masks[:2], [0.9, 0.8], [0, 0])], [(labels, masks)])
    assert out["AP"] == pytest.approx(50.0) and out["AP50"] == pytest.approx(50.0)
    # two class-0 gts, a top-scored FP then two TPs: precision (0, 1/2, 2/3) at recall (0, 1/2, 1),
    # interpolated precision is 2/3 at every recall threshold -> AP = 200 / 3
    h, w = 16, 12
    gt_masks = torch.stack([square(h, w, 0, 4, 0, 4), square(h, w, 8, 12, 6, 10)])
    fp = square(h, w, 12, 16, 0, 3)
    out = ap([pred(torch.stack([fp, *gt_masks]), [0.9, 0.8, 0.7], [0, 0, 0])], [(torch.tensor([0, 0]), gt_masks)])
    assert out["AP"] == pytest.approx(200 / 3, abs=1e-6)


def test_mask_ap_empty_predictions_and_missing_gt():
    labels, masks = ap_image()
    none = pred(torch.zeros(0, 16, 12, dtype=torch.bool), [], [])
    none["labels"] = none["labels"].long()
    assert ap([none, none], [(labels, masks)] * 2)["AP"] == 0.0
    # an image without ground truth next to a perfect one changes nothing
    no_gt = (torch.zeros(0, dtype=torch.long), torch.zeros(0, 16, 12, dtype=torch.bool))
    out = ap([pred(masks, [0.9, 0.8, 0.1], [0, 1, 2]), none], [(labels, masks), no_gt])
    assert out["AP"] == pytest.approx(100.0)
    # a detection on that image is a false positive ranked first: class 0 AP falls to 1/2 (see above)
    out = ap([pred(masks, [0.9, 0.8, 0.1], [0, 1, 2]), pred(masks[:1], [0.95], [0])], [(labels, masks), no_gt])
    assert out["AP"] == pytest.approx(75.0, abs=1e-6)
    # no thing ground truth anywhere: undefined
    assert math.isnan(ap([pred(masks[:1], [0.9], [0])], [no_gt])["AP"])
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(float(MaskAP(num_classes=K, thing_classes=THINGS).compute()["AP"]))


def ap_batches(seed, n):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        h, w = int(torch.randint(8, 14, (1,), generator=g)), int(torch.randint(8, 14, (1,), generator=g))
        blobs = torch.rand(h // 2, w // 2, generator=g).repeat_interleave(2, 0).repeat_interleave(2, 1)
        blobs = torch.nn.functional.pad(blobs, (0, w - blobs.shape[1], 0, h - blobs.shape[0]))
        masks = torch.stack([(blobs > 0.1) & (blobs < 0.4), blobs > 0.7])
        noisy = masks ^ (torch.rand(2, h, w, generator=g) < 0.1)
        labels = torch.randint(0, 2, (2,), generator=g)
        scores = torch.rand(2, generator=g).tolist()
        out.append((pred(noisy, scores, labels.tolist()), (labels, masks)))
    return out


def test_mask_ap_merge_and_simulated_ddp_sync():
    data = ap_batches(4, 6)
    reference = ap([p for p, _ in data], [t for _, t in data])
    assert 0 < reference["AP50"]

    first, second = MaskAP(num_classes=K, thing_classes=THINGS), MaskAP(num_classes=K, thing_classes=THINGS)
    first.update([p for p, _ in data[:4]], [t for _, t in data[:4]])
    second.update([p for p, _ in data[4:]], [t for _, t in data[4:]])
    first.merge_state(second)
    assert_close_dict({k: float(v) for k, v in first.compute().items()}, reference)

    # the reduction torchmetrics runs under DDP, with a gather that returns (this rank, other rank)
    def sync(rank0, rank1):
        sent = []
        rank1._sync_dist(dist_sync_fn=lambda t, group=None: sent.append(t) or [t])
        rank0._sync_dist(dist_sync_fn=lambda t, group=None: [t, sent.pop(0)])
        return {k: float(v) for k, v in rank0.compute().items()}

    rank0, rank1 = MaskAP(num_classes=K, thing_classes=THINGS), MaskAP(num_classes=K, thing_classes=THINGS)
    rank0.update([p for p, _ in data[:3]], [t for _, t in data[:3]])
    rank0.update([p for p, _ in data[3:4]], [t for _, t in data[3:4]])
    rank1.update([p for p, _ in data[4:]], [t for _, t in data[4:]])
    assert_close_dict(sync(rank0, rank1), reference)
    # a rank that saw no data sends float32 empties: dtypes get promoted, results must not change
    rank0 = MaskAP(num_classes=K, thing_classes=THINGS)
    rank0.update([p for p, _ in data], [t for _, t in data])
    assert_close_dict(sync(rank0, MaskAP(num_classes=K, thing_classes=THINGS)), reference)


def test_mask_ap_states_share_the_dtype_an_empty_rank_sends():
    # torchmetrics syncs a rank that saw nothing as float32 (the metric dtype) empties; a real
    # gather aborts when dtypes differ between ranks, so every stored state must use that dtype.
    data = ap_batches(5, 2)
    metric = MaskAP(num_classes=K, thing_classes=THINGS)
    metric.update([p for p, _ in data], [t for _, t in data])
    states = {name: getattr(metric, name) for name in metric._defaults}
    assert states and all(v and all(t.dtype == metric.dtype for t in v) for v in states.values()), {
        k: {t.dtype for t in v} for k, v in states.items()
    }
    # float64 storage works as well and gives the same numbers
    wide = MaskAP(num_classes=K, thing_classes=THINGS).set_dtype(torch.float64)
    wide.update([p for p, _ in data], [t for _, t in data])
    assert all(t.dtype == torch.float64 for v in (getattr(wide, n) for n in wide._defaults) for t in v)
    assert_close_dict({k: float(v) for k, v in wide.compute().items()}, {k: float(v) for k, v in metric.compute().items()})


def test_mask_ap_bad_inputs():
    labels, masks = ap_image()
    metric = MaskAP(num_classes=K, thing_classes=THINGS)
    with pytest.raises(ValueError, match="prediction dict"):
        metric.update([dict(masks=masks)], [(labels, masks)])
    with pytest.raises(ValueError, match="pred masks"):
        metric.update([pred(masks.float(), [1.0] * 3, [0, 1, 2])], [(labels, masks)])
    with pytest.raises(ValueError, match="pred masks"):
        metric.update([pred(masks[:, :5], [1.0] * 3, [0, 1, 2])], [(labels, masks)])
    with pytest.raises(ValueError, match="thing class"):
        MaskAP(num_classes=K, thing_classes=[])
    with pytest.raises(ValueError, match="thing class"):
        MaskAP(num_classes=K, thing_classes=[K])


# ----------------------------------------------------------------------------- table
def test_format_metrics_table():
    text = format_metrics_table({"PQ": torch.tensor(52.126), "mIoU": float("nan"), "AP50": 7.0}, title="val")
    lines = text.split("\n")
    assert lines[0] == "val"
    assert len({len(line) for line in lines[1:]}) == 1  # aligned columns
    assert lines[3].split() == ["PQ", "52.13"] and lines[4].split() == ["mIoU", "nan"] and lines[5].endswith(" 7.00")
    with pytest.raises(ValueError, match="scalar"):
        format_metrics_table({"x": torch.ones(2)})
    with pytest.raises(TypeError, match="number"):
        format_metrics_table({"x": "high"})
