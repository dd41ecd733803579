"""Grouped varlen attention: segments of equal shape batched together, one SDPA call per shape.

Window partitions have few distinct segment shapes ``(Lq, Lkv)``: Flash Swin on an ``h x w``
grid with shift ``k/2`` (HRSAM §3.3, Eq. 5-8) has at most four (full ``k x k`` windows, the
``k/2 x k`` and ``k x k/2`` edge pieces, the ``k/2 x k/2`` corners; the two edge kinds have the
same length), KV-only padding (§3.4) makes every key segment ``k²`` long. This backend

1. permutes the rows of ``q`` and of ``k``/``v`` once each so that the segments of every shape
   group are contiguous (one ``index_select`` per tensor; identity permutations are skipped),
2. splits them into one ``(G, L, H, D)`` view per group (``torch.split``: views, its backward
   is one ``cat``) and calls ``F.scaled_dot_product_attention`` without a mask per group —
   no padded rows or keys, so no wasted work, and SDPA can take its fused CPU/CUDA kernel,
3. concatenates the group outputs and undoes the query permutation.

The permutations are explicit autograd functions whose backward is the *inverse permutation*
(another gather) instead of ``index_select``'s default ``index_add`` into zeros. Key rows of
segments without queries are moved to a discarded tail, so the key permutation is a full
permutation too (their gradient is zero).

The grouping is computed from the Python-side lengths of :class:`SeqLens` (no tensor reads, no
host synchronisation) and cached on the description (``SeqLens.cached``), so a mapping that is
itself cached (e.g. :mod:`segblocks.ops.fla_mapping`) pays for it once.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from segblocks.ops.varlen_attention import SeqLens

__all__ = ["GroupLayout", "GroupedOrder", "group_layout", "group_segments", "permute_rows", "varlen_attention_grouped"]


class GroupLayout(NamedTuple):
    """Shape groups of a :class:`SeqLens` (built from Python ints only).

    Attributes:
        shapes: ``((count, Lq, Lkv), ...)`` per group, in order of first appearance.
        q_perm, q_inv: ``(Nq,)`` long row permutation of ``q`` into group order and its inverse;
            ``None`` when the segments are already grouped (identity).
        kv_perm, kv_inv: the same for ``k``/``v`` (``Nkv`` rows, unused rows last).
        kv_split: rows per group of the permuted keys, plus the unused tail (``0`` if none).
    """

    shapes: tuple[tuple[int, int, int], ...]
    q_perm: torch.Tensor | None
    q_inv: torch.Tensor | None
    kv_perm: torch.Tensor | None
    kv_inv: torch.Tensor | None
    kv_split: tuple[int, ...]


def _order(starts: tuple[int, ...], segments: list[int], total: int) -> list[int]:
    rows: list[int] = []
    for i in segments:
        rows.extend(range(starts[i], starts[i + 1]))
    if len(rows) < total:  # rows of dropped segments go last (a full permutation)
        used = set(rows)
        rows.extend(r for r in range(total) if r not in used)
    return rows


def _perm(rows: list[int], device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if rows == list(range(len(rows))):
        return None, None
    perm = torch.tensor(rows, dtype=torch.long, device=device)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(len(rows), device=device)
    return perm, inv


def group_layout(seqlens: SeqLens) -> GroupLayout:
    """The :class:`GroupLayout` of ``seqlens``, cached on it."""

    def build() -> GroupLayout:
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (lq, lkv) in enumerate(zip(seqlens.q_seqlens, seqlens.kv_seqlens)):
            if lq > 0:  # empty query segments produce nothing; their keys are never read
                groups.setdefault((lq, lkv), []).append(i)
        order = [i for members in groups.values() for i in members]
        q_perm, q_inv = _perm(_order(seqlens.q_start_py, order, seqlens.total_q), seqlens.device)
        kv_perm, kv_inv = _perm(_order(seqlens.kv_start_py, order, seqlens.total_kv), seqlens.device)
        used = sum(len(m) * lkv for (_, lkv), m in groups.items())
        return GroupLayout(
            shapes=tuple((len(m), lq, lkv) for (lq, lkv), m in groups.items()),
            q_perm=q_perm,
            q_inv=q_inv,
            kv_perm=kv_perm,
            kv_inv=kv_inv,
            kv_split=tuple(len(m) * lkv for (_, lkv), m in groups.items()) + (seqlens.total_kv - used,),
        )

    return seqlens.cached("grouped", build)


class GroupedOrder(NamedTuple):
    """The same attention with its segments reordered so that equal shapes are adjacent.

    ``varlen_attention(q[q_rows], k[kv_rows], v[kv_rows], seqlens)`` equals
    ``varlen_attention(q, k, v, original)[q_rows]``. A caller that gathers its tokens anyway
    (e.g. FLA's window reordering, HRSAM §3.2 Eq. 2) composes these rows into its own gather, so
    the ``grouped`` backend then needs no permutation of its own.

    Attributes:
        q_rows: ``(Nq,)`` long, a permutation of the query rows (group order).
        kv_rows: ``(Nkv',)`` long, the key rows of the segments with queries, in group order.
        seqlens: :class:`SeqLens` of the reordered segments (empty query segments dropped).
    """

    q_rows: torch.Tensor
    kv_rows: torch.Tensor
    seqlens: SeqLens


def group_segments(seqlens: SeqLens) -> GroupedOrder:
    """Segments of ``seqlens`` reordered by shape (:class:`GroupedOrder`), cached on it."""

    def build() -> GroupedOrder:
        layout = group_layout(seqlens)
        device = seqlens.device
        q_rows = layout.q_perm if layout.q_perm is not None else torch.arange(seqlens.total_q, device=device)
        used = seqlens.total_kv - layout.kv_split[-1]
        kv_rows = layout.kv_perm[:used] if layout.kv_perm is not None else torch.arange(used, device=device)
        q_lens = [lq for n, lq, _ in layout.shapes for _ in range(n)]
        kv_lens = [lkv for n, _, lkv in layout.shapes for _ in range(n)]
        return GroupedOrder(q_rows, kv_rows, SeqLens.from_seqlens(q_lens, kv_lens, device=device))

    return seqlens.cached("group_segments", build)


class _Permute(torch.autograd.Function):
    """``x[perm]`` along dim 0 for a permutation; backward gathers with the inverse permutation."""

    @staticmethod
    def forward(x: torch.Tensor, perm: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
        return x.index_select(0, perm)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, perm, inv = inputs
        ctx.save_for_backward(perm, inv)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None):
        if grad is None:
            return None, None, None
        perm, inv = ctx.saved_tensors
        return _Permute.apply(grad, inv, perm), None, None  # differentiable: double backward works


def permute_rows(x: torch.Tensor, perm: torch.Tensor | None, inv: torch.Tensor | None) -> torch.Tensor:
    """``x[perm]`` for a permutation ``perm`` of ``x``'s rows (``inv`` its inverse; ``None``: no-op).

    Same values as ``x.index_select(0, perm)``; the gradient is the gather ``grad[inv]`` instead
    of an ``index_add`` into a zero tensor (faster on CPU, deterministic on CUDA).
    """
    if perm is None:
        return x
    return _Permute.apply(x, perm, inv)


def varlen_attention_grouped(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seqlens: SeqLens, scale: float
) -> torch.Tensor:
    """Block-diagonal attention as one unmasked batched SDPA call per segment shape.

    Args:
        q: ``(Nq, H, D)``; k, v: ``(Nkv, H, D)``; seqlens: the segment description.
        scale: logit scale.

    Returns:
        ``(Nq, H, D)``.
    """
    layout = group_layout(seqlens)
    h, d = q.shape[1:]
    qs = permute_rows(q, layout.q_perm, layout.q_inv).split([n * lq for n, lq, _ in layout.shapes])
    ks = permute_rows(k, layout.kv_perm, layout.kv_inv).split(layout.kv_split)
    vs = permute_rows(v, layout.kv_perm, layout.kv_inv).split(layout.kv_split)
    outs = []
    for (n, lq, lkv), qg, kg, vg in zip(layout.shapes, qs, ks, vs):
        out = F.scaled_dot_product_attention(
            qg.view(n, lq, h, d).transpose(1, 2),  # G x H x Lq x D
            kg.view(n, lkv, h, d).transpose(1, 2),  # G x H x Lkv x D
            vg.view(n, lkv, h, d).transpose(1, 2),
            scale=scale,
        )  # G x H x Lq x D
        outs.append(out.transpose(1, 2).reshape(n * lq, h, d))  # G*Lq x H x D
    out = outs[0] if len(outs) == 1 else torch.cat(outs)  # Nq x H x D, group order
    return permute_rows(out, layout.q_inv, layout.q_perm)
