"""Functional ops with capability-based backend dispatch (see ``segblocks.ops._dispatch``).

Each op with several backends is a subpackage named after it, holding the dispatching function
of the same name and one module per backend::

    from segblocks.ops.varlen_attention import varlen_attention       # the op
    from segblocks.ops.varlen_attention.naive import varlen_attention_reference  # one backend
    import segblocks.ops.selective_scan.chunked                       # works: not shadowed

``segblocks.ops`` therefore does **not** re-export ``ms_deform_attn``, ``selective_scan`` and
``varlen_attention`` under their own names: binding the functions there would replace the
subpackages of the same name (``segblocks.ops.varlen_attention`` would be the function and
``import segblocks.ops.varlen_attention.naive`` would fail). The functions are importable from
their subpackages and from the top level (``segblocks.varlen_attention``, the block catalog).
"""
from segblocks.ops import fla_mapping, ms_deform_attn, selective_scan, varlen_attention
from segblocks.ops._dispatch import Backend, BackendUnavailable, dispatch, explain
from segblocks.ops.fla_mapping import (
    FLAMapping,
    kv_padding_mapping,
    multi_scale_kv_padding_mapping,
    multi_scale_mapping,
    shift_window_mapping,
)
from segblocks.ops.ms_deform_attn import MS_DEFORM_ATTN_BACKENDS, explain_ms_deform_attn
from segblocks.ops.selective_scan import SELECTIVE_SCAN_BACKENDS, explain_selective_scan
from segblocks.ops.varlen_attention import VARLEN_ATTENTION_BACKENDS, SeqLens, explain_varlen_attention

__all__ = [
    "Backend",
    "BackendUnavailable",
    "FLAMapping",
    "MS_DEFORM_ATTN_BACKENDS",
    "SELECTIVE_SCAN_BACKENDS",
    "SeqLens",
    "VARLEN_ATTENTION_BACKENDS",
    "dispatch",
    "explain",
    "explain_ms_deform_attn",
    "explain_selective_scan",
    "explain_varlen_attention",
    "fla_mapping",
    "kv_padding_mapping",
    "ms_deform_attn",
    "multi_scale_kv_padding_mapping",
    "multi_scale_mapping",
    "selective_scan",
    "shift_window_mapping",
    "varlen_attention",
]
