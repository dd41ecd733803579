"""Generic layers shared by several blocks (below ``blocks``, above ``ops``)."""
from segblocks.layers.ms_deform_attn import MSDeformAttn
from segblocks.layers.position_encoding import PositionEmbeddingSine

__all__ = ["MSDeformAttn", "PositionEmbeddingSine"]
