"""Interactive-segmentation datasets, mask decoding, transforms and collation.

References are independent: fixtures are written here with known contents, real data is decoded
directly with PIL / pycocotools, resizing is checked against naive float64 loops.
"""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import scipy.io
import scipy.sparse
import torch
from PIL import Image

from segblocks.data.interactive import (
    BenchmarkDataset,
    COCOInstanceDataset,
    EmptyMaskError,
    ImageMaskFolderDataset,
    InteractiveEvalTransform,
    InteractiveTrainTransform,
    MaskEncoding,
    SBDInstanceDataset,
    SyntheticInstanceDataset,
    collate_interactive,
    crop_and_resize_back,
    make_synthetic_instances,
    read_mask_array,
    resize_longest_side_and_pad,
)
from segblocks.data.interactive import synthetic_instances


def _rng_image(rng, h, w):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _blob(h, w, cy, cx, r):
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _palette_png(path, indices):
    img = Image.fromarray(indices.astype(np.uint8), mode="P")
    img.putpalette([0, 0, 0, 200, 30, 30] + [7, 7, 7] * 253 + [255, 255, 255])  # index 1 is red, 255 white
    img.save(path)


# ---------------------------------------------------------------- mask decoding


def test_read_mask_array_encodings(tmp_path):
    obj = _blob(20, 30, 10, 12, 6)
    band = _blob(20, 30, 10, 12, 8) & ~obj
    # Palette: the index is kept, not the palette colour.
    _palette_png(tmp_path / "p.png", obj * 1 + band * 255)
    raw = read_mask_array(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    np.testing.assert_array_equal(raw, obj * 1 + band * 255)
    mask, ignore = MaskEncoding(object_value=1, ignore_value=255).decode(raw)
    np.testing.assert_array_equal(mask, obj)
    np.testing.assert_array_equal(ignore, band)
    # 0/1 and 0/255 grayscale, PNG and BMP, decode to the same non-zero mask.
    for name, values in (("a01.png", obj * 1), ("a255.png", obj * 255), ("b.bmp", obj * 255)):
        Image.fromarray(values.astype(np.uint8), mode="L").save(tmp_path / name)
        mask, ignore = MaskEncoding().decode(read_mask_array(tmp_path / name))
        np.testing.assert_array_equal(mask, obj)
        assert not ignore.any()
    # RGB: non-black is the object; a chosen colour selects one object; gray RGB acts as grayscale.
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[obj] = (10, 200, 30)
    rgb[band] = (0, 0, 90)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    raw = read_mask_array(tmp_path / "rgb.png")
    assert raw.shape == (20, 30, 3)
    np.testing.assert_array_equal(MaskEncoding().decode(raw)[0], obj | band)
    np.testing.assert_array_equal(MaskEncoding(object_value=(10, 200, 30), strict=False).decode(raw)[0], obj)
    mask, ignore = MaskEncoding(ignore_value=(0, 0, 90)).decode(raw)
    np.testing.assert_array_equal(mask, obj)
    np.testing.assert_array_equal(ignore, band)
    gray = np.repeat((obj * 255 + band * 128).astype(np.uint8)[..., None], 3, axis=2)
    Image.fromarray(gray).save(tmp_path / "gray_rgb.png")
    mask, ignore = MaskEncoding(object_value=255, ignore_value=128).decode(read_mask_array(tmp_path / "gray_rgb.png"))
    np.testing.assert_array_equal(mask, obj)
    np.testing.assert_array_equal(ignore, band)
    # A gray colour spec matches a single-channel mask; a non-gray one cannot.
    np.testing.assert_array_equal(MaskEncoding(object_value=(255, 255, 255)).decode(obj * 255)[0], obj)
    with pytest.raises(ValueError, match="single-channel"):
        MaskEncoding(object_value=(1, 2, 3)).decode(obj * 255, source="m.png")


def test_mask_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_mask_array(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="bad.png"):
        read_mask_array(tmp_path / "bad.png")
    Image.fromarray(np.zeros((4, 4), np.float32), mode="F").save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match="float.tif.*mode F"):
        read_mask_array(tmp_path / "float.tif")
    with pytest.raises(TypeError, match="object_value"):
        MaskEncoding(object_value=1.5)
    with pytest.raises(ValueError, match="differ"):
        MaskEncoding(object_value=3, ignore_value=3)
    with pytest.raises(ValueError, match="m.png"):
        MaskEncoding().decode(np.zeros((2, 3, 4)), source="m.png")


# ---------------------------------------------------------------- folder layouts


def _write_folder(root, image_dir, mask_dir, items):
    """items: (stem, image ext, mask file name, image array, mask writer(path))."""
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    (root / mask_dir).mkdir(parents=True, exist_ok=True)
    for stem, ext, mask_name, image, write_mask in items:
        Image.fromarray(image).save(root / image_dir / f"{stem}{ext}")
        write_mask(root / mask_dir / mask_name)


