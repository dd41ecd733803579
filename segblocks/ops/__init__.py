"""Functional ops with capability-based backend dispatch (see ``segblocks.ops._dispatch``)."""
from segblocks.ops._dispatch import Backend, BackendUnavailable, dispatch, explain
from segblocks.ops.ms_deform_attn import MS_DEFORM_ATTN_BACKENDS, explain_ms_deform_attn, ms_deform_attn

__all__ = [
    "Backend",
    "BackendUnavailable",
    "MS_DEFORM_ATTN_BACKENDS",
    "dispatch",
    "explain",
    "explain_ms_deform_attn",
    "ms_deform_attn",
]
