"""Mask2Former head: decoder, positional embedding, point sampling, matcher, criterion, inference.

Every check compares against a naive oracle written here (loops, float64), never against the
code under test.
"""
import itertools
import math

import pytest
import torch

from segblocks.models.mask2former import criterion as criterion_module
from segblocks.models.mask2former.criterion import SetCriterion
from segblocks.models.mask2former.inference import instance_inference, panoptic_inference, semantic_inference
from segblocks.models.mask2former.matcher import HungarianMatcher, pairwise_dice_cost, pairwise_sigmoid_ce_cost
from segblocks.models.mask2former.point_sampling import (
    calculate_uncertainty,
    get_uncertain_point_coords_with_randomness,
    point_sample,
)
from segblocks.layers.position_encoding import PositionEmbeddingSine
from segblocks.models.mask2former.transformer_decoder import (
    MultiScaleMaskedTransformerDecoder,
    masked_attention_mask,
)


# ----------------------------------------------------------------------------- naive oracles
def naive_bilinear(img, x, y):
    """img (H, W) float64; (x, y) in [0, 1], align_corners=False, zeros outside."""
    h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    total = 0.0
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                total += wy * wx * float(img[yy, xx])
    return total


def sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def bce(logit, t):
    return -(t * math.log(sigmoid(logit)) + (1 - t) * math.log(1 - sigmoid(logit)))


def naive_mask_costs(pred, tgt):
    """pred (h, w) logits, tgt (h, w) {0,1}; mean BCE and dice over all pixels (float64 loops)."""
    p = [float(v) for v in pred.flatten()]
    t = [float(v) for v in tgt.flatten()]
    ce = sum(bce(a, b) for a, b in zip(p, t)) / len(p)
    s = [sigmoid(a) for a in p]
    dice = 1 - (2 * sum(a * b for a, b in zip(s, t)) + 1) / (sum(s) + sum(t) + 1)
    return ce, dice


def naive_match_cost(logits, masks, labels, tgt_masks, wc, wm, wd):
    """(Q, N) cost matrix as nested lists."""
    q, n = logits.shape[0], labels.numel()
    cost = [[0.0] * n for _ in range(q)]
    for i in range(q):
        z = [math.exp(float(v)) for v in logits[i]]
        for j in range(n):
            ce, dice = naive_mask_costs(masks[i], tgt_masks[j])
            cost[i][j] = -wc * z[int(labels[j])] / sum(z) + wm * ce + wd * dice
    return cost


def brute_force_min(cost):
    q, n = len(cost), len(cost[0])
    if q >= n:
        return min(sum(cost[p[j]][j] for j in range(n)) for p in itertools.permutations(range(q), n))
    return min(sum(cost[i][p[i]] for i in range(q)) for p in itertools.permutations(range(n), q))


