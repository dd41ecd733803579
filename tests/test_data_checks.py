"""Up-front data validation (``segblocks.data.check_data``) and empty-split errors of the DataModules.

Real data from ``../shared/data`` is copied into ``tmp_path`` and corrupted there; each expected
problem is derived here from what was corrupted (file names, values written).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segblocks.data import DataCheckError, IndexedDataset, check_data, check_dataset
from segblocks.lightning._loaders import make_loader
from segblocks.lightning.distill_datamodule import DistillationDataModule
from segblocks.lightning.interactive_datamodule import InteractiveDataModule
from segblocks.lightning.panoptic_datamodule import PanopticDataModule

SYNTHETIC = dict(synthetic_num_train=3, synthetic_num_val=2, synthetic_min_side=48, synthetic_max_side=64)


@pytest.fixture
def grabcut_copy(tmp_path, shared_data) -> tuple[Path, list[str]]:
    root = tmp_path / "GrabCut"
    for sub in ("data_GT", "boundary_GT"):
        (root / sub).mkdir(parents=True)
    src = shared_data / "GrabCut"
    stems = sorted(p.stem for p in (src / "boundary_GT").iterdir())[:4]
    for stem in stems:
        image = next((src / "data_GT").glob(f"{stem}.*"))
        shutil.copy(image, root / "data_GT" / image.name)
        shutil.copy(src / "boundary_GT" / f"{stem}.bmp", root / "boundary_GT" / f"{stem}.bmp")
    return root, stems


def _interactive(root: Path, tmp_path: Path, **kw) -> InteractiveDataModule:
    return InteractiveDataModule(root=str(root), layout="grabcut", cache_dir=str(tmp_path / "cache"), **SYNTHETIC, **kw)


def test_check_data_passes_on_clean_data_and_reports_every_split(grabcut_copy, tmp_path):
    root, stems = grabcut_copy
    report = check_data(_interactive(root, tmp_path))
    assert report.ok
    by_split = {s.split: s for s in report.splits}
    assert set(by_split) == {"train", "val", "test"}
    assert by_split["val"].num_checked == by_split["val"].num_samples == len(stems)
    assert by_split["test"].same_as == "val"  # the same benchmark is read once
    assert "4/4 samples checked" in str(report)


def test_check_data_lists_every_problem_with_its_file(grabcut_copy, tmp_path):
    root, stems = grabcut_copy
    image = next((root / "data_GT").glob(f"{stems[0]}.*"))
    image.write_bytes(image.read_bytes()[:200])  # truncated
    mask01 = root / "boundary_GT" / f"{stems[1]}.bmp"
    Image.fromarray((np.array(Image.open(mask01)) == 255).astype(np.uint8)).save(mask01)  # 0/1 encoding
    empty = root / "boundary_GT" / f"{stems[2]}.bmp"
    Image.fromarray(np.full_like(np.array(Image.open(empty)), 128)).save(empty)  # all ignore
    with pytest.raises(DataCheckError) as info:
        check_data(_interactive(root, tmp_path))
    problems = info.value.report.all_problems
    assert len(problems) == 3, problems
    assert image.name in problems[0] and "corrupt image" in problems[0]
    assert mask01.name in problems[1] and "values found: [0, 1]" in problems[1]
    assert empty.name in problems[2] and "values found: [128]" in problems[2]
    assert all(p.startswith("[val]") for p in problems)
    assert str(len(problems)) in str(info.value) and image.name in str(info.value)
    # skipping empty masks on purpose: no longer a problem, but counted
    report = check_data(_interactive(root, tmp_path, skip_empty_masks=True), raise_on_problems=False)
    val = next(s for s in report.splits if s.split == "val")
    assert len(val.problems) == 1 and [Path(p).name for p, _ in val.skipped] == [mask01.name, empty.name]


@pytest.fixture
def panoptic_copy(tmp_path, shared_data) -> Path:
    return Path(shutil.copytree(shared_data / "coco_panoptic_sample", tmp_path / "sample"))


def _panoptic(root: Path) -> PanopticDataModule:
    split = dict(images="input_images", panoptic="panoptic_examples", json="panoptic_examples.json")
    return PanopticDataModule(
        root=str(root), categories_file="panoptic_coco_categories.json", batch_size=1,
        **{f"{s}_{k}": v for s in ("train", "val") for k, v in split.items()},
    )


def test_check_data_panoptic_cross_check_and_fast_mode(panoptic_copy):
    assert check_data(_panoptic(panoptic_copy)).ok
    ann = panoptic_copy / "panoptic_examples.json"
    data = json.loads(ann.read_text())
    removed = data["annotations"][0]["segments_info"].pop()["id"]
    ann.write_text(json.dumps(data))
    (panoptic_copy / "input_images" / "000000439180.jpg").unlink()
    with pytest.raises(DataCheckError) as info:
        check_data(_panoptic(panoptic_copy))
    text = str(info.value)
    assert f"000000142238.png holds segments [{removed}] that are missing from segments_info" in text
    assert "image not found" in text and "000000439180.jpg" in text
    # decode=False only looks for the files: the missing image, not the PNG/JSON mismatch
    report = check_data(_panoptic(panoptic_copy), decode=False, raise_on_problems=False)
    assert [p for p in report.all_problems if "000000439180.jpg" in p] and not [p for p in report.all_problems if "missing from" in p]


def test_check_dataset_of_distillation_images(tmp_path, shared_data):
    images = tmp_path / "imgs"
    images.mkdir()
    for p in sorted((shared_data / "coco_tiny" / "val2017").iterdir())[:2]:
        shutil.copy(p, images / p.name)
    dm = DistillationDataModule(image_dir=str(images), val_image_dir=str(images), image_size=64)
    assert check_data(dm).ok
    first = sorted(images.iterdir())[0]
    first.write_bytes(b"")
    report = check_dataset(dm.dataset("train"), split="train", decode=False)
    assert report.problems == [f"sample 0: ValueError: image {first} is empty (0 bytes)"]


# ----------------------------------------------------------------------------- empty splits


def test_zero_training_samples_is_an_error_naming_the_dataset():
    with pytest.raises(ValueError, match=r"MyModule: the training dataset list has no samples"):
        make_loader([], owner="MyModule", batch_size=2, train=True, num_workers=0, collate_fn=list)

    class Empty(IndexedDataset):
        annotation_file = "train.json"

    with pytest.raises(ValueError, match=r"the evaluation dataset Empty\(annotation_file=train.json\) has no samples"):
        make_loader(Empty([]), owner="M", batch_size=1, train=False, num_workers=0, collate_fn=list)


def test_interactive_training_json_without_objects_names_the_file(tmp_path, shared_data):
    ann = tmp_path / "instances_empty.json"
    src = json.loads((shared_data / "coco_tiny" / "annotations" / "instances_val2017.json").read_text())
    ann.write_text(json.dumps({**src, "annotations": []}))
    dm = InteractiveDataModule(
        train_annotation_file=str(ann), train_image_dir=str(shared_data / "coco_tiny" / "val2017"),
        cache_dir=str(tmp_path / "cache"), **SYNTHETIC,
    )
    with pytest.raises(ValueError, match=r"instances_empty.json has no non-crowd object"):
        dm.setup("fit")


def test_empty_benchmark_folder_fails_test_setup_naming_it(tmp_path):
    for sub in ("data_GT", "boundary_GT"):
        (tmp_path / "bench" / sub).mkdir(parents=True)
    dm = _interactive(tmp_path / "bench", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no images .* in .*bench/data_GT"):
        dm.setup("test")


def test_panoptic_validate_without_annotations_names_the_file(panoptic_copy):
    ann = panoptic_copy / "panoptic_examples.json"
    ann.write_text(json.dumps({**json.loads(ann.read_text()), "annotations": []}))
    with pytest.raises(ValueError, match=r"panoptic_examples.json has no annotations"):
        _panoptic(panoptic_copy).setup("validate")
