"""Multi-scale deformable attention core (MSDeformAttn) with backend dispatch.

Deformable DETR (Zhu et al., "Deformable DETR: Deformable Transformers for End-to-End Object
Detection", ICLR 2021), Eq. 2 (single scale) and Eq. 3 (multi-scale): every query attends to
``P`` sampled points per level and head, at ``reference + offset``, with softmax weights over
the ``L * P`` samples of a head. This module implements the inner sum of Eq. 3,
``sum_l sum_k A_mlqk * x^l(p_mlqk)``, on already projected per-head values; the projections
live in :class:`segblocks.layers.ms_deform_attn.MSDeformAttn`.

Backends, tried in order by ``backend="auto"``:

========  ==================================================  ===========================
name      where                                               dtypes
========  ==================================================  ===========================
triton    CUDA; CPU only under ``TRITON_INTERPRET=1`` and     fp32, fp16 (+ bf16 on CUDA)
          only when named (the interpreter is for testing)
pytorch   any device (one ``F.grid_sample`` per level)        all floating
========  ==================================================  ===========================

Level shapes are Python ``(H_l, W_l)`` pairs (like ``spatial_shapes_list`` in HF transformers'
Mask2Former), so nothing in the forward pass reads a tensor back to the host and
``torch.compile`` traces it without graph breaks. The Deformable DETR API (an ``(L, 2)`` integer
tensor plus ``level_start_index``) is still accepted; it is read once per call with
``.tolist()`` (a host synchronisation on CUDA, a graph break under ``torch.compile``).

The Triton backend is a ``torch.library`` custom op (``segblocks::ms_deform_attn``, registered
when the backend is first loaded) with a fake implementation and an autograd formula, so it
composes with ``torch.compile`` and ``torch.export``.

FLOPs: like fvcore/detectron2, :mod:`segblocks.flops` excludes this sampling core and counts
only the surrounding linear projections (``FlopCounterMode`` sees neither ``grid_sample`` nor a
Triton launch).
"""
from __future__ import annotations

from typing import Sequence

import torch

from segblocks.ops._checks import check_tensor
from segblocks.ops._dispatch import Backend, dispatch, explain, triton_check
from segblocks.ops.ms_deform_attn.naive import LevelShapes, ms_deform_attn_pytorch

__all__ = [
    "MS_DEFORM_ATTN_BACKENDS",
    "LevelShapes",
    "explain_ms_deform_attn",
    "level_shapes",
    "ms_deform_attn",
    "ms_deform_attn_pytorch",
]

_TRITON_MAX_HEAD_DIM = 256
_OP = "ms_deform_attn"


def _triton_check(value: torch.Tensor, *tensors: torch.Tensor, requested: str = "auto") -> list[str]:
    reasons = triton_check(value, *tensors, requested=requested)
    if value.shape[-1] > _TRITON_MAX_HEAD_DIM:
        reasons.append(f"head dim D={value.shape[-1]} > {_TRITON_MAX_HEAD_DIM} (one D-wide register tile per query)")
    return reasons


MS_DEFORM_ATTN_BACKENDS: tuple[Backend, ...] = (
    Backend(
        name="triton",
        loader="segblocks_kernels.ms_deform_attn:ms_deform_attn_triton",
        dtypes=frozenset({torch.float32, torch.float16, torch.bfloat16}),
        check=_triton_check,
    ),
    Backend(name="pytorch", loader=ms_deform_attn_pytorch),
)


def level_shapes(spatial_shapes: torch.Tensor | Sequence[Sequence[int]], *, owner: str = _OP) -> LevelShapes:
    """Level shapes as a tuple of Python ``(H_l, W_l)`` int pairs, validated (``L >= 1``, sizes >= 1).

    Args:
        spatial_shapes: ``[(H_l, W_l), ...]`` Python ints (no host synchronisation), or the
            Deformable DETR ``(L, 2)`` integer tensor (read with ``.tolist()``: a host sync on
            CUDA and a graph break under ``torch.compile``; kept for compatibility).
        owner: name used in error messages.

    Raises:
        TypeError: not integers. ValueError: not ``(L, 2)`` with ``L >= 1``, or a level with
            ``H < 1`` or ``W < 1``.
    """
    if isinstance(spatial_shapes, torch.Tensor):
        check_tensor(spatial_shapes, "spatial_shapes", owner=owner, dtype="integer")
        if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2 or spatial_shapes.shape[0] == 0:
            raise ValueError(f"{owner}: spatial_shapes must be (L, 2) with L >= 1, got {tuple(spatial_shapes.shape)}")
        spatial_shapes = spatial_shapes.tolist()
    try:
        pairs = [tuple(pair) for pair in spatial_shapes]
    except TypeError:
        raise TypeError(f"{owner}: spatial_shapes must be a sequence of (H, W) int pairs, got {spatial_shapes!r}") from None
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ValueError(f"{owner}: spatial_shapes must be (L, 2) with L >= 1, got {spatial_shapes!r}")
    if any(isinstance(v, bool) or not isinstance(v, (int, torch.SymInt)) for p in pairs for v in p):
        raise TypeError(f"{owner}: spatial_shapes must hold integer (H, W) pairs, got {spatial_shapes!r}")
    if any(h < 1 or w < 1 for h, w in pairs):
        raise ValueError(f"{owner}: every level needs H, W >= 1, got spatial_shapes {pairs}")
    return tuple((h, w) for h, w in pairs)  # ints (SymInts under dynamic-shape tracing)


