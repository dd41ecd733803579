"""The DataLoader construction shared by every DataModule of the project."""
from __future__ import annotations

from typing import Callable

from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["make_loader"]


def make_loader(
    dataset: Dataset | None,
    *,
    owner: str,
    batch_size: int,
    train: bool,
    num_workers: int,
    collate_fn: Callable,
    sampler: Sampler | None = None,
) -> DataLoader:
    """Shuffled, last-incomplete-batch-dropped loader for training; ordered and complete for eval."""
    if dataset is None:
        raise RuntimeError(f"{owner}.setup() must run before asking for dataloaders")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        drop_last=train and len(dataset) >= batch_size,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        collate_fn=collate_fn,
    )
