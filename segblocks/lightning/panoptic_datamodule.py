"""LightningDataModule for COCO-format panoptic data, defaulting to the embedded synthetic set."""
from __future__ import annotations

import functools
from pathlib import Path

from torch.utils.data import DataLoader

from segblocks.data import (
    COCOPanopticDataset,
    PanopticEvalTransform,
    PanopticMeta,
    PanopticTrainTransform,
    collate_panoptic,
    load_json,
    make_synthetic_panoptic,
    synthetic_panoptic_meta,
)
from segblocks.data.predict import PredictImageDataset, collate_predict
from segblocks.lightning.resumable_datamodule import ResumableDataModule

__all__ = ["PanopticDataModule"]

# Split layout of the synthetic dataset (see segblocks.data.synthetic_panoptic).
_SYNTHETIC_SPLITS = {
    split: {"images": split, "panoptic": f"panoptic_{split}", "json": f"annotations/panoptic_{split}.json"} for split in ("train", "val")
}


class PanopticDataModule(ResumableDataModule):
    """Panoptic train/val/test loaders over a COCO panoptic folder or the synthetic default.

    Batches come from :func:`~segblocks.data.collate_panoptic`. Test uses the val split.
    :attr:`meta`, :attr:`num_classes` and :attr:`thing_classes` are available right after
    construction (LightningCLI links them into the model before ``setup``).

    Predict (``lightning predict -c recipes/pro_scale.yaml --ckpt_path ... --data.predict_dir DIR``)
    reads the plain images under ``predict_dir`` (:class:`~segblocks.data.predict.PredictImageDataset`),
    resized like val/test; :class:`~segblocks.lightning.UniversalSegmentation` writes the panoptic
    PNGs and overlays (see its ``predict_step``).

    Args:
        root: COCO panoptic root; None → the synthetic dataset, generated under ``cache_dir``.
        cache_dir: where the synthetic dataset is cached (None: ``$SEGBLOCKS_CACHE`` or
            ``~/.cache/segblocks``).
        train_images: train image folder, relative to ``root`` (or absolute). The split paths are
            ignored when ``root`` is None.
        train_panoptic: train panoptic PNG folder.
        train_json: train panoptic JSON.
        val_images: val image folder.
        val_panoptic: val panoptic PNG folder.
        val_json: val panoptic JSON.
        categories_file: JSON list of categories (e.g. ``panoptic_coco_categories.json``);
            None → the ``categories`` of ``val_json``.
        crop_size: side of the square training crops.
        scale_range: scale jitter range of the training resize, as a factor of ``crop_size``.
        eval_size: shorter side of val/test images after resizing (None: original size).
        eval_max_size: upper bound of the longer side of val/test images (None: no bound).
        batch_size: images per batch (train and eval).
        num_workers: DataLoader worker processes.
        size_divisibility: padded batch sizes are multiples of it.
        synthetic_num_train: synthetic training images.
        synthetic_num_val: synthetic validation images.
        synthetic_image_size: side of the synthetic images.
        seed: synthetic generation seed.
        predict_dir: folder of images (any size; searched recursively) for ``predict``.
    """

    def __init__(
        self,
        *,
        root: str | None = None,
        cache_dir: str | None = None,
        train_images: str = "train2017",
        train_panoptic: str = "panoptic_train2017",
        train_json: str = "annotations/panoptic_train2017.json",
        val_images: str = "val2017",
        val_panoptic: str = "panoptic_val2017",
        val_json: str = "annotations/panoptic_val2017.json",
        categories_file: str | None = None,
        crop_size: int = 128,
        scale_range: tuple[float, float] = (0.75, 1.5),
        eval_size: int | None = None,
        eval_max_size: int | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        size_divisibility: int = 32,
        synthetic_num_train: int = 240,
        synthetic_num_val: int = 32,
        synthetic_image_size: int = 128,
        seed: int = 0,
        predict_dir: str | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, received {batch_size} and {num_workers}")
        self.save_hyperparameters()
        self.splits = {
            "train": {"images": train_images, "panoptic": train_panoptic, "json": train_json},
            "val": {"images": val_images, "panoptic": val_panoptic, "json": val_json},
        }
        self._meta: PanopticMeta | None = None
        self.train_dataset: COCOPanopticDataset | None = None
        self.val_dataset: COCOPanopticDataset | None = None
        self.predict_dataset: PredictImageDataset | None = None

    @property
    def meta(self) -> PanopticMeta:
        """Dataset categories (read from the categories file or ``val_json`` on first access)."""
        if self._meta is None:
            hp = self.hparams
            if hp.root is None:
                self._meta = synthetic_panoptic_meta()
            elif hp.categories_file is not None:
                self._meta = PanopticMeta.from_coco_categories(load_json(Path(hp.root) / hp.categories_file))
            else:
                val_json = Path(hp.root) / self.splits["val"]["json"]
                data = load_json(val_json)
                if "categories" not in data:
                    raise ValueError(f"{val_json} has no 'categories'; set categories_file")
                self._meta = PanopticMeta.from_coco_categories(data["categories"])
        return self._meta

    @property
    def num_classes(self) -> int:
        """Number of categories."""
        return self.meta.num_classes

    @property
    def thing_classes(self) -> list[int]:
        """Contiguous ids of the thing categories."""
        return list(self.meta.thing_classes)

    @property
    def stuff_classes(self) -> list[int]:
        """Contiguous ids of the stuff categories."""
        return list(self.meta.stuff_classes)

    def _root(self) -> Path:
        hp = self.hparams
        if hp.root is not None:
            return Path(hp.root)
        # Safe to call on every rank: generation is atomic and reuses a finished folder.
        return make_synthetic_panoptic(
            cache_dir=hp.cache_dir,
            num_train=hp.synthetic_num_train,
            num_val=hp.synthetic_num_val,
            image_size=hp.synthetic_image_size,
            seed=hp.seed,
        )

    def prepare_data(self) -> None:
        """Generate the synthetic dataset once (no-op for real data, and for ``predict``, which reads ``predict_dir``)."""
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.predicting:
            return
        self._root()

    def _dataset(self, split: str, transform, keep_original_targets: bool = False) -> COCOPanopticDataset:
        root = self._root()
        paths = _SYNTHETIC_SPLITS[split] if self.hparams.root is None else self.splits[split]
        categories = self.hparams.categories_file
        dataset = COCOPanopticDataset(
            image_dir=root / paths["images"],
            panoptic_dir=root / paths["panoptic"],
            annotation_file=root / paths["json"],
            categories_file=None if categories is None or self.hparams.root is None else root / categories,
            transform=transform,
            keep_original_targets=keep_original_targets,
        )
        if dataset.meta != self.meta:  # the model was built for self.meta
            raise ValueError(f"categories of {dataset.annotation_file} differ from those of the val split; set categories_file")
        return dataset

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets needed by ``stage`` (``fit``: train and val; ``predict``: ``predict_dir``; otherwise val)."""
        hp = self.hparams
        if stage == "predict":
            if hp.predict_dir is None:
                raise ValueError("predict needs images: set --data.predict_dir DIR (a folder of .jpg/.png files)")
            if self.predict_dataset is None:
                eval_tf = PanopticEvalTransform(short_side=hp.eval_size, max_size=hp.eval_max_size)
                self.predict_dataset = PredictImageDataset(root=hp.predict_dir, transform=eval_tf)
            return
        if stage in (None, "fit") and self.train_dataset is None:
            train_tf = PanopticTrainTransform(crop_size=hp.crop_size, scale_range=tuple(hp.scale_range))
            self.train_dataset = self._dataset("train", train_tf)
        if self.val_dataset is None:
            # Metrics are scored at each image's original resolution when the eval transform resizes.
            resizes = hp.eval_size is not None or hp.eval_max_size is not None
            eval_tf = PanopticEvalTransform(short_side=hp.eval_size, max_size=hp.eval_max_size)
            self.val_dataset = self._dataset("val", eval_tf, keep_original_targets=resizes)

    def _loader(self, dataset: COCOPanopticDataset | None, *, train: bool) -> DataLoader:
        hp = self.hparams
        # Under DDP each val/test image goes to exactly one process (never counted twice in PQ/AP).
        return self.loader(
            dataset, batch_size=hp.batch_size, train=train, num_workers=hp.num_workers,
            collate_fn=functools.partial(collate_panoptic, size_divisibility=hp.size_divisibility),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, train=False)

    def predict_dataloader(self) -> DataLoader:
        hp = self.hparams
        return self.loader(
            self.predict_dataset, batch_size=hp.batch_size, train=False, num_workers=hp.num_workers,
            collate_fn=functools.partial(collate_predict, size_divisibility=hp.size_divisibility),
        )
