"""``torch.compile`` on every catalogued block: its reference path traced by Dynamo on CPU with
small inputs, the number of graph breaks asserted (``torch._dynamo.explain``, which traces
without compiling: no Inductor time in CI).

Each block is called once eagerly first, as a training loop would before the compiled step is
traced again: mapping caches (FLA index maps, loaded backends) are then warm, so the count is
that of the steady state. Zero breaks where achieved; the blocks with breaks list why, and a
change in either direction fails the test (update the number and the comment with the fix).
A catalogued block without a case here fails ``test_every_catalogued_block_has_a_compile_case``.
"""
from __future__ import annotations

import pytest
import torch

from segblocks._catalog import BLOCKS

F32 = torch.float32

# Known graph breaks (steady state, torch 2.13). The MSDeformAttn family takes its level shapes
# as Python (H, W) pairs (no ``spatial_shapes.tolist()`` per layer): zero breaks. The Hungarian
# matcher runs scipy on CPU; SetCriterion normalises by ``num_masks.item()``; PointLoss branches
# on a tensor. The FLA blocks and HRSAM encoders read their window order and RoPE tables from a
# plain dict (Dynamo inlines lru_cache'd mapping builders instead of using the cache): zero
# breaks. The other families' data-dependent selections (focus boxes, ragged edge tokens, expert
# routing) read sizes back from tensors by design: one line each below says where.
EXPECTED_BREAKS = {
    "ProgressiveScaleEncoder": 0,
    "TokenRecalibration": 0,
    "LightPixelEmbedding": 0,
    "DeformableEncoderLayer": 0,
    "MSDeformAttn": 0,
    "ms_deform_attn": 0,
    "MSDeformPixelDecoder": 0,
    "MultiScaleMaskedTransformerDecoder": 0,
    "HungarianMatcher": 2,  # scipy's linear_sum_assignment on host (by design)
    "SetCriterion": 4,  # matcher + num_masks.item()
    "NormalizedFocalLoss": 0,
    "PointLoss": 1,  # branch on a tensor value
    "FlexibleLocalAttention": 0,
    "FlashSwinAttention": 0,
    "CycleScan": 0,
    "PerScaleCycleScan": 0,
    "MultiScaleCycleScan": 0,
    "selective_scan": 0,
    "varlen_attention": 0,
    "shift_window_mapping": None,  # cached mapping: no tensor op at all once built (no graph)
    "HRSAMEncoder": 0,
    "HRSAMPlusPlusEncoder": 0,
    "Mask2Former": 0,
    # FocSAM
    "DynamicWindows": 1,  # windows meeting a focus box: nonzero, a data-dependent count (§3.2, by design)
    "PDyReLU": 0,
    "RefineBlock": 2,  # its DynamicWindows selection (nonzero) and the scatter back
    "FocusRefiner": 6,  # focus box from the coarse logits + DynamicWindows per block (data-dependent windows)
    "modulated_deform_conv2d": 0,
    # MST
    "AdaptivePatchEmbed": 0,
    "TopKTokenSelector": 0,
    "MultiScaleTokenBlock": 0,
    "triplet_token_loss": 0,
    "score_focal_loss": 0,
    # Inter2Former
    "DynamicPromptEmbedding": 3,  # per-sample box bounds read with .item() (the embedded crop is data-dependent)
    "select_edge_tokens": 2,  # ragged selection: nonzero of the edge mask (data-dependent count, Eq. 4-5)
    "BSQAttention": 2,  # exact inference form: dynamic-shape per-sample gather of the code table
    "DynamicHybridAttention": 0,
    "HybridMoE": 3,  # top-1 routing: largest group L_max read on host (.item) + dynamic-shape padded batch
    "grouped_gemm": 10,  # offsets tensor read on host: CPU validation, padding choice, split sizes
    "DynamicLocalUpsampling": 1,  # box of logits > -2 (Eq. 22): a data-dependent crop
    "CannyNet": 0,
}


