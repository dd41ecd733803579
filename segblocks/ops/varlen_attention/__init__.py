"""Varlen block-diagonal attention (HRSAM §3.2 Fig. 3 and §3.4) with backend dispatch.

Queries and keys/values are *packed*: ``q`` is ``(Nq, H, D)`` = the segments ``Q^1, ..., Q^N``
concatenated along the token axis, ``k``/``v`` likewise ``(Nkv, H, D)``. Segment ``i``'s
queries attend only to segment ``i``'s keys, i.e. attention with a block-diagonal mask whose
blocks may be rectangular (``|Q^i| != |K^i|``, the "extended FLA" of §3.4). This is xformers'
``BlockDiagonalMask.from_seqlens(q_seqlens, kv_seqlens)`` with its ``[1, M, H, K]`` (BMHK)
layout and ``B = 1`` squeezed away. Query segments may be empty (they produce no rows); a
non-empty query segment needs a non-empty key segment.

Backends, tried in this order by ``backend="auto"``:

=========  =====================================================  ===========================
name       where                                                  dtypes
=========  =====================================================  ===========================
xformers   CUDA with xformers installed (the authors' kernel)     fp32, fp16, bf16
triton     CUDA; CPU only under ``TRITON_INTERPRET=1`` and only   fp32, fp16 (+ bf16 on CUDA)
           when named; ``D <= 128``
flex       FlexAttention + document ``BlockMask``; CUDA, and CPU  all floating
           only when named, without gradients (no CPU backward)
grouped    segments of equal shape ``(Lq, Lkv)`` batched, one     all floating
           unmasked ``F.scaled_dot_product_attention`` call per
           shape; auto: at most ``GROUPED_MAX_SHAPES`` shapes
padded     segments gathered into a padded batch, one             all floating
           ``F.scaled_dot_product_attention`` call with a
           key-padding mask; ``O(S * Lq_max * Lkv_max)`` scores
sdpa       dense boolean block-diagonal mask +                    all floating
           ``F.scaled_dot_product_attention``; ``O(Nq * Nkv)``
reference  Python loop over segments (the oracle); only by name   all floating
=========  =====================================================  ===========================

Why this order: xformers' tuned kernels first where present (as in the authors' code), then
the Triton kernel (flash-attention style, fused, memory ``O(N)``), then FlexAttention (fused
only under ``torch.compile``; eager it materialises the scores), then the SDPA paths — the
CPU path, and the CUDA fallback. ``grouped`` first: window partitions have a handful of segment
shapes (Flash Swin, HRSAM §3.3: full windows, edge pieces, corners), each batched without
padding or mask, so SDPA can take its fused kernel and no score is wasted; on a 64 x 64 grid
with ``k = 16`` it beats ``padded`` (which pads the shifted edge windows to full windows and
masks them) forward and backward (``benchmarks/bench_flash_swin.py``). With more than
``GROUPED_MAX_SHAPES`` shapes (one Python-level SDPA call each) auto takes ``padded`` when
``S * Lq_max * Lkv_max <= Nq * Nkv`` (``S`` = segments with queries, ``L*_max`` their longest
lengths; e.g. windows), i.e. when its score tensor is no larger than the dense mask, and
``sdpa`` otherwise (very unequal segments); ``backend="padded"`` runs it regardless.

Derived tensors (segment ids, padded-batch indices, shape groups) are cached on the :class:`SeqLens` through
:meth:`SeqLens.cached`, which builds them with inference mode off, so a geometry first seen under
``torch.inference_mode()`` (e.g. Lightning's validation sanity check) still trains.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

import torch

from segblocks.ops._checks import check_int_sequence, check_same, check_tensor
from segblocks.ops._dispatch import Backend, dispatch, explain, triton_check

__all__ = ["GROUPED_MAX_SHAPES", "SeqLens", "VARLEN_ATTENTION_BACKENDS", "explain_varlen_attention", "varlen_attention"]

_TRITON_MAX_HEAD_DIM = 128


def _lengths(name: str, seqlens: Sequence[int]) -> tuple[int, ...]:
    # an integer tensor of lengths is read once (its values define the layout); floats and
    # bools are refused instead of being truncated
    return check_int_sequence(seqlens, name, owner="SeqLens", minimum=0)


def _starts(seqlens: tuple[int, ...]) -> tuple[int, ...]:
    starts = [0]
    for n in seqlens:
        starts.append(starts[-1] + n)
    return tuple(starts)


@dataclass(frozen=True, eq=False)
class SeqLens:
    """Immutable description of a block-diagonal mask over packed segments (like xformers'
    ``BlockDiagonalMask``): query segment ``i`` sees key segment ``i`` only.

    Example: ``from_seqlens([2, 0, 3], [1, 4, 2])`` gives ``q_start_py == (0, 2, 2, 5)`` and
    ``kv_start_py == (0, 1, 5, 7)``; queries 2..4 see keys 5..6, segment 1 has no queries.

    Attributes:
        q_seqlens, kv_seqlens: segment lengths (same count ``N``).
        q_start, kv_start: ``(N + 1,)`` int32 cumulative starts on ``device`` (``cu_seqlens``).
        q_start_py, kv_start_py: the same as Python tuples (no device sync).
        max_q_seqlen, max_kv_seqlen: longest segments (0 when there are none).
    """

    q_seqlens: tuple[int, ...]
    kv_seqlens: tuple[int, ...]
    q_start: torch.Tensor
    kv_start: torch.Tensor
    q_start_py: tuple[int, ...]
    kv_start_py: tuple[int, ...]
    max_q_seqlen: int
    max_kv_seqlen: int
    # Per-backend derived data (index tensors, block tables), filled on first use via `cached`.
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_seqlens(cls, q_seqlens: Sequence[int], kv_seqlens: Sequence[int] | None = None, *, device=None) -> "SeqLens":
        """Build from per-segment lengths; ``kv_seqlens=None`` means the same as the queries.

        Raises:
            ValueError: negative lengths, different segment counts, or an empty key segment
                paired with a non-empty query segment (its softmax would be undefined).
        """
        q = _lengths("q_seqlens", q_seqlens)
        kv = q if kv_seqlens is None else _lengths("kv_seqlens", kv_seqlens)
        if len(q) != len(kv):
            raise ValueError(f"q_seqlens and kv_seqlens must have the same number of segments, got {len(q)} and {len(kv)}")
        bad = [i for i, (a, b) in enumerate(zip(q, kv)) if a > 0 and b == 0]
        if bad:
            raise ValueError(
                f"every non-empty query segment needs a non-empty key segment; segments {bad[:8]} have kv length 0"
            )
        q_py, kv_py = _starts(q), _starts(kv)
        device = torch.device(device if device is not None else "cpu")
        with torch.inference_mode(False):  # see `cached`: these live as long as the description
            q_start = torch.tensor(q_py, dtype=torch.int32, device=device)
            kv_start = torch.tensor(kv_py, dtype=torch.int32, device=device)
        return cls(
            q_seqlens=q,
            kv_seqlens=kv,
            q_start=q_start,
            kv_start=kv_start,
            q_start_py=q_py,
            kv_start_py=kv_py,
            max_q_seqlen=max(q, default=0),
            max_kv_seqlen=max(kv, default=0),
        )

    @property
    def num_segments(self) -> int:
        return len(self.q_seqlens)

    @property
    def total_q(self) -> int:
        return self.q_start_py[-1]

    @property
    def total_kv(self) -> int:
        return self.kv_start_py[-1]

    @property
    def device(self) -> torch.device:
        return self.q_start.device

    def to(self, device) -> "SeqLens":
        """The same description with its tensors on ``device`` (``self`` if already there)."""
        if torch.device(device) == self.device:
            return self
        return SeqLens.from_seqlens(self.q_seqlens, self.kv_seqlens, device=device)

    def cached(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """``build()`` memoised on this description under ``key`` (per-backend derived data).

        Built with inference mode off: a tensor first made under ``torch.inference_mode()`` and
        cached would be an inference tensor, and a later training step saving it for backward
        (e.g. as a gather index) fails with "Inference tensors cannot be saved for backward".
        """
        if key not in self._cache:
            with torch.inference_mode(False):
                self._cache[key] = build()
        return self._cache[key]

    @property
    def padded_shape(self) -> tuple[int, int, int]:
        """``(S, Lq_max, Lkv_max)`` of the padded batch over the ``S`` segments with queries."""

        def build() -> tuple[int, int, int]:
            kept = [i for i, n in enumerate(self.q_seqlens) if n > 0]
            return len(kept), self.max_q_seqlen, max((self.kv_seqlens[i] for i in kept), default=0)

        return self.cached("padded_shape", build)

    @property
    def num_shapes(self) -> int:
        """Distinct ``(Lq, Lkv)`` among the segments with queries (the ``grouped`` backend's SDPA calls)."""
        return self.cached(
            "num_shapes", lambda: len({(a, b) for a, b in zip(self.q_seqlens, self.kv_seqlens) if a > 0})
        )

    def segment_ids(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Segment index of every query ``(Nq,)`` and every key ``(Nkv,)`` (long, on ``device``)."""

        def build() -> tuple[torch.Tensor, torch.Tensor]:
            seg = torch.arange(self.num_segments, device=self.device)
            q_ids = seg.repeat_interleave(torch.tensor(self.q_seqlens, device=self.device), output_size=self.total_q)
            kv_ids = seg.repeat_interleave(torch.tensor(self.kv_seqlens, device=self.device), output_size=self.total_kv)
            return q_ids, kv_ids

        return self.cached("segment_ids", build)

    def materialize(self, device=None) -> torch.Tensor:
        """Dense boolean mask ``(Nq, Nkv)``, True where attention is allowed.

        ``O(Nq * Nkv)`` memory: for testing, debugging and the dense ``sdpa`` backend.
        """
        q_ids, kv_ids = (self if device is None else self.to(device)).segment_ids()
        return q_ids[:, None] == kv_ids[None, :]  # Nq x Nkv


def _flex_check(q: torch.Tensor, *tensors: torch.Tensor, requested: str = "auto", **_: Any) -> list[str]:
    if q.device.type != "cpu":
        return []
    reasons = []
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, *tensors)):
        reasons.append("FlexAttention has no backward on cpu (inputs require grad); use backend='sdpa' for training")
    if requested == "auto" and not reasons:
        reasons.append(
            "on cpu, auto prefers 'sdpa' (eager FlexAttention there is unfused and forward-only); ask for backend='flex'"
        )
    return reasons


def _triton_check(q: torch.Tensor, *tensors: torch.Tensor, requested: str = "auto", **_: Any) -> list[str]:
    reasons = triton_check(q, *tensors, requested=requested)
    if q.shape[-1] > _TRITON_MAX_HEAD_DIM:
        reasons.append(f"head dim D={q.shape[-1]} > {_TRITON_MAX_HEAD_DIM} (one D-wide register tile per block)")
    return reasons


#: ``backend="auto"`` takes ``grouped`` when the segments have at most this many distinct shapes
#: (one SDPA call each); more shapes fall through to ``padded`` / ``sdpa``.
GROUPED_MAX_SHAPES = 16


def _grouped_check(*tensors: torch.Tensor, seqlens: SeqLens, requested: str = "auto") -> list[str]:
    if requested != "auto":
        return []
    shapes = seqlens.num_shapes
    if shapes > GROUPED_MAX_SHAPES:
        return [f"{shapes} distinct segment shapes > GROUPED_MAX_SHAPES = {GROUPED_MAX_SHAPES} (one SDPA call per shape)"]
    return []


def _padded_check(*tensors: torch.Tensor, seqlens: SeqLens, requested: str = "auto") -> list[str]:
    if requested != "auto":
        return []
    s, lq, lkv = seqlens.padded_shape
    if s * lq * lkv > seqlens.total_q * seqlens.total_kv:
        return [
            f"padded batch larger than dense mask: S*Lq_max*Lkv_max = {s}*{lq}*{lkv} = {s * lq * lkv} > "
            f"Nq*Nkv = {seqlens.total_q}*{seqlens.total_kv} = {seqlens.total_q * seqlens.total_kv}"
        ]
    return []


VARLEN_ATTENTION_BACKENDS: tuple[Backend, ...] = (
    Backend(
        name="xformers",
        loader="segblocks.ops.varlen_attention.xformers:varlen_attention_xformers",
        devices=frozenset({"cuda"}),
        dtypes=frozenset({torch.float32, torch.float16, torch.bfloat16}),
        requires=("xformers",),
    ),
    Backend(
        name="triton",
        loader="segblocks_kernels.varlen_attention:varlen_attention_triton",
        dtypes=frozenset({torch.float32, torch.float16, torch.bfloat16}),
        check=_triton_check,
    ),
    Backend(name="flex", loader="segblocks.ops.varlen_attention.flex:varlen_attention_flex", check=_flex_check),
    Backend(name="grouped", loader="segblocks.ops.varlen_attention.grouped:varlen_attention_grouped", check=_grouped_check),
    Backend(name="padded", loader="segblocks.ops.varlen_attention.padded:varlen_attention_padded", check=_padded_check),
    Backend(name="sdpa", loader="segblocks.ops.varlen_attention.sdpa:varlen_attention_sdpa"),
    Backend(name="reference", loader="segblocks.ops.varlen_attention.naive:varlen_attention_reference", auto=False),
)


def _prepare(q, k, v, q_seqlens, kv_seqlens) -> SeqLens:
    """Validate the inputs and return the mask description on ``q.device``."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(t, name, owner="varlen_attention", shape=("N", "H", "D"))
    check_same({"q": q, "k": k, "v": v}, owner="varlen_attention")
    if k.shape != v.shape or k.shape[1:] != q.shape[1:]:
        raise ValueError(
            "varlen_attention: expected q (Nq, H, D) and k, v (Nkv, H, D) with the same H and D, "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if isinstance(q_seqlens, SeqLens):
        if kv_seqlens is not None:
            raise ValueError("varlen_attention: pass kv_seqlens=None when q_seqlens is a SeqLens")
        seqlens = q_seqlens.to(q.device)
    else:
        seqlens = SeqLens.from_seqlens(q_seqlens, kv_seqlens, device=q.device)
    if seqlens.total_q != q.shape[0]:
        raise ValueError(f"varlen_attention: q_seqlens sum to {seqlens.total_q} but q has Nq={q.shape[0]} rows")
    if seqlens.total_kv != k.shape[0]:
        raise ValueError(f"varlen_attention: kv_seqlens sum to {seqlens.total_kv} but k, v have Nkv={k.shape[0]} rows")
    return seqlens


def explain_varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_seqlens: Sequence[int] | SeqLens,
    kv_seqlens: Sequence[int] | None = None,
    *,
    backend: str = "auto",
) -> dict[str, list[str]]:
    """Why each backend would (empty list) or would not run these inputs with ``backend=``."""
    seqlens = _prepare(q, k, v, q_seqlens, kv_seqlens)
    return explain("varlen_attention", VARLEN_ATTENTION_BACKENDS, (q, k, v), seqlens=seqlens, requested=backend)


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_seqlens: Sequence[int] | SeqLens,
    kv_seqlens: Sequence[int] | None = None,
    *,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Block-diagonal attention over packed variable-length segments (HRSAM §3.2, §3.4).

    ``out[Q^i] = softmax(scale * Q^i K^iT) V^i`` per segment and head.

    Args:
        q: ``(Nq, H, D)`` packed queries (xformers BMHK with ``B = 1`` squeezed).
        k, v: ``(Nkv, H, D)`` packed keys and values.
        q_seqlens: query segment lengths (sum ``Nq``; zeros allowed), or a prebuilt
            :class:`SeqLens` (then ``kv_seqlens`` must be None), e.g. ``FLAMapping.seqlens``.
        kv_seqlens: key segment lengths (same count, sum ``Nkv``); None = ``q_seqlens``.
        scale: logit scale; default ``D ** -0.5``.
        backend: ``"auto"`` or a name in :data:`VARLEN_ATTENTION_BACKENDS`.

    Returns:
        ``(Nq, H, D)`` in ``q.dtype``.

    Raises:
        TypeError / ValueError: malformed inputs (shapes, dtypes, lengths not matching).
        segblocks.ops._dispatch.BackendUnavailable: no backend (or not the named one) can run
            them; the message lists every refusal (see :func:`explain_varlen_attention`).
    """
    seqlens = _prepare(q, k, v, q_seqlens, kv_seqlens)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    fn = dispatch("varlen_attention", VARLEN_ATTENTION_BACKENDS, (q, k, v), backend, seqlens=seqlens, requested=backend)
    if seqlens.total_q == 0:
        return q.clone()  # no query rows: nothing to compute (some kernels reject empty launches)
    return fn(q, k, v, seqlens, scale)
