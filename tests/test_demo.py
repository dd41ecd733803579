"""``segblocks demo``: the engine (encode once per image, decode per click, bad inputs) and the page
end to end in a real headless Chromium (Debian's ``chromium`` driven by Playwright)."""
from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segblocks.demo.engine import DemoEngine, DemoError, ModelSpec, decode_image
from segblocks.demo.samples import SAMPLE_NAMES, sample_image

REPO = Path(__file__).resolve().parents[1]


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


class CountingDisks(torch.nn.Module):
    """A toy InteractiveModel: counts calls; logits +1 within 3 input pixels of a positive click."""

    def __init__(self) -> None:
        super().__init__()
        self.encodes = self.decodes = 0

    def encode(self, images, valid_size):
        self.encodes += 1
        return images.shape[-2:]

    def decode(self, state, prompts, previous):
        self.decodes += 1
        H, W = state
        points, labels = prompts.points()  # 1 x N x 2 (x, y) in the input
        yy, xx = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
        out = torch.full((1, 1, H, W), -1.0)
        for (x, y), label in zip(points[0].tolist(), labels[0].tolist()):
            if label == 1:
                out[0, 0][(yy - y) ** 2 + (xx - x) ** 2 <= 9] = 1.0
        return out


def _engine(**kw) -> tuple[DemoEngine, CountingDisks, CountingDisks]:
    a, b = CountingDisks(), CountingDisks()
    specs = [ModelSpec(label="a", build=lambda: a, input_size=64), ModelSpec(label="b", build=lambda: b, input_size=None)]
    return DemoEngine(models=specs, **kw), a, b


def test_engine_encodes_once_per_image_and_model_and_decodes_per_click():
    engine, a, b = _engine()
    first = engine.add_image(_png(sample_image("shapes", height=40, width=60)), "a")
    image_id = first["image_id"]
    assert (first["width"], first["height"], first["encode_count"]) == (60, 40, 1) and a.encodes == 1
    r1 = engine.click(image_id, 20, 30, True)
    r2 = engine.click(image_id, 5.7, 50.2, True)
    assert (a.encodes, a.decodes) == (1, 2) and r2["clicks"] == [[20, 30, 1], [5, 50, 1]]
    assert r2["mask_area"] > r1["mask_area"] > 0 and r1["mask_sha1"] != r2["mask_sha1"]
    mask = np.asarray(Image.open(io.BytesIO(engine.mask_png(image_id))))
    assert mask.shape == (40, 60) and int((mask == 255).sum()) == r2["mask_area"] and mask[20, 30] == 255
    undone = engine.undo(image_id)
    assert undone["clicks"] == [[20, 30, 1]] and undone["mask_sha1"] == r1["mask_sha1"] and a.decodes == 2
    switched = engine.set_model(image_id, "b")  # replays the one click: one encode, one decode
    assert (b.encodes, b.decodes) == (1, 1) and switched["model"] == "b" and switched["clicks"] == [[20, 30, 1]]
    engine.set_model(image_id, "a")  # cached encode of "a"
    assert a.encodes == 1
    assert engine.reset(image_id)["clicks"] == [] and engine.undo(image_id)["message"] == "nothing to undo"


def test_engine_bad_inputs_raise_demo_errors():
    engine, *_ = _engine(max_side=50, max_pixels=100 * 100)
    with pytest.raises(DemoError, match="not an image"):
        engine.add_image(b"hello, not an image", "a")
    with pytest.raises(DemoError, match="empty"):
        engine.add_image(b"", "a")
    with pytest.raises(DemoError, match="too large"):
        engine.add_image(_png(np.zeros((120, 100, 3), np.uint8)), "a")
    with pytest.raises(DemoError, match="unknown model"):
        engine.add_image(_png(np.zeros((10, 10, 3), np.uint8)), "zzz")
    result = engine.add_image(_png(np.zeros((20, 90, 3), np.uint8)), "a")  # downscaled with a message
    assert (result["width"], result["height"]) == (50, 11) and "downscaled from 90 x 20" in result["message"]
    image_id = result["image_id"]
    for y, x in ((-1, 3), (3, 50), (11, 0)):
        with pytest.raises(DemoError, match="outside"):
            engine.click(image_id, y, x, True)
    with pytest.raises(DemoError, match="numbers"):
        engine.click(image_id, "3", 4, True)
    with pytest.raises(DemoError, match="unknown image"):
        engine.click("img999", 1, 1, True)
    assert engine.click(image_id, 5, 5, True)["clicks"] == [[5, 5, 1]]  # still usable


def test_decode_image_reads_grey_and_rgba_as_rgb():
    grey = _png(np.full((8, 9), 77, np.uint8))
    rgba = _png(np.full((8, 9, 4), 200, np.uint8))
    for data in (grey, rgba):
        image, message = decode_image(data, max_side=64, max_pixels=10_000)
        assert image.shape == (8, 9, 3) and image.dtype == np.uint8 and message == ""


