"""Up-front validation of a dataset: every file present, decodable and consistent, before a run starts.

A training run that dies after its first steps on a missing or corrupt file wastes the setup
time; an evaluation that reads a mis-encoded mask scores it silently. :func:`check_data` walks
every sample of every split of a DataModule (``setup`` first) and lists all problems at once::

    from segblocks.data import check_data
    report = check_data(datamodule)       # raises DataCheckError listing every problem
    print(report)

Datasets take part through an optional ``check_sample(index, *, decode)`` method, which reads a
sample's files without augmenting it (``decode=False``: only that the files exist); any other
dataset is checked by reading ``dataset[index]``. Wrappers with a ``dataset`` attribute (e.g.
:class:`~segblocks.data.IndexedDataset`) are checked through the dataset they wrap.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

__all__ = ["DataCheckError", "DataReport", "SplitReport", "check_data", "check_dataset", "describe_dataset", "require_file"]

#: DataModule attributes holding the splits, in report order.
SPLIT_ATTRIBUTES = ("train_dataset", "val_dataset", "test_dataset")


def require_file(path: str | Path, what: str) -> None:
    """Raise FileNotFoundError naming ``path`` unless it is a non-empty file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} {path} is empty (0 bytes)")


def describe_dataset(dataset: Any) -> str:
    """``Type(source=...)``: a dataset and the file or folder it reads, for reports and error messages."""
    inner = getattr(dataset, "dataset", None)  # wrappers hold the dataset that reads the files
    if isinstance(inner, Dataset):
        return describe_dataset(inner)
    for attr in ("annotation_file", "root", "image_dir", "mask_dir"):
        if getattr(dataset, attr, None) is not None:
            return f"{type(dataset).__name__}({attr}={getattr(dataset, attr)})"
    return type(dataset).__name__


@dataclass
class SplitReport:
    """What :func:`check_dataset` found in one split.

    Attributes:
        split: the split's name (``train``, ``val``, ``test``).
        dataset: :func:`describe_dataset` of it.
        num_samples: samples in the split.
        num_checked: samples read.
        problems: one line per failing sample, naming the file.
        skipped: ``(path, reason)`` of files the dataset left out on purpose (e.g. empty masks).
        same_as: the split whose files these are (checked once).
    """

    split: str
    dataset: str
    num_samples: int = 0
    num_checked: int = 0
    problems: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    same_as: str | None = None


@dataclass
class DataReport:
    """Per-split results of :func:`check_data`; ``str()`` gives one line per split and every problem."""

    splits: list[SplitReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # problems outside any split (e.g. in setup)

    @property
    def all_problems(self) -> list[str]:
        """Every problem, prefixed with its split."""
        return [*self.problems, *(f"[{s.split}] {p}" for s in self.splits for p in s.problems)]

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.all_problems

    def __str__(self) -> str:
        lines = []
        for s in self.splits:
            status = f"same files as {s.same_as}" if s.same_as else f"{s.num_checked}/{s.num_samples} samples checked"
            extra = f", {len(s.skipped)} skipped" if s.skipped else ""
            lines.append(f"{s.split}: {s.dataset}: {status}, {len(s.problems)} problems{extra}")
        lines += [f"  {p}" for p in self.all_problems]
        return "\n".join(lines)


class DataCheckError(ValueError):
    """Raised by :func:`check_data` with every problem in its message; ``report`` holds the details."""

    def __init__(self, report: DataReport) -> None:
        problems = report.all_problems
        super().__init__(f"{len(problems)} data problems:\n" + "\n".join(problems))
        self.report = report


def _innermost(dataset: Any) -> Any:
    inner = getattr(dataset, "dataset", None)
    return _innermost(inner) if isinstance(inner, Dataset) else dataset


def check_dataset(dataset: Any, *, split: str = "data", decode: bool = True, max_samples: int | None = None) -> SplitReport:
    """Read every sample of ``dataset`` (or the first ``max_samples``) and record what fails.

    Args:
        dataset: a sized dataset (see the module docstring for ``check_sample``).
        split: name used in the report.
        decode: decode the files (False: only check that they exist and are not empty).
        max_samples: check only this many samples (None: all).

    Returns:
        The split's :class:`SplitReport`; an empty dataset is a problem too.
    """
    report = SplitReport(split=split, dataset=describe_dataset(dataset))
    report.num_samples = len(dataset)
    inner = _innermost(dataset)
    report.skipped = [(str(p), r) for p, r in getattr(inner, "skipped", [])]
    if report.num_samples == 0:
        report.problems.append(f"{report.dataset} has no samples")
        return report
    count = report.num_samples if max_samples is None else min(max_samples, report.num_samples)
    check = getattr(inner, "check_sample", None)
    for index in range(count):
        try:
            if check is not None:
                check(index, decode=decode)
            else:
                dataset[index]
        except Exception as e:  # noqa: BLE001 - a checker reports whatever a sample raises
            report.problems.append(f"sample {index}: {type(e).__name__}: {e}")
        report.num_checked += 1
    return report


def check_data(datamodule: Any, *, decode: bool = True, max_samples: int | None = None, raise_on_problems: bool = True) -> DataReport:
    """Set up ``datamodule`` and check every file of every split (see the module docstring).

    Args:
        datamodule: a DataModule of the project (``setup(stage)`` builds ``train_dataset``,
            ``val_dataset`` and/or ``test_dataset``); ``prepare_data`` runs first if present.
        decode: decode every file (False: only that the files exist, much faster).
        max_samples: check at most this many samples per split (None: all).
        raise_on_problems: raise :class:`DataCheckError` listing every problem (False: return
            the report either way).

    Returns:
        The :class:`DataReport`.
    """
    report = DataReport()
    try:
        if hasattr(datamodule, "prepare_data"):
            datamodule.prepare_data()
        datamodule.setup(None)
    except Exception as e:  # noqa: BLE001 - a missing folder or corrupt JSON fails in setup
        report.problems.append(f"setup: {type(e).__name__}: {e}")
    seen: dict[tuple[str, int], str] = {}
    for attr in SPLIT_ATTRIBUTES:
        dataset = getattr(datamodule, attr, None)
        if dataset is None:
            continue
        split = attr.removesuffix("_dataset")
        key = (describe_dataset(dataset), len(dataset))
        if key in seen:  # e.g. val and test read the same benchmark
            report.splits.append(SplitReport(split=split, dataset=key[0], num_samples=key[1], same_as=seen[key]))
            continue
        seen[key] = split
        report.splits.append(check_dataset(dataset, split=split, decode=decode, max_samples=max_samples))
    if not report.splits and not report.problems:
        report.problems.append(f"{type(datamodule).__name__} built no dataset in setup()")
    if raise_on_problems and not report.ok:
        raise DataCheckError(report)
    return report
