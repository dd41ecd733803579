"""The base of the project's DataModules: a fit resumed from any ``last.ckpt`` equals the uninterrupted fit.

Lightning checkpoints a DataModule's :meth:`state_dict` and hands it back to
:meth:`load_state_dict` before the loaders are built. Here the state is the global random state
(:func:`~segblocks.data.resumable.rng_state`) and the position in the training epoch (batches
processed); a training loader built afterwards skips those batches once. With the epoch-seeded
order and per-sample augmentation seeds of :mod:`segblocks.data.resumable`, and loaders that
draw their worker seeds from their own generator, nothing between the checkpoint and the next
step touches the global random state, so the resumed run continues it exactly. Single process
only: under DDP Lightning shards the order after the sampler, so a mid-epoch resume replays the
epoch from its start (with a warning), as Lightning does for any loader.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from segblocks.data.resumable import EpochSeededSampler, SampleSeededDataset, restore_rng_state, rng_state
from segblocks.lightning._loaders import make_loader

__all__ = ["ResumableDataModule"]


class ResumableDataModule(LightningDataModule):
    """A LightningDataModule whose checkpoint state makes a resumed fit exact (module docstring).

    Subclasses build every loader with :meth:`loader`. The data seed is ``seed_everything``'s
    (``PL_GLOBAL_SEED``, 0 when unset) at the first training loader and is checkpointed, so a
    resumed run keeps it whatever its own seed.
    """

    _resume_position: tuple[int, int] | None = None
    _data_seed: int | None = None

    @property
    def data_seed(self) -> int:
        if self._data_seed is None:
            self._data_seed = int(os.environ.get("PL_GLOBAL_SEED", "0"))
        return self._data_seed

    def loader(
        self, dataset: Dataset | None, *, train: bool, batch_size: int, num_workers: int, collate_fn: Callable
    ) -> DataLoader:
        """A loader of ``dataset`` (see :func:`~segblocks.lightning._loaders.make_loader`); training ones resumable."""
        sampler = None
        if train and dataset is not None and len(dataset) > 0:  # type: ignore[arg-type]
            sampler = EpochSeededSampler(len(dataset), shuffle=True, seed=self.data_seed)  # type: ignore[arg-type]
            self.resume_training_sampler(sampler, batch_size=batch_size)
            dataset = SampleSeededDataset(dataset, seed=self.data_seed)
        return make_loader(
            dataset, owner=type(self).__name__, batch_size=batch_size, train=train, num_workers=num_workers,
            collate_fn=collate_fn, sampler=sampler, generator=torch.Generator().manual_seed(self.data_seed),
        )

    def state_dict(self) -> dict[str, Any]:
        trainer = self.trainer
        state: dict[str, Any] = {"rng": rng_state(), "data_seed": self.data_seed}
        if trainer is not None and trainer.training:
            progress = trainer.fit_loop.epoch_loop.batch_progress.current
            # `processed` counts the batches whose step ran (on_train_batch_end saves before `completed`).
            state["position"] = (int(trainer.current_epoch), int(progress.processed))
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        restore_rng_state(state_dict["rng"])
        self._data_seed = int(state_dict["data_seed"])
        position = state_dict.get("position")
        self._resume_position = None if position is None else (int(position[0]), int(position[1]))

    def resume_training_sampler(self, sampler: EpochSeededSampler, *, batch_size: int) -> None:
        """Make ``sampler`` skip the batches the checkpoint already trained on (once, in its epoch)."""
        if self._resume_position is None:
            return
        epoch, batches = self._resume_position
        self._resume_position = None
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            rank_zero_warn("mid-epoch resume under DDP replays the interrupted epoch from its start")
            return
        if batches > 0:
            sampler.skip(batches * batch_size, epoch=epoch)
