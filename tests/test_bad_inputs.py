"""Every catalogued block at its edge: bad shapes, bad dtypes, empty inputs, non-integer sizes.

One rule for every block in :data:`segblocks._catalog.BLOCKS` (and so for the families that
follow): a malformed input raises a ``TypeError``/``ValueError`` that names the block or the
argument and what was expected, never an error from deep inside torch or numpy; an empty batch
(``B = 0``) or a zero-length input returns an empty output of the documented shape; a
non-integer size (``2.5``, ``True``) is refused, never truncated. ``test_every_catalogued_block_
is_covered`` fails when a block is added to the catalog without its cases here.

The validation must not read tensor contents (no host synchronisation): see
``test_validation_reads_no_tensor_values``.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _edge_cases import case_params, edge_case_failures, empty_shape as _empty

from segblocks._catalog import BLOCKS
from segblocks.blocks.hrsam_attention import FlashSwinAttention, FlexibleLocalAttention
from segblocks.blocks.hrsam_cyclescan import CycleScan, MultiScaleCycleScan, PerScaleCycleScan
from segblocks.blocks.proscale import (
    DeformableEncoderLayer,
    LightPixelEmbedding,
    ProgressiveScaleEncoder,
    TokenRecalibration,
)
from segblocks.interactive.clicker import next_click, sample_initial_clicks, sample_num_clicks
from segblocks.layers.ms_deform_attn import MSDeformAttn
from segblocks.losses import NormalizedFocalLoss, PointLoss
from segblocks.models.hrsam.encoder import HRSAMEncoder, HRSAMPlusPlusEncoder
from segblocks.models.mask2former import (
    HungarianMatcher,
    Mask2Former,
    MSDeformPixelDecoder,
    MultiScaleMaskedTransformerDecoder,
    SetCriterion,
)
from segblocks.ops.fla_mapping import shift_window_mapping
from segblocks.ops.ms_deform_attn import ms_deform_attn
from segblocks.ops.selective_scan import selective_scan
from segblocks.ops.varlen_attention import varlen_attention

F32, F64 = torch.float32, torch.float64

# ----------------------------------------------------------------------------- small instances


def pse(**kw):
    return ProgressiveScaleEncoder(layers_per_stage=(1, 1, 1), d_model=32, n_heads=4, d_ffn=64, **kw)


def pse_feats(b=2, c=32, dtype=F32):
    return [torch.randn(b, c, 2, 3, dtype=dtype), torch.randn(b, c, 3, 5, dtype=dtype), torch.randn(b, c, 5, 9, dtype=dtype)]


def msda_inputs(b=2, lq=3, dtype=F32):
    shapes = torch.tensor([[2, 3], [3, 5]])
    starts = torch.tensor([0, 6])
    return (
        torch.randn(b, 21, 2, 4, dtype=dtype), shapes, starts,
        torch.rand(b, lq, 2, 2, 2, 2, dtype=dtype), torch.rand(b, lq, 2, 2, 2, dtype=dtype),
    )


def msdeform(b=2, lq=3, dtype=F32, c=8):
    m = MSDeformAttn(d_model=8, n_levels=2, n_heads=2, n_points=2)
    return m, (torch.randn(b, lq, c, dtype=dtype), torch.rand(b, lq, 2, 2, dtype=dtype),
               torch.randn(b, 21, c, dtype=dtype), torch.tensor([[2, 3], [3, 5]]), torch.tensor([0, 6]))


def pixel_decoder():
    enc = pse(token_recalibration=False)
    return MSDeformPixelDecoder(in_channels=[8, 16, 24, 40], encoder=enc, conv_dim=32, mask_dim=16, num_groups=8)


def backbone_feats(b=2, dtype=F32):
    sizes = {"res2": (8, 16), "res3": (16, 8), "res4": (24, 4), "res5": (40, 2)}
    return {k: torch.randn(b, c, s, s, dtype=dtype) for k, (c, s) in sizes.items()}


def tdecoder():
    return MultiScaleMaskedTransformerDecoder(
        in_channels=32, hidden_dim=32, num_classes=3, num_queries=5, nheads=4, dim_feedforward=64, dec_layers=3,
        mask_dim=16,
    )


def tdec_inputs(b=2, dtype=F32):
    feats = [torch.randn(b, 32, s, s, dtype=dtype) for s in (2, 4, 8)]
    return feats, torch.randn(b, 16, 16, 16, dtype=dtype)


def m2f_outputs(b=2, dtype=F32):
    return {"pred_logits": torch.randn(b, 5, 4, dtype=dtype), "pred_masks": torch.randn(b, 5, 8, 8, dtype=dtype)}


def m2f_targets(b=2):
    return [{"labels": torch.tensor([0, 2]), "masks": torch.rand(2, 32, 32) > 0.5} for _ in range(b)]


def mask2former():
    from segblocks.models.backbones import TinyBackbone

    backbone = TinyBackbone()
    channels = [backbone.out_channels[k] for k in ("res2", "res3", "res4", "res5")]
    enc = pse(token_recalibration=False)
    pd = MSDeformPixelDecoder(in_channels=channels, encoder=enc, conv_dim=32, mask_dim=16, num_groups=8)
    return Mask2Former(backbone=backbone, pixel_decoder=pd, transformer_decoder=tdecoder())


def fla(cls=FlexibleLocalAttention, **kw):
    kw = {"shift": 2, **kw}
    return cls(dim=16, num_heads=2, window_size=4, **kw)


def tiny_hrsam(cls=HRSAMEncoder, **kw):
    kw = {"embed_dim": 32, "num_heads": 2, "num_stages": 2, "blocks_per_stage": 2, "window_size": 4,
          "out_chans": 32, "d_state": 4, "pos_embed_grid": 4, **kw}
    return cls(**kw)


def scan_inputs(b=2, length=5, dtype=F32):
    u = torch.randn(b, 4, length, dtype=dtype)
    return u, torch.rand(b, 4, length, dtype=dtype), -torch.rand(4, 3, dtype=dtype), torch.randn(b, 3, length, dtype=dtype), torch.randn(b, 3, length, dtype=dtype)


def qkv(n=5, dtype=F32):
    return torch.randn(n, 2, 4, dtype=dtype), torch.randn(n, 2, 4, dtype=dtype), torch.randn(n, 2, 4, dtype=dtype)


# ----------------------------------------------------------------------------- the cases
# Each case: (block, kind, call, expected). ``expected`` is (exception type, regex of the
# message) for a refusal, or a callable checking the output of an empty input.


CASES = [
    # ---- PRO-SCALE
    ("ProgressiveScaleEncoder", "shape", lambda: pse()(pse_feats(c=16)), (ValueError, r"features\[0\] must be \(B, C=32, H, W\)")),
    ("ProgressiveScaleEncoder", "shape", lambda: pse()(pse_feats()[::-1]), (ValueError, "coarse → fine")),
    ("ProgressiveScaleEncoder", "shape", lambda: pse()([torch.randn(2, 32, 0, 3)] + pse_feats()[1:]), (ValueError, "H, W >= 1")),
    ("ProgressiveScaleEncoder", "shape", lambda: pse()(pse_feats()[:2]), (ValueError, "3 feature levels")),
    ("ProgressiveScaleEncoder", "dtype", lambda: pse()(pse_feats(dtype=F64)), (TypeError, "float64 but the module's parameters are torch.float32")),
    ("ProgressiveScaleEncoder", "dtype", lambda: pse()([f.long() for f in pse_feats()]), (TypeError, "floating point")),
    ("ProgressiveScaleEncoder", "empty", lambda: pse()(pse_feats(b=0)), _empty((0, 32, 2, 3))),
    ("ProgressiveScaleEncoder", "non_integer", lambda: pse(n_points=0), (ValueError, "n_points must be >= 1")),
    ("ProgressiveScaleEncoder", "non_integer", lambda: ProgressiveScaleEncoder(layers_per_stage=(1.5, 1, 1)), (TypeError, "layers_per_stage")),
    ("ProgressiveScaleEncoder", "non_integer", lambda: ProgressiveScaleEncoder(d_model=258), (ValueError, "multiple of 4")),
    ("ProgressiveScaleEncoder", "non_integer", lambda: ProgressiveScaleEncoder(n_heads=0), (ValueError, "n_heads must be >= 1")),
    ("ProgressiveScaleEncoder", "non_integer", lambda: ProgressiveScaleEncoder(trc_temperature=float("nan")), (ValueError, "trc_temperature must be a finite")),
    ("TokenRecalibration", "shape", lambda: TokenRecalibration(dim=8)(torch.randn(6, 8), (2, 3), torch.randn(24, 8), (4, 6)), (ValueError, r"tokens must be \(B, H\*W, C=8\)")),
    ("TokenRecalibration", "shape", lambda: TokenRecalibration(dim=8)(torch.randn(1, 6, 8), (2, 2), torch.randn(1, 24, 8), (4, 6)), (ValueError, "expected tokens")),
    ("TokenRecalibration", "dtype", lambda: TokenRecalibration(dim=8)(torch.randn(1, 6, 8, dtype=F64), (2, 3), torch.randn(1, 24, 8, dtype=F64), (4, 6)), (TypeError, "float64")),
    ("TokenRecalibration", "empty", lambda: TokenRecalibration(dim=8)(torch.randn(0, 6, 8), (2, 3), torch.randn(0, 24, 8), (4, 6)), _empty((0, 6, 8))),
    ("TokenRecalibration", "non_integer", lambda: TokenRecalibration(dim=8)(torch.randn(1, 6, 8), (2.0, 3), torch.randn(1, 24, 8), (4, 6)), (TypeError, "must be an int")),
    ("TokenRecalibration", "non_integer", lambda: TokenRecalibration(dim=8, temperature=float("inf")), (ValueError, "finite")),
    ("LightPixelEmbedding", "shape", lambda: LightPixelEmbedding(channels=32, num_groups=8)(torch.randn(32, 5, 5)), (ValueError, r"x must be \(B, C=32, H, W\)")),
    ("LightPixelEmbedding", "dtype", lambda: LightPixelEmbedding(channels=32, num_groups=8)(torch.randn(1, 32, 5, 5, dtype=F64)), (TypeError, "float64")),
    ("LightPixelEmbedding", "empty", lambda: LightPixelEmbedding(channels=32, num_groups=8)(torch.randn(0, 32, 5, 5)), _empty((0, 32, 5, 5))),
    ("LightPixelEmbedding", "empty", lambda: LightPixelEmbedding(channels=32, num_groups=8)(torch.randn(2, 32, 0, 0)), _empty((2, 32, 0, 0))),
    ("LightPixelEmbedding", "non_integer", lambda: LightPixelEmbedding(channels=32.0), (TypeError, "channels must be an int")),
    ("DeformableEncoderLayer", "shape", lambda: DeformableEncoderLayer(d_model=8, d_ffn=16, n_levels=2, n_heads=2)(torch.randn(2, 21, 4), torch.randn(2, 21, 4), torch.rand(2, 21, 2, 2), torch.tensor([[2, 3], [3, 5]]), torch.tensor([0, 6])), (ValueError, r"query must be \(B, Lq, 8\)")),
    ("DeformableEncoderLayer", "dtype", lambda: DeformableEncoderLayer(d_model=8, d_ffn=16, n_levels=2, n_heads=2)(torch.randn(2, 21, 8, dtype=F64), torch.randn(2, 21, 8, dtype=F64), torch.rand(2, 21, 2, 2, dtype=F64), torch.tensor([[2, 3], [3, 5]]), torch.tensor([0, 6])), (TypeError, "float64")),
    ("DeformableEncoderLayer", "empty", lambda: DeformableEncoderLayer(d_model=8, d_ffn=16, n_levels=2, n_heads=2)(torch.randn(0, 21, 8), torch.randn(0, 21, 8), torch.rand(0, 21, 2, 2), torch.tensor([[2, 3], [3, 5]]), torch.tensor([0, 6])), _empty((0, 21, 8))),
    ("DeformableEncoderLayer", "non_integer", lambda: DeformableEncoderLayer(d_ffn=10.5), (TypeError, "d_ffn must be an int")),
    ("MSDeformAttn", "shape", lambda: msdeform()[0](*msdeform(c=4)[1]), (ValueError, r"query must be \(B, Lq, 8\)")),
    ("MSDeformAttn", "shape", lambda: msdeform()[0](*msdeform()[1][:3], torch.tensor([[2, 3], [3, 4]]), torch.tensor([0, 6])), (ValueError, "S=21")),
    ("MSDeformAttn", "dtype", lambda: msdeform()[0](*msdeform(dtype=F64)[1]), (TypeError, "float64")),
    ("MSDeformAttn", "dtype", lambda: msdeform()[0](*msdeform()[1][:3], torch.tensor([[2.0, 3], [3, 5]]), torch.tensor([0, 6])), (TypeError, "integer dtype")),
    ("MSDeformAttn", "empty", lambda: msdeform()[0](*msdeform(b=0)[1]), _empty((0, 3, 8))),
    ("MSDeformAttn", "empty", lambda: msdeform()[0](*msdeform(lq=0)[1]), _empty((2, 0, 8))),
    ("MSDeformAttn", "non_integer", lambda: MSDeformAttn(n_heads=0), (ValueError, "n_heads must be >= 1")),
    ("MSDeformAttn", "non_integer", lambda: MSDeformAttn(n_points=2.5), (TypeError, "n_points must be an int")),
    ("ms_deform_attn", "shape", lambda: ms_deform_attn(msda_inputs()[0][..., 0], *msda_inputs()[1:]), (ValueError, r"value must be \(B, S, M, D\)")),
    ("ms_deform_attn", "dtype", lambda: ms_deform_attn(msda_inputs()[0].long(), *msda_inputs()[1:]), (TypeError, "floating point")),
    ("ms_deform_attn", "empty", lambda: ms_deform_attn(*msda_inputs(b=0), backend="pytorch"), _empty((0, 3, 8))),
    ("ms_deform_attn", "empty", lambda: ms_deform_attn(*msda_inputs(lq=0), backend="pytorch"), _empty((2, 0, 8))),
    ("ms_deform_attn", "non_integer", lambda: ms_deform_attn(msda_inputs()[0], msda_inputs()[1].float(), *msda_inputs()[2:]), (TypeError, "integer dtype")),
    # ---- Mask2Former pieces
    ("MSDeformPixelDecoder", "shape", lambda: pixel_decoder()({k: v[0] for k, v in backbone_feats().items()}), (ValueError, r"features\['res2'\] must be \(B, C, H, W\)")),
    ("MSDeformPixelDecoder", "shape", lambda: pixel_decoder()(torch.randn(2, 8, 16, 16)), (TypeError, "must be a dict")),
    ("MSDeformPixelDecoder", "dtype", lambda: pixel_decoder()(backbone_feats(dtype=F64)), (TypeError, "float64")),
    ("MSDeformPixelDecoder", "empty", lambda: pixel_decoder()(backbone_feats(b=0)), _empty((0, 16, 16, 16))),
    ("MSDeformPixelDecoder", "non_integer", lambda: MSDeformPixelDecoder(in_channels=[8, 16, 24, 40.5], encoder=pse(), conv_dim=32), (TypeError, "in_channels")),
    ("MultiScaleMaskedTransformerDecoder", "shape", lambda: tdecoder()(tdec_inputs()[0], torch.randn(2, 8, 16, 16)), (ValueError, r"mask_features must be \(B, 16, H, W\)")),
    ("MultiScaleMaskedTransformerDecoder", "shape", lambda: tdecoder()([torch.randn(2, 32, 0, 2)] + tdec_inputs()[0][1:], tdec_inputs()[1]), (ValueError, "H, W >= 1")),
    ("MultiScaleMaskedTransformerDecoder", "dtype", lambda: tdecoder()(*tdec_inputs(dtype=F64)), (TypeError, "float64")),
    ("MultiScaleMaskedTransformerDecoder", "empty", lambda: tdecoder()(*tdec_inputs(b=0))["pred_masks"], _empty((0, 5, 16, 16))),
    ("MultiScaleMaskedTransformerDecoder", "non_integer", lambda: MultiScaleMaskedTransformerDecoder(num_classes=3, num_queries=5.5), (TypeError, "num_queries must be an int")),
    ("MultiScaleMaskedTransformerDecoder", "non_integer", lambda: MultiScaleMaskedTransformerDecoder(num_classes=3, nheads=0), (ValueError, "nheads must be >= 1")),
    ("HungarianMatcher", "shape", lambda: HungarianMatcher(num_points=20)({"pred_logits": torch.randn(2, 5), "pred_masks": torch.randn(2, 5, 8, 8)}, m2f_targets()), (ValueError, r"pred_logits must be \(B, Q, K\+1\)")),
    ("HungarianMatcher", "dtype", lambda: HungarianMatcher(num_points=20)({"pred_logits": torch.randn(2, 5, 4).long(), "pred_masks": torch.randn(2, 5, 8, 8)}, m2f_targets()), (TypeError, "floating point")),
    ("HungarianMatcher", "empty", lambda: HungarianMatcher(num_points=20)(m2f_outputs(b=0), []), lambda out: out == []),
    ("HungarianMatcher", "non_integer", lambda: HungarianMatcher(num_points=10.5), (TypeError, "num_points must be an int")),
    ("SetCriterion", "shape", lambda: SetCriterion(num_classes=3, matcher=HungarianMatcher(num_points=20), num_points=20)({"pred_logits": torch.randn(2, 5, 4), "pred_masks": torch.randn(2, 5, 8)}, m2f_targets()), (ValueError, r"pred_masks must be \(B, Q, h, w\)")),
    ("SetCriterion", "dtype", lambda: SetCriterion(num_classes=3, matcher=HungarianMatcher(num_points=20), num_points=20)({"pred_logits": torch.randn(2, 5, 4).long(), "pred_masks": torch.randn(2, 5, 8, 8)}, m2f_targets()), (TypeError, "floating point")),
    ("SetCriterion", "empty", lambda: SetCriterion(num_classes=3, matcher=HungarianMatcher(num_points=20), num_points=20)(m2f_outputs(b=0), [])["loss_dice"], _empty(())),
    ("SetCriterion", "non_integer", lambda: SetCriterion(num_classes=3.5, matcher=HungarianMatcher()), (TypeError, "num_classes must be an int")),
    ("Mask2Former", "shape", lambda: mask2former()(torch.randn(3, 64, 64)), (ValueError, r"\(B, 3, H, W\)")),
    ("Mask2Former", "dtype", lambda: mask2former()(torch.randint(0, 255, (1, 3, 64, 64))), (TypeError, "floating")),
    ("Mask2Former", "empty", lambda: mask2former()(torch.randn(0, 3, 64, 64))["pred_masks"], _empty((0, 5, 16, 16))),
    ("Mask2Former", "non_integer", lambda: Mask2Former(backbone=torch.nn.Identity(), pixel_decoder=pixel_decoder(), transformer_decoder=MultiScaleMaskedTransformerDecoder(num_classes=2.5)), (TypeError, "num_classes must be an int")),
    # ---- losses
    ("NormalizedFocalLoss", "shape", lambda: NormalizedFocalLoss()(torch.randn(8, 8), torch.randint(0, 2, (8, 8))), (ValueError, r"\(B, 1, H, W\)")),
    ("NormalizedFocalLoss", "dtype", lambda: NormalizedFocalLoss()(torch.randint(0, 2, (2, 1, 8, 8)), torch.randint(0, 2, (2, 8, 8))), (TypeError, "floating")),
    ("NormalizedFocalLoss", "empty", lambda: NormalizedFocalLoss(reduction="none")(torch.randn(0, 1, 8, 8), torch.randint(0, 2, (0, 8, 8))), _empty((0,))),
    ("NormalizedFocalLoss", "empty", lambda: NormalizedFocalLoss(reduction="none")(torch.randn(2, 1, 0, 0), torch.randint(0, 2, (2, 0, 0))), _empty((2,))),
    ("NormalizedFocalLoss", "non_integer", lambda: NormalizedFocalLoss()(torch.randn(2, 1, 8, 8), torch.randint(0, 2, (2, 8, 8)).bool()), (TypeError, "target")),
    ("PointLoss", "shape", lambda: PointLoss()(torch.randn(2, 1, 8, 8), torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long)), (ValueError, r"coords must be \(B=2, N, 2\)")),
    ("PointLoss", "dtype", lambda: PointLoss()(torch.randn(2, 1, 8, 8), torch.zeros(2, 3, 2), torch.ones(2, 3, dtype=torch.long)), (TypeError, "integer")),
    ("PointLoss", "empty", lambda: PointLoss(reduction="none")(torch.randn(0, 1, 8, 8), torch.zeros(0, 3, 2, dtype=torch.long), torch.ones(0, 3, dtype=torch.long)), _empty((0, 3))),
    ("PointLoss", "empty", lambda: PointLoss(reduction="none")(torch.randn(2, 1, 8, 8), torch.zeros(2, 0, 2, dtype=torch.long), torch.ones(2, 0, dtype=torch.long)), _empty((2, 0))),
    ("PointLoss", "non_integer", lambda: PointLoss()(torch.randn(2, 1, 8, 8), torch.full((2, 3, 2), 1.5), torch.ones(2, 3, dtype=torch.long)), (TypeError, "integer")),
    # ---- HRSAM
    ("FlexibleLocalAttention", "shape", lambda: fla()(torch.randn(35, 16), [(5, 7)]), (ValueError, r"x must be \(B, N, C=16\)")),
    ("FlexibleLocalAttention", "shape", lambda: fla()(torch.randn(1, 35, 16), [(5, 6)]), (ValueError, "hold 30 tokens")),
    ("FlexibleLocalAttention", "dtype", lambda: fla()(torch.randn(1, 35, 16, dtype=F64), [(5, 7)]), (TypeError, "float64")),
    ("FlexibleLocalAttention", "empty", lambda: fla()(torch.randn(0, 35, 16), [(5, 7)]), _empty((0, 35, 16))),
    ("FlexibleLocalAttention", "non_integer", lambda: fla()(torch.randn(1, 35, 16), [(5.0, 7)]), (TypeError, "must be an int")),
    ("FlexibleLocalAttention", "non_integer", lambda: FlexibleLocalAttention(dim=16, num_heads=2, window_size=4.5), (TypeError, "window_size must be an int")),
    ("FlashSwinAttention", "shape", lambda: fla(FlashSwinAttention)(torch.randn(1, 35, 8), [(5, 7)]), (ValueError, r"x must be \(B, N, C=16\)")),
    ("FlashSwinAttention", "dtype", lambda: fla(FlashSwinAttention)(torch.randn(1, 35, 16).long(), [(5, 7)]), (TypeError, "floating point")),
    ("FlashSwinAttention", "empty", lambda: fla(FlashSwinAttention)(torch.randn(0, 35, 16), [(5, 7)]), _empty((0, 35, 16))),
    ("FlashSwinAttention", "non_integer", lambda: FlashSwinAttention(dim=16, num_heads=2, window_size=4, shift=2.0), (TypeError, "shift must be an int")),
    ("CycleScan", "shape", lambda: CycleScan(dim=8, d_state=4)(torch.randn(5, 8)), (ValueError, r"x must be \(B, L, C=8\)")),
    ("CycleScan", "dtype", lambda: CycleScan(dim=8, d_state=4)(torch.randn(2, 5, 8, dtype=F64)), (TypeError, "float64")),
    ("CycleScan", "empty", lambda: CycleScan(dim=8, d_state=4)(torch.randn(0, 5, 8)), _empty((0, 5, 8))),
    ("CycleScan", "empty", lambda: CycleScan(dim=8, d_state=4)(torch.randn(2, 0, 8)), _empty((2, 0, 8))),
    ("CycleScan", "non_integer", lambda: CycleScan(dim=8, dt_rank=True), (TypeError, "dt_rank")),
    ("CycleScan", "non_integer", lambda: CycleScan(dim=8, d_state=4)(torch.randn(2, 5, 8), split=[2.5, 2.5]), (TypeError, "split")),
    ("PerScaleCycleScan", "shape", lambda: PerScaleCycleScan(dim=8, d_state=4)(torch.randn(2, 5, 8)), (ValueError, "non-empty list")),
    ("PerScaleCycleScan", "dtype", lambda: PerScaleCycleScan(dim=8, d_state=4)([torch.randn(2, 5, 8), torch.randn(2, 3, 8, dtype=F64)]), (TypeError, "dtype")),
    ("PerScaleCycleScan", "empty", lambda: PerScaleCycleScan(dim=8, d_state=4)([torch.randn(0, 5, 8), torch.randn(0, 3, 8)]), _empty((0, 5, 8))),
    ("PerScaleCycleScan", "non_integer", lambda: PerScaleCycleScan(dim=8, d_state=4.0), (TypeError, "d_state must be an int")),
    ("MultiScaleCycleScan", "shape", lambda: MultiScaleCycleScan(dim=8, d_state=4)([torch.randn(2, 5, 8), torch.randn(3, 5, 8)]), (ValueError, "scale 1 must be")),
    ("MultiScaleCycleScan", "dtype", lambda: MultiScaleCycleScan(dim=8, d_state=4)([torch.randn(2, 5, 8).long()]), (TypeError, "floating point")),
    ("MultiScaleCycleScan", "empty", lambda: MultiScaleCycleScan(dim=8, d_state=4)([torch.randn(2, 0, 8), torch.randn(2, 0, 8)]), _empty((2, 0, 8))),
    ("MultiScaleCycleScan", "non_integer", lambda: MultiScaleCycleScan(dim=8, repeats=1.5), (TypeError, "repeats must be an int")),
    ("selective_scan", "shape", lambda: selective_scan(scan_inputs()[0][0], *scan_inputs()[1:]), (ValueError, r"u must be \(B, D, L\)")),
    ("selective_scan", "dtype", lambda: selective_scan(scan_inputs()[0].long(), *scan_inputs()[1:]), (TypeError, "floating")),
    ("selective_scan", "empty", lambda: selective_scan(*scan_inputs(b=0)), _empty((0, 4, 5))),
    ("selective_scan", "empty", lambda: selective_scan(*scan_inputs(length=0)), _empty((2, 4, 0))),
    ("selective_scan", "non_integer", lambda: selective_scan(*scan_inputs()[:3], torch.randn(2, 3, 5).long(), scan_inputs()[4]), (TypeError, "B must be a real floating")),
    ("varlen_attention", "shape", lambda: varlen_attention(torch.randn(5, 8), torch.randn(5, 8), torch.randn(5, 8), [5]), (ValueError, r"q must be \(N, H, D\)")),
    ("varlen_attention", "dtype", lambda: varlen_attention(qkv()[0], qkv()[1].double(), qkv()[2], [5]), (TypeError, "share a dtype")),
    ("varlen_attention", "empty", lambda: varlen_attention(*qkv(n=0), []), _empty((0, 2, 4))),
    ("varlen_attention", "empty", lambda: varlen_attention(*qkv(n=0), [0, 0]), _empty((0, 2, 4))),
    ("varlen_attention", "non_integer", lambda: varlen_attention(*qkv(), [2.5, 2.5]), (TypeError, "q_seqlens must be a sequence of ints")),
    ("varlen_attention", "non_integer", lambda: varlen_attention(*qkv(), torch.tensor([2.5, 2.5])), (TypeError, "integer tensor")),
    ("shift_window_mapping", "shape", lambda: shift_window_mapping(0, 4, 2), (ValueError, "h, w >= 1")),
    ("shift_window_mapping", "dtype", lambda: shift_window_mapping(torch.tensor(4), 4, 2), (TypeError, "must be an int")),
    ("shift_window_mapping", "empty", lambda: shift_window_mapping(4, 4, 2, batch=0), (ValueError, "batch must be >= 1")),
    ("shift_window_mapping", "non_integer", lambda: shift_window_mapping(4.5, 4, 2), (TypeError, "must be an int")),
    ("shift_window_mapping", "non_integer", lambda: shift_window_mapping(4, 4, 2.0), (TypeError, "window size k must be an int")),
    ("HRSAMEncoder", "shape", lambda: tiny_hrsam()(torch.randn(3, 64, 64)), (ValueError, r"\(B, 3, H, W\)")),
    ("HRSAMEncoder", "shape", lambda: tiny_hrsam()(torch.randn(1, 3, 60, 64)), (ValueError, "multiples of 16")),
    ("HRSAMEncoder", "dtype", lambda: tiny_hrsam()(torch.randn(1, 3, 64, 64, dtype=F64)), (TypeError, "float64")),
    ("HRSAMEncoder", "empty", lambda: tiny_hrsam()(torch.randn(0, 3, 64, 64)), _empty((0, 32, 4, 4))),
    ("HRSAMEncoder", "non_integer", lambda: tiny_hrsam(num_stages=2.5), (TypeError, "num_stages must be an int")),
    ("HRSAMPlusPlusEncoder", "shape", lambda: tiny_hrsam(HRSAMPlusPlusEncoder, anchor_size=32)(torch.randn(1, 3, 64)), (ValueError, r"\(B, 3, H, W\)")),
    ("HRSAMPlusPlusEncoder", "dtype", lambda: tiny_hrsam(HRSAMPlusPlusEncoder, anchor_size=32)(torch.randn(1, 3, 64, 64).long()), (TypeError, "floating point")),
    ("HRSAMPlusPlusEncoder", "empty", lambda: tiny_hrsam(HRSAMPlusPlusEncoder, anchor_size=32)(torch.randn(0, 3, 64, 64)), _empty((0, 32, 4, 4))),
    ("HRSAMPlusPlusEncoder", "non_integer", lambda: tiny_hrsam(HRSAMPlusPlusEncoder, anchor_size=32, blocks_per_stage=True), (TypeError, "blocks_per_stage must be an int")),
]

KINDS = ("shape", "dtype", "empty", "non_integer")


@pytest.mark.parametrize("block,kind,call,expected", case_params(CASES))
def test_block_edge(block, kind, call, expected):
    failures = edge_case_failures(call, expected)  # the message must be ours, not torch's or numpy's
    assert not failures, failures


def _family_cases() -> list:
    """``CASES`` of the per-family files ``tests/test_bad_inputs_<family>.py`` (they run their own cases)."""
    import importlib
    from pathlib import Path

    cases = []
    for path in sorted(Path(__file__).parent.glob("test_bad_inputs_*.py")):
        cases.extend(getattr(importlib.import_module(path.stem), "CASES", []))
    return cases


def test_every_catalogued_block_is_covered():
    """A block added to the catalog needs its four kinds of bad-input cases here or in a family file."""
    covered = {(block, kind) for block, kind, _, _ in CASES + _family_cases()}
    missing = [(b.name, k) for b in BLOCKS if b.status == "implemented" for k in KINDS if (b.name, k) not in covered]
    assert not missing, f"catalogued blocks without bad-input cases: {missing}"


# ----------------------------------------------------------------------------- no host syncs


def test_validation_reads_no_tensor_values(monkeypatch):
    """Validation works on metadata only: a refused input is refused before any value is read.

    ``Tensor.item``/``tolist``/``__bool__``/``__int__`` raise here, so a check that reads a tensor
    (a host synchronisation on CUDA) would surface as this error instead of the expected one.
    """
    cases = [
        (lambda: pse()(pse_feats(c=16)), ValueError),
        (lambda: pse()(pse_feats(dtype=F64)), TypeError),
        (lambda: fla()(torch.randn(1, 35, 16, dtype=F64), [(5, 7)]), TypeError),
        (lambda: CycleScan(dim=8, d_state=4)(torch.randn(2, 5, 8, dtype=F64)), TypeError),
        (lambda: tdecoder()(*tdec_inputs(dtype=F64)), TypeError),
        (lambda: TokenRecalibration(dim=8)(torch.randn(6, 8), (2, 3), torch.randn(24, 8), (4, 6)), ValueError),
        (lambda: LightPixelEmbedding(channels=32, num_groups=8)(torch.randn(32, 5, 5)), ValueError),
    ]

    def forbidden(*args, **kwargs):
        raise AssertionError("validation read a tensor value (host sync)")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    for call, exc in cases:
        with pytest.raises(exc):
            call()


# ----------------------------------------------------------------------------- clicker


def test_clicker_empty_batches_and_maps():
    for b, h, w in [(0, 5, 5), (2, 0, 0), (2, 0, 5), (0, 0, 0)]:
        z = torch.zeros(b, h, w, dtype=torch.bool)
        coords, positive, valid = next_click(z, z, generator=np.random.default_rng(0))
        assert coords.shape == (b, 2) and coords.dtype == torch.int64
        assert positive.shape == valid.shape == (b,) and not valid.any()
        clicks = sample_initial_clicks(z, generator=np.random.default_rng(0))
        assert clicks.labels.shape == (b, 0)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: sample_num_clicks(max_clicks=2.5), TypeError, "max_clicks must be an int"),
        (lambda: sample_num_clicks(max_clicks=True), TypeError, "max_clicks must be an int"),
        (lambda: sample_num_clicks(gamma=float("nan")), ValueError, "gamma must be positive"),
        (lambda: sample_initial_clicks(torch.zeros(1, 8, 8, dtype=torch.bool), max_pos=2.5), TypeError, "max_pos"),
        (lambda: next_click(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.bool)), TypeError, "bool tensor"),
        (lambda: next_click(torch.zeros(4, 4, dtype=torch.bool), torch.zeros(4, 4, dtype=torch.bool)), TypeError, r"\(B, H, W\)"),
    ],
)
def test_clicker_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("gamma", [0.6, 3.0, 1e3, 1e300])
def test_sample_num_clicks_large_gamma_follows_the_distribution(gamma):
    """P(k) ∝ γ^k for k ≤ 4, computed here with exact fractions of powers (no overflow)."""
    max_clicks = 4
    logs = [k * math.log(gamma) for k in range(max_clicks + 1)]
    top = max(logs)
    weights = [math.exp(v - top) for v in logs]
    expected = np.array(weights) / sum(weights)
    rng = np.random.default_rng(0)
    draws = np.bincount([sample_num_clicks(gamma=gamma, max_clicks=max_clicks, generator=rng) for _ in range(4000)],
                        minlength=max_clicks + 1) / 4000
    assert np.abs(draws - expected).max() < 0.03
