"""SAM distillation (HRSAM supp. D.3, Eq. 20, stage 1): regress a frozen teacher's image embeddings.

``min_θ Σ_i ||SAM-ViT-H(x_i) − HRSAM(x_i; θ)||²`` — the student encoder (e.g. an
:class:`~segblocks.models.hrsam.HRSAMEncoder`) is trained with the MSE to the teacher's 256-d
stride-16 embeddings of the same preprocessed image. The teacher is either

* a module (any SAM-style encoder, e.g. :class:`~segblocks.models.sam.ViTImageEncoder` with a
  local checkpoint) run frozen, in eval mode and without gradients on every batch, or
* embeddings precomputed on disk, as the authors do (``BaseEmbedLoader``, notes
  official_code_facts §2.1): ``<embeddings_dir>/<split>/<quoted sample id>.pt`` (or ``.npy``),
  one ``(C, h, w)`` tensor per image, written by :func:`precompute_embeddings` or by::

      python -m segblocks.lightning.distill_module --out data/embeds --teacher-preset vit_b \\
          --checkpoint sam_vit_b_01ec64.pth --image-dir coco/train2017 --val-image-dir coco/val2017

Both see the student's input: images with their padding set to the pixel mean, normalised and
padded to a multiple of 16 (:func:`encoder_inputs`, the same preprocessing as
:class:`~segblocks.lightning.sam_module.SamInteractive`, so stage 2 sees what stage 1 trained
on). The loss is the mean over all elements, i.e. the per-sample MSE (the authors' loss)
averaged over the batch. A module teacher is left out of the saved checkpoints.

Optimisation: :func:`~segblocks.lightning.warmup_poly.warmup_poly_optimizer` (AdamW 1e-4, wd
0.05, linear warm-up from 1e-6 then poly decay). The authors' stage 1 additionally uses a
layer-wise lr decay of 0.9, not reproduced here.
"""
from __future__ import annotations

import argparse
import json
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

from segblocks.lightning.warmup_poly import warmup_poly_optimizer
from segblocks.models.backbones.checkpoint import load_checkpoint
from segblocks.models.hrsam import HRSAM_PRESETS
from segblocks.models.sam import SamPreprocess

__all__ = [
    "EMBEDDING_SUFFIXES",
    "PrecomputedEmbeddings",
    "SamDistillation",
    "embedding_file",
    "encoder_inputs",
    "main",
    "precompute_embeddings",
]

EMBEDDING_SUFFIXES = (".pt", ".npy")


def encoder_inputs(images: torch.Tensor, valid_size: torch.Tensor, preprocess: SamPreprocess) -> torch.Tensor:
    """Encoder input of zero-padded 0–255 images: padding set to the pixel mean, normalised, padded.

    Args:
        images: (B, 3, H, W) float RGB 0–255, real content in the top-left ``valid_size``.
        valid_size: (B, 2) ``(h, w)`` of real content.
        preprocess: normalisation and padding to the encoder's stride.

    Returns:
        (B, 3, Hp, Wp) with the padding exactly 0 after normalisation (notes §0.2).
    """
    if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(f"images must be float (B, 3, H, W); got {images.dtype} {tuple(images.shape)}")
    if valid_size.shape != (images.shape[0], 2):
        raise ValueError(f"valid_size must be (B={images.shape[0]}, 2); got {tuple(valid_size.shape)}")
    B, _, H, W = images.shape
    h, w = valid_size.to(images.device).unbind(-1)  # B each
    rows = torch.arange(H, device=images.device).view(1, H, 1) < h.view(B, 1, 1)  # B x H x 1
    cols = torch.arange(W, device=images.device).view(1, 1, W) < w.view(B, 1, 1)  # B x 1 x W
    mean = preprocess.pixel_mean.to(images)  # 3 x 1 x 1
    return preprocess(torch.where((rows & cols)[:, None], images, mean))  # B x 3 x Hp x Wp


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
            :class:`~segblocks.lightning.distill_datamodule.DistillationImages`.
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