# ----------------------------------------------------------------------------- positional embedding
def naive_sine(h, w, f):
    """(2f, h, w) nested lists: DETR/Mask2Former sine embedding, y channels first."""
    out = [[[0.0] * w for _ in range(h)] for _ in range(2 * f)]
    for i in range(h):
        for j in range(w):
            for c in range(2 * f):
                coord, size, k = ((i + 1), h, c) if c < f else ((j + 1), w, c - f)
                angle = coord / (size + 1e-6) * 2 * math.pi / 10000 ** (2 * (k // 2) / f)
                out[c][i][j] = math.sin(angle) if k % 2 == 0 else math.cos(angle)
    return out


def test_position_embedding_matches_formula():
    f, h, w = 4, 3, 5
    pe = PositionEmbeddingSine(num_pos_feats=f)(torch.zeros(2, 7, h, w, dtype=torch.float64))
    assert pe.shape == (2, 2 * f, h, w) and pe.dtype == torch.float64
    assert torch.allclose(pe[1], torch.tensor(naive_sine(h, w, f), dtype=torch.float64), atol=1e-5, rtol=0)
    assert torch.equal(pe[0], pe[1])


def test_position_embedding_bad_input():
    with pytest.raises(ValueError, match="even"):
        PositionEmbeddingSine(num_pos_feats=3)
    with pytest.raises(ValueError, match="B, C, H, W"):
        PositionEmbeddingSine()(torch.zeros(3, 4, 5))


# ----------------------------------------------------------------------------- point sampling
def test_point_sample_matches_manual_bilinear():
    img = torch.randn(2, 3, 5, 7, dtype=torch.float64, requires_grad=True)
    coords = torch.rand(2, 11, 2, dtype=torch.float64) * 1.2 - 0.1  # includes outside points
    coords[0, 0] = torch.tensor([0.0, 0.0])
    coords[0, 1] = torch.tensor([1.0, 1.0])
    out = point_sample(img, coords)
    assert out.shape == (2, 3, 11)
    for b in range(2):
        for c in range(3):
            for p in range(11):
                x, y = coords[b, p].tolist()
                assert abs(out[b, c, p].item() - naive_bilinear(img[b, c].detach(), x, y)) < 1e-10
    out.sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0


def test_point_sample_bad_shapes():
    with pytest.raises(ValueError, match="point_coords"):
        point_sample(torch.zeros(2, 1, 4, 4), torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match="input"):
        point_sample(torch.zeros(1, 4, 4), torch.zeros(1, 5, 2))


def test_importance_sampling_picks_most_uncertain_candidates():
    logits = torch.randn(3, 1, 6, 5, dtype=torch.float64)
    num_points, ratio, importance = 8, 3.0, 0.75
    gen = torch.Generator().manual_seed(1)
    coords = get_uncertain_point_coords_with_randomness(
        logits, calculate_uncertainty, num_points, ratio, importance, generator=gen
    )
    assert coords.shape == (3, num_points, 2)
    # Replay the same draws and select by hand.
    replay = torch.Generator().manual_seed(1)
    candidates = torch.rand(3, 24, 2, dtype=torch.float64, generator=replay)
    fresh = torch.rand(3, 2, 2, dtype=torch.float64, generator=replay)
    for n in range(3):
        unc = [-abs(naive_bilinear(logits[n, 0], *candidates[n, s].tolist())) for s in range(24)]
        top = sorted(range(24), key=lambda s: -unc[s])[:6]
        chosen = {tuple(candidates[n, s].tolist()) for s in top}
        assert {tuple(c) for c in coords[n, :6].tolist()} == chosen
        assert torch.equal(coords[n, 6:], fresh[n])


# ----------------------------------------------------------------------------- matcher
def _random_targets(n, h, w, k):
    masks = torch.rand(n, h, w) > 0.5
    return {"labels": torch.randint(0, k, (n,)), "masks": masks}


def test_pairwise_costs_match_naive():
    logits = torch.randn(3, 7, dtype=torch.float64) * 3
    targets = torch.rand(2, 7, dtype=torch.float64)  # soft targets (bilinearly sampled masks)
    ce, dice = pairwise_sigmoid_ce_cost(logits, targets), pairwise_dice_cost(logits, targets)
    assert ce.shape == dice.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            ref_ce, ref_dice = naive_mask_costs(logits[i], targets[j])
            assert abs(ce[i, j].item() - ref_ce) < 1e-12 and abs(dice[i, j].item() - ref_dice) < 1e-12


@pytest.mark.parametrize("num_targets", [(3, 2), (4, 1)])
def test_matcher_vs_brute_force(num_targets):
    wc, wm, wd = 2.0, 5.0, 5.0
    q, k, h, w = 4, 3, 3, 5
    logits = torch.randn(2, q, k + 1)
    masks = torch.randn(2, q, h, w) * 2
    targets = [_random_targets(n, h, w, k) for n in num_targets]
    matcher = HungarianMatcher(cost_class=wc, cost_mask=wm, cost_dice=wd, num_points=None)
    indices = matcher({"pred_logits": logits, "pred_masks": masks}, targets)
    for b, (rows, cols) in enumerate(indices):
        assert rows.dtype == torch.int64 and cols.dtype == torch.int64
        assert len(rows) == num_targets[b] and sorted(cols.tolist()) == list(range(num_targets[b]))
        assert len(set(rows.tolist())) == len(rows)
        cost = naive_match_cost(
            logits[b].double(), masks[b].double(), targets[b]["labels"], targets[b]["masks"].double(), wc, wm, wd
        )
        got = sum(cost[i][j] for i, j in zip(rows.tolist(), cols.tolist()))
        assert abs(got - brute_force_min(cost)) < 1e-5


def test_matcher_more_targets_than_queries():
    logits, masks = torch.randn(1, 2, 4), torch.randn(1, 2, 3, 3)
    target = _random_targets(3, 3, 3, 3)
    rows, cols = HungarianMatcher(num_points=None)({"pred_logits": logits, "pred_masks": masks}, [target])[0]
    cost = naive_match_cost(logits[0].double(), masks[0].double(), target["labels"], target["masks"].double(), 2, 5, 5)
    assert len(rows) == 2
    assert abs(sum(cost[i][j] for i, j in zip(rows.tolist(), cols.tolist())) - brute_force_min(cost)) < 1e-5


def test_matcher_zero_targets_and_random_points_across_resolutions():
    # Image 0 has no target. Image 1: confident 1/4-resolution predictions of a permutation of
    # its full-resolution targets; random points must sample both at the same physical places.
    q, h, w = 5, 4, 6
    perm = torch.tensor([3, 0, 4])
    low = torch.zeros(3, h, w, dtype=torch.bool)
    low[0, :2], low[1, 2:, :3], low[2, 2:, 3:] = True, True, True
    masks = torch.full((2, q, h, w), -10.0)
    masks[1, perm] = torch.where(low, 10.0, -10.0)
    full = low.repeat_interleave(4, 1).repeat_interleave(4, 2)
    targets = [
        {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 4 * h, 4 * w, dtype=torch.bool)},
        {"labels": torch.tensor([1, 1, 1]), "masks": full},
    ]
    outputs = {"pred_logits": torch.zeros(2, q, 3), "pred_masks": masks}
    indices = HungarianMatcher(cost_class=0.0, num_points=500)(outputs, targets)
    assert indices[0][0].numel() == 0 and indices[0][1].numel() == 0
    rows, cols = indices[1]
    assert dict(zip(cols.tolist(), rows.tolist())) == {0: 3, 1: 0, 2: 4}


def test_matcher_bad_targets():
    outputs = {"pred_logits": torch.randn(1, 3, 4), "pred_masks": torch.randn(1, 3, 2, 2)}
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        HungarianMatcher()(outputs, [{"labels": torch.tensor([3]), "masks": torch.ones(1, 2, 2)}])
    with pytest.raises(ValueError, match="masks"):
        HungarianMatcher()(outputs, [{"labels": torch.tensor([1, 2]), "masks": torch.ones(1, 2, 2)}])
    with pytest.raises(ValueError, match="target dicts"):
        HungarianMatcher()(outputs, [])


# ----------------------------------------------------------------------------- criterion
class FixedMatcher:
    def __init__(self, indices):
        self.indices = [(torch.tensor(r), torch.tensor(c)) for r, c in indices]

    def __call__(self, outputs, targets):
        return self.indices


@pytest.fixture
def pixel_centre_points(monkeypatch):
    """Replace importance sampling by all pixel centres of the prediction grid (deterministic)."""

    def centres(logits, uncertainty_fn, num_points, oversample_ratio, importance_sample_ratio):
        n, _, h, w = logits.shape
        pts = [((j + 0.5) / w, (i + 0.5) / h) for i in range(h) for j in range(w)]
        return torch.tensor(pts, dtype=logits.dtype).expand(n, -1, -1)

    monkeypatch.setattr(criterion_module, "get_uncertain_point_coords_with_randomness", centres)


def _criterion_case():
    """Predictions on a 3 x 5 grid; targets at 2x resolution. Image 1 is smaller (2 x 4 at the
    prediction scale), so its masks are zero-padded bottom/right to the batch size."""
    k, q, h, w = 3, 4, 3, 5
    logits = torch.randn(2, q, k + 1, dtype=torch.float64, requires_grad=True)
    masks = torch.randn(2, q, h, w, dtype=torch.float64, requires_grad=True)
    low_targets = [torch.rand(2, h, w) > 0.5, torch.zeros(1, h, w, dtype=torch.bool)]
    low_targets[1][:, :2, :4] = torch.rand(1, 2, 4) > 0.5
    small = low_targets[1][:, :2, :4]
    targets = [
        {"labels": torch.tensor([2, 0]), "masks": low_targets[0].repeat_interleave(2, 1).repeat_interleave(2, 2)},
        {"labels": torch.tensor([1]), "masks": small.repeat_interleave(2, 1).repeat_interleave(2, 2)},
    ]
    indices = [([3, 1], [0, 1]), ([2], [0])]
    return k, logits, masks, low_targets, targets, indices


def test_criterion_matches_direct_formulas(pixel_centre_points):
    k, logits, masks, low_targets, targets, indices = _criterion_case()
    crit = SetCriterion(num_classes=k, matcher=FixedMatcher(indices), deep_supervision=False)
    losses = crit({"pred_logits": logits, "pred_masks": masks}, targets)
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice"}
    logits_ref = logits.detach()

    # Weighted cross-entropy: Σ w_y·(-log p_y) / Σ w_y, unmatched queries -> class K (weight 0.1).
    num, den = 0.0, 0.0
    for b in range(2):
        assigned = {r: int(targets[b]["labels"][c]) for r, c in zip(*indices[b])}
        for i in range(logits.shape[1]):
            y = assigned.get(i, k)
            wy = 0.1 if y == k else 1.0
            z = [math.exp(float(v)) for v in logits_ref[b, i]]
            num += wy * -math.log(z[y] / sum(z))
            den += wy
    assert abs(losses["loss_ce"].item() - 2.0 * num / den) < 1e-9

    ce_sum, dice_sum = 0.0, 0.0
    for b in range(2):
        for r, c in zip(*indices[b]):
            ce, dice = naive_mask_costs(masks[b, r].detach(), low_targets[b][c].double())
            ce_sum, dice_sum = ce_sum + ce, dice_sum + dice
    num_masks = 3
    assert abs(losses["loss_mask"].item() - 5.0 * ce_sum / num_masks) < 1e-9
    assert abs(losses["loss_dice"].item() - 5.0 * dice_sum / num_masks) < 1e-9

    sum(losses.values()).backward()
    assert logits.grad.abs().sum() > 0
    matched = masks.grad[0, [3, 1]].abs().sum() + masks.grad[1, 2].abs().sum()
    assert matched > 0 and masks.grad[0, 0].abs().sum() == 0  # unmatched masks get no mask loss


def test_criterion_normalizes_by_ddp_average(pixel_centre_points, monkeypatch):
    k, logits, masks, _, targets, indices = _criterion_case()
    crit = SetCriterion(num_classes=k, matcher=FixedMatcher(indices), deep_supervision=False)
    outputs = {"pred_logits": logits, "pred_masks": masks}
    local = crit(outputs, targets)

    # Simulated 4 ranks whose counts sum to 6 (this rank: 3) -> average 1.5 masks per rank.
    monkeypatch.setattr(criterion_module.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(criterion_module.dist, "get_world_size", lambda: 4)
    monkeypatch.setattr(criterion_module.dist, "all_reduce", lambda t: t.mul_(2))
    averaged = crit(outputs, targets)
    for key in ("loss_mask", "loss_dice"):
        assert torch.allclose(averaged[key], local[key] * 3 / 1.5)
    assert torch.allclose(averaged["loss_ce"], local["loss_ce"])


def test_criterion_deep_supervision_keys_and_gradients():
    k, q = 4, 6
    outputs = {
        "pred_logits": torch.randn(2, q, k + 1, requires_grad=True),
        "pred_masks": torch.randn(2, q, 5, 7, requires_grad=True),
    }
    aux = [
        {
            "pred_logits": torch.randn(2, q, k + 1, requires_grad=True),
            "pred_masks": torch.randn(2, q, 5, 7, requires_grad=True),
        }
        for _ in range(3)
    ]
    outputs["aux_outputs"] = aux
    targets = [_random_targets(3, 20, 28, k), _random_targets(2, 18, 25, k)]  # different sizes: padded
    crit = SetCriterion(num_classes=k, matcher=HungarianMatcher(num_points=64), num_points=32)
    losses = crit(outputs, targets)
    expected = {f"loss_{n}{s}" for n in ("ce", "mask", "dice") for s in ["", "_0", "_1", "_2"]}
    assert set(losses) == expected
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    for o in [outputs] + aux:
        assert o["pred_logits"].grad.abs().sum() > 0 and o["pred_masks"].grad.abs().sum() > 0

    no_aux = SetCriterion(num_classes=k, matcher=HungarianMatcher(num_points=64), num_points=32, deep_supervision=False)
    assert set(no_aux(outputs, targets)) == {"loss_ce", "loss_mask", "loss_dice"}


def test_criterion_without_any_target():
    k = 2
    outputs = {
        "pred_logits": torch.randn(2, 3, k + 1, requires_grad=True),
        "pred_masks": torch.randn(2, 3, 4, 4, requires_grad=True),
    }
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 16, 16, dtype=torch.bool)}
    losses = SetCriterion(num_classes=k, matcher=HungarianMatcher(), deep_supervision=False)(outputs, [empty, empty])
    assert losses["loss_mask"].item() == 0 and losses["loss_dice"].item() == 0
    z = outputs["pred_logits"].detach().double().softmax(-1)
    assert abs(losses["loss_ce"].item() - 2.0 * -z[..., k].log().mean().item()) < 1e-5
    sum(losses.values()).backward()
    assert outputs["pred_logits"].grad.abs().sum() > 0


