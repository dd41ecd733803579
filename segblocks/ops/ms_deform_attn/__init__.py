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

FLOPs: like fvcore/detectron2, :mod:`segblocks.flops` excludes this sampling core and counts
only the surrounding linear projections (``FlopCounterMode`` sees neither ``grid_sample`` nor a
Triton launch).
"""
from __future__ import annotations

import torch

from segblocks.ops._checks import check_tensor
from segblocks.ops._dispatch import Backend, dispatch, explain, triton_usable
from segblocks.ops.ms_deform_attn.naive import ms_deform_attn_pytorch

__all__ = ["MS_DEFORM_ATTN_BACKENDS", "explain_ms_deform_attn", "ms_deform_attn", "ms_deform_attn_pytorch"]

_TRITON_MAX_HEAD_DIM = 256


def _triton_check(value: torch.Tensor, *tensors: torch.Tensor, requested: str = "auto") -> list[str]:
    reasons = triton_usable(value.device)
    if value.device.type == "cpu":
        if any(t.dtype == torch.bfloat16 for t in (value, *tensors)):
            reasons.append("dtype=torch.bfloat16 is not supported by the Triton interpreter on cpu")
        if requested == "auto" and not reasons:
            reasons.append("the Triton interpreter on cpu is only used when asked for (backend='triton')")
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


def _validate(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> None:
    op = "ms_deform_attn"
    B, S, M, _ = check_tensor(value, "value", owner=op, shape=("B", "S", "M", "D"))
    check_tensor(sampling_locations, "sampling_locations", owner=op)
    check_tensor(attention_weights, "attention_weights", owner=op)
    check_tensor(spatial_shapes, "spatial_shapes", owner=op, dtype="integer")
    check_tensor(level_start_index, "level_start_index", owner=op, dtype="integer")
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2 or spatial_shapes.shape[0] == 0:
        raise ValueError(f"ms_deform_attn: spatial_shapes must be (L, 2) with L >= 1, got {tuple(spatial_shapes.shape)}")
    L = spatial_shapes.shape[0]
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
    if level_start_index.shape != (L,):
        raise ValueError(f"ms_deform_attn: level_start_index must be ({L},), got {tuple(level_start_index.shape)}")
    devices = {t.device for t in (value, sampling_locations, attention_weights)}
    if len(devices) > 1:
        raise ValueError(f"ms_deform_attn: value, sampling_locations, attention_weights on different devices {devices}")
    if spatial_shapes.device.type != "cpu" or level_start_index.device.type != "cpu":
        return  # reading the values of device tensors would synchronise with the host: shapes only
    shapes = spatial_shapes.tolist()
    if any(h < 1 or w < 1 for h, w in shapes):
        raise ValueError(f"ms_deform_attn: every level needs H, W >= 1, got spatial_shapes {shapes}")
    sizes = [h * w for h, w in shapes]
    if S != sum(sizes):
        raise ValueError(f"ms_deform_attn: value has S={S} tokens but spatial_shapes {shapes} sum to {sum(sizes)}")
    starts = [sum(sizes[:i]) for i in range(L)]
    if level_start_index.tolist() != starts:
        raise ValueError(f"ms_deform_attn: level_start_index must be {starts} for {shapes}, got {level_start_index.tolist()}")


def explain_ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    *,
    backend: str = "auto",
) -> dict[str, list[str]]:
    """Why each backend would (empty list) or would not run these inputs with ``backend=``."""
    tensors = (value, sampling_locations, attention_weights)
    return explain("ms_deform_attn", MS_DEFORM_ATTN_BACKENDS, tensors, requested=backend)


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
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
        value: ``(B, S, M, D)`` per-head values; level ``l`` occupies
            ``[level_start_index[l], level_start_index[l] + H_l * W_l)`` in row-major order.
        spatial_shapes: ``(L, 2)`` integer ``[H_l, W_l]``.
        level_start_index: ``(L,)`` integer, the exclusive cumulative sum of ``H_l * W_l``.
        sampling_locations: ``(B, Lq, M, L, P, 2)`` normalized ``(x, y)``.
        attention_weights: ``(B, Lq, M, L, P)`` (already softmax-normalized by the caller).
        backend: ``"auto"`` or a name in :data:`MS_DEFORM_ATTN_BACKENDS`.

    Returns:
        ``(B, Lq, M * D)`` in ``value.dtype`` (computed with float32 accumulation).

    Raises:
        TypeError / ValueError: malformed inputs. Shapes and dtypes are always checked; the
            *values* of ``spatial_shapes`` / ``level_start_index`` (sizes >= 1, sum ``S``,
            starts) only when they are on the CPU, since reading device tensors would
            synchronise with the host.
        segblocks.ops._dispatch.BackendUnavailable: no backend (or not the named one) can run
            them; the message lists every refusal (see :func:`explain_ms_deform_attn`).
    """
    _validate(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    tensors = (value, sampling_locations, attention_weights)
    fn = dispatch("ms_deform_attn", MS_DEFORM_ATTN_BACKENDS, tensors, backend, requested=backend)
    return fn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
