"""Generic layers shared by several blocks and models (below ``blocks``, above ``ops``).

One concept per module: :mod:`~segblocks.layers.drop_path`, :mod:`~segblocks.layers.mlp`,
:mod:`~segblocks.layers.patch_embed`, :mod:`~segblocks.layers.norm`,
:mod:`~segblocks.layers.window`, :mod:`~segblocks.layers.rope`,
:mod:`~segblocks.layers.position_encoding`, :mod:`~segblocks.layers.ms_deform_attn`.
"""
from segblocks.layers.drop_path import DropPath, drop_path
from segblocks.layers.mlp import MLPBlock, MLPHead, Mlp, SwiGLU
from segblocks.layers.ms_deform_attn import MSDeformAttn
from segblocks.layers.norm import LayerNorm2d
from segblocks.layers.patch_embed import PatchEmbed
from segblocks.layers.position_encoding import PositionEmbeddingSine
from segblocks.layers.rope import VisionRotaryEmbedding2d, apply_rope_2d, rope_2d_tables
from segblocks.layers.window import window_partition, window_unpartition

__all__ = [
    "DropPath",
    "LayerNorm2d",
    "MLPBlock",
    "MLPHead",
    "MSDeformAttn",
    "Mlp",
    "PatchEmbed",
    "PositionEmbeddingSine",
    "SwiGLU",
    "VisionRotaryEmbedding2d",
    "apply_rope_2d",
    "drop_path",
    "rope_2d_tables",
    "window_partition",
    "window_unpartition",
]