class SamDistillation(LightningModule):
    """Stage 1 of HRSAM (supp. D.3): MSE between the student's and a frozen teacher's embeddings.

    Batches: ``image`` (B, 3, H, W) 0–255, ``valid_size`` (B, 2), ``sample_id`` — from
    :class:`~segblocks.lightning.distill_datamodule.DistillationDataModule`.

    Args:
        student: the encoder to train; or leave None and name ``student_preset``.
        student_preset: a key of :data:`~segblocks.models.hrsam.HRSAM_PRESETS` (``"tiny"``,
            ``"pp_tiny"``, ``"vit_b"``, ``"pp_vit_b"``); ``"tiny"`` when neither is given.
        student_kwargs: keyword overrides of the preset (e.g. ``{"drop_path_rate": 0.2}``).
        teacher: frozen teacher encoder (e.g. ``ViTImageEncoder``); exclusive with ``embeddings_dir``.
        teacher_checkpoint: local file loaded into ``teacher`` (strict).
        teacher_prefix: key prefix of the teacher in that file (``"image_encoder."`` for the
            official SAM files, ``"sam.image_encoder."`` for a
            :class:`~segblocks.lightning.sam_module.SamInteractive` checkpoint).
        embeddings_dir: precomputed embeddings with ``train/`` and ``val/`` sub-folders.
        lr, weight_decay, warmup_steps, warmup_start_factor: see
            :func:`~segblocks.lightning.warmup_poly.warmup_poly_optimizer`.

    The trained encoder's weights are the checkpoint keys ``student.*`` (stage 2 loads them with
    :class:`~segblocks.lightning.hrsam_module.HRSAMInteractive`'s ``encoder_checkpoint``).
    """

    def __init__(
        self,
        *,
        student: nn.Module | None = None,
        student_preset: str | None = None,
        student_kwargs: dict[str, Any] | None = None,
        teacher: nn.Module | None = None,
        teacher_checkpoint: str | None = None,
        teacher_prefix: str = "image_encoder.",
        embeddings_dir: str | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        warmup_steps: int = 1500,
        warmup_start_factor: float = 1e-6,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["student", "teacher"])
        if student is not None and (student_preset is not None or student_kwargs):
            raise ValueError("give either a built `student` or a `student_preset` (+ `student_kwargs`), not both")
        if (teacher is None) == (embeddings_dir is None):
            raise ValueError("give exactly one teacher: a `teacher` module or a precomputed `embeddings_dir`")
        if teacher_checkpoint is not None and teacher is None:
            raise ValueError("`teacher_checkpoint` needs a `teacher` module to load into")
        if student is None:
            preset = student_preset or "tiny"
            if preset not in HRSAM_PRESETS:
                raise ValueError(f"student_preset must be one of {sorted(HRSAM_PRESETS)}; got {preset!r}")
            student = HRSAM_PRESETS[preset](**(student_kwargs or {}))
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            if teacher_checkpoint is not None:
                load_checkpoint(teacher, teacher_checkpoint, prefix=teacher_prefix, strict=True)
            teacher.requires_grad_(False).eval()
        self.embeddings = (
            {split: PrecomputedEmbeddings(Path(embeddings_dir) / split) for split in ("train", "val")}
            if embeddings_dir is not None else None
        )
        self.preprocess = SamPreprocess(size_divisor=getattr(student, "patch_size", 16))

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
        self.log("val/mse", self.distillation_loss(batch, "val"), prog_bar=True, batch_size=len(batch["sample_id"]))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The frozen teacher is rebuilt from its own source; keep checkpoints student-sized.
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("teacher.")}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.teacher is not None:  # put the current teacher back so strict loading succeeds
            checkpoint["state_dict"].update({f"teacher.{k}": v for k, v in self.teacher.state_dict().items()})

    def configure_optimizers(self):
        hp = self.hparams
        return warmup_poly_optimizer(
            self.student.parameters(), lr=hp.lr, weight_decay=hp.weight_decay, warmup_steps=hp.warmup_steps,
            total_steps=max(int(self.trainer.estimated_stepping_batches), 1), start_factor=hp.warmup_start_factor,
        )


def main(argv: list[str] | None = None) -> None:
    """``python -m segblocks.lightning.distill_module``: precompute teacher embeddings (see the module docstring)."""
    from segblocks.lightning.distill_datamodule import DistillationDataModule, collate_images
    from segblocks.lightning.sam_module import SAM_PRESETS
    from segblocks.models.sam import ViTImageEncoder

    p = argparse.ArgumentParser(prog="python -m segblocks.lightning.distill_module", description=main.__doc__)
    p.add_argument("--out", required=True, help="output folder; gets train/ and val/ sub-folders")
    teacher = p.add_mutually_exclusive_group()
    teacher.add_argument("--teacher-preset", choices=sorted(SAM_PRESETS), default="tiny",
                         help="SAM preset whose encoder is the teacher")
    teacher.add_argument("--vit-kwargs", help="ViTImageEncoder keyword arguments as JSON, e.g. SAM ViT-H: "
                         '\'{"embed_dim": 1280, "depth": 32, "num_heads": 16, "global_attn_indexes": [7, 15, 23, 31]}\'')
    p.add_argument("--checkpoint", help="local teacher weights")
    p.add_argument("--prefix", default="image_encoder.", help="teacher key prefix in --checkpoint")
    p.add_argument("--image-dir", help="training images (default: the synthetic train images)")
    p.add_argument("--val-image-dir", help="validation images (default: the synthetic val images)")
    p.add_argument("--image-size", type=int, default=1024)
    p.add_argument("--cache-dir", help="synthetic dataset cache")
    p.add_argument("--synthetic-num-train", type=int, default=200)
    p.add_argument("--synthetic-num-val", type=int, default=30)
    p.add_argument("--splits", nargs="+", choices=("train", "val"), default=["train", "val"])
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--format", choices=("pt", "npy"), default="pt")
    p.add_argument("--half", action="store_true", help="store float16")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)

    if args.vit_kwargs is not None:
        encoder = ViTImageEncoder(**json.loads(args.vit_kwargs))
        if args.checkpoint:
            load_checkpoint(encoder, args.checkpoint, prefix=args.prefix, strict=True)
    else:
        encoder = SAM_PRESETS[args.teacher_preset](checkpoint=args.checkpoint).image_encoder
    dm = DistillationDataModule(
        image_dir=args.image_dir, val_image_dir=args.val_image_dir, image_size=args.image_size, cache_dir=args.cache_dir,
        synthetic_num_train=args.synthetic_num_train, synthetic_num_val=args.synthetic_num_val,
    )
    for split in args.splits:
        loader = torch.utils.data.DataLoader(dm.dataset(split), batch_size=args.batch_size, collate_fn=collate_images)
        n = precompute_embeddings(
            teacher=encoder, batches=loader, out_dir=Path(args.out) / split, suffix="." + args.format,
            dtype=torch.float16 if args.half else torch.float32, overwrite=args.overwrite, device=args.device,
        )
        print(f"{split}: wrote {n} embeddings to {Path(args.out) / split}")


if __name__ == "__main__":
    main()
