"""A dataset wrapper that adds each sample's index, optionally keeping only the first N samples."""
from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

__all__ = ["IndexedDataset"]


class IndexedDataset(Dataset):
    """The samples of ``dataset`` (dicts) with their dataset index added as ``index``.

    The index names rows of evaluation reports and keys per-sample seeds, so that a sample is
    identified the same way whatever the batch size, order or number of processes.

    Args:
        dataset: a sized dataset of dict samples.
        limit: keep only the first ``limit`` samples (None: all).
    """

    def __init__(self, dataset: Dataset, limit: int | None = None) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1 or None, received {limit}")
        self.dataset = dataset
        self.length = len(dataset) if limit is None else min(limit, len(dataset))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        return {**self.dataset[index], "index": index}