def test_criterion_bad_logits():
    crit = SetCriterion(num_classes=3, matcher=HungarianMatcher())
    with pytest.raises(ValueError, match="pred_logits"):
        crit({"pred_logits": torch.randn(1, 2, 3), "pred_masks": torch.randn(1, 2, 4, 4)}, [])


# ----------------------------------------------------------------------------- decoder
def naive_attention_mask(mask_logits, factor, heads):
    """Expected mask; for factor 2, bilinear (align_corners=False) halving is a 2x2 mean."""
    b, q, h, w = mask_logits.shape
    oh, ow = h // factor, w // factor
    out = torch.zeros(b * heads, q, oh * ow, dtype=torch.bool)
    for bi in range(b):
        for qi in range(q):
            rows = []
            for i in range(oh):
                for j in range(ow):
                    if factor == 1:
                        v = float(mask_logits[bi, qi, i, j])
                    else:
                        v = sum(float(mask_logits[bi, qi, 2 * i + a, 2 * j + c]) for a in (0, 1) for c in (0, 1)) / 4
                    rows.append(sigmoid(v) < 0.5)
            if all(rows):
                rows = [False] * len(rows)
            for hh in range(heads):
                out[bi * heads + hh, qi] = torch.tensor(rows)
    return out


@pytest.mark.parametrize("factor", [1, 2])
def test_masked_attention_mask_rule(factor):
    logits = torch.randn(2, 3, 4, 6) * 3
    logits[1, 2] = -5.0  # empty prediction -> row fully unmasked
    logits[0, 1] = 5.0
    logits.requires_grad_(True)
    got = masked_attention_mask(logits, (4 // factor, 6 // factor), 2)
    assert got.dtype == torch.bool and not got.requires_grad
    assert torch.equal(got, naive_attention_mask(logits.detach(), factor, 2))


def naive_layer_norm(x, ln):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def naive_mha(mha, query, key, value, blocked=None):
    """Multi-head attention for one image with loops over heads/queries; query (Lq, C)."""
    c, heads = query.shape[-1], mha.num_heads
    d = c // heads
    wq, wk, wv = mha.in_proj_weight.chunk(3)
    bq, bk, bv = mha.in_proj_bias.chunk(3)
    q, k, v = query @ wq.T + bq, key @ wk.T + bk, value @ wv.T + bv
    out = torch.zeros(query.shape[0], c, dtype=query.dtype)
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        for i in range(query.shape[0]):
            allowed = [j for j in range(key.shape[0]) if blocked is None or not blocked[i][j]]
            scores = {j: float(q[i, sl] @ k[j, sl]) / math.sqrt(d) for j in allowed}
            top = max(scores.values())
            e = {j: math.exp(sc - top) for j, sc in scores.items()}
            z = sum(e.values())
            out[i, sl] = sum(e[j] / z * v[j, sl] for j in allowed)
    return out @ mha.out_proj.weight.T + mha.out_proj.bias


def naive_decoder(dec, feats, mask_features, pre_norm):
    """Per-image Mask2Former decoder written out step by step (Eq. 3 masking, §3.2.4 order)."""
    results = []
    f = dec.query_feat.shape[1] // 2
    for b in range(mask_features.shape[0]):
        memories, positions, sizes = [], [], []
        for lvl, x in enumerate(feats):
            c_in, h, w = x.shape[1:]
            proj = dec.input_proj[lvl]
            tokens = x[b].reshape(c_in, h * w).T  # hw x C_in
            memories.append(tokens @ proj.weight[:, :, 0, 0].T + proj.bias + dec.level_embed[lvl])
            positions.append(torch.tensor(naive_sine(h, w, f), dtype=x.dtype).reshape(2 * f, h * w).T)
            sizes.append((h, w))
        mf = mask_features[b]

        def predict(tgt, size):
            x = naive_layer_norm(tgt, dec.decoder_norm)
            logits = x @ dec.class_embed.weight.T + dec.class_embed.bias
            emb = x
            for i, lin in enumerate(dec.mask_embed.layers):
                emb = emb @ lin.weight.T + lin.bias
                emb = emb if i == len(dec.mask_embed.layers) - 1 else emb.clamp(min=0)
            masks = torch.einsum("qc,chw->qhw", emb, mf)
            oh, ow = size
            blocked = []
            for q in range(masks.shape[0]):
                row = [sigmoid(naive_bilinear(masks[q].detach(), (j + 0.5) / ow, (i + 0.5) / oh)) < 0.5
                       for i in range(oh) for j in range(ow)]
                blocked.append([False] * len(row) if all(row) else row)
            return logits, masks, blocked

        def sublayer(tgt, norm, fn):
            if pre_norm:
                return tgt + fn(naive_layer_norm(tgt, norm))
            return naive_layer_norm(tgt + fn(tgt), norm)

        tgt, qpos = dec.query_feat, dec.query_embed
        logits, masks, blocked = predict(tgt, sizes[0])
        outs, all_blocked = [(logits, masks)], [blocked]
        for i in range(len(dec.cross_layers)):
            lvl = i % len(feats)
            mem, pos = memories[lvl], positions[lvl]
            cross, selfl, ffn = dec.cross_layers[i], dec.self_layers[i], dec.ffn_layers[i]
            tgt = sublayer(tgt, cross.norm, lambda t: naive_mha(cross.attn, t + qpos, mem + pos, mem, blocked))
            tgt = sublayer(tgt, selfl.norm, lambda t: naive_mha(selfl.attn, t + qpos, t + qpos, t))
            tgt = sublayer(
                tgt, ffn.norm,
                lambda t: (t @ ffn.linear1.weight.T + ffn.linear1.bias).clamp(min=0) @ ffn.linear2.weight.T
                + ffn.linear2.bias,
            )
            logits, masks, blocked = predict(tgt, sizes[(i + 1) % len(feats)])
            outs.append((logits, masks))
            all_blocked.append(blocked)
        results.append((outs, all_blocked))
    return results


@pytest.mark.parametrize("pre_norm", [False, True])
def test_decoder_matches_naive_implementation(pre_norm):
    dec = MultiScaleMaskedTransformerDecoder(
        in_channels=5, hidden_dim=8, num_classes=3, num_queries=3, nheads=2, dim_feedforward=6,
        dec_layers=3, pre_norm=pre_norm, mask_dim=4, num_feature_levels=2,
    ).double()
    feats = [torch.randn(2, 5, 2, 3, dtype=torch.float64), torch.randn(2, 5, 3, 4, dtype=torch.float64)]
    mask_features = torch.randn(2, 4, 4, 6, dtype=torch.float64)
    out = dec(feats, mask_features)
    got = [(a["pred_logits"], a["pred_masks"]) for a in out["aux_outputs"]] + [(out["pred_logits"], out["pred_masks"])]
    with torch.no_grad():
        ref = naive_decoder(dec, feats, mask_features, pre_norm)
    for b, (outs, blocked) in enumerate(ref):
        flat = [v for rows in blocked for row in rows for v in row]
        assert any(flat) and not all(flat)  # the masking is actually exercised
        for (logits, masks), (ref_logits, ref_masks) in zip(got, outs):
            assert torch.allclose(logits[b], ref_logits, atol=1e-10)
            assert torch.allclose(masks[b], ref_masks, atol=1e-10)


def _tiny_decoder(**kw):
    args = dict(in_channels=12, hidden_dim=16, num_classes=5, num_queries=6, nheads=2,
                dim_feedforward=24, dec_layers=5, mask_dim=8, num_feature_levels=3)
    args.update(kw)
    return MultiScaleMaskedTransformerDecoder(**args)


def _tiny_inputs(b=2, c=12, mask_dim=8):
    feats = [torch.randn(b, c, 3, 5), torch.randn(b, c, 5, 9), torch.randn(b, c, 9, 17)]
    return feats, torch.randn(b, mask_dim, 17, 33)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_decoder_shapes_and_gradients(pre_norm):
    dec = _tiny_decoder(pre_norm=pre_norm)
    feats, mask_features = _tiny_inputs()
    for t in feats + [mask_features]:
        t.requires_grad_(True)
    out = dec(feats, mask_features)
    assert out["pred_logits"].shape == (2, 6, 6)
    assert out["pred_masks"].shape == (2, 6, 17, 33)
    assert len(out["aux_outputs"]) == 5
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (2, 6, 6) and aux["pred_masks"].shape == (2, 6, 17, 33)
    assert not torch.allclose(out["pred_masks"][0], out["pred_masks"][1])  # per-sample content
    loss = out["pred_logits"].sum() + out["pred_masks"].sum()
    loss = loss + sum(a["pred_logits"].sum() + a["pred_masks"].sum() for a in out["aux_outputs"])
    loss.backward()
    for t in feats + [mask_features, dec.query_feat, dec.query_embed, dec.level_embed]:
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_decoder_input_projection_only_when_needed():
    assert all(isinstance(p, torch.nn.Conv2d) for p in _tiny_decoder().input_proj)
    same = _tiny_decoder(in_channels=16)
    assert all(isinstance(p, torch.nn.Identity) for p in same.input_proj)
    feats, mf = _tiny_inputs(c=16)
    assert same(feats, mf)["pred_masks"].shape == (2, 6, 17, 33)


def test_decoder_round_robin_levels():
    """Layer i cross-attends to level i % num_feature_levels (checked on the keys it receives)."""
    dec = _tiny_decoder(dec_layers=5)
    key_lengths = []
    for layer in dec.cross_layers:
        layer.attn.register_forward_hook(lambda mod, args, out: key_lengths.append(args[1].shape[1]))
    dec(*_tiny_inputs())
    assert key_lengths == [3 * 5, 5 * 9, 9 * 17, 3 * 5, 5 * 9]


def test_decoder_masked_attention_ignores_background_keys():
    """Keys outside the previous prediction's foreground do not influence the next prediction."""
    dec = _tiny_decoder(dec_layers=3).eval()
    # Constant mask embedding e_0 for every query, so each query's mask logits = mask_features[:, 0].
    last = dec.mask_embed.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        last.bias[0] = 1.0
    feats, mask_features = _tiny_inputs(b=1)
    mask_features[:, 0] = 4.0
    mask_features[:, 0, :, 17:] = -4.0  # right part is background at mask resolution 17 x 33
    base = dec(feats, mask_features)["aux_outputs"]

    def changed(level, cols, step):
        perturbed = [f.clone() for f in feats]
        perturbed[level][..., cols] += 10.0
        out = dec(perturbed, mask_features)["aux_outputs"][step]["pred_logits"]
        return not torch.allclose(out, base[step]["pred_logits"], atol=1e-6)

    # aux_outputs[s] is the prediction after layer s-1. Bilinear resizing of the 33 columns keeps
    # columns 0-2 of 5 (level 0) and 0-4 of 9 (level 1) as foreground.
    assert not changed(0, slice(3, 5), 1)
    assert changed(0, slice(0, 3), 1)
    assert not changed(1, slice(5, 9), 2)
    assert changed(1, slice(0, 5), 2)


def test_decoder_bad_inputs():
    dec = _tiny_decoder()
    feats, mf = _tiny_inputs()
    with pytest.raises(ValueError, match="feature levels"):
        dec(feats[:2], mf)
    with pytest.raises(ValueError, match="features\\[1\\]"):
        dec([feats[0], torch.randn(2, 7, 5, 9), feats[2]], mf)
    with pytest.raises(ValueError, match="mask_features"):
        dec(feats, torch.randn(2, 9, 17, 33))
    with pytest.raises(ValueError, match="hidden_dim"):
        _tiny_decoder(hidden_dim=18)


# ----------------------------------------------------------------------------- inference
def test_semantic_inference_formula():
    cls, masks = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 2, 4, dtype=torch.float64)
    out = semantic_inference(cls, masks)
    assert out.shape == (4, 2, 4)
    for c in range(4):
        for i in range(2):
            for j in range(4):
                ref = 0.0
                for q in range(3):
                    z = [math.exp(float(v)) for v in cls[q]]
                    ref += z[c] / sum(z) * sigmoid(float(masks[q, i, j]))
                assert abs(out[c, i, j].item() - ref) < 1e-12


def _class_logits(label, strength, k=3):
    row = torch.zeros(k + 1)
    row[label] = strength
    return row


def test_panoptic_inference_hand_made():
    # K = 3: classes 0, 1 are things, class 2 is stuff. Image 6 x 6.
    regions = torch.zeros(7, 6, 6, dtype=torch.bool)
    regions[0, :, :3] = True  # q0: thing 0, left half but pixel (5, 0)
    regions[0, 5, 0] = False
    regions[1, :3, 3:] = True  # q1: thing 1, top right but pixel (0, 5), which nobody claims
    regions[1, 0, 5] = False
    regions[2, 3:, 3:5] = True  # q2: stuff 2
    regions[3, 3:, 5] = True  # q3: stuff 2 again -> merged into q2's segment
    regions[4, :5, :3] = True  # q4: weaker thing 0 hidden under q0 but for pixel (5, 0):
    regions[4, 5, 0] = True  # it wins 1 of its 16 pixels -> rejected by the overlap rule
    regions[5] = True  # q5: no object
    regions[6] = True  # q6: class probability below the threshold
    mask_pred = torch.where(regions, 12.0, -12.0)
    mask_cls = torch.stack([
        _class_logits(0, 12.0), _class_logits(1, 12.0), _class_logits(2, 12.0), _class_logits(2, 11.0),
        _class_logits(0, 4.0), _class_logits(3, 12.0), _class_logits(1, 1.0),
    ])
    seg, info = panoptic_inference(mask_cls, mask_pred, thing_classes=[0, 1])
    expected = torch.zeros(6, 6, dtype=torch.int64)
    expected[regions[0]] = 1
    expected[regions[1]] = 2
    expected[regions[2] | regions[3]] = 3
    assert seg.dtype == torch.int64 and torch.equal(seg, expected)
    assert [(s["id"], s["category_id"], s["isthing"]) for s in info] == [(1, 0, True), (2, 1, True), (3, 2, False)]
    z = math.exp(12.0)
    assert abs(info[0]["score"] - z / (z + 3)) < 1e-6

    # Without the overlap rule the occluded query keeps its single visible pixel.
    seg, info = panoptic_inference(mask_cls, mask_pred, thing_classes=[0, 1], overlap_threshold=0.0)
    assert [(s["id"], s["category_id"]) for s in info][-1] == (4, 0)
    assert seg[5, 0] == 4 and (seg == 4).sum() == 1

    # Only a no-object query: empty output.
    seg, info = panoptic_inference(mask_cls[5:6], mask_pred[5:6], thing_classes=[0, 1])
    assert info == [] and seg.sum() == 0


def test_instance_inference_topk_and_things_only():
    q, k, h, w = 3, 4, 3, 4
    cls = torch.randn(q, k + 1, dtype=torch.float64) * 2
    masks = torch.randn(q, h, w, dtype=torch.float64) * 3
    out = instance_inference(cls, masks, thing_classes=[0, 2, 3], num_queries=q, test_topk_per_image=5)
    cands = []
    for qi in range(q):
        z = [math.exp(float(v)) for v in cls[qi]]
        for c in range(k):
            cands.append((z[c] / sum(z), qi, c))
    cands = sorted(cands, reverse=True)[:5]
    expected = []
    for p, qi, c in cands:
        if c not in (0, 2, 3):
            continue
        inside = [sigmoid(float(v)) for v in masks[qi].flatten() if v > 0]
        mask_score = sum(inside) / (len(inside) + 1e-6)
        expected.append((p * mask_score, c, qi))
    expected.sort(reverse=True)
    assert out["masks"].dtype == torch.bool and out["masks"].shape == (len(expected), h, w)
    assert out["labels"].tolist() == [c for _, c, _ in expected]
    assert torch.allclose(out["scores"], torch.tensor([s for s, _, _ in expected], dtype=torch.float64))
    for m, (_, _, qi) in zip(out["masks"], expected):
        assert torch.equal(m, masks[qi] > 0)
    with pytest.raises(ValueError, match="num_queries"):
        instance_inference(cls, masks, thing_classes=None, num_queries=4)


def test_inference_bad_shapes():
    with pytest.raises(ValueError, match="mask_pred"):
        semantic_inference(torch.randn(3, 4), torch.randn(2, 5, 5))
    with pytest.raises(ValueError, match="mask_cls"):
        panoptic_inference(torch.randn(3), torch.randn(3, 5, 5), thing_classes=[])


def test_criterion_rejects_targets_not_covering_the_prediction_grid():
    criterion = SetCriterion(num_classes=3, matcher=HungarianMatcher(num_points=None), num_points=16)
    outputs = {"pred_logits": torch.randn(1, 4, 4), "pred_masks": torch.randn(1, 4, 8, 8), "aux_outputs": []}
    targets = [{"labels": torch.tensor([1]), "masks": torch.ones(1, 32, 40, dtype=torch.bool)}]  # not 8:8 aspect
    with pytest.raises(ValueError, match="do not cover"):
        criterion(outputs, targets)


def test_point_sampled_losses_do_not_share_the_dense_losses_names():
    """``segblocks.losses.dice_loss`` (dense, ignore index) and Mask2Former's point-sampled dice
    are different functions with different names; the latter checked against float64 loops."""
    import segblocks.losses

    assert not hasattr(criterion_module, "dice_loss") and not hasattr(criterion_module, "sigmoid_ce_loss")
    assert criterion_module.point_sampled_dice_loss is not segblocks.losses.dice_loss
    logits, targets = torch.randn(3, 7, dtype=torch.float64), (torch.rand(3, 7) > 0.5).double()
    dice = ce = 0.0
    for m in range(3):
        p = [1 / (1 + math.exp(-v)) for v in logits[m].tolist()]
        t = targets[m].tolist()
        dice += 1 - (2 * sum(a * b for a, b in zip(p, t)) + 1) / (sum(p) + sum(t) + 1)
        ce += sum(-(b * math.log(a) + (1 - b) * math.log(1 - a)) for a, b in zip(p, t)) / 7
    assert abs(criterion_module.point_sampled_dice_loss(logits, targets, 2.0).item() - dice / 2) < 1e-12
    assert abs(criterion_module.point_sampled_sigmoid_ce_loss(logits, targets, 2.0).item() - ce / 2) < 1e-12
