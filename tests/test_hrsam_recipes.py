"""HRSAM training stages: distillation loss and teachers, precomputed embeddings, LR schedule with layer decay,
the stage-2 model (SAM decoder on an HRSAM encoder), and the two-stage recipes through the ``lightning`` script.

References are written here: preprocessing + MSE in float64, the schedule formula of HRSAM supp. D.3.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from segblocks.blocks.hrsam_cyclescan import CycleScan
from segblocks.data import ImageFolderDataset
from segblocks.lightning.distill_datamodule import DistillationDataModule
from segblocks.lightning.distill_module import (
    PrecomputedEmbeddings,
    SamDistillation,
    embedding_file,
    precompute_embeddings,
    precompute_teacher_embeddings,
)
from segblocks.lightning.interactive_module import InteractiveSegmentation
from segblocks.models import create_model, load_checkpoint
from segblocks.models.hrsam import HRSAMEncoder, HRSAMPlusPlusEncoder, hrsam_tiny
from segblocks.models.sam import SamClickModel, ViTImageEncoder, sam_tiny

REPO = Path(__file__).resolve().parents[1]
MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)


def _student(**kw):
    torch.manual_seed(0)
    return hrsam_tiny(**{"embed_dim": 32, "num_heads": 2, "blocks_per_stage": 1, "d_state": 4, "out_chans": 16, **kw})


def _teacher():
    torch.manual_seed(1)
    return ViTImageEncoder(img_size=64, embed_dim=32, depth=2, num_heads=2, out_chans=16, window_size=2, global_attn_indexes=(1,))


def _batch():
    torch.manual_seed(2)
    image = torch.rand(2, 3, 48, 64) * 255
    valid = torch.tensor([[48, 40], [30, 64]])
    for i, (h, w) in enumerate(valid.tolist()):  # zero padding, as the transforms write it
        image[i, :, h:], image[i, :, :, w:] = 0, 0
    return {"image": image, "valid_size": valid, "sample_id": ["img/a b", "c%d"]}


def _reference_inputs(batch):
    """Padding → pixel mean, normalise, pad to a multiple of 16 (already): float64 loop over samples."""
    out = []
    for img, (h, w) in zip(batch["image"].double(), batch["valid_size"].tolist()):
        x = MEAN.double().expand_as(img).clone()
        x[:, :h, :w] = img[:, :h, :w]
        out.append((x - MEAN.double()) / STD.double())
    return torch.stack(out).float()


# ----------------------------------------------------------------------------- distillation loss
def test_distillation_loss_is_mse_to_teacher():
    student, teacher = _student(), _teacher()
    module = SamDistillation(student=student, teacher=teacher)
    batch = _batch()
    loss = module.distillation_loss(batch, "train")
    x = _reference_inputs(batch)
    with torch.no_grad():
        expected = ((student(x).double() - teacher(x).double()) ** 2).mean()
    torch.testing.assert_close(loss.double(), expected, atol=1e-6, rtol=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_teacher_stays_frozen_in_eval_mode_and_out_of_checkpoints():
    module = SamDistillation(student=_student(), teacher=_teacher())
    module.train()
    assert module.student.training and not module.teacher.training
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    assert ckpt["state_dict"] and not any(k.startswith("teacher.") for k in ckpt["state_dict"])
    module.on_load_checkpoint(ckpt)
    module.load_state_dict(ckpt["state_dict"])  # strict: the teacher keys were put back


def test_distillation_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="exactly one teacher"):
        SamDistillation(student=_student())
    with pytest.raises(ValueError, match="exactly one teacher"):
        SamDistillation(student=_student(), teacher=_teacher(), embeddings_dir=str(tmp_path))
    with pytest.raises(ValueError, match="unknown model 'huge'"):
        SamDistillation(student="huge", teacher=_teacher())
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        SamDistillation(student=_student(), teacher=create_model("sam_tiny_encoder", checkpoint=str(tmp_path / "none.pth")))
    module = SamDistillation(student=_student(out_chans=8), teacher=_teacher())
    with pytest.raises(ValueError, match="differ"):
        module.distillation_loss(_batch(), "train")


def test_teacher_checkpoint_is_loaded(tmp_path):
    teacher = _teacher()
    torch.save({"state_dict": {f"sam.image_encoder.{k}": v for k, v in teacher.state_dict().items()}}, tmp_path / "t.ckpt")
    torch.manual_seed(5)
    other = ViTImageEncoder(img_size=64, embed_dim=32, depth=2, num_heads=2, out_chans=16, window_size=2, global_attn_indexes=(1,))
    load_checkpoint(other, tmp_path / "t.ckpt", prefix="sam.image_encoder.")
    module = SamDistillation(student=_student(), teacher=other)
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(module.teacher.state_dict()[k], v)


# ----------------------------------------------------------------------------- precomputed embeddings
@pytest.mark.parametrize("suffix,dtype", [(".pt", torch.float32), (".npy", torch.float32), (".pt", torch.float16)])
def test_precomputed_embeddings_read_what_was_written(tmp_path, suffix, dtype):
    teacher, batch = _teacher(), _batch()
    n = precompute_embeddings(teacher=teacher, batches=[batch], out_dir=tmp_path / "train", suffix=suffix, dtype=dtype)
    assert n == 2
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == sorted(
        embedding_file(tmp_path / "train", i, suffix).name for i in batch["sample_id"])  # no temporary files left
    with torch.no_grad():
        expected = teacher(_reference_inputs(batch))
    got = PrecomputedEmbeddings(tmp_path / "train")(batch["sample_id"])
    assert got.dtype == torch.float32
    tol = 1e-5 if dtype == torch.float32 else 2e-3  # float16: one rounding step either way
    torch.testing.assert_close(got, expected.to(dtype).float(), atol=tol, rtol=tol)
    assert precompute_embeddings(teacher=teacher, batches=[batch], out_dir=tmp_path / "train", suffix=suffix) == 0  # resumable

    if dtype == torch.float32:  # the module gives the same loss with either teacher
        (tmp_path / "val").mkdir()
        student = _student()
        on_disk = SamDistillation(student=student, embeddings_dir=str(tmp_path)).distillation_loss(batch, "train")
        live = SamDistillation(student=student, teacher=teacher).distillation_loss(batch, "train")
        torch.testing.assert_close(on_disk, live, atol=1e-6, rtol=1e-5)


def test_precomputed_embeddings_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="embeddings folder"):
        PrecomputedEmbeddings(tmp_path / "missing")
    reader = PrecomputedEmbeddings(tmp_path)
    with pytest.raises(FileNotFoundError, match="x%2Fy.pt"):
        reader(["x/y"])
    (tmp_path / "bad.pt").write_bytes(b"not a tensor")
    with pytest.raises(ValueError, match="bad.pt"):
        reader(["bad"])
    np.save(tmp_path / "flat.npy", np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"flat.npy.*\(C, h, w\)"):
        reader(["flat"])


def test_precompute_teacher_embeddings_and_image_datamodule(tmp_path):
    dm = DistillationDataModule(image_size=64, cache_dir=str(tmp_path / "cache"), synthetic_num_train=3, synthetic_num_val=2)
    written = precompute_teacher_embeddings(teacher="sam_tiny_encoder", out_dir=tmp_path / "emb", datamodule=dm, device="cpu")
    assert written["train"] > 0 and written["val"] > 0
    dm.setup("fit")
    sample = dm.train_dataset[0]
    h, w = sample["valid_size"]
    assert sample["image"].shape == (3, 64, 64) and max(h, w) == 64
    assert sample["image"][:, h:].abs().sum() == 0 and sample["image"][:, :, w:].abs().sum() == 0
    for split, ds in (("train", dm.train_dataset), ("val", dm.val_dataset)):
        ids = [ds[i]["sample_id"] for i in range(len(ds))]
        assert PrecomputedEmbeddings(tmp_path / "emb" / split)(ids).shape == (len(ids), 64, 4, 4)
    with pytest.raises(FileNotFoundError, match="image folder"):
        ImageFolderDataset(root=tmp_path / "nothing", size=64)


# ----------------------------------------------------------------------------- optimiser and schedule
def _lrs(module, total: int) -> tuple[list[list[float]], dict]:
    module._trainer = SimpleNamespace(estimated_stepping_batches=total)
    cfg = module.configure_optimizers()
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    assert cfg["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(total + 1):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return lrs, cfg


def _hrsam_factor(t: int, warmup: int, total: int) -> float:
    """mmengine LinearLR(start_factor=1e-6) over ``warmup`` steps, then PolyLR(power=1, eta_min=0) (HRSAM supp. D.3)."""
    return 1e-6 + (1 - 1e-6) * t / warmup if t < warmup else max(0.0, 1 - (t - warmup) / (total - warmup))


@pytest.mark.parametrize("which", ["distill", "interactive"])
def test_warmup_poly_schedule_matches_formula(which):
    lr, warmup, total = 1e-4, 5, 20
    if which == "distill":  # layer decay 0.9 over the student's blocks (HRSAM stage 1)
        student = _student()
        module = SamDistillation(student=student, teacher=_teacher(), lr=lr, warmup_steps=warmup)
        L = len(student.blocks)
        expected_scale = {f"blocks.{i}.": 0.9 ** (L - i) for i in range(L)}
    else:
        module = InteractiveSegmentation(model="sam_hrsam_tiny", lr=lr, warmup_steps=warmup)
        expected_scale = {}
    lrs, cfg = _lrs(module, total)
    groups = cfg["optimizer"].param_groups
    for g in groups:
        for name in g["names"]:
            block = next((k for k in expected_scale if k in name and "cycle_scans" not in name), None)
            assert g["lr_scale"] == pytest.approx(expected_scale[block] if block else 1.0), name
    for t, row in enumerate(lrs):
        for g, got in zip(groups, row):
            assert got == pytest.approx(lr * g["lr_scale"] * _hrsam_factor(t, warmup, total), rel=1e-9, abs=1e-15), t
    decay = [g for g in groups if g["weight_decay"] == 0.05]
    no_decay = [g for g in groups if g["weight_decay"] == 0.0]
    assert decay and no_decay and all(g["betas"] == (0.9, 0.999) for g in groups)
    scan = next(m for m in module.modules() if isinstance(m, CycleScan))
    assert any(p is scan.A_log for g in no_decay for p in g["params"])
    assert any(p is scan.in_proj.weight for g in decay for p in g["params"])


# ----------------------------------------------------------------------------- stage 2 model
def test_stage2_model_loads_stage1_encoder_without_building_a_vit(tmp_path, monkeypatch):
    stage1 = SamDistillation(student="hrsam_pp_tiny", teacher=_teacher())
    torch.save({"state_dict": stage1.state_dict()}, tmp_path / "s1.ckpt")
    import segblocks.models.sam.sam as sam_module

    def no_vit(**kwargs):
        raise AssertionError("a ViT image encoder was built for an HRSAM model")

    monkeypatch.setattr(sam_module, "_vit_encoder", no_vit)
    encoder = create_model("hrsam_pp_tiny", checkpoint=str(tmp_path / "s1.ckpt"), checkpoint_prefix="student.")
    sam = create_model("sam_hrsam_pp_tiny", encoder=encoder)
    assert sam.image_encoder is encoder and isinstance(encoder, HRSAMPlusPlusEncoder)
    for k, v in stage1.student.state_dict().items():
        torch.testing.assert_close(sam.image_encoder.state_dict()[k], v)
    state = SamClickModel(sam=sam).encode(torch.rand(1, 3, 64, 48) * 255, torch.tensor([[64, 40]]))
    assert state.embeddings.shape == (1, 64, 4, 3)
    with pytest.raises(ValueError, match="out_chans"):
        create_model("sam_hrsam_tiny", encoder=_student())  # 16-d encoder vs the 64-d tiny decoder
    with pytest.raises(ValueError, match="missing keys"):  # ++ weights into HRSAM: strict by default
        create_model("hrsam_tiny", checkpoint=str(tmp_path / "s1.ckpt"), checkpoint_prefix="student.")
    assert isinstance(create_model("sam_hrsam_tiny").image_encoder, HRSAMEncoder)


def test_decoder_takes_only_the_decoder_side_of_a_sam_checkpoint(tmp_path):
    torch.manual_seed(3)
    sam = sam_tiny()
    state = {f"model.sam.{k}": v for k, v in sam.state_dict().items()}
    state["model.sam.image_encoder.pos_embed"] = torch.zeros(1, 3, 3, 96)  # another encoder: must not matter
    state["model.sam.prompt_encoder.point_embeddings.2.weight"] = torch.zeros(1, 64)  # box corner: ignored
    torch.save({"state_dict": state}, tmp_path / "sam.ckpt")
    decoder = create_model("sam_tiny_decoder", checkpoint=str(tmp_path / "sam.ckpt"), checkpoint_prefix="model.sam.")
    assert decoder.checkpoint_report.missing_keys == [] and decoder.checkpoint_report.unexpected_keys == []
    for part in ("prompt_encoder", "mask_decoder"):
        for k, v in getattr(sam, part).state_dict().items():
            torch.testing.assert_close(getattr(decoder, part).state_dict()[k], v)
    del state["model.sam.mask_decoder.iou_token.weight"]
    torch.save({"state_dict": state}, tmp_path / "partial.ckpt")
    with pytest.raises(ValueError, match="iou_token"):
        create_model("sam_tiny_decoder", checkpoint=str(tmp_path / "partial.ckpt"), checkpoint_prefix="model.sam.")


# ----------------------------------------------------------------------------- recipes through the console script
@pytest.mark.slow
@pytest.mark.parametrize("name", ["hrsam", "hrsam_pp"])
def test_two_stage_recipe_then_grabcut_noc(name, tmp_path, shared_data):
    grabcut = shared_data / "GrabCut"
    if not grabcut.is_dir():
        pytest.skip(f"GrabCut not found at {grabcut}")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    lightning = str(Path(sys.executable).parent / "lightning")

    def run(stage: str, args: list[str]) -> str:
        out = tmp_path / stage
        common = [
            f"--trainer.default_root_dir={out}", "--trainer.enable_progress_bar=false",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={out}",
            "--trainer.callbacks=lightning.pytorch.callbacks.ModelCheckpoint", f"--trainer.callbacks.dirpath={out}/ckpt",
            "--trainer.callbacks.save_last=true", f"--data.cache_dir={tmp_path}/cache", "--data.synthetic_num_train=4",
            "--data.synthetic_num_val=2",
        ]
        proc = subprocess.run([lightning, *args, *common], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        return proc.stdout + proc.stderr

    fit = ["--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1", "--data.batch_size=2"]
    run("s1", ["fit", "-c", f"recipes/{name}_distill.yaml", *fit, "--data.image_size=64"])
    stage1 = tmp_path / "s1" / "ckpt" / "last.ckpt"
    assert stage1.is_file() and not any(k.startswith("teacher.") for k in torch.load(stage1, weights_only=False)["state_dict"])
    run("s2", ["fit", "-c", f"recipes/{name}.yaml", *fit, f"--model.model.sam.encoder.checkpoint={stage1}",
               "--data.crop_size=64", "--data.eval_size=64"])
    stage2 = tmp_path / "s2" / "ckpt" / "last.ckpt"
    assert stage2.is_file()
    out = run("test", ["test", "-c", f"recipes/{name}.yaml", f"--data.root={grabcut}", "--data.max_test_samples=3",
                       "--data.eval_size=64", f"--ckpt_path={stage2}"])
    assert "test (20 clicks)" in out and "noc@90" in out and "20-spc" in out
