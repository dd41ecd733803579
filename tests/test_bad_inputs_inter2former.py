"""Bad-input cases of the Inter2Former blocks (collected by the guard in tests/test_bad_inputs.py).

Same four kinds (shape, dtype, empty, non_integer); plus the issue's edge cases: an empty
selection, an all-background M_ref and a one-token object all run.
"""
from __future__ import annotations

import pytest
import torch
from _edge_cases import case_params, edge_case_failures, empty_shape as _empty

from segblocks.blocks.inter2former import (
    BSQAttention,
    CannyNet,
    DynamicHybridAttention,
    DynamicLocalUpsampling,
    DynamicPromptEmbedding,
    HybridMoE,
    EdgeTokenSelection,
    select_edge_tokens,
)
from segblocks.models.inter2former import inter2former_tiny
from segblocks.ops.grouped_gemm import grouped_gemm

F64 = torch.float64




def dpe():
    return DynamicPromptEmbedding(embed_dim=16, dims=(4, 8, 8, 16))


def dha():
    return DynamicHybridAttention(embed_dim=16, num_heads=2, downscale=2, code_size=4)


def sel(b=2, n=6):
    return EdgeTokenSelection.from_mask(torch.rand(b, n) > 0.5)


def dlu():
    return DynamicLocalUpsampling(embed_dim=64)


def edges(b=2, h=2, w=3, dtype=torch.float32):
    return [torch.randn(b, c, h * 2 ** (j + 1), w * 2 ** (j + 1), dtype=dtype) for j, c in enumerate((64, 16, 4, 1))]


def qkv(nq=3, nk=5, dtype=torch.float32):
    return torch.randn(nq, 1, 8, dtype=dtype), torch.randn(nk, 1, 8, dtype=dtype), torch.randn(nk, 1, 8, dtype=dtype)


