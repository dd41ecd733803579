"""Lightning layer: LightningModules, DataModules and the CLI (recipes name these classes).

The LightningModules receive built models (``class_path`` in a recipe, or a registry name of
:func:`segblocks.models.create_model`): :class:`UniversalSegmentation` (Mask2Former / PRO-SCALE),
:class:`InteractiveSegmentation` (any click model, e.g. SAM or SAM on HRSAM) and
:class:`~segblocks.lightning.distill_module.SamDistillation` (HRSAM stage 1).
"""
from segblocks.lightning.interactive_datamodule import InteractiveDataModule
from segblocks.lightning.interactive_module import InteractiveSegmentation
from segblocks.lightning.panoptic_datamodule import PanopticDataModule
from segblocks.lightning.universal_module import UniversalSegmentation

__all__ = ["InteractiveDataModule", "InteractiveSegmentation", "PanopticDataModule", "UniversalSegmentation"]
