"""Generic layers shared by several blocks (below ``blocks``, above ``ops``)."""
from segblocks.layers.ms_deform_attn import MSDeformAttn
from segblocks.layers.position_encoding import PositionEmbeddingSine
from segblocks.layers.rope import VisionRotaryEmbedding2d, apply_rope_2d, rope_2d_tables

__all__ = ["MSDeformAttn", "PositionEmbeddingSine", "VisionRotaryEmbedding2d", "apply_rope_2d", "rope_2d_tables"]
