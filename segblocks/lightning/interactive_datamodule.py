"""LightningDataModule for click-based interactive segmentation, defaulting to the synthetic instances.

* **train**: COCO / LVIS instances (``train_annotation_file`` + ``train_image_dir``) or the
  synthetic train split, through :class:`~segblocks.data.interactive.InteractiveTrainTransform`.
* **val / test**: the benchmark at ``root`` in ``layout`` or, without a root, the synthetic val
  split, through :class:`~segblocks.data.interactive.InteractiveEvalTransform` (longest side
  ``eval_size``, originals kept for scoring).

So ``lightning test -c recipe.yaml --data.root GrabCut`` evaluates on GrabCut whatever the
recipe trained on. Under DDP every val/test sample is evaluated by exactly one process
(:func:`~segblocks.lightning._loaders.make_loader`), so 1 and N processes score the same set.
"""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import DataLoader, Dataset

from segblocks.data import IndexedDataset
from segblocks.data.interactive import (
    BENCHMARK_LAYOUTS,
    BenchmarkDataset,
    COCOInstanceDataset,
    ImageMaskFolderDataset,
    InteractiveEvalTransform,
    InteractiveTrainTransform,
    SBDInstanceDataset,
    SyntheticInstanceDataset,
    collate_interactive,
    make_synthetic_instances,
)
from segblocks.lightning.resumable_datamodule import ResumableDataModule

__all__ = ["EVAL_LAYOUTS", "InteractiveDataModule"]

#: Accepted ``layout`` values: the benchmark layouts, ``sbd`` and ``folder``.
EVAL_LAYOUTS = (*sorted(BENCHMARK_LAYOUTS), "sbd", "folder")


