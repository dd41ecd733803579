"""SAM distillation (HRSAM supp. D.3, Eq. 20, stage 1): regress a frozen teacher's image embeddings.

``min_θ Σ_i ||SAM-ViT-H(x_i) − HRSAM(x_i; θ)||²`` — the student encoder (e.g. an
:class:`~segblocks.models.hrsam.HRSAMEncoder`) is trained with the MSE to the teacher's 256-d
stride-16 embeddings of the same preprocessed image. Both are injected modules (or registry
names, :func:`segblocks.models.create_model`; weights with the one checkpoint convention, e.g.
``sam_vit_h_encoder(checkpoint="sam_vit_h_4b8939.pth", checkpoint_prefix="image_encoder.")``).
The teacher is either

* a module run frozen, in eval mode and without gradients on every batch, or
* embeddings precomputed on disk, as the authors do (HRSAM code,
  YouHuang67/High-Resolution-Segment-Anything, ``BaseEmbedLoader`` in the stage-1 configs):
  ``<embeddings_dir>/<split>/<quoted sample id>.pt`` (or ``.npy``), one ``(C, h, w)`` tensor per
  image, written by :func:`precompute_teacher_embeddings` (whole splits of a
  :class:`~segblocks.lightning.distill_datamodule.DistillationDataModule`) or
  :func:`precompute_embeddings` (any batches).

Both see the student's input: images with their padding set to the pixel mean, normalised and
padded to a multiple of 16 (:func:`encoder_inputs`, the same preprocessing as
:class:`~segblocks.models.sam.SamClickModel`, so stage 2 sees what stage 1 trained on). The loss
is the mean over all elements, i.e. the per-sample MSE (the authors' loss) averaged over the
batch. A module teacher is left out of the saved checkpoints.

Optimisation: :func:`segblocks.optim.configure_adamw` — AdamW 1e-4, wd 0.05, layer-wise lr decay
0.9 over the student's blocks (Cycle-scans, ``pos_embed`` and ``patch_embed`` excluded), linear
warm-up from 1e-6 then poly decay (HRSAM supp. D.3 and its stage-1 config).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence
from urllib.parse import quote

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import nn

from segblocks.models import create_model
from segblocks.models.sam import SamPreprocess
from segblocks.models.sam.click_model import mean_pad
from segblocks.optim import configure_adamw

__all__ = [
    "EMBEDDING_SUFFIXES",
    "PrecomputedEmbeddings",
    "SamDistillation",
    "HRSAM_LAYER_DECAY_IGNORE",
    "embedding_file",
    "encoder_inputs",
    "precompute_embeddings",
    "precompute_teacher_embeddings",
]

EMBEDDING_SUFFIXES = (".pt", ".npy")


def encoder_inputs(images: torch.Tensor, valid_size: torch.Tensor, preprocess: SamPreprocess) -> torch.Tensor:
    """Encoder input of zero-padded 0–255 images: padding set to the pixel mean, normalised, padded.

    Args:
        images: (B, 3, H, W) float RGB 0–255, real content in the top-left ``valid_size``.
        valid_size: (B, 2) ``(h, w)`` of real content.
        preprocess: normalisation and padding to the encoder's stride.

    Returns:
        (B, 3, Hp, Wp) with the padding exactly 0 after normalisation (the authors' normalise-then-pad
        order, HRSAM code ``configs/hrsam/hrsam.py``).
    """
    return preprocess(mean_pad(images, valid_size, preprocess.pixel_mean))  # B x 3 x Hp x Wp


def embedding_file(root: str | os.PathLike, sample_id: str, suffix: str = ".pt") -> Path:
    """``root / (quote(sample_id) + suffix)``: ids with ``/`` or odd characters map to one flat, reversible name."""
    if suffix not in EMBEDDING_SUFFIXES:
        raise ValueError(f"suffix must be one of {EMBEDDING_SUFFIXES}; got {suffix!r}")
    return Path(root) / (quote(str(sample_id), safe="") + suffix)


class PrecomputedEmbeddings:
    """Teacher embeddings read from ``root``, one ``.pt`` or ``.npy`` ``(C, h, w)`` file per sample id.

    Args:
        root: folder written by :func:`precompute_embeddings` (one split).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"embeddings folder not found: {self.root}")

    def load(self, sample_id: str) -> torch.Tensor:
        """The ``(C, h, w)`` float tensor stored for ``sample_id``."""
        for suffix in EMBEDDING_SUFFIXES:
            path = embedding_file(self.root, sample_id, suffix)
            if path.is_file():
                break
        else:
            missing = embedding_file(self.root, sample_id)
            raise FileNotFoundError(f"no precomputed embedding for sample {sample_id!r}: {missing} (.pt/.npy)")
        try:
            if suffix == ".npy":
                value = torch.from_numpy(np.load(path))
            else:
                value = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch / numpy raise many types for corrupt files
            raise ValueError(f"could not read embedding file {path}: {err}") from err
        if not isinstance(value, torch.Tensor) or value.dim() != 3 or not value.is_floating_point():
            got = getattr(value, "shape", type(value))
            raise ValueError(f"embedding file {path} must hold a float (C, h, w) tensor; got {got}")
        return value

    def __call__(self, sample_ids: Sequence[str], *, device: torch.device | str = "cpu") -> torch.Tensor:
        """Stacked ``(B, C, h, w)`` float32 embeddings of ``sample_ids`` on ``device``."""
        return torch.stack([self.load(i) for i in sample_ids]).to(device=device, dtype=torch.float32)