def test_davis_and_generic_folder(tmp_path):
    rng = np.random.default_rng(1)
    shapes = {"a": (21, 34), "b": (40, 17), "c": (25, 25)}
    objs = {k: _blob(h, w, h // 2, w // 3, 5) for k, (h, w) in shapes.items()}
    images = {k: _rng_image(rng, h, w) for k, (h, w) in shapes.items()}
    items = [
        ("a", ".png", "a.png", images["a"], lambda p: Image.fromarray((objs["a"] * 255).astype(np.uint8)).save(p)),
        ("b", ".bmp", "b.png", images["b"], lambda p: _palette_png(p, objs["b"] * 1)),
        ("c", ".png", "c.png", images["c"], lambda p: Image.fromarray(np.where(objs["c"][..., None], [9, 250, 9], 0).astype(np.uint8)).save(p)),
    ]
    _write_folder(tmp_path / "davis", "img", "gt", items)
    ds = BenchmarkDataset(root=tmp_path / "davis", layout="davis")
    assert [s["sample_id"] for s in ds] == ["a", "b", "c"]
    for s in ds:
        k = s["sample_id"]
        assert s["image"].dtype == torch.uint8 and s["image"].shape == (3, *shapes[k])
        np.testing.assert_array_equal(s["image"].permute(1, 2, 0).numpy(), images[k])
        assert s["mask"].dtype == torch.bool and s["ignore"].dtype == torch.bool
        np.testing.assert_array_equal(s["mask"].numpy(), objs[k])
        assert not s["ignore"].any()
        assert s["original_size"] == shapes[k]
    # The generic class with a list file: only the listed stems, in that order.
    (tmp_path / "list.txt").write_text("c\n\na\n")
    ds = ImageMaskFolderDataset(image_dir=tmp_path / "davis" / "img", mask_dir=tmp_path / "davis" / "gt", list_file=tmp_path / "list.txt")
    assert [s["sample_id"] for s in ds] == ["c", "a"]
    (tmp_path / "bad_list.txt").write_text("a\nzzz\n")
    with pytest.raises(FileNotFoundError, match="bad_list.txt"):
        ImageMaskFolderDataset(image_dir=tmp_path / "davis" / "img", mask_dir=tmp_path / "davis" / "gt", list_file=tmp_path / "bad_list.txt")


def test_focuscut_layout_and_grabcut_fixture(tmp_path):
    rng = np.random.default_rng(2)
    obj, band = _blob(30, 40, 15, 20, 7), _blob(30, 40, 15, 20, 9) & ~_blob(30, 40, 15, 20, 7)
    image = _rng_image(rng, 30, 40)
    _write_folder(tmp_path / "fc", "img", "gt", [("x", ".jpg", "x#001.png", image, lambda p: _palette_png(p, obj * 1 + band * 255))])
    s = BenchmarkDataset(root=tmp_path / "fc", layout="focuscut")[0]
    np.testing.assert_array_equal(s["mask"].numpy(), obj)
    np.testing.assert_array_equal(s["ignore"].numpy(), band)
    # GrabCut layout with an upper-case image extension and a BMP mask.
    _write_folder(
        tmp_path / "gc", "data_GT", "boundary_GT",
        [("y", ".JPG", "y.bmp", image, lambda p: Image.fromarray((obj * 255 + band * 128).astype(np.uint8)).save(p))],
    )
    s = BenchmarkDataset(root=tmp_path / "gc", layout="grabcut")[0]
    np.testing.assert_array_equal(s["mask"].numpy(), obj)
    np.testing.assert_array_equal(s["ignore"].numpy(), band)
    with pytest.raises(ValueError, match="layout must be one of"):
        BenchmarkDataset(root=tmp_path / "gc", layout="pascal")


def test_folder_errors_name_the_file(tmp_path):
    rng = np.random.default_rng(3)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        BenchmarkDataset(root=tmp_path / "nowhere", layout="davis")
    # Missing mask: fails at construction, naming the image and the tried path.
    _write_folder(tmp_path / "m", "img", "gt", [("a", ".png", "a.png", _rng_image(rng, 8, 8), lambda p: Image.fromarray(np.ones((8, 8), np.uint8)).save(p))])
    Image.fromarray(_rng_image(rng, 8, 8)).save(tmp_path / "m" / "img" / "lonely.jpg")
    with pytest.raises(FileNotFoundError, match=r"lonely\.jpg.*gt/lonely\.png"):
        BenchmarkDataset(root=tmp_path / "m", layout="davis")
    # Mismatched sizes: both files named.
    _write_folder(tmp_path / "s", "img", "gt", [("a", ".png", "a.png", _rng_image(rng, 8, 9), lambda p: Image.fromarray(np.ones((9, 8), np.uint8)).save(p))])
    with pytest.raises(ValueError, match=r"gt/a\.png.*img/a\.png"):
        BenchmarkDataset(root=tmp_path / "s", layout="davis")[0]
    # Unreadable image.
    _write_folder(tmp_path / "u", "img", "gt", [("a", ".png", "a.png", _rng_image(rng, 8, 8), lambda p: Image.fromarray(np.ones((8, 8), np.uint8)).save(p))])
    (tmp_path / "u" / "img" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    with pytest.raises(ValueError, match=r"img/a\.png"):
        BenchmarkDataset(root=tmp_path / "u", layout="davis")[0]


def test_grabcut_real(shared_data):
    root = shared_data / "GrabCut"
    ds = BenchmarkDataset(root=root, layout="grabcut")
    assert len(ds) == 50
    stems = sorted(p.stem for p in (root / "data_GT").iterdir())
    assert sorted(r[0] for r in ds.records) == stems
    n_band = 0
    for i in range(len(ds)):
        s = ds[i]
        gt = np.array(Image.open(root / "boundary_GT" / f"{s['sample_id']}.bmp"))
        assert set(np.unique(gt)) <= {0, 128, 255}
        np.testing.assert_array_equal(s["mask"].numpy(), gt == 255)
        np.testing.assert_array_equal(s["ignore"].numpy(), gt == 128)
        image_path = next((root / "data_GT").glob(f"{s['sample_id']}.*"))
        np.testing.assert_array_equal(s["image"].permute(1, 2, 0).numpy(), np.array(Image.open(image_path).convert("RGB")))
        assert s["original_size"] == gt.shape
        n_band += bool(s["ignore"].any())
    assert n_band > 30  # most GrabCut masks carry the 128 band


# ---------------------------------------------------------------- SBD


def _write_sbd_mat(path, seg, categories):
    n = len(categories)
    boundaries = np.empty((n, 1), dtype=object)
    for k in range(n):
        boundaries[k, 0] = scipy.sparse.csc_matrix((seg == k + 1).astype(np.uint8))
    # Field order as in SBD's files: the authors' loaders read field 0 positionally.
    gt = {"Segmentation": seg.astype(np.uint8), "Boundaries": boundaries, "Categories": np.array(categories, np.uint8).reshape(n, 1)}
    scipy.io.savemat(path, {"GTinst": gt})


def test_sbd_instances(tmp_path):
    rng = np.random.default_rng(4)
    (tmp_path / "img").mkdir()
    (tmp_path / "inst").mkdir()
    segs = {}
    for stem, (h, w), ids in (("2008_000001", (20, 30), [1, 2, 3]), ("2008_000002", (25, 18), [1]), ("2008_000003", (10, 10), [1, 2])):
        seg = np.zeros((h, w), np.uint8)
        for k in ids:
            seg[_blob(h, w, rng.integers(0, h), rng.integers(0, w), 4) & (seg == 0)] = k
        segs[stem] = seg
        Image.fromarray(_rng_image(rng, h, w)).save(tmp_path / "img" / f"{stem}.jpg")
        _write_sbd_mat(tmp_path / "inst" / f"{stem}.mat", seg, [15] * len(ids))
    assert (scipy.io.loadmat(tmp_path / "inst" / "2008_000001.mat")["GTinst"][0][0][0] == segs["2008_000001"]).all()
    (tmp_path / "val.txt").write_text("2008_000001\n2008_000002\n")  # 000003 is not in the split
    ds = SBDInstanceDataset(root=tmp_path)
    expected = [(stem, k) for stem in ("2008_000001", "2008_000002") for k in np.unique(segs[stem]) if k]
    assert [s["sample_id"] for s in ds] == [f"{stem}_{k}" for stem, k in expected]
    for s, (stem, k) in zip(ds, expected):
        np.testing.assert_array_equal(s["mask"].numpy(), segs[stem] == k)
        assert s["mask"].any() and not s["ignore"].any()
    (tmp_path / "inst" / "2008_000002.mat").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="2008_000002.mat"):
        SBDInstanceDataset(root=tmp_path)
    with pytest.raises(FileNotFoundError, match="train.txt"):
        SBDInstanceDataset(root=tmp_path, split="train")


# ---------------------------------------------------------------- COCO


def _coco_reference(annotation_file):
    import contextlib
    import io

    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(annotation_file))


def test_coco_tiny_min_area_and_crowds(shared_data):
    root = shared_data / "coco_tiny"
    ann_file = root / "annotations" / "instances_val2017.json"
    coco = _coco_reference(ann_file)
    anns = coco.dataset["annotations"]
    min_area = sorted(a["area"] for a in anns if not a["iscrowd"])[len(anns) // 3]  # an attained value: >= is inclusive
    ds = COCOInstanceDataset(image_dir=root / "val2017", annotation_file=ann_file, min_area=min_area, crowd_as_ignore=True)
    expected = {f"{a['image_id']}_{a['id']}" for a in anns if not a["iscrowd"] and a["area"] >= min_area}
    assert {f"{r['image_id']}_{r['id']}" for r in ds.records} == expected
    assert 0 < len(ds) < sum(not a["iscrowd"] for a in anns)
    crowd_images = {a["image_id"] for a in anns if a["iscrowd"]}
    picked = [i for i, r in enumerate(ds.records) if r["image_id"] in crowd_images][:4] + [0, len(ds) - 1]
    plain = COCOInstanceDataset(image_dir=root / "val2017", annotation_file=ann_file, min_area=min_area)
    for i in picked:
        s = ds[i]
        image_id, ann_id = (int(v) for v in s["sample_id"].split("_"))
        mask = coco.annToMask(coco.anns[ann_id]).astype(bool)
        crowd = np.zeros_like(mask)
        for a in coco.imgToAnns[image_id]:
            if a["iscrowd"]:
                crowd |= coco.annToMask(a).astype(bool)
        np.testing.assert_array_equal(s["mask"].numpy(), mask)
        np.testing.assert_array_equal(s["ignore"].numpy(), crowd & ~mask)
        assert s["category_id"] == coco.anns[ann_id]["category_id"]
        assert not plain[i]["ignore"].any()
        info = coco.imgs[image_id]
        assert s["original_size"] == (info["height"], info["width"]) and s["image"].shape == (3, info["height"], info["width"])
    assert any(ds[i]["ignore"].any() for i in picked[:4])


def test_coco_segmentation_formats_lvis_style(tmp_path):
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(5)
    (tmp_path / "images").mkdir()
    Image.fromarray(_rng_image(rng, 24, 32)).save(tmp_path / "images" / "000000000007.jpg")
    blob = _blob(24, 32, 12, 10, 5)
    compressed = mask_utils.encode(np.asfortranarray(blob.astype(np.uint8)))
    compressed["counts"] = compressed["counts"].decode("ascii")
    flat = blob.T.ravel()  # column-major runs, starting with background
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    counts = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if flat[0]:
        counts = [0] + counts
    data = {
        # LVIS-style image record: coco_url, no file_name.
        "images": [{"id": 7, "coco_url": "http://images.cocodataset.org/val2017/000000000007.jpg", "height": 24, "width": 32}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "area": 60.0, "segmentation": [[2, 2, 20, 2, 20, 10, 2, 10], [25, 15, 30, 15, 30, 22]]},
            {"id": 2, "image_id": 7, "category_id": 3, "area": float(blob.sum()), "segmentation": compressed},
            {"id": 3, "image_id": 7, "category_id": 4, "area": float(blob.sum()), "segmentation": {"size": [24, 32], "counts": counts}},
        ],
        "categories": [{"id": 3, "name": "a"}, {"id": 4, "name": "b"}],
    }
    (tmp_path / "lvis.json").write_text(json.dumps(data))
    coco = _coco_reference(tmp_path / "lvis.json")
    ds = COCOInstanceDataset(image_dir=tmp_path / "images", annotation_file=tmp_path / "lvis.json")
    assert len(ds) == 3
    for s in ds:
        ann = coco.anns[int(s["sample_id"].split("_")[1])]
        np.testing.assert_array_equal(s["mask"].numpy(), coco.annToMask(ann).astype(bool))
    np.testing.assert_array_equal(ds[1]["mask"].numpy(), blob)
    np.testing.assert_array_equal(ds[2]["mask"].numpy(), blob)
    assert ds[0]["mask"][5, 10] and ds[0]["mask"][20, 29] and not ds[0]["mask"][20, 5]
    data["images"][0]["height"] = 23
    (tmp_path / "wrong.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="000000000007.jpg"):
        COCOInstanceDataset(image_dir=tmp_path / "images", annotation_file=tmp_path / "wrong.json")[0]
    with pytest.raises(FileNotFoundError, match="missing.json"):
        COCOInstanceDataset(image_dir=tmp_path / "images", annotation_file=tmp_path / "missing.json")


# ---------------------------------------------------------------- synthetic


def _tree_digest(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


SMALL = {"num_train_objects": 14, "num_val_objects": 5, "min_side": 40, "max_side": 56}


def test_synthetic_deterministic(tmp_path):
    a = make_synthetic_instances(cache_dir=tmp_path / "a", **SMALL)
    b = make_synthetic_instances(cache_dir=tmp_path / "b", **SMALL)
    assert a.name == b.name and a.name.startswith(f"synthetic_instances-v{synthetic_instances.SYNTHETIC_INSTANCES_VERSION}-")
    assert _tree_digest(a) == _tree_digest(b)
    assert make_synthetic_instances(cache_dir=tmp_path / "a", **{**SMALL, "seed": 1}) != a
    for split, count in (("train", 14), ("val", 5)):
        ds = SyntheticInstanceDataset(root=a, split=split)
        assert len(ds) == count
        ids = set()
        index = json.loads((a / "index.json").read_text())
        areas = {f"{split}_{e['name']}_{o['id']}": o["area"] for e in index["splits"][split] for o in e["objects"]}
        for s in ds:
            ids.add(s["sample_id"])
            h, w = s["original_size"]
            assert 40 <= h <= 56 and 40 <= w <= 56 and s["image"].shape == (3, h, w)
            assert int(s["mask"].sum()) == areas[s["sample_id"]] >= 12
            assert not s["ignore"].any()
        assert len(ids) == count


def test_synthetic_default_cache_and_kinds(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGBLOCKS_CACHE", str(tmp_path))
    ds = SyntheticInstanceDataset(split="train")
    assert ds.root.parent == tmp_path and len(ds) == 200
    assert len(SyntheticInstanceDataset(split="val")) == 30
    kinds = [k for *_, k in ds.records]
    assert set(kinds) == set(synthetic_instances.OBJECT_KINDS)
    areas = [o["area"] for e in json.loads((ds.root / "index.json").read_text())["splits"]["train"] for o in e["objects"]]
    assert min(areas) < 100 and max(areas) > 3000  # small and large objects


def test_synthetic_generation_is_atomic(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = synthetic_instances._render

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # interrupted mid-way
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic_instances, "_render", failing)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic_instances(cache_dir=tmp_path, **SMALL)
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left to be trusted
    monkeypatch.setattr(synthetic_instances, "_render", real)
    # A killed process leaves a temporary sibling: it is never read, a full build happens.
    reference = make_synthetic_instances(cache_dir=tmp_path / "ref", **SMALL)
    stale = tmp_path / f".{reference.name}.tmp-killed"
    stale.mkdir()
    (stale / "index.json").write_text("{}")
    root = make_synthetic_instances(cache_dir=tmp_path, **SMALL)
    assert root.name == reference.name and _tree_digest(root) == _tree_digest(reference)
    with pytest.raises(ValueError, match="index.json"):
        SyntheticInstanceDataset(root=stale)


# ---------------------------------------------------------------- transforms


def _naive_bilinear(img, out_h, out_w):
    """align_corners=False bilinear without antialias, float64 loops; img (C, H, W)."""
    C, H, W = img.shape
    out = np.zeros((C, out_h, out_w))
    for i in range(out_h):
        sy = max((i + 0.5) * H / out_h - 0.5, 0.0)
        y0 = min(int(sy), H - 1)
        y1, fy = min(y0 + 1, H - 1), sy - y0
        for j in range(out_w):
            sx = max((j + 0.5) * W / out_w - 0.5, 0.0)
            x0 = min(int(sx), W - 1)
            x1, fx = min(x0 + 1, W - 1), sx - x0
            out[:, i, j] = (img[:, y0, x0] * (1 - fx) + img[:, y0, x1] * fx) * (1 - fy) + (img[:, y1, x0] * (1 - fx) + img[:, y1, x1] * fx) * fy
    return out


def _naive_nearest(m, out_h, out_w):
    H, W = m.shape
    rows = [min(int((i + 0.5) * H / out_h), H - 1) for i in range(out_h)]
    cols = [min(int((j + 0.5) * W / out_w), W - 1) for j in range(out_w)]
    return m[np.ix_(rows, cols)]


def _sample(image, mask, ignore, sid="s"):
    return {
        "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
        "mask": torch.from_numpy(mask),
        "ignore": torch.from_numpy(ignore),
        "sample_id": sid,
        "original_size": image.shape[:2],
    }


@pytest.mark.parametrize("shape,T", [((35, 50), 64), ((50, 23), 40), ((33, 33), 17), ((9, 61), 61)])
def test_eval_transform_matches_naive(shape, T):
    rng = np.random.default_rng(6)
    h, w = shape
    image = _rng_image(rng, h, w)
    mask, ignore = rng.random((h, w)) < 0.4, rng.random((h, w)) < 0.1
    ignore &= ~mask
    out = InteractiveEvalTransform(target_size=T)(_sample(image, mask, ignore))
    scale = T / max(h, w)
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    assert out["valid_size"] == (nh, nw) and max(nh, nw) == T
    assert out["image"].shape == (3, T, T) and out["image"].dtype == torch.float32
    ref = _naive_bilinear(image.transpose(2, 0, 1).astype(np.float64), nh, nw)
    np.testing.assert_allclose(out["image"][:, :nh, :nw].numpy(), ref, atol=1e-3)
    np.testing.assert_array_equal(out["mask"][:nh, :nw].numpy(), _naive_nearest(mask, nh, nw))
    np.testing.assert_array_equal(out["ignore"][:nh, :nw].numpy(), _naive_nearest(ignore, nh, nw))
    assert not out["image"][:, nh:].any() and not out["image"][:, :, nw:].any()
    assert not out["mask"][nh:].any() and not out["ignore"][:, nw:].any()
    np.testing.assert_array_equal(out["original_mask"].numpy(), mask)
    np.testing.assert_array_equal(out["original_ignore"].numpy(), ignore)
    assert out["original_size"] == (h, w)


def test_crop_and_resize_back_round_trip():
    # Identity when no resizing happens.
    x = torch.randn(2, 3, 20, 20, dtype=torch.float64)
    torch.testing.assert_close(crop_and_resize_back(x, (20, 13), (20, 13)), x[..., :20, :13], rtol=0, atol=0)
    # A smooth map survives the round trip through a smaller padded frame.
    h, w, T = 90, 60, 48
    yy, xx = np.mgrid[0:h, 0:w] / 10.0
    smooth = torch.from_numpy(np.sin(yy) * np.cos(0.7 * xx))[None]  # 1 x H x W
    padded, valid = resize_longest_side_and_pad(smooth, T)
    assert valid == (48, int(60 * 48 / 90 + 0.5)) and padded.shape == (1, T, T)
    back = crop_and_resize_back(padded, valid, (h, w))
    assert back.shape == (1, h, w)
    assert (back - smooth)[:, 2:-2, 2:-2].abs().max() < 0.05
    # Naive reference for the back-resize itself.
    logits = torch.randn(1, 16, 16, dtype=torch.float64)
    back = crop_and_resize_back(logits, (11, 16), (23, 31))
    np.testing.assert_allclose(back.numpy(), _naive_bilinear(logits[:, :11].numpy(), 23, 31), atol=1e-9)
    with pytest.raises(ValueError, match="resized_size"):
        crop_and_resize_back(logits, (17, 16), (23, 31))
    with pytest.raises(TypeError, match="float"):
        crop_and_resize_back(torch.zeros(4, 4, dtype=torch.long), (4, 4), (4, 4))


def _marker_sample(rng, h, w):
    """Noise-free scene: red object, green ignore ring, dark-gray background."""
    image = np.full((h, w, 3), 40, np.uint8)
    mask = _blob(h, w, h // 2, w // 2, min(h, w) // 4)
    ignore = _blob(h, w, h // 2, w // 2, min(h, w) // 4 + 4) & ~mask
    image[mask] = (255, 0, 0)
    image[ignore] = (0, 255, 0)
    return _sample(image, mask, ignore)


def test_train_transform_keeps_maps_aligned():
    from scipy.ndimage import binary_erosion

    rng = np.random.default_rng(7)
    t = InteractiveTrainTransform(crop_size=48, scale_range=(0.6, 1.6), color_jitter=0.0)
    for k in range(12):
        sample = _marker_sample(rng, 50 + 7 * k, 71 - 3 * k)
        out = t(sample)
        img, mask, ignore = out["image"].numpy().astype(int), out["mask"].numpy(), out["ignore"].numpy()
        assert out["image"].shape == (3, 48, 48) and out["image"].dtype == torch.uint8 and mask.dtype == bool
        assert mask.any()  # the crop contains part of the object
        inner = binary_erosion(mask, iterations=2)
        assert (img[0][inner] > 200).all() and (img[1][inner] < 50).all()
        inner_ignore = binary_erosion(ignore, iterations=2)
        assert (img[1][inner_ignore] > 200).all() and (img[0][inner_ignore] < 50).all()
        red = (img[0] > 200) & (img[1] < 50)
        assert (red == mask).mean() > 0.97 and not (mask & ignore).any()
        vh, vw = out["valid_size"]
        assert not img[:, vh:].any() and not img[:, :, vw:].any() and (img[:, :vh, :vw].max(axis=0) > 0).all()
        assert out["original_size"] == sample["original_size"] and out["sample_id"] == "s"


def test_train_transform_flip_and_reproducibility():
    rng = np.random.default_rng(8)
    image = _rng_image(rng, 32, 32)
    mask, ignore = rng.random((32, 32)) < 0.5, rng.random((32, 32)) < 0.2
    ignore &= ~mask
    sample = _sample(image, mask, ignore)
    out = InteractiveTrainTransform(crop_size=32, scale_range=(1.0, 1.0), hflip_prob=1.0, color_jitter=0.0)(sample)
    np.testing.assert_array_equal(out["image"].numpy(), image.transpose(2, 0, 1)[:, :, ::-1])
    np.testing.assert_array_equal(out["mask"].numpy(), mask[:, ::-1])
    np.testing.assert_array_equal(out["ignore"].numpy(), ignore[:, ::-1])
    assert out["valid_size"] == (32, 32)
    t = InteractiveTrainTransform(crop_size=24, color_jitter=0.3)
    torch.manual_seed(3)
    a = t(sample)
    torch.manual_seed(3)
    b = t(sample)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    with pytest.raises(ValueError, match="uint8"):
        t({**sample, "image": sample["image"].float()})
    with pytest.raises(ValueError, match="scale_range"):
        InteractiveTrainTransform(crop_size=24, scale_range=(2.0, 1.0))


# ---------------------------------------------------------------- collate


def test_collate_eval_batch():
    rng = np.random.default_rng(9)
    t = InteractiveEvalTransform(target_size=32)
    samples = []
    for k, (h, w) in enumerate([(20, 45), (40, 12), (32, 32)]):
        image = _rng_image(rng, h, w)
        mask = rng.random((h, w)) < 0.3
        samples.append(t(_sample(image, mask, np.zeros((h, w), bool), sid=f"id{k}")))
    batch = collate_interactive(samples)
    assert batch["image"].shape == (3, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (3, 32, 32) and batch["mask"].dtype == torch.bool and batch["ignore"].dtype == torch.bool
    assert batch["valid_size"].tolist() == [[14, 32], [32, 10], [32, 32]]
    assert batch["original_size"].tolist() == [[20, 45], [40, 12], [32, 32]]
    assert batch["sample_id"] == ["id0", "id1", "id2"]
    for k, s in enumerate(samples):
        assert torch.equal(batch["image"][k], s["image"]) and torch.equal(batch["mask"][k], s["mask"])
        assert torch.equal(batch["original_mask"][k], s["original_mask"]) and batch["original_mask"][k].shape == s["original_size"]
    # Raw samples of different sizes: padded, valid_size = own size, no original_* lists.
    raw = [_sample(_rng_image(rng, h, w), rng.random((h, w)) < 0.5, np.zeros((h, w), bool)) for h, w in [(5, 9), (7, 4)]]
    batch = collate_interactive(raw)
    assert batch["image"].shape == (2, 3, 7, 9) and "original_mask" not in batch
    assert batch["valid_size"].tolist() == [[5, 9], [7, 4]]
    assert torch.equal(batch["image"][1, :, :7, :4], raw[1]["image"].float()) and not batch["image"][1, :, :, 4:].any()
    assert not batch["mask"][0, 5:].any()
    # An empty list (the padding batch of a DDP rank without samples) is an empty batch.
    empty = collate_interactive([])
    assert empty["image"].shape == (0, 3, 0, 0) and empty["mask"].shape == (0, 0, 0) and empty["mask"].dtype == torch.bool
    assert empty["sample_id"] == [] and empty["index"].shape == (0,) and empty["valid_size"].shape == (0, 2)
    with pytest.raises(ValueError, match="mask must be bool"):
        collate_interactive([{**raw[0], "mask": raw[0]["mask"].float()}])


def test_end_to_end_loader(tmp_path):
    root = make_synthetic_instances(cache_dir=tmp_path, **SMALL)
    ds = SyntheticInstanceDataset(root=root, split="val", transform=InteractiveTrainTransform(crop_size=32))
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate_interactive)
    batch = next(iter(loader))
    assert batch["image"].shape == (3, 3, 32, 32) and batch["mask"].flatten(1).any(dim=1).all()


# ---------------------------------------------------------------- strict decoding, empty sets, RITM layouts


@pytest.fixture
def grabcut_copy(tmp_path, shared_data):
    """A copy of three GrabCut images and their masks, to corrupt."""
    root = tmp_path / "GrabCut"
    for sub in ("data_GT", "boundary_GT"):
        (root / sub).mkdir(parents=True)
    src = shared_data / "GrabCut"
    stems = sorted(p.stem for p in (src / "boundary_GT").iterdir())[:3]
    for stem in stems:
        image = next((src / "data_GT").glob(f"{stem}.*"))
        shutil.copy(image, root / "data_GT" / image.name)
        shutil.copy(src / "boundary_GT" / f"{stem}.bmp", root / "boundary_GT" / f"{stem}.bmp")
    return root, stems


def _gray(path):
    return np.array(Image.open(path).convert("L"))


def test_grabcut_mask_saved_as_0_1_is_an_error_naming_file_and_values(grabcut_copy):
    root, stems = grabcut_copy
    mask_path = root / "boundary_GT" / f"{stems[1]}.bmp"
    Image.fromarray((_gray(mask_path) == 255).astype(np.uint8)).save(mask_path)  # object stored as 1
    ds = BenchmarkDataset(root=root, layout="grabcut")
    ds[0]
    with pytest.raises(EmptyMaskError, match=rf"{stems[1]}\.bmp has no object pixel.*values found: \[0, 1\]"):
        ds[1]


def test_unknown_mask_values_are_an_error(tmp_path):
    rng = np.random.default_rng(4)
    obj = _blob(20, 20, 10, 10, 5)
    _write_folder(tmp_path / "fc", "img", "gt", [("x", ".jpg", "x#001.png", _rng_image(rng, 20, 20), lambda p: _palette_png(p, obj * 1 + ~obj * 7))])
    with pytest.raises(ValueError, match=r"x#001\.png: 3\d\d pixels hold values .*values found: \[1, 7\]"):
        BenchmarkDataset(root=tmp_path / "fc", layout="focuscut")[0]


@pytest.mark.parametrize("fill", [0, 128], ids=["all-background", "all-ignore"])
def test_empty_object_masks_error_or_are_skipped_and_counted(grabcut_copy, fill):
    root, stems = grabcut_copy
    mask_path = root / "boundary_GT" / f"{stems[0]}.bmp"
    Image.fromarray(np.full_like(_gray(mask_path), fill)).save(mask_path)
    with pytest.raises(EmptyMaskError, match=rf"{stems[0]}\.bmp"):
        BenchmarkDataset(root=root, layout="grabcut")[0]
    with pytest.warns(UserWarning, match=r"skipped 1 of 3 masks"):
        ds = BenchmarkDataset(root=root, layout="grabcut", on_empty="skip")
    assert [r[0] for r in ds.records] == stems[1:]
    assert [p.name for p, _ in ds.skipped] == [f"{stems[0]}.bmp"]
    assert [s["sample_id"] for s in ds] == stems[1:]


def test_empty_benchmark_folder_is_an_error_naming_it(tmp_path):
    (tmp_path / "empty" / "data_GT").mkdir(parents=True)
    (tmp_path / "empty" / "boundary_GT").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no images .* in .*empty/data_GT"):
        BenchmarkDataset(root=tmp_path / "empty", layout="grabcut")


def test_coco_instances_without_objects_is_an_error_naming_the_file(shared_data):
    root = shared_data / "coco_tiny"
    with pytest.raises(ValueError, match=r"instances_val2017.json has no non-crowd object with area >= 1000000000000.0"):
        COCOInstanceDataset(image_dir=root / "val2017", annotation_file=root / "annotations" / "instances_val2017.json", min_area=1e12)


def _ritm_grabcut_rule(bgr_first_channel):
    """RITM's GrabCut/Berkeley rule written out per pixel: == 128 ignore, > 128 object, else background."""
    h, w = bgr_first_channel.shape
    mask, ignore = np.zeros((h, w), bool), np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            v = int(bgr_first_channel[y, x])
            ignore[y, x] = v == 128
            mask[y, x] = v > 128
    return mask, ignore


def test_berkeley_layout_and_threshold_follow_ritm(tmp_path):
    rng = np.random.default_rng(5)
    h, w = 12, 16
    gray = rng.choice(np.array([0, 30, 127, 128, 129, 200, 254, 255], np.uint8), size=(h, w))
    gray[0, 0] = 255
    rgb = np.stack([rng.integers(0, 256, (h, w)), rng.integers(0, 256, (h, w)), gray], axis=-1).astype(np.uint8)  # blue = gray
    image = _rng_image(rng, h, w)
    items = [
        ("g", ".jpg", "g.png", image, lambda p: Image.fromarray(gray).save(p)),
        ("c", ".jpg", "c.png", image, lambda p: Image.fromarray(rgb).save(p)),
    ]
    _write_folder(tmp_path / "Berkeley", "images", "masks", items)
    ds = BenchmarkDataset(root=tmp_path / "Berkeley", layout="berkeley")
    assert "berkeley.py" in ds.layout.reference
    expected_mask, expected_ignore = _ritm_grabcut_rule(gray)  # cv2's BGR channel 0 is the blue channel
    for s in ds:
        np.testing.assert_array_equal(s["mask"].numpy(), expected_mask)
        np.testing.assert_array_equal(s["ignore"].numpy(), expected_ignore)
    assert (expected_mask & (gray != 255)).any()  # values in (128, 255) are object, not only 255
    with pytest.raises(FileNotFoundError, match="data_GT"):  # not GrabCut's folders
        BenchmarkDataset(root=tmp_path / "Berkeley", layout="grabcut")


def test_every_layout_names_its_reference_loader():
    from segblocks.data.interactive import BENCHMARK_LAYOUTS

    for name, layout in BENCHMARK_LAYOUTS.items():
        assert "/" in layout.reference and "datasets/" in layout.reference, name
