"""The classical click baselines (random walker, GrabCut) behind the InteractiveModel protocol."""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("skimage", reason="the classical extra (scikit-image) is not installed")
pytest.importorskip("cv2", reason="the classical extra (opencv-python-headless) is not installed")

from segblocks.data.interactive import InteractiveEvalTransform, collate_interactive, make_sample  # noqa: E402
from segblocks.interactive import InteractiveModel  # noqa: E402
from segblocks.interactive.clicker import Clicks  # noqa: E402
from segblocks.interactive.evaluation import evaluate_clicks  # noqa: E402
from segblocks.interactive.protocol import ClickPrompts  # noqa: E402
from segblocks.models import create_model, list_models  # noqa: E402
from segblocks.models.classical import (  # noqa: E402
    ClassicalState,
    GrabCutClickModel,
    RandomWalkerClickModel,
    click_seeds,
)

NAMES = ["random_walker_clicks", "grabcut_clicks"]


def _object_sample(height: int = 72, width: int = 96, seed: int = 0) -> dict:
    """A noisy grey background with one obvious red ellipse (the object) and a blue distractor."""
    rng = np.random.default_rng(seed)
    image = 110 + rng.normal(0, 6, (height, width, 3))  # H x W x 3
    yy, xx = np.mgrid[0:height, 0:width]
    obj = ((yy - 0.45 * height) / (0.3 * height)) ** 2 + ((xx - 0.4 * width) / (0.25 * width)) ** 2 <= 1
    other = ((yy - 0.7 * height) ** 2 + (xx - 0.82 * width) ** 2) <= (0.1 * height) ** 2
    image[obj] = (200, 40, 40) + rng.normal(0, 6, (int(obj.sum()), 3))
    image[other] = (40, 60, 190)
    image = np.clip(image, 0, 255).round().astype(np.uint8)
    return make_sample(image=image, mask=obj, ignore=None, sample_id="synthetic", transform=InteractiveEvalTransform(target_size=128))


