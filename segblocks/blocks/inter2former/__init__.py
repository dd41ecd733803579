"""Inter2Former blocks (Huang et al., "Inter2Former: Dynamic Hybrid Attention for Efficient
High-Precision Interactive Segmentation"; code YouHuang67/inter2former), one module per concept:

* :class:`DynamicPromptEmbedding` (DPE, §3.3, Eq. 1-3) — :mod:`.dpe`;
* :func:`select_edge_tokens` / :class:`EdgeTokenSelection` (Eq. 4-5) — :mod:`.selection`;
* :class:`BSQAttention` (BSQA, §3.5, Eq. 7-14) — :mod:`.bsqa`;
* :class:`DynamicHybridAttention` (DHA, §3.4, Eq. 5-6) — :mod:`.dha`;
* :class:`HybridMoE` (HMoE, §3.6, Eq. 15-20) — :mod:`.hmoe`;
* :class:`DynamicLocalUpsampling` (DLU, §3.7, Eq. 21-24) — :mod:`.dlu`;
* :class:`Canny` / :class:`CannyNet` (Eq. 23) — :mod:`.canny`.
"""
from segblocks.blocks.inter2former.bsqa import BSQAttention
from segblocks.blocks.inter2former.canny import Canny, CannyNet
from segblocks.blocks.inter2former.dha import DynamicHybridAttention
from segblocks.blocks.inter2former.dlu import DynamicLocalUpsampling, Upsample2x
from segblocks.blocks.inter2former.dpe import DynamicPromptEmbedding, box_mask, prompt_boxes
from segblocks.blocks.inter2former.hmoe import HybridMoE
from segblocks.blocks.inter2former.selection import EdgeTokenSelection, edge_token_mask, select_edge_tokens

__all__ = [
    "BSQAttention",
    "Canny",
    "CannyNet",
    "DynamicHybridAttention",
    "DynamicLocalUpsampling",
    "DynamicPromptEmbedding",
    "HybridMoE",
    "EdgeTokenSelection",
    "Upsample2x",
    "box_mask",
    "edge_token_mask",
    "prompt_boxes",
    "select_edge_tokens",
]