def test_samples_are_deterministic_images():
    for name in SAMPLE_NAMES:
        a, b = sample_image(name), sample_image(name)
        assert a.shape == (240, 320, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    with pytest.raises(ValueError, match="unknown sample"):
        sample_image("cat")


def test_demo_refuses_a_non_loopback_host():
    from segblocks.demo.app import main

    assert main(["--host", "0.0.0.0", "--model", "grabcut_clicks"]) == 2


def test_demo_is_a_registered_subcommand():
    from segblocks.lightning.cli import SUBCOMMANDS

    assert SUBCOMMANDS["demo"].target == "segblocks.demo.app:main"


# ---------------------------------------------------------------------------- the page in Chromium
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture
def demo_server():
    pytest.importorskip("cv2", reason="the demo test uses grabcut_clicks (the classical extra)")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "segblocks.demo.app", "--port", "0", "--model", "grabcut_clicks", "--max-side", "600"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO,
    )
    url, lines, deadline = None, [], time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"serving on (http://127\.0\.0\.1:\d+/)", line)
        if match:
            url = match.group(1)
            break
    if url is None:
        proc.kill()
        pytest.fail("the demo server did not start:\n" + "".join(lines))
    yield url, proc
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.slow
def test_page_end_to_end_in_headless_chromium(demo_server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
    executable = _chromium()
    if executable is None:
        pytest.skip("no chromium on PATH (apt-get install -y chromium)")
    url, proc = demo_server
    shapes = tmp_path / "shapes.png"
    shapes.write_bytes(_png(sample_image("shapes")))
    wide = tmp_path / "wide.png"
    wide.write_bytes(_png(np.full((60, 1200, 3), 90, np.uint8)))
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not an image\n")
    shot = Path(os.environ.get("SEGBLOCKS_DEMO_SCREENSHOT", tmp_path / "demo.png"))

    with sync_api.sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=executable, headless=True,
                                         args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        except Exception as err:  # noqa: BLE001 - a chromium that cannot start here is a skip, not a failure
            pytest.skip(f"chromium cannot run here: {err}")
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 720})
            page.set_default_timeout(30_000)
            page.goto(url)
            page.wait_for_selector("body[data-ready=true]")
            status = page.locator("#status")

            page.set_input_files("#upload", str(shapes))
            page.wait_for_selector("#status[data-encodes='1']")
            assert page.locator("#canvas").evaluate("c => [c.width, c.height]") == [320, 240]

            page.click("#canvas", position={"x": 102, "y": 108})  # positive: the red disc
            page.wait_for_selector("#status[data-clicks='1']")
            sha1, area1 = status.get_attribute("data-mask-sha1"), int(status.get_attribute("data-mask-area"))
            page.click("#canvas", position={"x": 230, "y": 132})  # positive: the blue box too
            page.wait_for_selector("#status[data-clicks='2']")
            sha2, area2 = status.get_attribute("data-mask-sha1"), int(status.get_attribute("data-mask-area"))
            assert sha2 != sha1 and area2 > area1 > 1000
            assert status.get_attribute("data-encodes") == "1"  # each click only decoded
            assert re.search(r"decode \d+\.\d ms", status.inner_text())
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            page.click("#canvas", position={"x": 230, "y": 132}, button="right")  # negative: the box again
            page.wait_for_selector("#status[data-clicks='3']")
            assert int(status.get_attribute("data-mask-area")) < area2
            page.click("#undo")
            page.wait_for_selector("#status[data-clicks='2']")
            assert status.get_attribute("data-mask-sha1") == sha2

            href = page.get_attribute("#download", "href")
            mask = np.asarray(Image.open(io.BytesIO(page.request.get(url.rstrip("/") + href).body())))
            assert mask.shape == (240, 320) and int((mask > 127).sum()) == area2

            page.evaluate("window.segblocksDemo.click(-5, 10, true)")  # a click outside the image
            page.wait_for_selector("#error.visible")
            assert "outside" in page.inner_text("#error")

            page.set_input_files("#upload", str(notes))  # a non-image
            page.wait_for_function("document.getElementById('error').textContent.includes('not an image')")
            assert page.is_visible("#error")
            assert proc.poll() is None  # still serving: the page keeps working
            page.click("#canvas", position={"x": 60, "y": 40}, button="right")
            page.wait_for_selector("#status[data-clicks='3']")
            assert not page.is_visible("#error")

            page.set_input_files("#upload", str(wide))  # a large image is downscaled with a message
            page.wait_for_function("document.getElementById('message').textContent.includes('downscaled')")
            assert page.locator("#canvas").evaluate("c => [c.width, c.height]") == [600, 30]
        finally:
            browser.close()


def test_checkpoint_option_loads_a_recipe_checkpoint(tmp_path):
    from segblocks.demo.app import build_model_specs
    from segblocks.lightning.interactive_module import resolve_interactive_model
    from segblocks.models import create_model

    torch.manual_seed(0)
    trained = resolve_interactive_model(create_model("sam_tiny"))
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in trained.state_dict().items()}}, path)  # InteractiveSegmentation layout
    specs = build_model_specs(["grabcut_clicks"], [f"sam_tiny={path}"])
    assert [s.label for s in specs] == ["sam_tiny@last.ckpt", "grabcut_clicks"] and specs[0].input_size == 128
    loaded = specs[0].build()
    for key, value in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(ValueError, match="NAME=PATH"):
        build_model_specs([], ["sam_tiny"])
    with pytest.raises(ValueError, match="unknown model"):
        build_model_specs(["no_such_model"], [])
