"""The block catalog: every block with its paper, abbreviation and a one-line summary.

Blocks are imported lazily (``segblocks.<Name>`` resolves through this table on first access),
so ``import segblocks`` stays cheap and never imports optional backends.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BlockInfo", "BLOCKS", "list_blocks"]

PAPERS = {
    "mst": "MST: adaptive multi-scale tokens for interactive segmentation (code: hahamyt/mst)",
    "focsam": "FocSAM: focus refiner for SAM-based interactive segmentation (code: YouHuang67/focsam)",
    "hrsam": "HRSAM / HRSAM++: Efficient Interactive Segmentation in High-Resolution Images "
    "(code: YouHuang67/High-Resolution-Segment-Anything)",
    "proscale": "PRO-SCALE: Progressive Token Length Scaling in Transformer Encoders for Efficient Universal "
    "Segmentation, ICLR 2025 (code: abhishekaich27/proscale-pytorch)",
    "inter2former": "Inter2Former: dynamic prompt embedding and hybrid attention (code: YouHuang67/inter2former)",
    "m2f": "Mask2Former, Cheng et al., CVPR 2022 (baseline PRO-SCALE builds on)",
    "ddetr": "Deformable DETR, Zhu et al., ICLR 2021",
    "ritm": "RITM, Sofiiuk et al., ICIP 2022 (normalized focal loss used by every interactive paper)",
}


@dataclass(frozen=True)
class BlockInfo:
    name: str
    abbreviation: str
    paper: str
    summary: str
    target: str  # "module:attribute"
    status: str = "implemented"

    @property
    def import_path(self) -> str:
        """Where the block is defined, as ``from <module> import <name>`` would name it (``module.attribute``)."""
        return self.target.replace(":", ".")

    def load(self):
        """The block itself (imports its module)."""
        import importlib

        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


BLOCKS: tuple[BlockInfo, ...] = (
    BlockInfo("ProgressiveScaleEncoder", "PRO-SCALE", "proscale",
              "Deformable encoder whose token length grows stage by stage (Eq. 1-3); default (3,3,3)+TRC; (0,0,6) without TRC = Mask2Former's encoder.",
              "segblocks.blocks.proscale:ProgressiveScaleEncoder"),
    BlockInfo("TokenRecalibration", "TRC", "proscale",
              "Gates coarse tokens with sigmoid(ε·φ(s2)) from the finest encoder level (Eq. 4).",
              "segblocks.blocks.proscale:TokenRecalibration"),
    BlockInfo("LightPixelEmbedding", "LPE", "proscale",
              "Pool → GroupNorm → ReLU per-pixel embedding replacing the res2 3×3 conv (§3.1.2).",
              "segblocks.blocks.proscale:LightPixelEmbedding"),
    BlockInfo("DeformableEncoderLayer", "—", "ddetr",
              "Post-norm MSDeformAttn self-attention + FFN encoder layer.",
              "segblocks.blocks.proscale:DeformableEncoderLayer"),
    BlockInfo("MSDeformAttn", "MSDeformAttn", "ddetr",
              "Multi-scale deformable attention module (Eq. 3) over the ms_deform_attn op.",
              "segblocks.layers.ms_deform_attn:MSDeformAttn"),
    BlockInfo("ms_deform_attn", "MSDA op", "ddetr",
              "Functional deformable sampling core: grid_sample reference + Triton kernel (fwd/bwd).",
              "segblocks.ops.ms_deform_attn:ms_deform_attn"),
    BlockInfo("MSDeformPixelDecoder", "—", "m2f",
              "Pixel decoder: input projections, swappable encoder, res2 FPN with conv or LPE embedding.",
              "segblocks.models.mask2former.pixel_decoder:MSDeformPixelDecoder"),
    BlockInfo("MultiScaleMaskedTransformerDecoder", "—", "m2f",
              "Masked-attention transformer decoder, round-robin over three scales.",
              "segblocks.models.mask2former.transformer_decoder:MultiScaleMaskedTransformerDecoder"),
    BlockInfo("HungarianMatcher", "—", "m2f",
              "Bipartite matching on class + point-sampled mask BCE/dice costs (scipy).",
              "segblocks.models.mask2former.matcher:HungarianMatcher"),
    BlockInfo("SetCriterion", "—", "m2f",
              "CE + point-sampled mask BCE/dice with deep supervision.",
              "segblocks.models.mask2former.criterion:SetCriterion"),
    BlockInfo("NormalizedFocalLoss", "NFL", "ritm",
              "Focal loss rescaled by a detached normaliser; 1- or 2-channel logits, ignore index 255.",
              "segblocks.losses.focal:NormalizedFocalLoss"),
    BlockInfo("PointLoss", "PTL", "focsam",
              "Squared error of sigmoid(logit) at click positions vs click labels (FocSAM Eq. 10).",
              "segblocks.losses.point:PointLoss"),
    BlockInfo("FlexibleLocalAttention", "FLA", "hrsam",
              "Index-mapped local attention over varlen windows, KV-only padding with a learned pad token, 2-D RoPE (§3, App. B).",
              "segblocks.blocks.hrsam_attention:FlexibleLocalAttention"),
    BlockInfo("FlashSwinAttention", "Flash Swin", "hrsam",
              "FLA with shifted-window mappings (shift 0 / k/2): Swin without cyclic shift or masks (§3).",
              "segblocks.blocks.hrsam_attention:FlashSwinAttention"),
    BlockInfo("CycleScan", "Cycle-scan", "hrsam",
              "Selective SSM over the sequence repeated R=3 times, outputs merged per channel (§3.5, Eq. 9-10).",
              "segblocks.blocks.hrsam_cyclescan:CycleScan"),
    BlockInfo("PerScaleCycleScan", "Cycle-scan", "hrsam",
              "HRSAM++: one Cycle-scan per scale, shared weights (§3.6, supp. D.2).",
              "segblocks.blocks.hrsam_cyclescan:PerScaleCycleScan"),
    BlockInfo("MultiScaleCycleScan", "Cycle-scan", "hrsam",
              "HRSAM++: Cycle-scan over the concatenated scales (§3.6, supp. D.2).",
              "segblocks.blocks.hrsam_cyclescan:MultiScaleCycleScan"),
    BlockInfo("selective_scan", "S6 op", "hrsam",
              "Selective scan (Mamba semantics): sequential oracle, chunked CPU form, mamba-ssm backend.",
              "segblocks.ops.selective_scan:selective_scan"),
    BlockInfo("varlen_attention", "EMA op", "hrsam",
              "Block-diagonal varlen attention: loop reference, SDPA, FlexAttention, xformers, Triton fwd/bwd.",
              "segblocks.ops.varlen_attention:varlen_attention"),
    BlockInfo("shift_window_mapping", "FLA mapping", "hrsam",
              "FLA index mappings for (shifted) windows, KV-only padding and multi-scale grids (Eq. 2-8, 11-19).",
              "segblocks.ops.fla_mapping:shift_window_mapping"),
    BlockInfo("HRSAMEncoder", "HRSAM", "hrsam",
              "ViT with Flash Swin + KV-only padding, Cycle-scan per stage, 4-level fused 256-d output (§3, supp. D.2).",
              "segblocks.models.hrsam.encoder:HRSAMEncoder"),
    BlockInfo("HRSAMPlusPlusEncoder", "HRSAM++", "hrsam",
              "HRSAM plus a weight-shared 512² anchor map and multi-scale Cycle-scan fusion (§3.6, supp. D.2).",
              "segblocks.models.hrsam.encoder:HRSAMPlusPlusEncoder"),
    BlockInfo("Mask2Former", "M2F", "m2f",
              "Backbone + pixel decoder + transformer decoder, panoptic/semantic/instance inference.",
              "segblocks.models.mask2former.model:Mask2Former"),
    BlockInfo("DynamicWindows", "Dwin", "focsam",
              "Batch-wide window partition keeping only windows that meet each sample's focus box; shift variant, authors' unmasked or Swin-masked (§3.2).",
              "segblocks.blocks.focsam:DynamicWindows"),
    BlockInfo("PDyReLU", "P-DyReLU", "focsam",
              "Max of a pixel branch (similarity to the query) and a channel branch (spatial mean), each a*x+b (Eq. 6-9).",
              "segblocks.blocks.focsam:PDyReLU"),
    BlockInfo("RefineBlock", "Dwin-MSA", "focsam",
              "Query→window cross-attention + window self-attention with a zero key/value slot, P-DyReLU, DCNv2 residual, cls_scale query update (Eq. 1-5).",
              "segblocks.blocks.focsam:RefineBlock"),
    BlockInfo("FocusRefiner", "Focus refiner", "focsam",
              "12 Dwin-MSA blocks alternating plain/shift (window 16, 256-d, 8 heads) refining SAM embeddings once per object (§3.1).",
              "segblocks.blocks.focsam:FocusRefiner"),
    BlockInfo("modulated_deform_conv2d", "DCNv2 op", "focsam",
              "Modulated deformable conv v2: grid-sample im2col reference + Triton im2col fwd/bwd, mmcv offset layout.",
              "segblocks.ops.deform_conv:modulated_deform_conv2d"),
    BlockInfo("AdaptivePatchEmbed", "APE", "mst",
              "One base patch kernel PI-resized (FlexiViT pinv of the antialiased bicubic resize) to 8/16/28 px (code: 32), position embeddings resized per scale (§III-B).",
              "segblocks.blocks.mst:AdaptivePatchEmbed"),
    BlockInfo("TopKTokenSelector", "Top-k", "mst",
              "Click kernel (Eq. 2), (cos+1)/2 scores (Eq. 3), top-k with k = N/12 as a straight-through one-hot selection matrix (Eq. 4-5).",
              "segblocks.blocks.mst:TopKTokenSelector"),
    BlockInfo("MultiScaleTokenBlock", "MST", "mst",
              "Scale tokens attend to base tokens (scaled, two-expert proj), top-k per scale, fusion, base tokens attend to the selection, ViT block (Fig. 4).",
              "segblocks.blocks.mst:MultiScaleTokenBlock"),
    BlockInfo("triplet_token_loss", "CL", "mst",
              "Soft-margin triplet loss log(1+exp(d_p - d_n)) between the click kernel and selected tokens inside/outside the GT (Eq. 6-7).",
              "segblocks.losses.token:triplet_token_loss"),
    BlockInfo("score_focal_loss", "—", "mst",
              "The authors' focal loss (alpha 0.25, gamma 2) of the similarity scores vs the GT on the token grid.",
              "segblocks.losses.token:score_focal_loss"),
    BlockInfo("DynamicPromptEmbedding", "DPE", "inter2former",
              "M_ref (5 states) embedded and conv-downsampled ×16 only inside a per-sample box; a learned background token elsewhere (Eq. 1-3).",
              "segblocks.blocks.inter2former.dpe:DynamicPromptEmbedding"),
    BlockInfo("select_edge_tokens", "Edge map", "inter2former",
              "7×7 non-constant (variance > 0, reflect pad) or UNKNOWN pixels of M_ref, max-pooled to tokens: ragged per-sample selections (Eq. 4-5).",
              "segblocks.blocks.inter2former.selection:select_edge_tokens"),
    BlockInfo("BSQAttention", "BSQA", "inter2former",
              "Keys binary-sphere quantized (STE, β commitment) from 2S base vectors; train: softmax over quantized keys, eval: exact O(N·2^S) code-table form (Eq. 7-14).",
              "segblocks.blocks.inter2former.bsqa:BSQAttention"),
    BlockInfo("DynamicHybridAttention", "DHA", "inter2former",
              "Edge tokens: full attention with 2-D RoPE over their sample (varlen); other tokens: BSQA; 32-d single-head as coded (Eq. 5-6).",
              "segblocks.blocks.inter2former.dha:DynamicHybridAttention"),
    BlockInfo("HybridMoE", "HMoE", "inter2former",
              "Shared SwiGLU (sub-LN) for all tokens + top-1 sigmoid-routed experts for edge tokens, sorted grouped execution, aux-loss-free DDP-synced bias (Eq. 15-20).",
              "segblocks.blocks.inter2former.hmoe:HybridMoE"),
    BlockInfo("grouped_gemm", "Grouped GEMM op", "inter2former",
              "Per-expert linear on expert-sorted rows: padded-bmm CPU path, per-group loop reference, Triton kernel (fwd/bwd).",
              "segblocks.ops.grouped_gemm:grouped_gemm"),
    BlockInfo("DynamicLocalUpsampling", "DLU", "inter2former",
              "Coarse MLP logits → box of logits > −2 → four ×2 edge-fused upsamplers inside the box, −100 outside; full map in training (Eq. 21-24).",
              "segblocks.blocks.inter2former.dlu:DynamicLocalUpsampling"),
    BlockInfo("CannyNet", "CannyNet", "inter2former",
              "Fixed Canny (kornia Gaussian/Sobel, NMS, threshold 2) + 4-stage ResNet → edge features at strides 8/4/2/1 (Eq. 23).",
              "segblocks.blocks.inter2former.canny:CannyNet"),
)


def list_blocks(paper: str | None = None) -> list[BlockInfo]:
    """All catalogued blocks (optionally of one paper key: mst, focsam, hrsam, proscale, inter2former, m2f, ddetr)."""
    if paper is not None and paper not in PAPERS:
        raise ValueError(f"unknown paper {paper!r}; expected one of {sorted(PAPERS)}")
    return [b for b in BLOCKS if paper is None or b.paper == paper]