CASES = [
    ("DynamicPromptEmbedding", "shape", lambda: dpe()(torch.ones(1, 1, 30, 32, dtype=torch.long)), (ValueError, "multiples of 16")),
    ("DynamicPromptEmbedding", "shape", lambda: dpe()(torch.full((1, 1, 32, 32), 7)), (ValueError, "0..4")),
    ("DynamicPromptEmbedding", "dtype", lambda: dpe()(torch.ones(1, 1, 32, 32)), (TypeError, "integer dtype")),
    ("DynamicPromptEmbedding", "empty", lambda: dpe()(torch.ones(0, 1, 32, 32, dtype=torch.long)), _empty((0, 16, 2, 2))),
    ("DynamicPromptEmbedding", "non_integer", lambda: DynamicPromptEmbedding(embed_dim=16.0), (TypeError, "embed_dim must be an int")),
    ("select_edge_tokens", "shape", lambda: select_edge_tokens(torch.ones(1, 32, 30, dtype=torch.long), (2, 4)), (ValueError, "multiple of the grid")),
    ("select_edge_tokens", "dtype", lambda: select_edge_tokens(torch.ones(1, 32, 32), (2, 2)), (TypeError, "integer dtype")),
    ("select_edge_tokens", "empty", lambda: select_edge_tokens(torch.ones(0, 32, 32, dtype=torch.long), (2, 2)).mask, _empty((0, 4))),
    ("select_edge_tokens", "non_integer", lambda: select_edge_tokens(torch.ones(1, 32, 32, dtype=torch.long), (2.0, 2)), (TypeError, "must be an int")),
    ("BSQAttention", "shape", lambda: BSQAttention(head_dim=8, code_size=4)(torch.randn(3, 8), *qkv()[1:], [3], [5]), (ValueError, r"q must be \(Nq, H, D=8\)")),
    ("BSQAttention", "shape", lambda: BSQAttention(head_dim=8, code_size=4)(*qkv(), [3, 0], [0, 5]), (ValueError, "needs keys")),
    ("BSQAttention", "dtype", lambda: BSQAttention(head_dim=8, code_size=4)(*qkv(dtype=F64)[:2], qkv()[2], [3], [5]), (TypeError, "share a dtype")),
    ("BSQAttention", "empty", lambda: BSQAttention(head_dim=8, code_size=4)(*qkv(nq=0), [0], [5]), _empty((0, 1, 8))),
    ("BSQAttention", "non_integer", lambda: BSQAttention(head_dim=8, code_size=4)(*qkv(), [1.5, 1.5], [5, 0]), (TypeError, "q_lengths")),
    ("DynamicHybridAttention", "shape", lambda: dha()(torch.randn(2, 6, 8), (2, 3), sel()), (ValueError, r"x must be \(B, L, C=16\)")),
    ("DynamicHybridAttention", "shape", lambda: dha()(torch.randn(2, 6, 16), (2, 2), sel()), (ValueError, "holds 4 tokens")),
    ("DynamicHybridAttention", "dtype", lambda: dha()(torch.randn(2, 6, 16, dtype=F64), (2, 3), sel()), (TypeError, "float64")),
    ("DynamicHybridAttention", "empty", lambda: dha()(torch.randn(0, 6, 16), (2, 3), sel(b=0)), _empty((0, 6, 16))),
    ("DynamicHybridAttention", "non_integer", lambda: dha()(torch.randn(2, 6, 16), (2.0, 3), sel()), (TypeError, "must be an int")),
    ("HybridMoE", "shape", lambda: HybridMoE(embed_dim=8, hidden_dim=8, num_experts=2)(torch.randn(4, 6), torch.tensor([0])), (ValueError, r"x must be \(N, d=8\)")),
    ("HybridMoE", "dtype", lambda: HybridMoE(embed_dim=8, hidden_dim=8, num_experts=2)(torch.randn(4, 8), torch.tensor([0.0])), (TypeError, "integer dtype")),
    ("HybridMoE", "empty", lambda: HybridMoE(embed_dim=8, hidden_dim=8, num_experts=2)(torch.randn(0, 8), torch.zeros(0, dtype=torch.long)), _empty((0, 8))),
    ("HybridMoE", "non_integer", lambda: HybridMoE(embed_dim=8, hidden_dim=8, num_experts=2.5), (TypeError, "num_experts must be an int")),
    ("grouped_gemm", "shape", lambda: grouped_gemm(torch.randn(4, 3), torch.tensor([0, 2, 4]), torch.randn(2, 5, 4)), (ValueError, r"weight must be \(E, N, K=3\)")),
    ("grouped_gemm", "dtype", lambda: grouped_gemm(torch.randn(4, 3), torch.tensor([0, 2, 4]), torch.randn(2, 5, 3, dtype=F64)), (TypeError, "share a dtype")),
    ("grouped_gemm", "empty", lambda: grouped_gemm(torch.randn(0, 3), torch.tensor([0, 0, 0]), torch.randn(2, 5, 3)), _empty((0, 5))),
    ("grouped_gemm", "non_integer", lambda: grouped_gemm(torch.randn(4, 3), torch.tensor([0.0, 2, 4]), torch.randn(2, 5, 3)), (TypeError, "torch.int64")),
    ("DynamicLocalUpsampling", "shape", lambda: dlu()(torch.randn(2, 64, 2, 3), edges()[:3]), (ValueError, "list of 4 feature maps")),
    ("DynamicLocalUpsampling", "shape", lambda: dlu()(torch.randn(2, 64, 2, 3), edges(h=3)), (ValueError, r"edges\[0\] must be")),
    ("DynamicLocalUpsampling", "dtype", lambda: dlu()(torch.randn(2, 64, 2, 3, dtype=F64), edges(dtype=F64)), (TypeError, "float64")),
    ("DynamicLocalUpsampling", "empty", lambda: dlu().eval()(torch.randn(0, 64, 2, 3), edges(b=0)), _empty((0, 1, 32, 48))),
    ("DynamicLocalUpsampling", "non_integer", lambda: DynamicLocalUpsampling(embed_dim=64, num_upsamplers=4.0), (TypeError, "num_upsamplers must be an int")),
    ("CannyNet", "shape", lambda: CannyNet(dims=(1, 4, 16, 64))(torch.rand(1, 3, 30, 32)), (ValueError, "multiples of 8")),
    ("CannyNet", "dtype", lambda: CannyNet(dims=(1, 4, 16, 64))(torch.rand(1, 3, 32, 32, dtype=F64)), (TypeError, "float64")),
    ("CannyNet", "empty", lambda: CannyNet(dims=(1, 4, 16, 64))(torch.rand(0, 3, 32, 32)), _empty((0, 64, 4, 4))),
    ("CannyNet", "non_integer", lambda: CannyNet(dims=(1, 4, 16.5, 64)), (TypeError, "dims")),
]


@pytest.mark.parametrize("block,kind,call,expected", case_params(CASES))
def test_inter2former_block_edge(block, kind, call, expected):
    failures = edge_case_failures(call, expected)  # the message must be ours, not torch's or numpy's
    assert not failures, failures


@pytest.mark.parametrize("case", ["all_background", "one_token_object", "unknown_everywhere"])
def test_model_runs_on_edge_ref_labels(case):
    from segblocks.interactive.clicker import Clicks
    from segblocks.interactive.protocol import ClickPrompts

    torch.manual_seed(0)
    m = inter2former_tiny().eval()
    state = m.encode(torch.rand(1, 3, 64, 64) * 255, torch.tensor([[64, 64]]))
    size = torch.tensor([[64, 64]])
    with torch.no_grad():
        if case == "all_background":  # M_ref all POSSIBLE_BG: empty selection, whole-image DPE box
            out, _, _ = m.forward_tokens(state.features, state.edges, torch.ones(1, 64, 64, dtype=torch.uint8))
        elif case == "one_token_object":
            ref = torch.ones(1, 64, 64, dtype=torch.uint8)
            ref[0, 20:23, 20:23] = 4
            out, _, _ = m.forward_tokens(state.features, state.edges, ref)
        else:
            out = m.decode(state, ClickPrompts(clicks=Clicks.from_lists([[(0, 0, 1)]]), frame_size=size, input_size=size), None)
    assert out.shape == (1, 1, 64, 64) and torch.isfinite(out).all()


def test_model_rejects_non_multiple_of_16():
    with pytest.raises(ValueError, match="multiples of 16"):
        inter2former_tiny().encode(torch.rand(1, 3, 60, 64), torch.tensor([[60, 64]]))
