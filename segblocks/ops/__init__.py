"""Functional ops with capability-based backend dispatch (see ``segblocks.ops._dispatch``)."""
from segblocks.ops._dispatch import Backend, BackendUnavailable, dispatch, explain
from segblocks.ops.fla_mapping import (
    FLAMapping,
    kv_padding_mapping,
    multi_scale_kv_padding_mapping,
    multi_scale_mapping,
    shift_window_mapping,
)
from segblocks.ops.ms_deform_attn import MS_DEFORM_ATTN_BACKENDS, explain_ms_deform_attn, ms_deform_attn
from segblocks.ops.selective_scan import SELECTIVE_SCAN_BACKENDS, explain_selective_scan, selective_scan
from segblocks.ops.varlen_attention import VARLEN_ATTENTION_BACKENDS, SeqLens, explain_varlen_attention, varlen_attention

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
    "kv_padding_mapping",
    "ms_deform_attn",
    "multi_scale_kv_padding_mapping",
    "multi_scale_mapping",
    "selective_scan",
    "shift_window_mapping",
    "varlen_attention",
]
