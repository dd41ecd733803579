"""Training data that a resumed run replays exactly: epoch-seeded order, per-sample augmentation seeds.

An interrupted fit resumed from a mid-epoch checkpoint equals the uninterrupted fit bit for bit
only if (1) the resumed epoch visits the remaining samples in the same order, (2) each sample gets
the same augmentation, and (3) the global random state the model step consumes (dropout, point
sampling, simulated clicks) is the one saved in the checkpoint. Two objects give (1) and (2)
without touching the global random state, so that (3) reduces to saving and restoring it:

* :class:`EpochSeededSampler` draws the order of epoch ``e`` from its own generator seeded with
  ``(seed, e)`` and yields ``(e, index)`` keys; :meth:`~EpochSeededSampler.skip` drops the samples
  a checkpoint already consumed, once.
* :class:`SampleSeededDataset` answers a key ``(e, index)`` with ``dataset[index]`` computed under a
  forked torch generator seeded with ``(seed, e, index)``: the transforms of this project draw
  their randomness from torch (one seed per call), so a sample's augmentation depends only on
  ``(seed, e, index)`` — not on the batch size, the worker count or what ran before.

:func:`rng_state` / :func:`restore_rng_state` capture torch (CPU and CUDA), numpy and Python states.
"""
from __future__ import annotations

import random
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["EpochSeededSampler", "SampleSeededDataset", "restore_rng_state", "rng_state"]

_MASK63 = (1 << 63) - 1


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence: well mixed, platform independent)."""
    return int(np.random.SeedSequence([v & _MASK63 for v in values]).generate_state(2, np.uint64)[0]) & _MASK63


class EpochSeededSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)`` keys over ``num_samples`` indices; the order depends on ``(seed, epoch)`` only.

    Lightning calls :meth:`set_epoch` before each epoch (also through its DDP wrapper); an
    iteration without a preceding ``set_epoch`` advances the epoch by one, so plain loops do not
    repeat an epoch's augmentations.

    Args:
        num_samples: dataset length.
        shuffle: random order per epoch (training) or ``0..n-1``.
        seed: base seed of the orders and (through :class:`SampleSeededDataset`) the augmentations.
    """

    def __init__(self, num_samples: int, *, shuffle: bool, seed: int) -> None:
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 0:
            raise ValueError(f"num_samples must be an int >= 0; got {num_samples!r}")
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = 0
        self._epoch_set = True
        self._skip: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._epoch_set = True

    def skip(self, num_samples: int, *, epoch: int) -> None:
        """Drop the first ``num_samples`` keys of ``epoch`` if the next iteration is that epoch (resuming mid-epoch)."""
        if num_samples < 0:
            raise ValueError(f"cannot skip a negative number of samples: {num_samples}")
        self._skip = (int(epoch), int(num_samples))

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if not self._epoch_set:
            self.epoch += 1
        self._epoch_set = False
        epoch, skip, self._skip = self.epoch, self._skip, None
        start = skip[1] if skip is not None and skip[0] == epoch else 0
        if self.shuffle:
            generator = torch.Generator().manual_seed(_mix(self.seed, epoch))
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        for index in order[start:]:
            yield epoch, index


class SampleSeededDataset(Dataset):
    """``dataset[index]`` under torch's generator seeded from ``(seed, epoch, index)``, global state untouched.

    Keys are the ``(epoch, index)`` pairs of :class:`EpochSeededSampler`; a plain integer key is
    treated as epoch 0. Attribute access falls through to the wrapped dataset.
    """

    def __init__(self, dataset: Dataset, *, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int] | int) -> Any:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_mix(self.seed, epoch, index))
            return self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling): avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


def rng_state() -> dict[str, Any]:
    """The global random states of torch (CPU, every CUDA device), numpy and Python.

    Only tensors and plain Python values, so that checkpoints holding it load with
    ``torch.load(weights_only=True)``.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state` (CUDA states only where present and the device count matches)."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
