"""Panoptic data: synthetic COCO-format generation, reader, transforms, collate, datamodule.

References are written here independently: PNG ids are decoded with explicit per-channel
arithmetic on PIL arrays, areas/bboxes recomputed from dense masks, flips done with numpy,
resizes with torch's interpolate and explicit nearest-index loops.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from segblocks.data import (
    COCOPanopticDataset,
    PanopticEvalTransform,
    PanopticMeta,
    PanopticTrainTransform,
    collate_panoptic,
    id_to_rgb,
    make_synthetic_panoptic,
    rgb_to_id,
    synthetic_panoptic_meta,
)
from segblocks.data import synthetic_panoptic
from segblocks.data._atomic import build_directory_atomically
from segblocks.lightning.panoptic_datamodule import PanopticDataModule

TINY = {"num_train": 6, "num_val": 3, "image_size": 64, "seed": 0}


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _decode_png(path: Path) -> np.ndarray:
    """Independent decode: id = R + 256 G + 256^2 B, from the raw RGB channels."""
    rgb = np.asarray(Image.open(path)).astype(np.float64)
    return (rgb[..., 0] + 256.0 * rgb[..., 1] + 65536.0 * rgb[..., 2]).astype(np.int64)


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()) - int(xs.min()) + 1, int(ys.max()) - int(ys.min()) + 1]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    return make_synthetic_panoptic(cache_dir=tmp_path_factory.mktemp("cache"), **TINY)


def _split(root: Path, split: str, **kw) -> COCOPanopticDataset:
    return COCOPanopticDataset(
        image_dir=root / split, panoptic_dir=root / f"panoptic_{split}", annotation_file=root / "annotations" / f"panoptic_{split}.json", **kw
    )


# ----------------------------------------------------------------------------- synthetic data


def test_synthetic_is_deterministic_and_parameter_hashed(tmp_path, tiny_root):
    again = make_synthetic_panoptic(cache_dir=tmp_path / "a", **TINY)
    assert again.name == tiny_root.name and again != tiny_root
    assert _tree_digest(again) == _tree_digest(tiny_root)
    other = make_synthetic_panoptic(cache_dir=tmp_path / "a", **{**TINY, "seed": 1})
    assert other.name != again.name
    assert _tree_digest(other) != _tree_digest(again)
    # Reuse: a finished folder is returned without rewriting.
    stamp = (again / "generation.json").stat().st_mtime_ns
    assert make_synthetic_panoptic(cache_dir=tmp_path / "a", **TINY) == again
    assert (again / "generation.json").stat().st_mtime_ns == stamp


def test_synthetic_layout_categories_and_pngs_match_json(tiny_root):
    cats = {c["id"]: c for c in synthetic_panoptic.SYNTHETIC_CATEGORIES}
    assert sum(c["isthing"] for c in cats.values()) >= 3 and sum(not c["isthing"] for c in cats.values()) >= 2
    assert sorted(cats) != list(range(1, len(cats) + 1))  # non-contiguous ids
    seen = set()
    for split, count in (("train", TINY["num_train"]), ("val", TINY["num_val"])):
        data = json.loads((tiny_root / "annotations" / f"panoptic_{split}.json").read_text())
        assert {c["id"] for c in data["categories"]} == set(cats)
        assert len(data["images"]) == len(data["annotations"]) == count
        sizes = {img["id"]: (img["height"], img["width"]) for img in data["images"]}
        for img in data["images"]:
            assert np.asarray(Image.open(tiny_root / split / img["file_name"])).shape == (64, 64, 3)
        for ann in data["annotations"]:
            ids = _decode_png(tiny_root / f"panoptic_{split}" / ann["file_name"])
            assert ids.shape == sizes[ann["image_id"]]
            infos = ann["segments_info"]
            assert {s["id"] for s in infos} == set(np.unique(ids).tolist()) - {0}
            assert len({s["id"] for s in infos}) == len(infos)
            for s in infos:
                mask = ids == s["id"]
                assert s["area"] == int(mask.sum()) and s["bbox"] == _bbox(mask)
                assert s["category_id"] in cats and s["iscrowd"] == 0
                seen.add(s["category_id"])
    assert sum(cats[c]["isthing"] for c in seen) >= 3 and sum(not cats[c]["isthing"] for c in seen) >= 2


def test_synthetic_dataset_samples_match_independent_decode(tiny_root):
    ds = _split(tiny_root, "train")
    meta = synthetic_panoptic_meta()
    assert ds.meta == meta
    data = json.loads((tiny_root / "annotations" / "panoptic_train.json").read_text())
    for i, ann in enumerate(data["annotations"]):
        sample = ds[i]
        ids = _decode_png(tiny_root / "panoptic_train" / ann["file_name"])
        image = np.asarray(Image.open(tiny_root / "train" / ann["file_name"]))
        assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, 64, 64)
        assert torch.equal(sample["image"], torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1))
        assert sample["masks"].dtype == torch.bool and sample["labels"].dtype == torch.long
        assert sample["image_id"] == ann["image_id"] and sample["orig_size"] == (64, 64)
        assert int(sample["masks"].sum(0).max()) <= 1  # non-overlapping
        for s, label, mask in zip(ann["segments_info"], sample["labels"].tolist(), sample["masks"]):
            assert meta.contiguous_to_coco[label] == s["category_id"]
            assert np.array_equal(mask.numpy(), ids == s["id"])


def test_interrupted_generation_is_not_trusted(tmp_path, monkeypatch, tiny_root):
    real, calls = synthetic_panoptic._render_sample, []

    def failing(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real(*args)

    monkeypatch.setattr(synthetic_panoptic, "_render_sample", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        make_synthetic_panoptic(cache_dir=tmp_path, **TINY)
    assert list(tmp_path.iterdir()) == []  # neither a final folder nor a temp folder is left
    # A hard kill leaves a hidden temp folder; it must be ignored.
    (tmp_path / f".{tiny_root.name}.tmp-killed").mkdir()
    monkeypatch.setattr(synthetic_panoptic, "_render_sample", real)
    root = make_synthetic_panoptic(cache_dir=tmp_path, **TINY)
    assert _tree_digest(root) == _tree_digest(tiny_root)


def test_atomic_build_keeps_the_copy_that_finished_first(tmp_path):
    final = tmp_path / "d"

    def racing_build(tmp: Path) -> None:
        (tmp / "mine.txt").write_text("mine")
        final.mkdir()  # another process renames its finished copy in place meanwhile
        (final / "theirs.txt").write_text("theirs")

    assert build_directory_atomically(final, racing_build) == final
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    assert sorted(p.name for p in final.iterdir()) == ["theirs.txt"]
    assert build_directory_atomically(final, lambda tmp: pytest.fail("must not rebuild")) == final


def test_synthetic_rejects_bad_parameters(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        make_synthetic_panoptic(cache_dir=tmp_path, image_size=8)
    with pytest.raises(ValueError, match="num_train"):
        make_synthetic_panoptic(cache_dir=tmp_path, num_train=-1)


def test_default_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SEGBLOCKS_CACHE", str(tmp_path))
    assert synthetic_panoptic.default_cache_dir() == tmp_path
    monkeypatch.delenv("SEGBLOCKS_CACHE")
    assert synthetic_panoptic.default_cache_dir() == Path.home() / ".cache" / "segblocks"


# ----------------------------------------------------------------------------- meta and id codec


def test_meta_mapping_is_order_independent_and_validated():
    cats = [
        {"id": 101, "name": "sky", "isthing": 0, "color": [1, 2, 3]},
        {"id": 3, "name": "c", "isthing": 1, "color": [4, 5, 6]},
        {"id": 1, "name": "a", "isthing": 1},
    ]
    meta = PanopticMeta.from_coco_categories(cats)
    assert meta == PanopticMeta.from_coco_categories(cats[::-1])
    assert meta.num_classes == 3 and meta.contiguous_to_coco == (1, 3, 101)
    assert meta.coco_to_contiguous == {1: 0, 3: 1, 101: 2}
    assert meta.thing_classes == (0, 1) and meta.stuff_classes == (2,)
    assert meta.class_names == ("a", "c", "sky") and meta.contiguous_id(101) == 2
    assert PanopticMeta.from_coco_categories(meta.to_coco_categories()) == meta
    with pytest.raises(ValueError, match="unknown category id 7"):
        meta.contiguous_id(7)
    with pytest.raises(ValueError, match="unique"):
        PanopticMeta.from_coco_categories(cats + [cats[0]])
    with pytest.raises(ValueError, match="isthing"):
        PanopticMeta.from_coco_categories([{"id": 1, "name": "a"}])
    with pytest.raises(ValueError, match="positive"):
        PanopticMeta.from_coco_categories([{"id": 0, "name": "void", "isthing": 0}])


def test_id_rgb_codec_roundtrip():
    ids = np.array([[0, 1, 255, 256], [65535, 65536, 2**24 - 1, 123456]])
    rgb = id_to_rgb(ids)
    assert rgb.dtype == np.uint8
    assert rgb[1, 3].tolist() == [123456 % 256, (123456 // 256) % 256, 123456 // 65536]
    assert np.array_equal(rgb_to_id(rgb), ids)
    with pytest.raises(ValueError, match="2\\^24"):
        id_to_rgb(np.array([2**24]))


# ----------------------------------------------------------------------------- real COCO sample


def test_coco_panoptic_sample(shared_data):
    base = shared_data / "coco_panoptic_sample"
    ds = COCOPanopticDataset(
        image_dir=base / "input_images",
        panoptic_dir=base / "panoptic_examples",
        annotation_file=base / "panoptic_examples.json",
        categories_file=base / "panoptic_coco_categories.json",
    )
    meta = ds.meta
    assert meta.num_classes == 133 and len(meta.thing_classes) == 80 and len(meta.stuff_classes) == 53
    assert meta.contiguous_to_coco[0] == 1 and meta.contiguous_to_coco[-1] == 200
    assert COCOPanopticDataset(
        image_dir=base / "input_images", panoptic_dir=base / "panoptic_examples", annotation_file=base / "panoptic_examples.json"
    ).meta == meta  # categories embedded in the annotation JSON
    data = json.loads((base / "panoptic_examples.json").read_text())
    sizes = {img["id"]: (img["height"], img["width"]) for img in data["images"]}
    crowd_seen = 0
    for i, ann in enumerate(data["annotations"]):
        sample = ds[i]
        ids = _decode_png(base / "panoptic_examples" / ann["file_name"])
        h, w = sizes[ann["image_id"]]
        assert sample["image"].shape == (3, h, w) and sample["orig_size"] == (h, w) and sample["image_id"] == ann["image_id"]
        assert 0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 255
        targets = [s for s in ann["segments_info"] if not s["iscrowd"]]
        assert len(sample["labels"]) == len(targets)
        for s, label, mask in zip(targets, sample["labels"].tolist(), sample["masks"]):
            assert int(mask.sum()) == s["area"] == int((ids == s["id"]).sum())
            assert meta.contiguous_to_coco[label] == s["category_id"]
            assert meta.categories[label].name == next(c["name"] for c in data["categories"] if c["id"] == s["category_id"])
        covered = sample["masks"].any(0).numpy()
        for s in ann["segments_info"]:
            if s["iscrowd"]:
                crowd_seen += 1
                assert not covered[ids == s["id"]].any()  # crowd pixels are void
    assert crowd_seen > 0


# ----------------------------------------------------------------------------- file errors


@pytest.fixture
def tiny_copy(tmp_path, tiny_root) -> Path:
    return Path(shutil.copytree(tiny_root, tmp_path / "copy"))


def test_missing_files_are_named(tiny_copy):
    ds = _split(tiny_copy, "val")
    (tiny_copy / "val" / "000000000001.png").unlink()
    with pytest.raises(FileNotFoundError, match="000000000001.png"):
        ds[0]
    (tiny_copy / "panoptic_val" / "000000000002.png").unlink()
    with pytest.raises(FileNotFoundError, match="panoptic_val.000000000002.png"):
        ds[1]
    with pytest.raises(FileNotFoundError, match="nope.json"):
        COCOPanopticDataset(image_dir=tiny_copy, panoptic_dir=tiny_copy, annotation_file=tiny_copy / "nope.json")
    with pytest.raises(FileNotFoundError, match="cats.json"):
        _split(tiny_copy, "val", categories_file=tiny_copy / "cats.json")


def test_corrupt_files_are_named(tiny_copy):
    ds = _split(tiny_copy, "val")
    png = tiny_copy / "panoptic_val" / "000000000001.png"
    png.write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="000000000001.png"):
        ds[0]
    png = tiny_copy / "panoptic_val" / "000000000002.png"
    png.write_bytes(png.read_bytes()[:120])  # truncated
    with pytest.raises(ValueError, match="000000000002.png"):
        ds[1]
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tiny_copy / "panoptic_val" / "000000000003.png")
    with pytest.raises(ValueError, match="must be RGB"):
        ds[2]
    ann = tiny_copy / "annotations" / "panoptic_val.json"
    text = ann.read_text()
    ann.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match="panoptic_val.json"):
        _split(tiny_copy, "val")
    data = json.loads(text)
    data["annotations"][0]["segments_info"][0]["category_id"] = 77
    ann.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unknown category ids \\[77\\]"):
        _split(tiny_copy, "val")


def test_size_mismatch_between_image_and_png_is_an_error(tiny_copy):
    Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(tiny_copy / "val" / "000000000001.png")
    with pytest.raises(ValueError, match="000000000001.png"):
        _split(tiny_copy, "val")[0]


# ----------------------------------------------------------------------------- transforms


def _scene(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random blocky segment map (0..5) and an image whose colour encodes the segment."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 6, (h // 4 + 1, w // 4 + 1))
    segments = np.kron(coarse, np.ones((4, 4), np.int64))[:h, :w].astype(np.int32)
    palette = np.concatenate([[[0, 0, 0]], rng.integers(1, 256, (5, 3))]).astype(np.uint8)
    return palette[segments], segments, palette


def test_train_flip_matches_numpy():
    image, segments, _ = _scene(40, 40, 0)
    flip = PanopticTrainTransform(crop_size=40, scale_range=(1.0, 1.0), hflip_prob=1.0)
    out_img, out_seg = flip(image, segments)
    assert np.array_equal(out_img, image[:, ::-1]) and np.array_equal(out_seg, segments[:, ::-1])
    keep_img, keep_seg = PanopticTrainTransform(crop_size=40, scale_range=(1.0, 1.0), hflip_prob=0.0)(image, segments)
    assert np.array_equal(keep_img, image) and np.array_equal(keep_seg, segments)


@pytest.mark.parametrize("shape", [(37, 53), (64, 30)])
def test_train_transform_keeps_image_and_segments_aligned(shape):
    image, segments, palette = _scene(*shape, 1)
    tf = PanopticTrainTransform(crop_size=32, scale_range=(0.5, 2.0), image_interpolation="nearest")
    flips = set()
    for _ in range(12):
        out_img, out_seg = tf(image, segments)
        assert out_img.shape == (32, 32, 3) and out_seg.shape == (32, 32) and out_img.dtype == np.uint8
        assert set(np.unique(out_seg).tolist()) <= set(np.unique(segments).tolist()) | {0}
        assert np.array_equal(out_img, palette[out_seg])  # every pixel still carries its segment's colour
        flips.add(bool(np.array_equal(out_img, out_img[:, ::-1])))
    torch.manual_seed(5)
    a = tf(image, segments)
    torch.manual_seed(5)
    b = tf(image, segments)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # randomness follows torch's seed


def test_eval_transform_sizes_and_pixel_alignment():
    tf = PanopticEvalTransform(short_side=800, max_size=1333)
    assert tf.output_size(480, 640) == (800, 1067)
    assert tf.output_size(100, 1000) == (133, 1333)
    assert PanopticEvalTransform(max_size=50).output_size(20, 30) == (20, 30)  # never enlarges
    assert PanopticEvalTransform(max_size=50).output_size(40, 100) == (20, 50)
    rng = np.random.default_rng(2)
    segments = rng.integers(0, 50, (10, 14)).astype(np.int32)  # per-pixel ids: any half-pixel shift shows
    image = rng.integers(0, 256, (10, 14, 3)).astype(np.uint8)
    up = PanopticEvalTransform(short_side=26)  # sizes chosen so that no pixel centre falls on a source edge
    out_img, out_seg = up(image, segments)
    assert out_seg.shape == (26, 36)
    # Independent nearest-exact: output pixel centre (i + 0.5) maps to source floor((i + 0.5) / scale).
    rows = [int((i + 0.5) * 10 / 26) for i in range(26)]
    cols = [int((j + 0.5) * 14 / 36) for j in range(36)]
    expected = np.array([[segments[r, c] for c in cols] for r in rows])
    assert np.array_equal(out_seg, expected)
    ref = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].double(), size=(26, 36), mode="bilinear", align_corners=False)
    assert np.abs(out_img.astype(np.float64) - ref[0].permute(1, 2, 0).numpy()).max() <= 1.0
    same_img, same_seg = PanopticEvalTransform()(image, segments)
    assert same_img is image and same_seg is segments


def test_transform_argument_errors():
    with pytest.raises(ValueError, match="crop_size"):
        PanopticTrainTransform(crop_size=0)
    with pytest.raises(ValueError, match="scale_range"):
        PanopticTrainTransform(crop_size=8, scale_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="image_interpolation"):
        PanopticEvalTransform(image_interpolation="bogus")
    with pytest.raises(ValueError, match="uint8"):
        PanopticEvalTransform()(np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.int32))
    with pytest.raises(ValueError, match="segments"):
        PanopticEvalTransform()(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), np.int32))


def test_dataset_drops_segments_that_vanish(tiny_root):
    def keep_left_half(image, segments):
        return image, np.where(np.arange(segments.shape[1]) < 20, segments, 0).astype(np.int32)

    plain, cut = _split(tiny_root, "train"), _split(tiny_root, "train", transform=keep_left_half)
    dropped = 0
    for i in range(len(plain)):
        full, half = plain[i], cut[i]
        expected = [(lab, m[:, :20]) for lab, m in zip(full["labels"].tolist(), full["masks"]) if m[:, :20].any()]
        dropped += len(full["labels"]) - len(expected)
        assert half["labels"].tolist() == [lab for lab, _ in expected]
        for (_, m), got in zip(expected, half["masks"]):
            assert torch.equal(got[:, :20], m) and not got[:, 20:].any()
    assert dropped > 0


# ----------------------------------------------------------------------------- collate


def test_collate_pads_images_and_masks():
    a = {"image": torch.rand(3, 50, 70) * 255, "labels": torch.tensor([2, 0]), "masks": torch.rand(2, 50, 70) > 0.5, "image_id": 7, "orig_size": (100, 140)}
    b = {"image": torch.rand(3, 64, 33) * 255, "labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 64, 33, dtype=torch.bool), "image_id": 9, "orig_size": (64, 33)}
    batch = collate_panoptic([a, b])
    assert batch["images"].shape == (2, 3, 64, 96) and batch["images"].dtype == torch.float32
    assert batch["image_sizes"].tolist() == [[50, 70], [64, 33]] and batch["image_sizes"].dtype == torch.long
    assert batch["orig_sizes"].tolist() == [[100, 140], [64, 33]] and batch["image_ids"] == [7, 9]
    for i, s in enumerate((a, b)):
        h, w = s["image"].shape[1:]
        ref = torch.zeros(3, 64, 96)
        ref[:, :h, :w] = s["image"]
        assert torch.equal(batch["images"][i], ref)
        masks = batch["targets"][i]["masks"]
        assert masks.shape == (len(s["labels"]), 64, 96) and masks.dtype == torch.bool
        assert torch.equal(masks[:, :h, :w], s["masks"]) and not masks[:, h:].any() and not masks[:, :, w:].any()
        assert torch.equal(batch["targets"][i]["labels"], s["labels"])
    assert collate_panoptic([a, b], size_divisibility=1)["images"].shape == (2, 3, 64, 70)
    empty = collate_panoptic([])  # the padding batch of a DDP rank without samples
    assert empty["images"].shape == (0, 3, 0, 0) and empty["targets"] == [] and empty["image_ids"] == []
    assert empty["image_sizes"].shape == (0, 2)
    with pytest.raises(ValueError, match="masks must be"):
        collate_panoptic([{**a, "masks": a["masks"][:1]}])


# ----------------------------------------------------------------------------- datamodule


def test_datamodule_synthetic(tmp_path):
    dm = PanopticDataModule(
        cache_dir=str(tmp_path), synthetic_num_train=6, synthetic_num_val=3, synthetic_image_size=64, crop_size=48, batch_size=4
    )
    # Usable before setup, without generating anything.
    assert dm.num_classes == 7 and dm.thing_classes == [0, 1, 2, 3] and dm.stuff_classes == [4, 5, 6]
    assert list(tmp_path.iterdir()) == []
    dm.prepare_data()
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert len(train) == 1 and train[0]["images"].shape == (4, 3, 64, 64)  # 48 padded to /32, last partial batch dropped
    assert train[0]["image_sizes"].tolist() == [[48, 48]] * 4
    val = list(dm.val_dataloader())
    assert [len(b["image_ids"]) for b in val] == [3] and val[0]["images"].shape == (3, 3, 64, 64)
    assert sorted(val[0]["image_ids"]) == [1, 2, 3]
    assert len(list(dm.test_dataloader())) == 1
    for t in train[0]["targets"] + val[0]["targets"]:
        assert t["masks"].shape[0] == t["labels"].shape[0] and t["masks"].flatten(1).any(1).all()
        assert int(t["labels"].max()) < dm.num_classes


def test_datamodule_real_layout(tmp_path, shared_data):
    base = shared_data / "coco_panoptic_sample"
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2017").symlink_to(base / "input_images")
    (tmp_path / "panoptic_val2017").symlink_to(base / "panoptic_examples")
    shutil.copy(base / "panoptic_examples.json", tmp_path / "annotations" / "panoptic_val2017.json")
    dm = PanopticDataModule(root=str(tmp_path), categories_file=str(base / "panoptic_coco_categories.json"), eval_size=200, batch_size=2)
    assert dm.num_classes == 133 and dm.thing_classes == list(range(80))
    assert PanopticDataModule(root=str(tmp_path)).num_classes == 133  # categories from val_json
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert batch["image_sizes"].tolist() == [[200, 300], [200, 356]]
    assert batch["images"].shape == (2, 3, 224, 384) and batch["orig_sizes"].tolist() == [[427, 640], [360, 640]]
    with pytest.raises(FileNotFoundError, match="panoptic_train2017.json"):
        dm.setup("fit")


def test_train_augmentation_varies_between_calls(tmp_path):
    dm = PanopticDataModule(cache_dir=str(tmp_path), synthetic_num_train=2, synthetic_num_val=1, synthetic_image_size=32, crop_size=32, batch_size=1)
    dm.setup("fit")
    draws = [dm.train_dataset[0]["image"] for _ in range(6)]
    assert any(not torch.equal(draws[0], x) for x in draws[1:])


# ----------------------------------------------------------------------------- PNG <-> JSON cross-check


@pytest.fixture
def sample_copy(tmp_path, shared_data) -> Path:
    return Path(shutil.copytree(shared_data / "coco_panoptic_sample", tmp_path / "sample"))


def _sample_dataset(root: Path) -> COCOPanopticDataset:
    return COCOPanopticDataset(
        image_dir=root / "input_images", panoptic_dir=root / "panoptic_examples", annotation_file=root / "panoptic_examples.json"
    )


def _rewrite(root: Path, edit) -> None:
    path = root / "panoptic_examples.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_segment_listed_but_absent_from_png_is_an_error(sample_copy):
    png_ids = set(np.unique(_decode_png(sample_copy / "panoptic_examples" / "000000142238.png")).tolist())
    ghost = max(png_ids) + 1  # an id the PNG does not hold
    _rewrite(sample_copy, lambda d: d["annotations"][0]["segments_info"].append({**d["annotations"][0]["segments_info"][0], "id": ghost}))
    ds = _sample_dataset(sample_copy)
    with pytest.raises(ValueError, match=rf"\[{ghost}\] are listed in .*panoptic_examples.json but absent from .*000000142238.png"):
        ds[0]
    ds[1]  # the other image is untouched


def test_png_segment_missing_from_segments_info_is_an_error(sample_copy):
    dropped = {}

    def drop_first(d):
        dropped["id"] = d["annotations"][1]["segments_info"].pop(0)["id"]

    _rewrite(sample_copy, drop_first)
    ds = _sample_dataset(sample_copy)
    assert dropped["id"] in np.unique(_decode_png(sample_copy / "panoptic_examples" / "000000439180.png"))
    with pytest.raises(ValueError, match=rf"000000439180.png holds segments \[{dropped['id']}\] that are missing from segments_info"):
        ds[1]


def test_duplicate_segment_ids_are_an_error(sample_copy):
    def duplicate(d):
        info = d["annotations"][0]["segments_info"]
        info[1] = {**info[1], "id": info[0]["id"]}

    _rewrite(sample_copy, duplicate)
    with pytest.raises(ValueError, match=r"panoptic_examples.json: image 142238 .* more than once"):
        _sample_dataset(sample_copy)


def test_annotation_file_without_annotations_is_an_error(sample_copy):
    _rewrite(sample_copy, lambda d: d.update(annotations=[]))
    with pytest.raises(ValueError, match=r"panoptic_examples.json has no annotations"):
        _sample_dataset(sample_copy)


# ----------------------------------------------------------------------------- cache housekeeping


def test_stale_temporary_folders_are_removed(tmp_path):
    import os
    import socket
    import subprocess
    import sys
    import time

    from segblocks.data._atomic import remove_stale_temporaries

    final = tmp_path / "cache-v1"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    host = "".join(c if c.isalnum() or c == "." else "_" for c in socket.gethostname())
    killed = tmp_path / f".cache-v1.tmp-{host}-{dead_pid}-abc123"  # a SIGKILLed build on this host
    live = tmp_path / f".cache-v1.tmp-{host}-{os.getpid()}-def456"  # a build in progress
    old_foreign = tmp_path / ".cache-v1.tmp-otherhost-1-ghi789"  # another host's, abandoned long ago
    young_foreign = tmp_path / ".cache-v1.tmp-otherhost-2-jkl012"
    legacy = tmp_path / ".cache-v1.tmp-mno345"  # a name without host and pid, old
    unrelated = tmp_path / ".other.tmp-zzz"
    for d in (killed, live, old_foreign, young_foreign, legacy, unrelated):
        d.mkdir()
        (d / "partial.bin").write_bytes(b"x")
    an_hour_ago = time.time() - 3600
    for d in (old_foreign, legacy, unrelated):
        os.utime(d, (an_hour_ago, an_hour_ago))
    assert sorted(remove_stale_temporaries(final, stale_after=600)) == sorted([killed, old_foreign, legacy])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (live, young_foreign, unrelated))
    # The next generation cleans up as well.
    live.rename(tmp_path / f".cache-v1.tmp-{host}-{dead_pid}-pqr678")
    build_directory_atomically(final, lambda tmp: (tmp / "done.txt").write_text("ok"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["cache-v1", young_foreign.name, unrelated.name])


def test_cache_folder_follows_the_umask(tmp_path):
    import os
    import stat

    previous = os.umask(0o022)
    try:
        final = build_directory_atomically(tmp_path / "shared", lambda tmp: (tmp / "f.txt").write_text("x"))
        assert stat.S_IMODE(final.stat().st_mode) == 0o755  # not mkdtemp's 0700
        os.umask(0o027)
        final = build_directory_atomically(tmp_path / "group", lambda tmp: None)
        assert stat.S_IMODE(final.stat().st_mode) == 0o750
    finally:
        os.umask(previous)