class InteractiveDataModule(ResumableDataModule):
    """Per-object train / val / test loaders (see the module docstring).

    Args:
        root: evaluation benchmark folder; None → the synthetic val split.
        layout: how ``root`` is organised, one of :data:`EVAL_LAYOUTS` (``grabcut`` when None):
            the :data:`~segblocks.data.interactive.BENCHMARK_LAYOUTS` (``grabcut``, ``berkeley``,
            ``davis``, ``coco_mval``, ``focuscut``), ``sbd`` (SBD val instances) or ``folder``
            (``root/images`` + ``root/masks`` paired by stem, any non-zero mask value is the object).
        skip_empty_masks: leave out evaluation masks without object pixels (listed in
            :attr:`skipped_samples`, with a warning) instead of failing on them.
        eval_size: longest side ``T`` of val/test inputs (SAM: 1024).
        max_val_samples: evaluate only the first N val samples (None: all).
        max_test_samples: evaluate only the first N test samples (None: all), e.g. for smoke tests.
        train_annotation_file: COCO / LVIS instances JSON; None → the synthetic train split.
        train_image_dir: image folder of ``train_annotation_file``.
        train_min_area: skip training objects smaller than this (pixels).
        crop_size: side of the square training crops.
        scale_range: random scale of the training resize, as a factor of ``crop_size``.
        batch_size: training objects per batch.
        eval_batch_size: evaluation objects per batch (1: the protocol's per-sample latency).
        num_workers: DataLoader worker processes.
        cache_dir: where the synthetic dataset is generated (None: ``$SEGBLOCKS_CACHE`` or
            ``~/.cache/segblocks``).
        synthetic_num_train: synthetic training objects.
        synthetic_num_val: synthetic validation objects.
        synthetic_min_side: smallest synthetic image side.
        synthetic_max_side: largest synthetic image side.
        seed: synthetic generation seed.
    """

    def __init__(
        self,
        *,
        root: str | None = None,
        layout: str | None = None,
        skip_empty_masks: bool = False,
        eval_size: int = 256,
        max_val_samples: int | None = None,
        max_test_samples: int | None = None,
        train_annotation_file: str | None = None,
        train_image_dir: str | None = None,
        train_min_area: float = 0.0,
        crop_size: int = 256,
        scale_range: tuple[float, float] = (0.75, 1.4),
        batch_size: int = 8,
        eval_batch_size: int = 1,
        num_workers: int = 0,
        cache_dir: str | None = None,
        synthetic_num_train: int = 200,
        synthetic_num_val: int = 30,
        synthetic_min_side: int = 128,
        synthetic_max_side: int = 192,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1 or num_workers < 0:
            raise ValueError(
                "need batch_size >= 1, eval_batch_size >= 1, num_workers >= 0; "
                f"got {batch_size}, {eval_batch_size}, {num_workers}"
            )
        if layout is not None and layout not in EVAL_LAYOUTS:
            raise ValueError(f"layout must be one of {EVAL_LAYOUTS}; got {layout!r}")
        if layout is not None and root is None:
            raise ValueError(f"layout {layout!r} needs a root folder")
        if (train_annotation_file is None) != (train_image_dir is None):
            raise ValueError("give both train_annotation_file and train_image_dir (COCO training) or neither (synthetic)")
        for name, limit in (("max_val_samples", max_val_samples), ("max_test_samples", max_test_samples)):
            if limit is not None and limit < 1:
                raise ValueError(f"{name} must be >= 1 or None; got {limit}")
        self.save_hyperparameters()
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None

    def _synthetic_root(self) -> Path:
        hp = self.hparams
        # Safe to call on every rank: generation is atomic and reuses a finished folder.
        return make_synthetic_instances(
            cache_dir=hp.cache_dir,
            num_train_objects=hp.synthetic_num_train,
            num_val_objects=hp.synthetic_num_val,
            min_side=hp.synthetic_min_side,
            max_side=hp.synthetic_max_side,
            seed=hp.seed,
        )

    def prepare_data(self) -> None:
        """Generate the synthetic dataset once if some split uses it."""
        if self.hparams.root is None or self.hparams.train_annotation_file is None:
            self._synthetic_root()

    def _eval_dataset(self) -> Dataset:
        hp = self.hparams
        transform = InteractiveEvalTransform(target_size=hp.eval_size)
        if hp.root is None:
            return SyntheticInstanceDataset(split="val", root=self._synthetic_root(), transform=transform)
        layout = hp.layout or "grabcut"
        on_empty = "skip" if hp.skip_empty_masks else "error"
        if layout == "sbd":
            return SBDInstanceDataset(root=hp.root, split="val", transform=transform)
        if layout == "folder":
            root = Path(hp.root)
            return ImageMaskFolderDataset(image_dir=root / "images", mask_dir=root / "masks", transform=transform, on_empty=on_empty)
        return BenchmarkDataset(root=hp.root, layout=layout, transform=transform, on_empty=on_empty)

    @property
    def skipped_samples(self) -> list[tuple[Path, str]]:
        """``(mask path, reason)`` of the evaluation files left out by ``skip_empty_masks`` (after ``setup``)."""
        for dataset in (self.test_dataset, self.val_dataset):
            if dataset is not None:
                return list(getattr(dataset.dataset, "skipped", []))
        return []

    def _train_dataset(self) -> Dataset:
        hp = self.hparams
        transform = InteractiveTrainTransform(crop_size=hp.crop_size, scale_range=tuple(hp.scale_range))
        if hp.train_annotation_file is None:
            return SyntheticInstanceDataset(split="train", root=self._synthetic_root(), transform=transform)
        return COCOInstanceDataset(
            image_dir=hp.train_image_dir,
            annotation_file=hp.train_annotation_file,
            min_area=hp.train_min_area,
            transform=transform,
        )

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets ``stage`` needs (``fit``: train and val; ``validate``: val; ``test``: test)."""
        hp = self.hparams
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self._train_dataset()
        if stage in (None, "fit", "validate") and self.val_dataset is None:
            self.val_dataset = IndexedDataset(self._eval_dataset(), hp.max_val_samples)
        if stage in (None, "test") and self.test_dataset is None:
            self.test_dataset = IndexedDataset(self._eval_dataset(), hp.max_test_samples)

    def _loader(self, dataset: Dataset | None, *, train: bool) -> DataLoader:
        hp = self.hparams
        return self.loader(
            dataset, batch_size=hp.batch_size if train else hp.eval_batch_size,
            train=train, num_workers=hp.num_workers, collate_fn=collate_interactive,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, train=False)
