"""A fit interrupted mid-epoch and resumed from ``last.ckpt`` equals the uninterrupted fit, bit for bit."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import Dataset

from segblocks.data.resumable import EpochSeededSampler, SampleSeededDataset, restore_rng_state, rng_state
from segblocks.lightning.resumable_datamodule import ResumableDataModule


class _NoisyPoints(Dataset):
    """Augmentation drawn from torch's global generator, as the project's transforms do."""

    def __len__(self) -> int:
        return 22

    def __getitem__(self, index: int) -> dict:
        x = torch.full((6,), float(index)) / 22 + 0.1 * torch.randn(6)
        return {"x": x, "y": torch.tensor(float(index % 3)), "sample_id": str(index)}


def _collate(samples: list[dict]) -> dict:
    return {"x": torch.stack([s["x"] for s in samples]), "y": torch.stack([s["y"] for s in samples]),
            "sample_id": [s["sample_id"] for s in samples]}


class _Data(ResumableDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.train_dataset = _NoisyPoints()

    def train_dataloader(self):
        return self.loader(self.train_dataset, train=True, batch_size=4, num_workers=0, collate_fn=_collate)


class _Model(LightningModule):
    """Dropout, numpy and Python draws in the step: every global generator must be restored."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.3), nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        scale = 1.0 + float(np.random.rand()) + random.random()
        return scale * ((self.net(batch["x"])[:, 0] - batch["y"]) ** 2).mean()

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 4, 0.5), "interval": "step"}}


def _fit(root, *, max_steps: int, ckpt_path=None) -> dict[str, torch.Tensor]:
    seed_everything(0, verbose=False)
    model, data = _Model(), _Data()
    trainer = Trainer(
        default_root_dir=root, max_epochs=3, max_steps=max_steps, accelerator="cpu", logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[ModelCheckpoint(dirpath=root, every_n_train_steps=1, save_last=True, save_top_k=0)],
    )
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("interrupt_at", [3, 5, 7, 11])  # mid-epoch 0, end of epoch 0, mid-epoch 1
def test_resumed_fit_equals_uninterrupted_fit(tmp_path, interrupt_at):
    full = _fit(tmp_path / "full", max_steps=15)
    _fit(tmp_path / "cut", max_steps=interrupt_at)
    resumed = _fit(tmp_path / "cut", max_steps=15, ckpt_path=tmp_path / "cut" / "last.ckpt")
    for key in full:
        assert torch.equal(full[key], resumed[key]), key


def test_epoch_seeded_sampler_order_and_skip():
    sampler = EpochSeededSampler(10, shuffle=True, seed=3)
    sampler.set_epoch(2)
    whole = list(sampler)
    assert sorted(i for _, i in whole) == list(range(10)) and {e for e, _ in whole} == {2}
    sampler.set_epoch(2)
    sampler.skip(4, epoch=2)
    assert list(sampler) == whole[4:]
    sampler.skip(4, epoch=1)  # the checkpoint's epoch was finished: nothing to skip in epoch 2
    sampler.set_epoch(2)
    assert list(sampler) == whole
    sampler.set_epoch(2)
    assert list(sampler) == whole  # the skip applies once
    assert list(sampler) != whole  # no set_epoch: the next epoch, another order
    assert list(EpochSeededSampler(5, shuffle=False, seed=0)) == [(0, i) for i in range(5)]
    with pytest.raises(ValueError, match="num_samples"):
        EpochSeededSampler(2.5, shuffle=True, seed=0)


def test_sample_seeded_dataset_depends_on_key_only_and_keeps_global_state():
    data = SampleSeededDataset(_NoisyPoints(), seed=1)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = data[(1, 5)]["x"]
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(123)
    assert torch.equal(data[(1, 5)]["x"], a)
    assert not torch.equal(data[(2, 5)]["x"], a)  # another epoch, another augmentation


def test_rng_state_round_trip():
    state = rng_state()
    draws = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(state)
    assert torch.equal(torch.rand(3), draws[0])
    assert np.array_equal(np.random.rand(3), draws[1])
    assert random.random() == draws[2]


class StopAfterStep(Callback):
    """Simulates a killed run: stops the fit right after optimiser step ``step`` (its last.ckpt is saved)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            raise KeyboardInterrupt


def _recipe_fit(root, cache, *extra: str) -> None:
    from segblocks.lightning.cli import main

    args = [
        "fit", "-c", "recipes/pro_scale.yaml", f"--trainer.default_root_dir={root}", "--trainer.max_steps=6",
        "--trainer.check_val_every_n_epoch=100", "--trainer.enable_progress_bar=false", "--trainer.logger=false",
        "--last_checkpoint.every_n_train_steps=1", f"--data.cache_dir={cache}", "--data.synthetic_num_train=8",
        "--data.synthetic_num_val=2", "--data.batch_size=2", *extra,
    ]
    try:
        main(args)
    except SystemExit as exc:  # Lightning turns the KeyboardInterrupt into exit status 1
        if exc.code not in (0, 1, None):
            raise


def test_recipe_fit_killed_mid_epoch_resumes_exactly(tmp_path):
    """pro_scale (albumentations crops, point-sampled losses, warm-up + poly lr): killed during step 4 of 6 (epochs of 4 steps)."""
    cache = tmp_path / "cache"
    _recipe_fit(tmp_path / "full", cache)
    _recipe_fit(tmp_path / "cut", cache, "--trainer.callbacks+=test_resume.StopAfterStep", "--trainer.callbacks.step=4")
    assert torch.load(tmp_path / "cut" / "last.ckpt", weights_only=True)["global_step"] == 3  # step 4 was interrupted before its checkpoint
    _recipe_fit(tmp_path / "cut", cache, f"--ckpt_path={tmp_path / 'cut' / 'last.ckpt'}")
    full = torch.load(tmp_path / "full" / "last.ckpt", weights_only=True)
    resumed = torch.load(tmp_path / "cut" / "last.ckpt", weights_only=True)
    assert full["global_step"] == resumed["global_step"] == 6
    for key, value in full["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