def _small_cases():
    """name -> (callable, args) with tiny shapes (built lazily: imports stay cheap)."""
    from segblocks.blocks.hrsam_attention import FlashSwinAttention, FlexibleLocalAttention
    from segblocks.blocks.hrsam_cyclescan import CycleScan, MultiScaleCycleScan, PerScaleCycleScan
    from segblocks.blocks.proscale import (
        DeformableEncoderLayer,
        LightPixelEmbedding,
        ProgressiveScaleEncoder,
        TokenRecalibration,
    )
    from segblocks.layers.ms_deform_attn import MSDeformAttn
    from segblocks.losses import NormalizedFocalLoss, PointLoss
    from segblocks.models.backbones import TinyBackbone
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

    def pse(**kw):
        return ProgressiveScaleEncoder(layers_per_stage=(1, 1, 1), d_model=32, n_heads=4, d_ffn=64, **kw)

    def tdecoder():
        return MultiScaleMaskedTransformerDecoder(
            in_channels=32, hidden_dim=32, num_classes=3, num_queries=5, nheads=4, dim_feedforward=64, dec_layers=3,
            mask_dim=16,
        )

    def hrsam(cls, **kw):
        return cls(embed_dim=32, num_heads=2, num_stages=2, blocks_per_stage=2, window_size=4, out_chans=32,
                   d_state=4, pos_embed_grid=4, **kw)

    shapes = [(2, 3), (3, 5)]  # Python level shapes: no host read per call
    outputs = {"pred_logits": torch.randn(2, 5, 4), "pred_masks": torch.randn(2, 5, 8, 8)}
    targets = [{"labels": torch.tensor([0, 2]), "masks": torch.rand(2, 32, 32) > 0.5} for _ in range(2)]
    matcher = HungarianMatcher(num_points=20)
    backbone = TinyBackbone()
    channels = [backbone.out_channels[k] for k in ("res2", "res3", "res4", "res5")]
    feats = {k: torch.randn(2, c, s, s) for k, (c, s) in
             {"res2": (8, 16), "res3": (16, 8), "res4": (24, 4), "res5": (40, 2)}.items()}
    x = torch.randn(2, 35, 16)
    cases = {
        "ProgressiveScaleEncoder": (pse(), ([torch.randn(2, 32, h, w) for h, w in ((2, 3), (3, 5), (5, 9))],)),
        "TokenRecalibration": (TokenRecalibration(dim=8), (torch.randn(2, 6, 8), (2, 3), torch.randn(2, 24, 8), (4, 6))),
        "LightPixelEmbedding": (LightPixelEmbedding(channels=32, num_groups=8), (torch.randn(2, 32, 8, 8),)),
        "DeformableEncoderLayer": (
            DeformableEncoderLayer(d_model=8, d_ffn=16, n_levels=2, n_heads=2),
            (torch.randn(2, 21, 8), torch.randn(2, 21, 8), torch.rand(2, 21, 2, 2), shapes),
        ),
        "MSDeformAttn": (
            MSDeformAttn(d_model=8, n_levels=2, n_heads=2, n_points=2),
            (torch.randn(2, 3, 8), torch.rand(2, 3, 2, 2), torch.randn(2, 21, 8), shapes),
        ),
        "ms_deform_attn": (
            ms_deform_attn,
            (torch.randn(2, 21, 2, 4), shapes, None, torch.rand(2, 3, 2, 2, 2, 2), torch.rand(2, 3, 2, 2, 2)),
        ),
        "MSDeformPixelDecoder": (
            MSDeformPixelDecoder(in_channels=[8, 16, 24, 40], encoder=pse(token_recalibration=False), conv_dim=32,
                                 mask_dim=16, num_groups=8),
            (feats,),
        ),
        "MultiScaleMaskedTransformerDecoder": (
            tdecoder(), ([torch.randn(2, 32, s, s) for s in (2, 4, 8)], torch.randn(2, 16, 16, 16)),
        ),
        "HungarianMatcher": (matcher, (outputs, targets)),
        "SetCriterion": (SetCriterion(num_classes=3, matcher=matcher, num_points=20), (outputs, targets)),
        "NormalizedFocalLoss": (NormalizedFocalLoss(), (torch.randn(2, 1, 8, 8), torch.randint(0, 2, (2, 8, 8)))),
        "PointLoss": (
            PointLoss(), (torch.randn(2, 1, 8, 8), torch.randint(0, 8, (2, 3, 2)), torch.ones(2, 3, dtype=torch.long)),
        ),
        "FlexibleLocalAttention": (FlexibleLocalAttention(dim=16, num_heads=2, window_size=4, shift=2), (x, [(5, 7)])),
        "FlashSwinAttention": (FlashSwinAttention(dim=16, num_heads=2, window_size=4), (x, [(5, 7)])),
        "CycleScan": (CycleScan(dim=8, d_state=4), (torch.randn(2, 5, 8),)),
        "PerScaleCycleScan": (PerScaleCycleScan(dim=8, d_state=4), ([torch.randn(2, 5, 8), torch.randn(2, 3, 8)],)),
        "MultiScaleCycleScan": (MultiScaleCycleScan(dim=8, d_state=4), ([torch.randn(2, 5, 8), torch.randn(2, 3, 8)],)),
        "selective_scan": (
            selective_scan,
            (torch.randn(2, 4, 5), torch.rand(2, 4, 5), -torch.rand(4, 3), torch.randn(2, 3, 5), torch.randn(2, 3, 5)),
        ),
        "varlen_attention": (varlen_attention, (torch.randn(5, 2, 4), torch.randn(5, 2, 4), torch.randn(5, 2, 4), [2, 3])),
        "shift_window_mapping": (lambda: shift_window_mapping(5, 7, 4, 2), ()),
        "HRSAMEncoder": (hrsam(HRSAMEncoder), (torch.randn(1, 3, 64, 64),)),
        "HRSAMPlusPlusEncoder": (hrsam(HRSAMPlusPlusEncoder, anchor_size=32), (torch.randn(1, 3, 64, 64),)),
        "Mask2Former": (
            Mask2Former(
                backbone=backbone,
                pixel_decoder=MSDeformPixelDecoder(in_channels=channels, encoder=pse(token_recalibration=False),
                                                   conv_dim=32, mask_dim=16, num_groups=8),
                transformer_decoder=tdecoder(),
            ).eval(),
            (torch.randn(1, 3, 64, 64),),
        ),
    }
    cases.update(_focsam_cases())
    cases.update(_mst_cases())
    cases.update(_inter2former_cases())
    return cases


