"""Lightning layer: LightningModules, DataModules and the CLI (recipes name these classes)."""
from segblocks.lightning.panoptic_datamodule import PanopticDataModule
from segblocks.lightning.universal_module import UniversalSegmentation

__all__ = ["PanopticDataModule", "UniversalSegmentation"]
