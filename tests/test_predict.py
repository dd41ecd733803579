"""Pictures of predictions: COCO panoptic encoding, overlays, `lightning predict --data.predict_dir`."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from segblocks.data import PanopticMeta
from segblocks.visualize import (
    click_case_overlay,
    mask_outline,
    panoptic_overlay,
    panoptic_to_coco,
    segment_colors,
)

META = PanopticMeta.from_coco_categories([
    {"id": 3, "name": "cat", "isthing": 1, "color": [200, 30, 30]},
    {"id": 7, "name": "road", "isthing": 0, "color": [30, 30, 200]},
    {"id": 300, "name": "tree", "isthing": 0, "color": [30, 200, 30]},
])


def _naive_id(rgb):
    """COCO panoptic id of every pixel, one at a time: R + 256 G + 256^2 B."""
    h, w, _ = rgb.shape
    out = np.zeros((h, w), dtype=np.int64)
    for y in range(h):
        for x in range(w):
            r, g, b = (int(v) for v in rgb[y, x])
            out[y, x] = r + 256 * g + 65536 * b
    return out


def _scene():
    seg = np.zeros((12, 16), dtype=np.int64)
    seg[1:5, 2:9] = 70000  # uses the G and B channels
    seg[6:12, :] = 2
    seg[8:10, 12:15] = 5
    info = [
        {"id": 70000, "category_id": 0, "score": 0.9},
        {"id": 2, "category_id": 1, "score": 0.8},
        {"id": 5, "category_id": 0, "score": 0.7},
        {"id": 9, "category_id": 2, "score": 0.5},  # no pixels: left out
    ]
    return seg, info


def test_panoptic_to_coco_encoding_and_segments_info():
    seg, info = _scene()
    rgb, coco = panoptic_to_coco(seg, info, META)
    assert rgb.dtype == np.uint8 and rgb.shape == (12, 16, 3)
    np.testing.assert_array_equal(_naive_id(rgb), seg)
    by_id = {s["id"]: s for s in coco}
    assert sorted(by_id) == [2, 5, 70000]
    for sid, s in by_id.items():
        ys, xs = [], []
        for y in range(seg.shape[0]):
            for x in range(seg.shape[1]):
                if seg[y, x] == sid:
                    ys.append(y)
                    xs.append(x)
        assert s["area"] == len(ys)
        assert s["bbox"] == [min(xs), min(ys), max(xs) - min(xs) + 1, max(ys) - min(ys) + 1]
        assert s["iscrowd"] == 0
    assert by_id[70000]["category_id"] == 3 and by_id[2]["category_id"] == 7  # COCO ids, not contiguous
    assert by_id[5]["score"] == pytest.approx(0.7)


def test_panoptic_to_coco_rejects_bad_input():
    seg, info = _scene()
    with pytest.raises(ValueError, match="does not describe"):
        panoptic_to_coco(seg, info[1:], META)
    with pytest.raises(ValueError, match="category_id"):
        panoptic_to_coco(seg, [*info[:3], {"id": 9, "category_id": 3}], META)
    with pytest.raises(ValueError, match="distinct"):
        panoptic_to_coco(seg, [*info, {"id": 2, "category_id": 1}], META)


def test_overlay_tints_segments_keeps_void_and_names_classes():
    seg, info = _scene()
    image = np.full((12, 16, 3), 100, dtype=np.uint8)
    plain = np.asarray(panoptic_overlay(image, seg, info, META, alpha=0.5, show_labels=False))
    colors = segment_colors(info, META)
    edges = np.zeros(seg.shape, bool)
    for sid in (2, 5, 70000):
        edges |= mask_outline(seg == sid)
    for y in range(12):
        for x in range(16):
            if edges[y, x]:
                assert (plain[y, x] == 255).all()
            elif seg[y, x] == 0:
                assert (plain[y, x] == 100).all()
            else:
                want = [round(0.5 * 100 + 0.5 * c) for c in colors[int(seg[y, x])]]
                assert plain[y, x].tolist() == want
    assert colors[70000] == (200, 30, 30) and colors[5] != colors[70000]  # 2nd instance of a class jittered
    big = np.kron(seg, np.ones((8, 8), dtype=np.int64))
    labelled = np.asarray(panoptic_overlay(np.full((96, 128, 3), 100, np.uint8), big, info, META, font_size=12))
    unlabelled = np.asarray(panoptic_overlay(np.full((96, 128, 3), 100, np.uint8), big, info, META, show_labels=False))
    assert (labelled != unlabelled).any(axis=-1)[8:40, 16:72].sum() > 20  # text drawn on the cat


def test_mask_outline_matches_naive_neighbours():
    rng = np.random.default_rng(0)
    mask = rng.random((9, 11)) > 0.4
    got = mask_outline(mask)
    for y in range(9):
        for x in range(11):
            nbrs = [(y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)]
            border = any(not (0 <= a < 9 and 0 <= b < 11) or not mask[a, b] for a, b in nbrs)
            assert got[y, x] == (mask[y, x] and border)


def test_click_case_overlay_draws_clicks_and_checks_them():
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    gt = np.zeros((64, 64), bool)
    gt[10:40, 10:40] = True
    pred = np.zeros((64, 64), bool)
    pred[12:44, 12:44] = True
    out = np.asarray(click_case_overlay(image, gt, pred, [(25, 25, True), (42, 42, False)], caption="NoC 2"))
    assert out[25, 25].tolist() == [40, 220, 60] and out[42, 42].tolist() == [235, 40, 40]
    assert out[39, 20].tolist() == [255, 215, 0]  # GT outline (the caption covers the top-left)
    assert out[30, 42, 2] > 100 and out[60, 60].tolist() == [0, 0, 0]  # prediction tinted blue, background kept
    with pytest.raises(ValueError, match="outside"):
        click_case_overlay(image, gt, pred, [(70, 3, True)])
    with pytest.raises(ValueError, match="gt must be"):
        click_case_overlay(image, gt[:5], pred, [])


@pytest.mark.slow
def test_lightning_predict_writes_coco_pngs_overlays_and_json(tmp_path):
    """`segblocks predict -c recipes/pro_scale.yaml --data.predict_dir DIR` writes files at the originals' sizes."""
    from segblocks.lightning import cli

    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    sizes = {"a": (90, 120), "sub/b": (70, 50)}
    for name, (h, w) in sizes.items():
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(images / f"{name}.png")
    (images / "notes.txt").write_text("not an image")
    root = tmp_path / "run"
    cli.main([
        "predict", "-c", "recipes/pro_scale.yaml", f"--data.predict_dir={images}", f"--trainer.default_root_dir={root}",
        "--model.init_args.object_mask_threshold=0.0", "--trainer.enable_progress_bar=false", "--data.batch_size=2",
    ])
    out = root / "predictions"
    data = json.loads((out / "panoptic_predictions.json").read_text())
    assert [c["id"] for c in data["categories"]] == [1, 2, 3, 4, 101, 102, 103]
    assert sorted(a["image_id"] for a in data["annotations"]) == sorted(sizes)
    total = 0
    for ann in data["annotations"]:
        h, w = sizes[ann["image_id"]]
        png = np.asarray(Image.open(out / "panoptic" / ann["file_name"]))
        assert png.shape == (h, w, 3)
        ids = _naive_id(png)
        listed = {s["id"]: s for s in ann["segments_info"]}
        assert set(np.unique(ids).tolist()) - {0} == set(listed)
        for sid, s in listed.items():
            assert s["area"] == int((ids == sid).sum()) and s["category_id"] in {1, 2, 3, 4, 101, 102, 103}
        total += len(listed)
        assert Image.open(out / "overlay" / ann["file_name"]).size == (w, h)
    assert total > 0  # threshold 0: the untrained model still predicts segments