def _save_atomically(value: torch.Tensor, path: Path) -> None:
    """Write to a temporary sibling, then rename: a file at ``path`` is always complete."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if path.suffix == ".npy":
                np.save(fh, value.numpy())
            else:
                torch.save(value, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@torch.no_grad()
def precompute_embeddings(
    *,
    teacher: nn.Module,
    batches: Iterable[dict[str, Any]],
    out_dir: str | os.PathLike,
    preprocess: SamPreprocess | None = None,
    suffix: str = ".pt",
    dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
    device: torch.device | str = "cpu",
) -> int:
    """Run ``teacher`` on ``batches`` and store every sample's embedding under ``out_dir``.

    Each file is written atomically (temporary file + rename), so an interrupted run leaves only
    complete files and can simply be restarted; existing files are skipped unless ``overwrite``.

    Args:
        teacher: encoder mapping normalised (B, 3, Hp, Wp) to (B, C, Hp/16, Wp/16); run in eval mode.
        batches: dicts with ``image`` (B, 3, H, W) 0–255, ``valid_size`` (B, 2) and
            ``sample_id`` (B strings), e.g. a loader of
            :class:`~segblocks.data.ImageFolderDataset`.
        out_dir: destination folder (created).
        preprocess: normalisation (default :class:`~segblocks.models.sam.SamPreprocess`).
        suffix: ``".pt"`` or ``".npy"``.
        dtype: stored dtype (float16 halves the disk use).
        overwrite: recompute existing files.
        device: where the teacher runs.

    Returns:
        The number of files written.
    """
    if suffix not in EMBEDDING_SUFFIXES:
        raise ValueError(f"suffix must be one of {EMBEDDING_SUFFIXES}; got {suffix!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    preprocess = (preprocess or SamPreprocess()).to(device)
    was_training = teacher.training
    teacher.eval().to(device)
    written = 0
    try:
        for batch in batches:
            paths = [embedding_file(out_dir, i, suffix) for i in batch["sample_id"]]
            todo = [k for k, p in enumerate(paths) if overwrite or not p.is_file()]
            if not todo:
                continue
            x = encoder_inputs(batch["image"][todo].to(device), batch["valid_size"][todo], preprocess)
            emb = teacher(x).to("cpu", dtype)  # b x C x h x w
            for k, e in zip(todo, emb):
                _save_atomically(e.contiguous(), paths[k])
                written += 1
    finally:
        teacher.train(was_training)
    return written


#: Parameters the HRSAM stage-1 config keeps out of the layer-wise lr decay (Mamba = Cycle-scan).
HRSAM_LAYER_DECAY_IGNORE = ("*cycle_scans*", "*fusion_scans*", "*pos_embed*", "*patch_embed*")


def _module(value: nn.Module | str, what: str) -> nn.Module:
    if isinstance(value, str):
        value = create_model(value)
    if not isinstance(value, nn.Module):
        raise TypeError(f"{what} must be an nn.Module or a registry name; got {type(value).__name__}")
    return value


class SamDistillation(LightningModule):
    """Stage 1 of HRSAM (supp. D.3): MSE between the student's and a frozen teacher's embeddings.

    Batches: ``image`` (B, 3, H, W) 0–255, ``valid_size`` (B, 2), ``sample_id`` — from
    :class:`~segblocks.lightning.distill_datamodule.DistillationDataModule`.

    Args:
        student: the encoder to train, or a registry name (``"hrsam_tiny"``, ``"hrsam_pp_vit_b"``, ...).
        teacher: frozen teacher encoder or registry name (e.g. ``sam_vit_h_encoder`` with its
            checkpoint); exclusive with ``embeddings_dir``.
        embeddings_dir: precomputed embeddings with ``train/`` and ``val/`` sub-folders.
        lr, weight_decay: AdamW (1e-4, 0.05).
        warmup_steps, warmup_start_factor: linear warm-up (1500 steps from 1e-6).
        layer_decay: layer-wise lr decay of the student's ``blocks.{i}`` (0.9 in HRSAM; None: off).
        layer_decay_ignore: ``fnmatch`` patterns of student parameters without layer decay.

    The trained encoder's weights are the checkpoint keys ``student.*``; stage 2 loads them with
    ``hrsam_tiny(checkpoint=..., checkpoint_prefix="student.")``.
    """

    def __init__(
        self,
        *,
        student: nn.Module | str,
        teacher: nn.Module | str | None = None,
        embeddings_dir: str | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        warmup_steps: int = 1500,
        warmup_start_factor: float = 1e-6,
        layer_decay: float | None = 0.9,
        layer_decay_ignore: Sequence[str] = HRSAM_LAYER_DECAY_IGNORE,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            ignore=[k for k, v in (("student", student), ("teacher", teacher)) if isinstance(v, nn.Module)]
        )
        if (teacher is None) == (embeddings_dir is None):
            raise ValueError("give exactly one teacher: a `teacher` module (or name) or a precomputed `embeddings_dir`")
        self.student = _module(student, "student")
        self.teacher = _module(teacher, "teacher") if teacher is not None else None
        if self.teacher is not None:
            self.teacher.requires_grad_(False).eval()
        self.embeddings = (
            {split: PrecomputedEmbeddings(Path(embeddings_dir) / split) for split in ("train", "val")}
            if embeddings_dir is not None else None
        )
        self.preprocess = SamPreprocess(size_divisor=getattr(self.student, "patch_size", 16))

    def train(self, mode: bool = True) -> "SamDistillation":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen: never in training mode
        return self

    def teacher_embeddings(self, x: torch.Tensor, sample_ids: Sequence[str], split: str) -> torch.Tensor:
        """(B, C, h, w) float32 targets for the encoder inputs ``x`` of ``sample_ids``."""
        if self.embeddings is not None:
            return self.embeddings[split](sample_ids, device=x.device)
        with torch.no_grad():
            return self.teacher(x).float()

    def distillation_loss(self, batch: dict[str, Any], split: str) -> torch.Tensor:
        """Eq. 20 averaged: mean squared error between student and teacher embeddings of the batch."""
        x = encoder_inputs(batch["image"], batch["valid_size"], self.preprocess)  # B x 3 x Hp x Wp
        target = self.teacher_embeddings(x, batch["sample_id"], split)
        pred = self.student(x)
        if pred.shape != target.shape:
            raise ValueError(f"student embeddings {tuple(pred.shape)} and teacher embeddings {tuple(target.shape)} differ")
        return F.mse_loss(pred.float(), target)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.distillation_loss(batch, "train")
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["sample_id"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.log(
            "val/mse", self.distillation_loss(batch, "val"), prog_bar=True, batch_size=len(batch["sample_id"]),
            sync_dist=True,
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The frozen teacher is rebuilt from its own source; keep checkpoints student-sized.
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("teacher.")}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.teacher is not None:  # put the current teacher back so strict loading succeeds
            checkpoint["state_dict"].update({f"teacher.{k}": v for k, v in self.teacher.state_dict().items()})

    def configure_optimizers(self):
        hp = self.hparams
        return configure_adamw(
            self.student, lr=hp.lr, weight_decay=hp.weight_decay, layer_decay=hp.layer_decay,
            layer_decay_ignore=tuple(hp.layer_decay_ignore),
            total_steps=max(int(self.trainer.estimated_stepping_batches), 1), warmup_steps=hp.warmup_steps,
            warmup_start_factor=hp.warmup_start_factor, decay="poly",
        )


def precompute_teacher_embeddings(
    *,
    teacher: nn.Module | str,
    out_dir: str | os.PathLike,
    datamodule: Any = None,
    splits: Sequence[str] = ("train", "val"),
    batch_size: int = 1,
    num_workers: int = 0,
    suffix: str = ".pt",
    dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
    device: torch.device | str | None = None,
) -> dict[str, int]:
    """Write the teacher's embeddings of every image of ``datamodule``'s splits under ``out_dir/<split>/``.

    The files are what ``SamDistillation(embeddings_dir=out_dir)`` reads. Resumable: existing
    files are skipped unless ``overwrite`` (see :func:`precompute_embeddings`).

    Args:
        teacher: encoder module or registry name (e.g. ``create_model("sam_vit_h_encoder",
            checkpoint="sam_vit_h_4b8939.pth", checkpoint_prefix="image_encoder.")``).
        out_dir: destination root; gets one sub-folder per split.
        datamodule: the images (default: ``DistillationDataModule()``, the synthetic images);
            its ``image_size`` must be the one used for training.
        splits: ``"train"`` and/or ``"val"``.
        batch_size, num_workers: loader settings.
        suffix: ``".pt"`` or ``".npy"``.
        dtype: stored dtype (``torch.float16`` halves the disk use).
        overwrite: recompute existing files.
        device: where the teacher runs (default: CUDA when available, else CPU).

    Returns:
        ``{split: number of files written}``.
    """
    from segblocks.data import collate_images
    from segblocks.lightning.distill_datamodule import DistillationDataModule

    teacher = _module(teacher, "teacher")
    dm = datamodule if datamodule is not None else DistillationDataModule()
    device = device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    dm.prepare_data()
    written = {}
    for split in splits:
        loader = torch.utils.data.DataLoader(
            dm.dataset(split), batch_size=batch_size, num_workers=num_workers, collate_fn=collate_images
        )
        written[split] = precompute_embeddings(
            teacher=teacher, batches=loader, out_dir=Path(out_dir) / split, suffix=suffix, dtype=dtype,
            overwrite=overwrite, device=device,
        )
    return written
