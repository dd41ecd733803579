"""The DataLoader construction shared by every DataModule of the project.

Evaluation under DDP: Lightning's default :class:`~torch.utils.data.DistributedSampler` pads the
split with repeated samples so that every process gets as many; a repeated sample is scored
twice (NoC, mIoU, PQ, AP all change). :class:`EvaluationSampler` gives each sample to exactly one
process instead, and a process left without samples (fewer samples than processes) gets one
*empty* batch, so that it still runs the evaluation loop and its end-of-epoch collectives (a
process with no batch would skip them and leave the others waiting). Collate functions turn an
empty list into a batch of size 0; evaluation steps must accept it (update nothing).
"""
from __future__ import annotations

from collections.abc import Sized
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from segblocks.data import describe_dataset

__all__ = ["EvaluationSampler", "batch_size_of", "make_loader"]


class _Padding:
    """Stands for "no sample" in a padding batch (a class, so that it survives pickling to workers)."""


class _EvaluationDataset(Dataset):
    """``dataset`` whose index ``None`` (the sampler's padding) is :class:`_Padding`."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int | None) -> Any:
        return _Padding() if index is None else self.dataset[index]


class _DropPadding:
    """Collate function wrapper that leaves out padding items (a class, so that it pickles)."""

    def __init__(self, collate_fn: Callable) -> None:
        self.collate_fn = collate_fn

    def __call__(self, samples: list[Any]) -> Any:
        return self.collate_fn([s for s in samples if not isinstance(s, _Padding)])


class EvaluationSampler(DistributedSampler):
    """Each sample exactly once over all processes, in order: rank ``r`` gets ``r, r + R, r + 2R, ...``.

    Unlike :class:`~torch.utils.data.DistributedSampler` nothing is repeated, so the number of
    samples may differ by one between processes. A rank with no sample yields one ``None``,
    which the loader of :func:`make_loader` turns into an empty batch.

    Subclasses ``DistributedSampler`` so that Lightning keeps it instead of injecting its own.

    Args:
        dataset: a sized dataset.
        num_replicas: number of processes (default: the process group's world size).
        rank: this process's rank (default: from the process group).
    """

    def __init__(self, dataset: Dataset, *, num_replicas: int | None = None, rank: int | None = None) -> None:
        if not isinstance(dataset, Sized):
            raise TypeError(f"EvaluationSampler needs a dataset with __len__, received {type(dataset).__name__}")
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.indices = list(range(self.rank, len(dataset), self.num_replicas))
        self.num_samples = len(self.indices)
        self.total_size = len(dataset)

    def __iter__(self) -> Iterator[int | None]:
        return iter(self.indices) if self.indices else iter([None])

    def __len__(self) -> int:
        return max(len(self.indices), 1)


def _distributed_world() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def make_loader(
    dataset: Dataset | None,
    *,
    owner: str,
    batch_size: int,
    train: bool,
    num_workers: int,
    collate_fn: Callable,
    sampler: Sampler | None = None,
    generator: torch.Generator | None = None,
) -> DataLoader:
    """Shuffled, last-incomplete-batch-dropped loader for training; ordered and complete for evaluation.

    For evaluation in an initialised process group of more than one process the loader samples
    with :class:`EvaluationSampler` (each sample on exactly one process), unless ``sampler`` is
    given.

    Args:
        dataset: the split; None before ``setup``.
        owner: the DataModule's name, for error messages.
        batch_size: samples per batch.
        train: training (shuffle, drop the last incomplete batch) or evaluation.
        num_workers: DataLoader worker processes.
        collate_fn: batches a list of samples (an empty list for a padding batch).
        sampler: an explicit sampler (disables the default ones).
        generator: source of the loader's random draws (shuffling, worker seeds) instead of
            torch's global generator.

    Raises:
        RuntimeError: ``setup`` has not run.
        ValueError: the split is empty, naming the dataset and what it reads.
    """
    if dataset is None:
        raise RuntimeError(f"{owner}.setup() must run before asking for dataloaders")
    if len(dataset) == 0:  # type: ignore[arg-type]
        split = "training" if train else "evaluation"
        raise ValueError(f"{owner}: the {split} dataset {describe_dataset(dataset)} has no samples")
    if sampler is None and not train and _distributed_world() > 1:
        dataset, sampler, collate_fn = _EvaluationDataset(dataset), None, _DropPadding(collate_fn)
        sampler = EvaluationSampler(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        drop_last=train and len(dataset) >= batch_size,  # type: ignore[arg-type]
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        collate_fn=collate_fn,
        generator=generator,
    )


def batch_size_of(batch: Any) -> int:
    """Number of samples in a batch of the project's collate functions (0 for a padding batch)."""
    for key in ("sample_id", "image_ids"):
        if isinstance(batch, dict) and key in batch:
            return len(batch[key])
    raise TypeError(f"cannot tell the size of a batch of type {type(batch).__name__}; expected a dict with sample_id or image_ids")