def test_predict_without_predict_dir_names_the_option():
    from segblocks.lightning import PanopticDataModule

    dm = PanopticDataModule()
    with pytest.raises(ValueError, match="predict_dir"):
        dm.setup("predict")


# ----------------------------------------------------------------------------- interactive test report: click cases
class _SquareAroundClicks:
    """Logits > 0 within 6 input pixels (Chebyshev) of each positive click, < 0 elsewhere."""

    def encode(self, images, valid_size):
        return images.shape[-2:]

    def decode(self, state, prompts, previous):
        import torch

        H, W = state
        points, labels = prompts.points()  # B x N x 2 (x, y) in the input
        ys, xs = torch.arange(H).view(1, H, 1) + 0.5, torch.arange(W).view(1, 1, W) + 0.5
        out = torch.full((points.shape[0], 1, H, W), -1.0)
        for b in range(points.shape[0]):
            for (x, y), lab in zip(points[b].tolist(), labels[b].tolist()):
                if lab == 1:
                    out[b, 0][((ys[0] - y).abs() <= 6) & ((xs[0] - x).abs() <= 6)] = 1.0
        return out


def test_write_click_cases_picks_worst_and_best_and_draws_at_original_size(tmp_path):
    import torch

    from segblocks.interactive.clicker import sample_generators
    from segblocks.interactive.evaluation import evaluate_clicks, write_click_cases
    from segblocks.lightning import InteractiveDataModule

    dm = InteractiveDataModule(eval_size=64, max_test_samples=5, cache_dir=str(tmp_path / "cache"), synthetic_num_train=2,
                               synthetic_num_val=5, synthetic_min_side=40, synthetic_max_side=72)
    dm.prepare_data()
    dm.setup("test")
    loader = dm.test_dataloader()
    model, K = _SquareAroundClicks(), 4
    rows, ious = [], []
    for batch in loader:
        curves = evaluate_clicks(model, batch, max_clicks=K, generator=sample_generators(42, batch["index"]))
        rows += batch["index"].tolist()
        ious.append(curves.ious)
    iou = torch.cat(ious)
    # NoC@50 by hand: first click reaching 0.5, else K
    noc = torch.tensor([next((k + 1 for k in range(K) if iou[i, k] >= 0.5), K) for i in range(len(rows))])
    curves = {"iou": iou, "sample_index": torch.tensor(rows), "noc@50": noc}
    paths = write_click_cases(model, [loader], curves, tmp_path, eval_seed=42, num_cases=2, noc_key="noc@50")
    assert set(paths) == {"worst_1", "worst_2", "best_1", "best_2"}
    key = {i: (int(noc[i]), -float(iou[i, -1]), i) for i in range(len(rows))}
    want_best = sorted(key, key=lambda i: key[i])[:2]
    want_worst = sorted(key, key=lambda i: (-key[i][0], -key[i][1], i))[:2]
    for kind, want in (("best", want_best), ("worst", want_worst)):
        for r, i in enumerate(want, start=1):
            sample = loader.dataset[rows[i]]
            h0, w0 = sample["original_mask"].shape
            picture = np.asarray(Image.open(paths[f"{kind}_{r}"]))
            assert picture.shape == (h0, w0, 3)
            # the first click (the protocol's: the GT's most interior point) is drawn green where it was placed
            gt = sample["original_mask"].numpy()
            assert gt.any() and (picture == [40, 220, 60]).all(-1).any()
    assert write_click_cases(model, loader, {**curves, "sample_index": torch.full((len(rows),), -1)}, tmp_path, eval_seed=42) == {}
