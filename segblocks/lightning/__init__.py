"""Lightning layer: LightningModules, DataModules and the CLI (recipes name these classes)."""
from segblocks.lightning.interactive_datamodule import InteractiveDataModule
from segblocks.lightning.interactive_module import InteractiveSegmentation
from segblocks.lightning.panoptic_datamodule import PanopticDataModule
from segblocks.lightning.sam_module import SamInteractive
from segblocks.lightning.universal_module import UniversalSegmentation

__all__ = ["InteractiveDataModule", "InteractiveSegmentation", "PanopticDataModule", "SamInteractive", "UniversalSegmentation"]
