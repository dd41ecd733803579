"""Bad-input cases of the MST blocks (collected by the guard in tests/test_bad_inputs.py).

Same four kinds as there (shape, dtype, empty, non_integer); plus the MST edge cases of the issue:
no clicks and only negative clicks (documented: zero scores, an all-zero selection, the base tokens
left unchanged by the fusion), a token grid smaller than k and input sizes that are not multiples
of a patch size (clear errors).
"""
from __future__ import annotations

import pytest
import torch
from _edge_cases import case_params, edge_case_failures, empty_shape

from segblocks.blocks.mst import AdaptivePatchEmbed, MultiScaleTokenBlock, TopKTokenSelector
from segblocks.losses.token import score_focal_loss, triplet_token_loss

F64 = torch.float64


def _empty(shape):
    """As :func:`_edge_cases.empty_shape`, looking into a ``TokenSelection``'s selection matrix."""
    check = empty_shape(shape)
    return lambda out: check(out.selection if hasattr(out, "selection") else out)


def ape():
    return AdaptivePatchEmbed(embed_dim=4)


def sel_inputs(b=2, dtype=torch.float32):
    return torch.randn(b, 4, 3, dtype=dtype), torch.randn(b, 24, 3, dtype=dtype), torch.zeros(b, 1, dtype=torch.long)


def mst():
    return MultiScaleTokenBlock(dim=8, num_heads=2, sr_ratio=2, selector=TopKTokenSelector(ratio=4))


def mst_inputs(b=2, dtype=torch.float32):
    return (torch.randn(b, 4, 4, 8, dtype=dtype),
            [(torch.randn(b, 64, 8, dtype=dtype), torch.randn(1, 64, 8, dtype=dtype)),
             (torch.randn(b, 4, 8, dtype=dtype), torch.randn(1, 4, 8, dtype=dtype))],
            torch.zeros(b, 1, dtype=torch.long))


def trip(b=2, dtype=torch.float32, index_dtype=torch.long):
    return (torch.randn(b, 3, dtype=dtype), torch.randn(b, 2, 3, dtype=dtype), torch.zeros(b, 2, dtype=index_dtype),
            torch.zeros(b, 5, dtype=torch.bool), torch.ones(b, dtype=torch.bool))