def _focsam_cases():
    """FocSAM blocks (sizes as in tests/test_bad_inputs_focsam.py)."""
    from segblocks.blocks.focsam import DynamicWindows, FocusRefiner, PDyReLU, RefineBlock
    from segblocks.ops.deform_conv import modulated_deform_conv2d

    box = torch.zeros(2, 1, 6, 7)
    box[:, :, 1:4, 2:6] = 1.0
    dcn = (torch.randn(2, 4, 5, 6), torch.randn(2, 18, 5, 6), torch.rand(2, 9, 5, 6), torch.randn(4, 4, 3, 3))
    logits = torch.full((1, 1, 20, 28), -5.0)
    logits[..., 4:12, 6:20] = 5.0
    return {
        "DynamicWindows": (DynamicWindows(window_size=4, shift=2), (torch.randn(2, 3, 6, 7), box)),
        "PDyReLU": (PDyReLU(channels=6), (torch.randn(2, 5, 6), torch.randn(2, 1, 6))),
        "RefineBlock": (
            RefineBlock(embed_dim=8, num_heads=2, window_size=4),
            (torch.randn(2, 8, 5, 6), torch.randn(2, 1, 8), torch.ones(2, 1, 5, 6)),
        ),
        "FocusRefiner": (
            FocusRefiner(embed_dim=16, depth=2, num_heads=2, window_size=4),
            (torch.randn(1, 16, 5, 7), logits, torch.randn(1, 16), (80, 112)),
        ),
        "modulated_deform_conv2d": (lambda *a: modulated_deform_conv2d(*a, padding=1), dcn),
    }


def _mst_cases():
    """MST blocks (sizes as in tests/test_bad_inputs_mst.py)."""
    from segblocks.blocks.mst import AdaptivePatchEmbed, MultiScaleTokenBlock, TopKTokenSelector
    from segblocks.losses.token import score_focal_loss, triplet_token_loss

    click = torch.tensor([[3], [1]])
    scales = [(torch.randn(2, 64, 8), torch.randn(1, 64, 8)), (torch.randn(2, 4, 8), torch.randn(1, 4, 8))]
    inside = torch.rand(2, 5) > 0.5
    return {
        "AdaptivePatchEmbed": (AdaptivePatchEmbed(embed_dim=4), (torch.randn(1, 3, 32, 32), 16)),
        "TopKTokenSelector": (TopKTokenSelector(), (torch.randn(2, 4, 3), torch.randn(2, 24, 3), click)),
        "MultiScaleTokenBlock": (
            MultiScaleTokenBlock(dim=8, num_heads=2, sr_ratio=2, selector=TopKTokenSelector(ratio=4)),
            (torch.randn(2, 4, 4, 8), scales, click),
        ),
        "triplet_token_loss": (
            triplet_token_loss,
            (torch.randn(2, 3), torch.randn(2, 2, 3), torch.tensor([[0, 4], [1, 2]]), inside, torch.ones(2, dtype=torch.bool)),
        ),
        "score_focal_loss": (score_focal_loss, (torch.rand(2, 5), inside, torch.ones(2, dtype=torch.bool))),
    }


