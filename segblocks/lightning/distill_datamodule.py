"""Unlabelled images for SAM distillation (HRSAM supp. D.3, stage 1), defaulting to the synthetic images.

The images go through :class:`~segblocks.data.ImageFolderDataset` (longest side ``image_size``,
zero-padded square, no augmentation, so that teacher embeddings can be precomputed once per
image by :func:`segblocks.lightning.distill_module.precompute_embeddings`).

Without ``image_dir`` / ``val_image_dir`` the images of the embedded synthetic interactive dataset
(:func:`~segblocks.data.interactive.make_synthetic_instances`) are used, one sample per image.
"""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import DataLoader, Dataset

from segblocks.data import ImageFolderDataset, collate_images
from segblocks.data.interactive import make_synthetic_instances
from segblocks.lightning.resumable_datamodule import ResumableDataModule

__all__ = ["DistillationDataModule"]


class DistillationDataModule(ResumableDataModule):
    """Train / val image loaders for :class:`~segblocks.lightning.distill_module.SamDistillation`.

    Args:
        image_dir: training images (e.g. COCO ``train2017``); None → the synthetic train images.
        val_image_dir: validation images; None → the synthetic val images.
        image_size: longest side and padded side ``S`` (1024 in HRSAM).
        batch_size: images per batch (train and val).
        max_val_samples: validate on the first N images only (None: all).
        num_workers: DataLoader worker processes.
        cache_dir, synthetic_num_train, synthetic_num_val, synthetic_min_side,
            synthetic_max_side, seed: the synthetic dataset, as in
            :class:`~segblocks.lightning.interactive_datamodule.InteractiveDataModule` (object
            counts; images hold several objects each).
    """

    def __init__(
        self,
        *,
        image_dir: str | None = None,
        val_image_dir: str | None = None,
        image_size: int = 1024,
        batch_size: int = 1,
        max_val_samples: int | None = None,
        num_workers: int = 0,
        cache_dir: str | None = None,
        synthetic_num_train: int = 200,
        synthetic_num_val: int = 30,
        synthetic_min_side: int = 128,
        synthetic_max_side: int = 192,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if image_size < 1 or batch_size < 1 or num_workers < 0 or (max_val_samples is not None and max_val_samples < 1):
            raise ValueError(
                "need image_size >= 1, batch_size >= 1, num_workers >= 0, max_val_samples >= 1 or None; got "
                f"{image_size}, {batch_size}, {num_workers}, {max_val_samples}"
            )
        self.save_hyperparameters()
        self.train_dataset: ImageFolderDataset | None = None
        self.val_dataset: ImageFolderDataset | None = None

    def _synthetic_root(self) -> Path:
        hp = self.hparams
        return make_synthetic_instances(
            cache_dir=hp.cache_dir, num_train_objects=hp.synthetic_num_train, num_val_objects=hp.synthetic_num_val,
            min_side=hp.synthetic_min_side, max_side=hp.synthetic_max_side, seed=hp.seed,
        )

    def prepare_data(self) -> None:
        """Generate the synthetic dataset once if a split uses it."""
        if self.hparams.image_dir is None or self.hparams.val_image_dir is None:
            self._synthetic_root()

    def dataset(self, split: str) -> ImageFolderDataset:
        """The ``"train"`` or ``"val"`` images (also used to precompute teacher embeddings)."""
        hp = self.hparams
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val'; got {split!r}")
        folder = hp.image_dir if split == "train" else hp.val_image_dir
        root = Path(folder) if folder is not None else self._synthetic_root() / split / "images"
        return ImageFolderDataset(root=root, size=hp.image_size, limit=hp.max_val_samples if split == "val" else None)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self.dataset("train")
        if stage in (None, "fit", "validate") and self.val_dataset is None:
            self.val_dataset = self.dataset("val")

    def _loader(self, dataset: Dataset | None, *, train: bool) -> DataLoader:
        hp = self.hparams
        return self.loader(
            dataset, batch_size=hp.batch_size, train=train,
            num_workers=hp.num_workers, collate_fn=collate_images,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, train=False)
