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

from typing import Any

from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn

from segblocks.data.resumable import EpochSeededSampler, restore_rng_state, rng_state

__all__ = ["ResumableDataModule"]


class ResumableDataModule(LightningDataModule):
    """A LightningDataModule whose checkpoint state makes a resumed fit exact (module docstring)."""

    _resume_position: tuple[int, int] | None = None

    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        state: dict[str, Any] = {"rng": rng_state()}
        if trainer is not None and trainer.training:
            progress = trainer.fit_loop.epoch_loop.batch_progress.current
            # `processed` counts the batches whose step ran (on_train_batch_end saves before `completed`).
            state["position"] = (int(trainer.current_epoch), int(progress.processed))
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        restore_rng_state(state_dict["rng"])
        position = state_dict.get("position")
        self._resume_position = None if position is None else (int(position[0]), int(position[1]))

    def resume_training_sampler(self, sampler: EpochSeededSampler, *, batch_size: int) -> None:
        """Make ``sampler`` skip the batches the checkpoint already trained on (once, in its epoch)."""
        if self._resume_position is None:
            return
        epoch, batches = self._resume_position
        self._resume_position = None
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            rank_zero_warn("mid-epoch resume under DDP replays the interrupted epoch from its start")
            return
        if trainer is not None and epoch == trainer.current_epoch and 0 < batches * batch_size < len(sampler):
            sampler.set_epoch(epoch)
            sampler.skip(batches * batch_size)