def _inter2former_cases():
    """Inter2Former blocks (sizes as in tests/test_bad_inputs_inter2former.py)."""
    from segblocks.blocks.inter2former import (
        BSQAttention,
        CannyNet,
        DynamicHybridAttention,
        DynamicLocalUpsampling,
        DynamicPromptEmbedding,
        EdgeTokenSelection,
        HybridMoE,
        select_edge_tokens,
    )
    from segblocks.ops.grouped_gemm import grouped_gemm

    ref = torch.ones(1, 1, 32, 32, dtype=torch.long)  # M_ref: possible background ...
    ref[..., 8:20, 10:22] = 4  # ... and an object
    qkv = (torch.randn(3, 1, 8), torch.randn(5, 1, 8), torch.randn(5, 1, 8))
    sel = EdgeTokenSelection.from_mask(torch.tensor([[True, False, True, True, False, False], [False, True, True, False, False, True]]))
    edges = [torch.randn(2, c, 2 * 2 ** (j + 1), 3 * 2 ** (j + 1)) for j, c in enumerate((64, 16, 4, 1))]
    return {
        "DynamicPromptEmbedding": (DynamicPromptEmbedding(embed_dim=16, dims=(4, 8, 8, 16)), (ref,)),
        "select_edge_tokens": (select_edge_tokens, (ref[:, 0], (2, 2))),
        "BSQAttention": (BSQAttention(head_dim=8, code_size=4).eval(), (*qkv, [3], [5])),
        "DynamicHybridAttention": (
            DynamicHybridAttention(embed_dim=16, num_heads=2, downscale=2, code_size=4), (torch.randn(2, 6, 16), (2, 3), sel),
        ),
        "HybridMoE": (HybridMoE(embed_dim=8, hidden_dim=8, num_experts=2).eval(), (torch.randn(4, 8), torch.tensor([0, 2]))),
        "grouped_gemm": (grouped_gemm, (torch.randn(4, 3), torch.tensor([0, 2, 4]), torch.randn(2, 5, 3))),
        "DynamicLocalUpsampling": (DynamicLocalUpsampling(embed_dim=64).eval(), (torch.randn(2, 64, 2, 3), edges)),
        "CannyNet": (CannyNet(dims=(1, 4, 16, 64)), (torch.rand(1, 3, 32, 32),)),
    }


@pytest.fixture(scope="module")
def cases():
    torch.manual_seed(0)
    return _small_cases()


def test_cases_name_catalogued_blocks():
    assert set(EXPECTED_BREAKS) <= {b.name for b in BLOCKS}


def test_every_catalogued_block_has_a_compile_case():
    # a newly catalogued block needs a small case in _small_cases and its count in EXPECTED_BREAKS
    missing = sorted({b.name for b in BLOCKS} - set(EXPECTED_BREAKS))
    assert not missing, f"catalogued blocks without a torch.compile case: {missing}"


@pytest.mark.parametrize("name", list(EXPECTED_BREAKS))
def test_graph_breaks(name, cases):
    fn, args = cases[name]
    fn(*args)  # warm the caches (mappings, backend loaders), as the eager first step would
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(fn)(*args)
    reasons = [str(r.reason).splitlines()[0] for r in explanation.break_reasons]
    if EXPECTED_BREAKS[name] is None:
        assert explanation.graph_count == 0, reasons
    else:
        assert explanation.graph_break_count == EXPECTED_BREAKS[name], reasons
    if EXPECTED_BREAKS[name] == 0:
        assert explanation.graph_count == 1


def test_flash_swin_compiles_fullgraph_and_matches_eager():
    """The zero-break block with fullgraph=True through AOTAutograd (values and input gradients)."""
    from segblocks.blocks.hrsam_attention import FlashSwinAttention

    torch.manual_seed(0)
    block = FlashSwinAttention(dim=16, num_heads=2, window_size=4)
    x = torch.randn(2, 35, 16, requires_grad=True)
    want = block(x, [(5, 7)])
    (g_want,) = torch.autograd.grad(want.sum(), x)
    torch._dynamo.reset()
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    got = compiled(x, [(5, 7)])
    (g_got,) = torch.autograd.grad(got.sum(), x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_got, g_want, atol=1e-5, rtol=1e-5)