@pytest.mark.parametrize("name", NAMES)
def test_registered_and_protocol(name):
    assert name in list_models()
    model = create_model(name)
    assert isinstance(model, InteractiveModel) and not list(model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_reaches_high_iou_on_an_obvious_object_after_a_few_clicks(name):
    batch = collate_interactive([_object_sample()])
    model = create_model(name, max_side=None).eval()
    curves = evaluate_clicks(model, batch, max_clicks=3, generator=np.random.default_rng(0))
    assert curves.ious.shape == (1, 3)
    assert float(curves.ious[0].max()) > 0.9, curves.ious


def test_interactive_segmentation_resolves_the_registry_names():
    from segblocks.lightning.interactive_module import InteractiveSegmentation

    module = InteractiveSegmentation(model="grabcut_clicks", test_clicks=2)
    assert isinstance(module.model, GrabCutClickModel)
    batch = collate_interactive([_object_sample()])
    curves = evaluate_clicks(module.model, batch, max_clicks=2, generator=np.random.default_rng(0))
    assert curves.ious.shape == (1, 2)


def _naive_seeds(clicks, frame, input_valid, input_hw, grid_hw, radius):
    """Loops in float64: grid pixel (i, j) takes the label of the last click whose disk covers it."""
    (H0, W0), (vh, vw), (H, W), (h, w) = frame, input_valid, input_hw, grid_hw
    out = np.full((h, w), -1)
    for y, x, label in clicks:
        gy = min(max(math.floor((y + 0.5) * vh / H0 * h / H), 0), h - 1)
        gx = min(max(math.floor((x + 0.5) * vw / W0 * w / W), 0), w - 1)
        for i in range(h):
            for j in range(w):
                if (i - gy) ** 2 + (j - gx) ** 2 <= radius**2:
                    out[i, j] = label
    return out


@pytest.mark.parametrize("radius", [0.0, 2.5, 4.0])
def test_click_seeds_match_a_naive_drawing(radius):
    clicks = [(3, 5, 1), (40, 60, 0), (4, 7, 0), (59, 79, 1), (20, 30, 1)]  # overlapping disks: order matters
    frame, valid, input_hw, grid_hw = (60, 80), (48, 64), (64, 64), (32, 32)
    state = ClassicalState(images=[np.zeros((24, 32, 3), np.uint8)], grid_size=grid_hw, input_size=input_hw,
                           device=torch.device("cpu"))
    prompts = ClickPrompts(clicks=Clicks.from_lists([clicks]), frame_size=torch.tensor([frame]),
                           input_size=torch.tensor([valid]))
    got = click_seeds(prompts, state, radius)
    assert got.shape == (1, *grid_hw) and got.dtype == np.int8
    np.testing.assert_array_equal(got[0], _naive_seeds(clicks, frame, valid, input_hw, grid_hw, radius))


def test_grabcut_initial_trimap_follows_the_click_rule():
    import cv2

    model = GrabCutClickModel(box_margin=0.1, seed_radius=1)
    h, w = 40, 50
    pos, neg = np.zeros((h, w), bool), np.zeros((h, w), bool)
    pos[10, 12] = pos[20, 30] = True
    neg[35, 45] = True
    first = model.initial_mask(pos, neg, None)
    margin = round(0.1 * 50)
    for i in range(h):  # naive: the positive clicks' box grown by the margin is probable foreground
        for j in range(w):
            if pos[i, j]:
                want = cv2.GC_FGD
            elif neg[i, j]:
                want = cv2.GC_BGD
            elif 10 - margin <= i <= 20 + margin and 12 - margin <= j <= 30 + margin:
                want = cv2.GC_PR_FGD
            else:
                want = cv2.GC_PR_BGD
            assert first[i, j] == want, (i, j)
    previous = np.zeros((h, w), bool)
    previous[5:15, 5:25] = True
    later = model.initial_mask(pos, neg, previous)
    expected = np.where(previous, cv2.GC_PR_FGD, cv2.GC_PR_BGD)
    expected[pos], expected[neg] = cv2.GC_FGD, cv2.GC_BGD
    np.testing.assert_array_equal(later, expected)


@pytest.mark.parametrize("name", NAMES)
def test_no_positive_click_selects_nothing_and_padding_is_background(name):
    model = create_model(name, max_side=None)
    images = torch.full((1, 3, 32, 32), 100.0)
    state = model.encode(images, torch.tensor([[20, 32]]))
    frame = torch.tensor([[20, 32]])
    empty = ClickPrompts(clicks=Clicks.from_lists([[]]), frame_size=frame, input_size=torch.tensor([[20, 32]]))
    assert bool((model.decode(state, empty, None) < 0).all())
    negative = ClickPrompts(clicks=Clicks.from_lists([[(5, 5, 0)]]), frame_size=frame, input_size=torch.tensor([[20, 32]]))
    assert bool((model.decode(state, negative, None) < 0).all())
    positive = ClickPrompts(clicks=Clicks.from_lists([[(10, 16, 1)]]), frame_size=frame, input_size=torch.tensor([[20, 32]]))
    out = model.decode(state, positive, None)
    assert out.shape == (1, 1, 32, 32) and float(out[0, 0, 10, 16]) > 0
    assert bool((out[0, 0, 20:] < 0).all())  # the padding rows


def test_working_grid_keeps_the_input_aspect():
    model = create_model("grabcut_clicks", max_side=40)
    state = model.encode(torch.zeros(2, 3, 100, 80), torch.tensor([[100, 50], [30, 80]]))
    assert state.grid_size == (40, 32)
    assert [im.shape for im in state.images] == [(40, 20, 3), (12, 32, 3)]


# ---------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs(name):
    model = create_model(name)
    with pytest.raises(ValueError, match="images"):
        model.encode(torch.zeros(3, 32, 32), torch.tensor([[32, 32]]))  # shape
    with pytest.raises(TypeError, match="images"):
        model.encode(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.tensor([[32, 32]]))  # dtype
    with pytest.raises(TypeError, match="valid_size"):
        model.encode(torch.zeros(1, 3, 32, 32), torch.tensor([[32.0, 32.0]]))  # non-integer
    with pytest.raises(ValueError, match="valid_size"):
        model.encode(torch.zeros(1, 3, 32, 32), torch.tensor([[0, 32]]))
    state = model.encode(torch.zeros(1, 3, 32, 32), torch.tensor([[32, 32]]))
    two = ClickPrompts(clicks=Clicks.from_lists([[(1, 1, 1)], [(2, 2, 1)]]), frame_size=torch.tensor([[32, 32]] * 2),
                       input_size=torch.tensor([[32, 32]] * 2))
    with pytest.raises(ValueError, match="2 samples"):
        model.decode(state, two, None)
    outside = ClickPrompts(clicks=Clicks.from_lists([[(40, 1, 1)]]), frame_size=torch.tensor([[32, 32]]),
                           input_size=torch.tensor([[32, 32]]))
    with pytest.raises(ValueError, match="outside"):
        model.decode(state, outside, None)
    ok = ClickPrompts(clicks=Clicks.from_lists([[(4, 4, 1)]]), frame_size=torch.tensor([[32, 32]]), input_size=torch.tensor([[32, 32]]))
    with pytest.raises(ValueError, match="previous"):
        model.decode(state, ok, torch.zeros(1, 32, 32))
    with pytest.raises(TypeError, match="state"):
        model.decode({"not": "a state"}, ok, None)
    empty = model.encode(torch.zeros(0, 3, 32, 32), torch.zeros(0, 2, dtype=torch.int64))  # empty batch
    out = model.decode(empty, ClickPrompts(clicks=Clicks.empty(0), frame_size=torch.zeros(0, 2, dtype=torch.int64),
                                           input_size=torch.zeros(0, 2, dtype=torch.int64)), None)
    assert out.shape[0] == 0


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="mode"):
        RandomWalkerClickModel(mode="fast")
    with pytest.raises(ValueError, match="seed_radius"):
        GrabCutClickModel(seed_radius=-1)
    with pytest.raises(ValueError, match="max_side"):
        GrabCutClickModel(max_side=4)
    with pytest.raises(TypeError, match="iterations"):
        GrabCutClickModel(iterations=2.5)
    with pytest.raises(ValueError, match="box_margin"):
        GrabCutClickModel(box_margin=-0.1)


@pytest.mark.parametrize(("name", "module"), [("random_walker_clicks", "skimage.segmentation"), ("grabcut_clicks", "cv2")])
def test_missing_extra_names_it(monkeypatch, name, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ImportError, match=r"segblocks\[classical\]"):
        create_model(name)
