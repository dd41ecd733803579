"""FocSAM (Huang et al., CVPR 2024): SAM plus a focus refiner run once per object.

See :class:`~segblocks.models.focsam.model.FocSAM`; the refiner blocks are in
:mod:`segblocks.blocks.focsam`; the refine step's ``torch.export`` / ONNX graph is in
:mod:`segblocks.models.focsam.export`.
"""
from segblocks.models.focsam.model import (
    FocSAM,
    FocSamState,
    focsam_hrsam_tiny,
    focsam_tiny,
    focsam_vit_b,
    focsam_vit_h_refiner,
    focus_refine,
)

__all__ = ["FocSAM", "FocSamState", "focsam_hrsam_tiny", "focsam_tiny", "focsam_vit_b", "focsam_vit_h_refiner", "focus_refine"]