def _validate(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor | Sequence[Sequence[int]],
    level_start_index: torch.Tensor | None,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> LevelShapes:
    op = _OP
    B, S, M, _ = check_tensor(value, "value", owner=op, shape=("B", "S", "M", "D"))
    check_tensor(sampling_locations, "sampling_locations", owner=op)
    check_tensor(attention_weights, "attention_weights", owner=op)
    shapes = level_shapes(spatial_shapes, owner=op)
    L = len(shapes)
    if level_start_index is not None:
        check_tensor(level_start_index, "level_start_index", owner=op, dtype="integer")
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(
            f"ms_deform_attn: sampling_locations must be (B, Lq, M, L, P, 2), got {tuple(sampling_locations.shape)}"
        )
    Lq, P = sampling_locations.shape[1], sampling_locations.shape[4]
    if sampling_locations.shape != (B, Lq, M, L, P, 2):
        raise ValueError(
            f"ms_deform_attn: sampling_locations must be (B, Lq, M, L, P, 2) = {(B, Lq, M, L, P, 2)} "
            f"given value {tuple(value.shape)} and {L} levels, got {tuple(sampling_locations.shape)}"
        )
    if attention_weights.shape != (B, Lq, M, L, P):
        raise ValueError(
            f"ms_deform_attn: attention_weights must be (B, Lq, M, L, P) = {(B, Lq, M, L, P)}, "
            f"got {tuple(attention_weights.shape)}"
        )
    devices = {t.device for t in (value, sampling_locations, attention_weights)}
    if len(devices) > 1:
        raise ValueError(f"ms_deform_attn: value, sampling_locations, attention_weights on different devices {devices}")
    sizes = [h * w for h, w in shapes]
    if S != sum(sizes):
        raise ValueError(f"ms_deform_attn: value has S={S} tokens but spatial_shapes {list(shapes)} sum to {sum(sizes)}")
    if level_start_index is not None:
        if level_start_index.shape != (L,):
            raise ValueError(f"ms_deform_attn: level_start_index must be ({L},), got {tuple(level_start_index.shape)}")
        if level_start_index.device.type == "cpu":  # a device tensor's values would need a host sync
            starts = [sum(sizes[:i]) for i in range(L)]
            if level_start_index.tolist() != starts:
                raise ValueError(
                    f"ms_deform_attn: level_start_index must be {starts} for {list(shapes)}, got {level_start_index.tolist()}"
                )
    return shapes


def explain_ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor | Sequence[Sequence[int]],
    level_start_index: torch.Tensor | None,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    *,
    backend: str = "auto",
) -> dict[str, list[str]]:
    """Why each backend would (empty list) or would not run these inputs with ``backend=``."""
    tensors = (value, sampling_locations, attention_weights)
    return explain(_OP, MS_DEFORM_ATTN_BACKENDS, tensors, requested=backend)


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor | Sequence[Sequence[int]],
    level_start_index: torch.Tensor | None,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Multi-scale deformable attention core (Deformable DETR, Eq. 3, inner sums).

    Bilinear sampling matches ``F.grid_sample(mode="bilinear", padding_mode="zeros",
    align_corners=False)``: location ``(x, y)`` in ``[0, 1]`` is pixel ``(x * W_l - 0.5,
    y * H_l - 0.5)``; points outside the map (locations outside ``[0, 1]`` are allowed) read zeros.

    Args:
        value: ``(B, S, M, D)`` per-head values; level ``l`` occupies ``H_l * W_l`` tokens in
            row-major order, levels one after the other.
        spatial_shapes: ``[(H_l, W_l), ...]`` Python ints (preferred: no host sync), or an
            ``(L, 2)`` integer tensor (Deformable DETR API, read with ``.tolist()``).
        level_start_index: ``None`` (derived from the shapes), or the ``(L,)`` integer exclusive
            cumulative sum of ``H_l * W_l`` (checked when it is on the CPU).
        sampling_locations: ``(B, Lq, M, L, P, 2)`` normalized ``(x, y)``.
        attention_weights: ``(B, Lq, M, L, P)`` (already softmax-normalized by the caller).
        backend: ``"auto"`` or a name in :data:`MS_DEFORM_ATTN_BACKENDS`.

    Returns:
        ``(B, Lq, M * D)`` in ``value.dtype`` (computed with float32 accumulation).

    Raises:
        TypeError / ValueError: malformed inputs (shapes, dtypes, level sizes summing to ``S``).
        segblocks.ops._dispatch.BackendUnavailable: no backend (or not the named one) can run
            them; the message lists every refusal (see :func:`explain_ms_deform_attn`).
    """
    shapes = _validate(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    tensors = (value, sampling_locations, attention_weights)
    fn = dispatch(_OP, MS_DEFORM_ATTN_BACKENDS, tensors, backend, requested=backend)
    return fn(value, shapes, sampling_locations, attention_weights)
