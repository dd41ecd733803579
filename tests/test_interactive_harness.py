"""The interactive harness: protocol prompts, the K-click evaluation loop, iterative training, the SAM module,
the DataModule and the ``recipes/sam.yaml`` CLI round trip.

References are independent of the code under test: oracle models whose IoU curves are known in
closed form, float64 loops written here, and a tiny GrabCut-layout benchmark written by the test
(images of longest side ``T`` so that the eval resize is the identity and the oracles are exact).
"""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

import segblocks.interactive.training as interactive_training
from segblocks.interactive import TRAIN_INNER_K, Clicks, next_click
from segblocks.interactive.evaluation import evaluate_clicks, write_click_report
from segblocks.interactive.protocol import ClickPrompts, InteractiveModel, logits_to_input
from segblocks.lightning.interactive_datamodule import InteractiveDataModule
from segblocks.lightning.interactive_module import InteractiveSegmentation
from segblocks.metrics import InteractiveMetrics
from segblocks.models.sam import SamClickModel, sam_tiny

REPO = Path(__file__).resolve().parents[1]
T = 48  # eval size of the tiny benchmark
K = 20


# ----------------------------------------------------------------------------- fixtures
def _objects(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An ellipse object and a 2-px ignore band around it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
    ry, rx = rng.uniform(0.15, 0.3) * h, rng.uniform(0.15, 0.3) * w
    r = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    obj = r <= 1
    band = (r <= 1.35) & ~obj
    return obj, band


def _write_benchmark(root: Path, sizes: list[tuple[int, int]]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """GrabCut layout; channel 0 of an image paints object + band, channel 1 the object alone."""
    (root / "data_GT").mkdir(parents=True)
    (root / "boundary_GT").mkdir()
    records = []
    for i, (h, w) in enumerate(sizes):
        obj, band = _objects(h, w, i)
        image = np.random.default_rng(100 + i).integers(0, 50, (h, w, 3), dtype=np.uint8)
        image[..., 0] = np.where(obj | band, 255, 0)
        image[..., 1] = np.where(obj, 255, 0)
        stem = f"img{i:02d}"
        Image.fromarray(image).save(root / "data_GT" / f"{stem}.png")
        Image.fromarray((obj * 255 + band * 128).astype(np.uint8), mode="L").save(root / "boundary_GT" / f"{stem}.png")
        records.append((stem, obj, band))
    return records


SIZES = [(48, 40), (36, 48), (48, 48), (30, 48)]  # longest side T: the eval resize is the identity


@pytest.fixture
def benchmark(tmp_path):
    root = tmp_path / "bench"
    return root, _write_benchmark(root, SIZES)


def _eval_batches(root: Path, batch_size: int, eval_size: int = T):
    dm = InteractiveDataModule(root=str(root), eval_size=eval_size, eval_batch_size=batch_size)
    dm.setup("test")
    return list(dm.test_dataloader())


# ----------------------------------------------------------------------------- oracle models
def _constant(state: torch.Tensor, value: float, stride: int = 1) -> torch.Tensor:
    B, _, H, W = state.shape
    return torch.full((B, 1, H // stride, W // stride), value)


class GroundTruthOracle:
    """Predicts object + ignore band: IoU 1 only if the band is excluded."""

    def encode(self, images, valid_size):
        return images

    def decode(self, state, prompts, previous):
        return (state[:, :1] > 127).float() * 20 - 10


class EmptyModel:
    """Never predicts foreground; stride-4 logits exercise the resize to the input."""

    def encode(self, images, valid_size):
        return images

    def decode(self, state, prompts, previous):
        return _constant(state, -10.0, stride=4)


class RevealRows:
    """The object (channel 1) above row ceil(H n / 4), n = the sample's click count; records its calls."""

    def __init__(self):
        self.previous_seen = []

    def encode(self, images, valid_size):
        return images

    def decode(self, state, prompts, previous):
        self.previous_seen.append(previous)
        B, _, H, W = state.shape
        limit = torch.ceil(prompts.clicks.num_clicks.float() * H / 4)  # B
        rows = torch.arange(H).view(1, H, 1) < limit.view(B, 1, 1)  # B x H x 1
        return ((state[:, 1] > 127) & rows).float().unsqueeze(1) * 20 - 10


def test_models_satisfy_protocol():
    for model in (GroundTruthOracle(), EmptyModel(), RevealRows(), SamClickModel(sam=sam_tiny())):
        assert isinstance(model, InteractiveModel)


# ----------------------------------------------------------------------------- evaluation loop
@pytest.mark.parametrize("batch_size", [1, 3])
def test_ground_truth_oracle_scores_noc_one(benchmark, batch_size):
    root, records = benchmark
    metrics = InteractiveMetrics(max_clicks=K)
    for batch in _eval_batches(root, batch_size):
        curves = evaluate_clicks(GroundTruthOracle(), batch, max_clicks=K, generator=np.random.default_rng(0))
        assert curves.ious.shape == (len(batch["sample_id"]), K)
        torch.testing.assert_close(curves.ious, torch.ones_like(curves.ious))
        assert curves.num_clicks.tolist() == [1] * len(batch["sample_id"])  # nothing left to click after one
        assert (curves.encode_seconds >= 0).all() and (curves.decode_seconds >= 0).all()
        metrics.update(curves.ious, encode_seconds=curves.encode_seconds, decode_seconds=curves.decode_seconds)
    out = metrics.compute()
    assert out["num_samples"] == len(records)
    for t in (85, 90, 95):
        assert out[f"noc@{t}"] == 1 and out[f"nof@{t}"] == 0


def test_empty_model_scores_noc_twenty(benchmark):
    root, records = benchmark
    metrics = InteractiveMetrics(max_clicks=K)
    for batch in _eval_batches(root, 2):
        curves = evaluate_clicks(EmptyModel(), batch, max_clicks=K)
        assert (curves.ious == 0).all()
        assert curves.num_clicks.tolist() == [K] * len(batch["sample_id"])  # a new positive click every time
        metrics.update(curves.ious)
    out = metrics.compute()
    for t in (85, 90, 95):
        assert out[f"noc@{t}"] == K and out[f"nof@{t}"] == len(records)


def _naive_reveal_curve(obj: np.ndarray) -> list[float]:
    """float64 loop: IoU of the RevealRows prediction click by click; clicks stop once it is perfect.

    The rows are counted in the padded T x T input, which equals the original frame here.
    """
    n, out = 0, []
    for _ in range(K):
        if not out or out[-1] < 1:
            n += 1
        limit = math.ceil(n * T / 4)
        pred = obj.copy()
        pred[limit:] = False
        out.append(float(np.logical_and(pred, obj).sum()) / float(obj.sum()))
    return out


def test_batched_loop_matches_naive_per_sample_curves(benchmark):
    root, records = benchmark
    model = RevealRows()
    batches = _eval_batches(root, 3)  # samples of different sizes share a padded canvas
    ious = torch.cat([evaluate_clicks(model, b, max_clicks=K).ious for b in batches])
    expected = torch.tensor([_naive_reveal_curve(obj) for _, obj, _ in records], dtype=torch.float32)
    torch.testing.assert_close(ious, expected)
    assert not (ious == 1).all()  # the curves really vary
    # The previous output is fed back: None at the first click, the last output afterwards.
    assert model.previous_seen[0] is None and all(p is not None for p in model.previous_seen[1:K])


def test_scores_at_original_resolution_when_resized(tmp_path):
    """Originals larger than T: an all-foreground model scores |O| / (H0 W0 - |band|) at the original size."""
    records = _write_benchmark(tmp_path / "big", [(60, 90), (75, 50)])

    class AllForeground(EmptyModel):
        def decode(self, state, prompts, previous):
            return _constant(state, 10.0, stride=4)

    batch = _eval_batches(tmp_path / "big", 2, eval_size=32)[0]
    assert batch["image"].shape[-2:] == (32, 32)
    curves = evaluate_clicks(AllForeground(), batch, max_clicks=3)
    expected = [float(obj.sum()) / float(obj.size - band.sum()) for _, obj, band in records]
    for b in range(2):
        assert curves.ious[b].tolist() == pytest.approx([expected[b]] * 3, rel=1e-6)


def test_evaluate_clicks_bad_inputs(benchmark):
    root, _ = benchmark
    batch = _eval_batches(root, 1)[0]
    with pytest.raises(ValueError, match="max_clicks"):
        evaluate_clicks(EmptyModel(), batch, max_clicks=0)
    with pytest.raises(ValueError, match="original_mask"):
        evaluate_clicks(EmptyModel(), {k: v for k, v in batch.items() if k != "original_mask"})

    class Wrong(EmptyModel):
        def decode(self, state, prompts, previous):
            return torch.zeros(state.shape[0], 2, 8, 8)

    with pytest.raises(ValueError, match=r"\(B, 1, h, w\)"):
        evaluate_clicks(Wrong(), batch, max_clicks=1)


# ----------------------------------------------------------------------------- prompts
def test_click_prompts_points_match_naive_scaling():
    clicks = Clicks.from_lists([[(3, 7, 1), (0, 0, 0)], [(10, 2, 1)]])
    frame = torch.tensor([[20, 40], [15, 15]])
    inp = torch.tensor([[10, 20], [30, 30]])
    points, labels = ClickPrompts(clicks=clicks, frame_size=frame, input_size=inp).points()
    expected = torch.zeros(2, 2, 2)
    for b, sample in enumerate([[(3, 7), (0, 0)], [(10, 2)]]):
        for i, (y, x) in enumerate(sample):
            sy, sx = inp[b, 0].item() / frame[b, 0].item(), inp[b, 1].item() / frame[b, 1].item()
            expected[b, i] = torch.tensor([x * sx + 0.5, y * sy + 0.5])  # SAM: apply_coords, then + 0.5
    torch.testing.assert_close(points, expected)
    assert labels.tolist() == [[1, 0], [1, -1]]
    with pytest.raises(TypeError, match="frame_size"):
        ClickPrompts(clicks=clicks, frame_size=frame.float(), input_size=inp)
    with pytest.raises(TypeError, match="input_size"):
        ClickPrompts(clicks=clicks, frame_size=frame, input_size=inp[:1])
    with pytest.raises(ValueError, match="positive"):
        ClickPrompts(clicks=clicks, frame_size=frame * 0, input_size=inp)


def test_logits_to_input():
    x = torch.randn(2, 1, 4, 6)
    assert logits_to_input(x, (4, 6)) is x
    up = logits_to_input(x, (8, 12))
    assert up.shape == (2, 1, 8, 12)
    # bilinear, align_corners=False: output pixel (0, 0) samples input (-0.25, -0.25), clamped to pixel 0
    assert up[0, 0, 0, 0].item() == pytest.approx(x[0, 0, 0, 0].item())
    with pytest.raises(ValueError, match="float logits"):
        logits_to_input(torch.zeros(2, 3, 4, 4), (8, 8))
    with pytest.raises(ValueError, match="float logits"):
        logits_to_input(torch.zeros(2, 1, 4, 4, dtype=torch.long), (8, 8))


# ----------------------------------------------------------------------------- report files
def test_write_click_report_shapes_and_missing_matplotlib(tmp_path, monkeypatch, caplog):
    m = InteractiveMetrics(max_clicks=K)
    ious = torch.rand(3, K)
    m.update(ious, decode_seconds=torch.full((3, K), 0.01), sample_index=torch.tensor([5, 1, 2]))
    paths = write_click_report(m.per_sample_curves(), tmp_path, sample_ids=["a", "b", "c"], metrics={"noc@85": 3.0})
    rows = list(csv.reader(open(paths["csv"])))
    assert len(rows) == 4 and rows[0][:2] == ["sample_index", "sample_id"]
    iou_cols = [i for i, name in enumerate(rows[0]) if name.startswith("iou@")]
    assert len(iou_cols) == K and rows[0][iou_cols[-1]] == f"iou@{K}"
    # per_sample_curves orders the rows by sample index; sample_ids name those rows
    np.testing.assert_allclose([[float(r[i]) for i in iou_cols] for r in rows[1:]], ious[[1, 2, 0]].numpy(), atol=1e-6)
    assert [r[1] for r in rows[1:]] == ["a", "b", "c"] and [r[0] for r in rows[1:]] == ["1", "2", "5"]
    data = json.loads(paths["json"].read_text())
    assert data["max_clicks"] == K and data["metrics"] == {"noc@85": 3.0}
    assert len(data["samples"]) == 3 and all(len(s["iou"]) == K and len(s["decode_seconds"]) == K for s in data["samples"])
    if "png" in paths:  # matplotlib is a dev extra
        assert paths["png"].stat().st_size > 0
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import raises ImportError
    with caplog.at_level("WARNING"):
        paths = write_click_report(m.per_sample_curves(), tmp_path / "nompl")
    assert "png" not in paths and "matplotlib" in caplog.text
    with pytest.raises(ValueError, match="sample_ids"):
        write_click_report(m.per_sample_curves(), tmp_path, sample_ids=["a"])


# ----------------------------------------------------------------------------- Lightning module: test_step
@pytest.mark.parametrize("empty", [False, True])
def test_test_step_through_trainer(benchmark, tmp_path, empty, capsys):
    root, records = benchmark
    dm = InteractiveDataModule(root=str(root), layout="grabcut", eval_size=T, eval_batch_size=1)
    module = InteractiveSegmentation(model=EmptyModel() if empty else GroundTruthOracle())  # any protocol object
    trainer = Trainer(
        limit_test_batches=3, logger=CSVLogger(tmp_path / "logs"), enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu",
    )
    (results,) = trainer.test(module, datamodule=dm)
    assert results["test/num_samples"] == 3
    for t in (85, 90, 95):
        assert results[f"test/noc@{t}"] == (K if empty else 1)
        assert results[f"test/nof@{t}"] == (3 if empty else 0)
    assert "noc@85" in capsys.readouterr().out  # the printed table
    log_dir = Path(trainer.log_dir)
    files = {k: p for k, p in module.report_paths.items() if k in ("csv", "json", "png")}
    assert set(files) >= {"csv", "json"} and all(p.parent == log_dir for p in files.values())
    cases = {k for k in module.report_paths if k not in files}  # overlays of the 3 worst / 3 best samples
    assert cases == {f"{kind}_{r}" for kind in ("worst", "best") for r in (1, 2, 3)}
    assert all(module.report_paths[k].parent == log_dir / "click_cases" for k in cases)
    rows = list(csv.DictReader(open(log_dir / "per_sample_iou.csv")))
    assert [r["sample_id"] for r in rows] == [stem for stem, _, _ in records[:3]]
    assert all(len([k for k in r if k.startswith("iou@")]) == K for r in rows)
    assert {float(r[f"iou@{K}"]) for r in rows} == {0.0 if empty else 1.0}
    samples = json.loads((log_dir / "per_sample_iou.json").read_text())["samples"]
    assert np.array([s["iou"] for s in samples]).shape == (3, K)
    if "png" in module.report_paths:
        assert (log_dir / "miou_vs_clicks.png").is_file()


# ----------------------------------------------------------------------------- Lightning module: training
class TinyConvModel(torch.nn.Module):
    """Image + disk maps of the clicks + previous logits -> logits; records every decode call."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.net = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))
        self.calls = []

    def encode(self, images, valid_size):
        return images / 255

    def decode(self, state, prompts, previous):
        from segblocks.interactive import disk_maps

        B, _, H, W = state.shape
        disks = disk_maps(prompts.clicks, H, W, radius=3)  # B x 2 x H x W
        prev = torch.zeros(B, 1, H, W) if previous is None else previous
        out = self.net(torch.cat([state, disks, prev], 1))
        self.calls.append({"grad": torch.is_grad_enabled(), "training": self.training, "previous": previous,
                           "out": out, "clicks": prompts.clicks.num_clicks.clone()})
        return out


def _train_batch(H=40, W=40):
    """Three objects of different shapes (one with a hole, one with an ignore strip)."""
    B = 3
    gt = torch.zeros(B, H, W, dtype=torch.bool)
    gt[0, 5:25, 8:30] = True
    gt[1, 20:38, 2:14] = True
    gt[2, 10:30, 10:30] = True
    gt[2, 15:25, 15:25] = False  # a hole: later clicks can be negative
    ignore = torch.zeros_like(gt)
    ignore[0, 26:28, 8:30] = True
    image = torch.rand(B, 3, H, W) * 255
    image[:, 0] = gt * 200.0
    return {"image": image, "mask": gt, "ignore": ignore, "valid_size": torch.tensor([[H, W]] * B),
            "original_size": torch.tensor([[H, W]] * B), "sample_id": ["a", "b", "c"]}


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_training_step_simulation_is_no_grad_eval_mode_and_feeds_back(monkeypatch):
    inner_ks = []

    def recording_next_click(*args, **kwargs):
        inner_ks.append(kwargs["inner_k"])
        return next_click(*args, **kwargs)

    monkeypatch.setattr(interactive_training, "sample_num_clicks", lambda **kw: 3)
    monkeypatch.setattr(interactive_training, "next_click", recording_next_click)
    module = InteractiveSegmentation(model=TinyConvModel(), point_loss_weight=0.5)
    module.train()
    loss = module.training_step(_train_batch(), 0)
    assert inner_ks == [1.0, TRAIN_INNER_K, TRAIN_INNER_K, TRAIN_INNER_K]
    calls = module.model.calls
    assert len(calls) == 4  # 3 simulated decodes + the graded one
    for call in calls[:3]:
        assert not call["grad"] and not call["training"] and call["out"].grad_fn is None
    assert calls[3]["grad"] and calls[3]["training"] and module.training
    assert calls[0]["previous"] is None
    for i in (1, 2, 3):
        assert calls[i]["previous"] is calls[i - 1]["out"]
    assert calls[0]["clicks"].tolist() == [1, 1, 1] and calls[3]["clicks"].tolist() == [4, 4, 4]
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def _soft_iou_after_first_click(module: InteractiveSegmentation, batch: dict) -> float:
    """Soft IoU of sigmoid(logits) with the objects after one deterministic first click (eval mode)."""
    gt = batch["mask"]
    B, H, W = gt.shape
    clicks = Clicks.empty(B).append(*next_click(torch.zeros_like(gt), gt, generator=np.random.default_rng(0)))
    size = torch.tensor([[H, W]] * B)
    module.eval()
    with torch.no_grad():
        state = module.encode(batch["image"], batch["valid_size"])
        logits = module.decode(state, ClickPrompts(clicks=clicks, frame_size=size, input_size=size), None)
        prob = logits_to_input(logits, (H, W))
    module.train()
    prob, target = prob[:, 0].double().sigmoid(), gt.double()
    return ((prob * target).sum() / (prob + target - prob * target).sum()).item()


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_sam_iterative_training_learns_a_fixed_batch():
    """NFL renormalises its focal weights, so its value is a poor progress signal; the soft IoU is not."""
    torch.manual_seed(0)
    module = InteractiveSegmentation(model="sam_tiny", gamma=0.5, max_train_clicks=3, point_loss_weight=1.0)
    batch = _train_batch(H=64, W=64)
    opt = torch.optim.AdamW(module.parameters(), lr=2e-3)
    before = _soft_iou_after_first_click(module, batch)
    module.train()
    for _ in range(25):
        opt.zero_grad()
        loss = module.training_step(batch, 0)
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
    after = _soft_iou_after_first_click(module, batch)
    assert after > before + 0.1, (before, after)


# ----------------------------------------------------------------------------- SAM module
def test_sam_encode_ignores_padding_content_and_decode_shapes():
    module = SamClickModel(sam=sam_tiny()).eval()
    images = torch.rand(2, 3, 64, 64) * 255
    valid = torch.tensor([[64, 40], [50, 64]])
    other = images.clone()
    other[0, :, :, 40:] = 0.0  # the transforms' zero padding
    other[1, :, 50:] = 17.0
    with torch.no_grad():
        a, b = module.encode(images, valid), module.encode(other, valid)
        torch.testing.assert_close(a.embeddings, b.embeddings)
        clicks = Clicks.from_lists([[(3, 4, 1)], [(10, 12, 1), (30, 30, 0)]])
        size = torch.tensor([[64, 64]] * 2)
        out = module.decode(a, ClickPrompts(clicks=clicks, frame_size=size, input_size=size), None)
        assert out.shape == (2, 1, 16, 16)
        again = module.decode(a, ClickPrompts(clicks=clicks, frame_size=size, input_size=size), out)
        assert not torch.allclose(again, out)  # the previous logits are a prompt


def test_sam_click_model_and_module_construction():
    sam = sam_tiny()
    module = InteractiveSegmentation(model=SamClickModel(sam=sam))
    assert module.model.sam is sam and "model" not in module.hparams  # injected modules stay out of hparams
    named = InteractiveSegmentation(model="sam_tiny")  # a registry name, resolved once
    assert isinstance(named.model, SamClickModel) and named.hparams.model == "sam_tiny"
    assert isinstance(InteractiveSegmentation(model=sam_tiny()).model, SamClickModel)  # a bare SamModel is wrapped
    with pytest.raises(TypeError, match="encode"):
        InteractiveSegmentation(model=torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown model"):
        InteractiveSegmentation(model="sam_vit_h")
    with pytest.raises(TypeError, match="SamModel"):
        SamClickModel(sam=torch.nn.Linear(2, 2))
    frozen = SamClickModel(sam="sam_tiny", freeze_image_encoder=True)
    assert not any(p.requires_grad for p in frozen.sam.image_encoder.parameters())
    assert all(p.requires_grad for p in frozen.sam.mask_decoder.parameters())
    state = frozen.encode(torch.rand(1, 3, 32, 32) * 255, torch.tensor([[32, 32]]))
    assert state.embeddings.grad_fn is None
    with pytest.raises(ValueError, match="val_clicks"):
        InteractiveSegmentation(model="sam_tiny", val_clicks=0)


# ----------------------------------------------------------------------------- DataModule
def test_datamodule_options(benchmark, tmp_path):
    root, _ = benchmark
    dm = InteractiveDataModule(root=str(root), max_test_samples=2, eval_size=T, eval_batch_size=2)
    dm.setup("test")
    (batch,) = list(dm.test_dataloader())
    assert batch["index"].tolist() == [0, 1] and batch["image"].shape == (2, 3, T, T)
    assert [m.shape for m in batch["original_mask"]] == [torch.Size(s) for s in SIZES[:2]]
    with pytest.raises(ValueError, match="layout"):
        InteractiveDataModule(root=str(root), layout="pascal")
    with pytest.raises(ValueError, match="needs a root"):
        InteractiveDataModule(layout="davis")
    with pytest.raises(ValueError, match="train_image_dir"):
        InteractiveDataModule(train_annotation_file="x.json")
    with pytest.raises(ValueError, match="max_test_samples"):
        InteractiveDataModule(max_test_samples=0)
    with pytest.raises(FileNotFoundError):
        InteractiveDataModule(root=str(tmp_path / "nowhere")).setup("test")
    # The synthetic default: train crops and val samples.
    syn = InteractiveDataModule(cache_dir=str(tmp_path / "cache"), synthetic_num_train=3, synthetic_num_val=2,
                                crop_size=32, eval_size=40, batch_size=2)
    syn.prepare_data()
    syn.setup("fit")
    train = next(iter(syn.train_dataloader()))
    assert train["image"].shape == (2, 3, 32, 32) and train["mask"].any()
    val = list(syn.val_dataloader())
    assert len(val) == 2 and val[0]["image"].shape == (1, 3, 40, 40)


# ----------------------------------------------------------------------------- recipe through the console script
@pytest.mark.slow
def test_sam_recipe_fit_then_test_on_grabcut(tmp_path, shared_data):
    grabcut = shared_data / "GrabCut"
    if not grabcut.is_dir():
        pytest.skip(f"GrabCut not found at {grabcut}")
    common = [
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.save_dir={tmp_path}",
        "--trainer.callbacks=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={tmp_path}/ckpt",
        "--trainer.callbacks.save_last=true",
        f"--data.cache_dir={tmp_path}/cache",
        "--data.synthetic_num_train=4",
        "--data.synthetic_num_val=2",
        "--data.crop_size=64",
        "--data.eval_size=64",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    lightning = str(Path(sys.executable).parent / "lightning")

    def run(args):
        proc = subprocess.run([lightning, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        return proc.stdout + proc.stderr

    run(["fit", "-c", "recipes/sam.yaml", *common, "--trainer.max_steps=2", "--trainer.val_check_interval=2",
         "--trainer.limit_val_batches=1", "--data.batch_size=2"])
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    assert ckpt.is_file()
    out = run(["test", "-c", "recipes/sam.yaml", *common, f"--data.root={grabcut}", "--data.max_test_samples=3",
               f"--ckpt_path={ckpt}"])
    assert "test (20 clicks)" in out and "noc@90" in out and "20-spc" in out
    (csv_file,) = tmp_path.rglob("per_sample_iou.csv")
    rows = list(csv.DictReader(open(csv_file)))
    assert len(rows) == 3 and all(len([k for k in r if k.startswith("iou@")]) == K for r in rows)
    assert (csv_file.parent / "per_sample_iou.json").is_file()