CASES = [
    ("AdaptivePatchEmbed", "shape", lambda: ape()(torch.randn(1, 3, 64, 60), 16), (ValueError, "multiples of the patch size 16")),
    ("AdaptivePatchEmbed", "shape", lambda: ape()(torch.randn(1, 4, 64, 64), 16), (ValueError, r"x must be \(B, 3, H, W\)")),
    ("AdaptivePatchEmbed", "dtype", lambda: ape()(torch.randn(1, 3, 32, 32, dtype=F64), 16), (TypeError, "float64 but the module")),
    ("AdaptivePatchEmbed", "dtype", lambda: ape()(torch.zeros(1, 3, 32, 32, dtype=torch.long), 16), (TypeError, "floating point")),
    ("AdaptivePatchEmbed", "empty", lambda: ape()(torch.randn(0, 3, 32, 32), 8), _empty((0, 4, 4, 4))),
    ("AdaptivePatchEmbed", "non_integer", lambda: ape()(torch.randn(1, 3, 32, 32), 8.0), (TypeError, "patch_size must be an int")),
    ("AdaptivePatchEmbed", "non_integer", lambda: AdaptivePatchEmbed(embed_dim=4, patch_sizes=(8, 16.5)), (TypeError, "patch_sizes")),
    ("TopKTokenSelector", "shape", lambda: TopKTokenSelector()(torch.randn(2, 4, 3), torch.randn(2, 24, 5), torch.zeros(2, 1, dtype=torch.long)), (ValueError, "share B and C")),
    ("TopKTokenSelector", "shape", lambda: TopKTokenSelector()(*sel_inputs()[:2], torch.zeros(2, dtype=torch.long)), (ValueError, "click_index")),
    ("TopKTokenSelector", "dtype", lambda: TopKTokenSelector()(*sel_inputs()[:2], torch.zeros(2, 1)), (TypeError, "click_index must have an integer dtype")),
    ("TopKTokenSelector", "dtype", lambda: TopKTokenSelector()(sel_inputs()[0].long(), *sel_inputs()[1:]), (TypeError, "floating point")),
    ("TopKTokenSelector", "empty", lambda: TopKTokenSelector()(*sel_inputs(b=0)), _empty((0, 2, 24))),
    ("TopKTokenSelector", "non_integer", lambda: TopKTokenSelector(ratio=2.5), (TypeError, "ratio must be an int")),
    ("TopKTokenSelector", "non_integer", lambda: TopKTokenSelector(k=True), (TypeError, "k must be an int")),
    ("MultiScaleTokenBlock", "shape", lambda: mst()(torch.randn(2, 16, 8), *mst_inputs()[1:]), (ValueError, r"x must be \(B, h, w, 8\)")),
    ("MultiScaleTokenBlock", "shape", lambda: mst()(mst_inputs()[0], mst_inputs()[1][:1], mst_inputs()[2]), (ValueError, "scales must be")),
    ("MultiScaleTokenBlock", "dtype", lambda: mst()(*mst_inputs(dtype=F64)), (TypeError, "float64 but the module")),
    ("MultiScaleTokenBlock", "dtype", lambda: mst()(mst_inputs()[0].long(), *mst_inputs()[1:]), (TypeError, "floating point")),
    ("MultiScaleTokenBlock", "empty", lambda: mst()(*mst_inputs(b=0)), _empty((0, 4, 4, 8))),
    ("MultiScaleTokenBlock", "non_integer", lambda: MultiScaleTokenBlock(dim=8, num_heads=2, sr_ratio=1.5), (TypeError, "sr_ratio must be an int")),
    ("MultiScaleTokenBlock", "non_integer", lambda: MultiScaleTokenBlock(dim=8, num_heads=2.0), (TypeError, "num_heads must be an int")),
    ("triplet_token_loss", "shape", lambda: triplet_token_loss(*trip()[:3], torch.zeros(2, 5, 1, dtype=torch.bool), trip()[4]), (ValueError, "target must be")),
    ("triplet_token_loss", "dtype", lambda: triplet_token_loss(*trip()[:3], torch.zeros(2, 5), trip()[4]), (TypeError, "target must have torch.bool")),
    ("triplet_token_loss", "empty", lambda: triplet_token_loss(*trip(b=0)), _empty((0,))),
    ("triplet_token_loss", "non_integer", lambda: triplet_token_loss(*trip(index_dtype=torch.float32)), (TypeError, "index must have an integer dtype")),
    ("score_focal_loss", "shape", lambda: score_focal_loss(torch.rand(2, 5), torch.zeros(2, 4, dtype=torch.bool), torch.ones(2, dtype=torch.bool)), (ValueError, "target must be")),
    ("score_focal_loss", "dtype", lambda: score_focal_loss(torch.rand(2, 5).long(), torch.zeros(2, 5, dtype=torch.bool), torch.ones(2, dtype=torch.bool)), (TypeError, "floating point")),
    ("score_focal_loss", "empty", lambda: score_focal_loss(torch.rand(0, 5), torch.zeros(0, 5, dtype=torch.bool), torch.ones(0, dtype=torch.bool)), _empty((0,))),
    ("score_focal_loss", "non_integer", lambda: score_focal_loss(torch.rand(2, 5), torch.zeros(2, 5, dtype=torch.bool), torch.ones(2)), (TypeError, "valid must have torch.bool")),
]


@pytest.mark.parametrize("block,kind,call,expected", case_params(CASES))
def test_mst_block_edge(block, kind, call, expected):
    failures = edge_case_failures(call, expected)  # the message must be ours, not torch's or numpy's
    assert not failures, failures


@pytest.mark.parametrize("labels", [[-1, -1], [0, -1]], ids=["no-clicks", "only-negative"])
def test_without_positive_clicks_selection_is_empty_and_base_tokens_skip_the_fusion(labels):
    torch.manual_seed(0)
    blk = mst().eval()
    x, scales, _ = mst_inputs(b=1)
    index = torch.tensor([[3 if lab == 1 else -1 for lab in labels]])
    out, _, aux = blk(x, scales, index)
    assert aux["selection_t"].selection.abs().sum() == 0 and aux["selection_t"].scores.abs().sum() == 0
    # the base tokens only went through the ViT block
    torch.testing.assert_close(out, blk.vit_forward(x.reshape(1, 16, 8)).reshape(1, 4, 4, 8))


def test_grid_smaller_than_k_and_indivisible_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="grid of 11 tokens gives k = 0"):
        TopKTokenSelector()(torch.randn(1, 4, 3), torch.randn(1, 11, 3), torch.tensor([[0]]))
    with pytest.raises(ValueError, match="multiples of the patch size 28"):
        AdaptivePatchEmbed(embed_dim=4)(torch.randn(1, 3, 64, 64), 28)
