"""Index mappings of HRSAM's Flexible Local Attention (FLA) for (shifted) window attention.

HRSAM (Huang et al., "HRSAM: Efficient Interactive Segmentation in High-Resolution Images"),
§3.2–3.4 and appendices A–C: local attention becomes one block-diagonal attention call once the
tokens are *reordered* so that every window is a contiguous segment (Eq. 2–4). A mapping is

* ``q_indices`` (the map ``I`` of Eq. 2, Eq. 14): ``x[q_indices]`` lists the real tokens window
  by window; ``q_seqlens`` are the per-window segment lengths ``L_i`` (Eq. 15);
* ``inv_indices`` (``I^-1``): ``x[q_indices][inv_indices] == x``;
* for KV-only padding (§3.4, Eq. 16–17): ``kv_indices`` gathers from ``cat([x, pad])``, i.e. the
  tokens plus **one** learnable pad token appended at index ``num_tokens``; every KV segment has
  exactly ``k*k`` entries, padded positions point at the pad token.

These plug straight into :func:`segblocks.ops.varlen_attention.varlen_attention`::

    m = kv_padding_mapping(h, w, k, k // 2, batch=B, device=x.device)
    kp, vp = torch.cat([k, k_pad]), torch.cat([v, v_pad])  # (B*h*w + 1, H, D)
    out = varlen_attention(q[m.q_indices], kp[m.kv_indices], vp[m.kv_indices], m.seqlens)
    out = out[m.inv_indices]  # back to token order

Geometry. Tokens live on an ``h x w`` grid per scale, flattened row-major; with batch and
several scales the global index of token ``(y, x)`` of scale ``l`` in sample ``b`` is
``b * sum(h_l * w_l) + offset_l + y * w_l + x`` (sample-major, then scales, as in the authors'
``make_indices``). Each grid is padded with ``p = (k - s) % k`` virtual tokens at the top and
left, then at the bottom/right up to a multiple of ``k``, and cut into ``k x k`` windows
enumerated in raster order (Eq. 6; batch, then scale, then window). The paper pads ``k/2`` on
every side and assumes ``h, w`` multiples of ``k`` (Eq. 7–8, Listings 1–2); padding only up to
the next multiple handles any ``h, w`` and is what the authors' code does (never an all-virtual
window, so no query segment is empty). Queries never include virtual tokens (paper §3.4; the
HRSAM repository also runs queries on pad slots and discards their outputs).

Grids that fit in one window (``h <= k`` and ``w <= k``): ``shift_single_window`` chooses.

* ``True`` (default): every scale is shifted, as HRSAM's Listing 1/3 and its code
  (YouHuang67/High-Resolution-Segment-Anything, ``models/backbones/hrsam.py``) pad ``(k - s) % k``
  on every scale; a shifted small grid is split into up to four windows.
* ``False``: such a grid is never shifted and stays one window, as Inter2Former's backbone does
  (YouHuang67/inter2former, ``inter2former/backbones/hrsam_no_ssm.py``, ``make_indices``).

Relation to Swin's shifted windows: Swin rolls the map by ``-s`` and masks the attention between
the pieces of the wrapped-around boundary windows with an ``O(N^2)`` bias. For ``h, w``
multiples of ``k`` the groups of tokens that may attend to each other are exactly our windows
(window boundaries at ``s mod k``); FLA just keeps the boundary pieces as separate, shorter
segments instead of packing them into one masked window, so no mask is needed (§3.3,
"Flash Swin"). With KV-only padding every query instead sees ``k*k`` keys, the missing ones
being the learnable pad token (§3.4) — this differs from Swin by design.

Mappings are cached per arguments (``functools.lru_cache``); the returned tensors are shared
between callers and must not be modified in place. They are built with inference mode off, so a
geometry first mapped under ``torch.inference_mode()`` (e.g. Lightning's validation sanity
check) can still be trained on: cached inference tensors could not be saved for backward.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import torch

from segblocks.ops._checks import check_int, check_int_pairs
from segblocks.ops.varlen_attention import SeqLens

__all__ = [
    "FLAMapping",
    "kv_padding_mapping",
    "multi_scale_kv_padding_mapping",
    "multi_scale_mapping",
    "shift_window_mapping",
]


@dataclass(frozen=True, eq=False)
class FLAMapping:
    """Reorder indices and segment lengths of one FLA window partition (HRSAM §3.2–3.4).

    Attributes:
        q_indices: ``(N,)`` long, ``N = num_tokens``: real tokens in window order (Eq. 14).
        inv_indices: ``(N,)`` long, inverse permutation: ``x[q_indices][inv_indices] == x``.
        q_seqlens: real tokens per window (Eq. 15); all ``>= 1``, sum ``N``.
        q_coords: ``(N, 2)`` long ``(y, x)`` of every query in its *padded* grid (top/left
            padding included), e.g. for RoPE on padded coordinates as in the authors' code.
        num_tokens: ``N = batch * sum(h_l * w_l)``, also the index of the appended pad token.
        kv_indices: ``(num_windows * k * k,)`` long gather into ``cat([x, pad])`` (Eq. 17), or
            ``None`` without KV-only padding.
        kv_seqlens: ``(k * k,) * num_windows``, or ``None`` without KV-only padding.
        kv_coords: ``(num_windows * k * k, 2)`` padded-grid ``(y, x)`` of every key slot
            (pads included), or ``None``.
        seqlens: the :class:`SeqLens` to pass to ``varlen_attention`` (queries vs. keys of
            each window: ``kv_seqlens`` with KV-only padding, else ``q_seqlens``).
    """

    q_indices: torch.Tensor
    inv_indices: torch.Tensor
    q_seqlens: tuple[int, ...]
    q_coords: torch.Tensor
    num_tokens: int
    kv_indices: torch.Tensor | None
    kv_seqlens: tuple[int, ...] | None
    kv_coords: torch.Tensor | None
    seqlens: SeqLens

    @property
    def num_windows(self) -> int:
        return len(self.q_seqlens)


def _grid_windows(h: int, w: int, k: int, s: int, shift_single_window: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of one ``h x w`` grid: token ids (``-1`` = virtual) and padded coordinates.

    Returns:
        ids: ``(num_windows, k * k)`` long, row-major token id ``y * w + x`` or ``-1``.
        coords: ``(num_windows, k * k, 2)`` long padded-grid ``(y, x)``.
    """
    if not shift_single_window and h <= k and w <= k:
        s = 0  # Inter2Former's rule: a grid inside one window is never shifted
    pad = (k - s) % k
    ph, pw = -(-(pad + h) // k) * k, -(-(pad + w) // k) * k  # padded size, multiple of k
    ys = torch.arange(ph).view(ph, 1).expand(ph, pw)  # PH x PW
    xs = torch.arange(pw).view(1, pw).expand(ph, pw)  # PH x PW
    real = (ys >= pad) & (ys < pad + h) & (xs >= pad) & (xs < pad + w)
    ids = torch.where(real, (ys - pad) * w + (xs - pad), -1)
    coords = torch.stack((ys, xs), dim=-1)  # PH x PW x 2

    def windows(t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(ph // k, k, pw // k, k, -1)  # nWy x k x nWx x k x c
        return t.permute(0, 2, 1, 3, 4).reshape(-1, k * k, t.shape[-1])  # nW x k² x c, Eq. 6

    return windows(ids[..., None])[..., 0], windows(coords)


@functools.lru_cache(maxsize=32)
def _build_cpu(
    shapes: tuple[tuple[int, int], ...], k: int, s: int, batch: int, kv_padding: bool, shift_single_window: bool
) -> FLAMapping:
    with torch.inference_mode(False):  # cached: must not be inference tensors (module docstring)
        return _windows_mapping(shapes, k, s, batch, kv_padding, shift_single_window)


def _windows_mapping(
    shapes: tuple[tuple[int, int], ...], k: int, s: int, batch: int, kv_padding: bool, shift_single_window: bool
) -> FLAMapping:
    sizes = [h * w for h, w in shapes]
    per_sample = sum(sizes)
    num_tokens = batch * per_sample
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    grids = [_grid_windows(h, w, k, s, shift_single_window) for h, w in shapes]
    # Sample-major order (b, then scale, then window), matching the global token index.
    ids = torch.cat([
        torch.where(g_ids >= 0, g_ids + b * per_sample + offset, -1)
        for b in range(batch) for (g_ids, _), offset in zip(grids, offsets)
    ])  # nW x k²
    coords = torch.cat([g_coords for _ in range(batch) for _, g_coords in grids])  # nW x k² x 2
    real = ids >= 0
    q_indices = ids[real]
    inv_indices = torch.empty_like(q_indices)
    inv_indices[q_indices] = torch.arange(num_tokens)
    q_seqlens = tuple(real.sum(1).tolist())
    kv_indices = kv_seqlens = kv_coords = None
    if kv_padding:
        kv_indices = torch.where(real, ids, num_tokens).flatten()  # pads -> appended token, Eq. 16
        kv_seqlens = (k * k,) * ids.shape[0]
        kv_coords = coords.reshape(-1, 2)
    return FLAMapping(
        q_indices=q_indices,
        inv_indices=inv_indices,
        q_seqlens=q_seqlens,
        q_coords=coords[real],
        num_tokens=num_tokens,
        kv_indices=kv_indices,
        kv_seqlens=kv_seqlens,
        kv_coords=kv_coords,
        seqlens=SeqLens.from_seqlens(q_seqlens, kv_seqlens),
    )


@functools.lru_cache(maxsize=32)
def _build(
    shapes: tuple[tuple[int, int], ...],
    k: int,
    s: int,
    batch: int,
    kv_padding: bool,
    shift_single_window: bool,
    device: torch.device,
) -> FLAMapping:
    m = _build_cpu(shapes, k, s, batch, kv_padding, shift_single_window)
    if device.type == "cpu":
        return m

    def to(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(device)

    with torch.inference_mode(False):  # cached per device: normal tensors, as in `_build_cpu`
        return FLAMapping(
            q_indices=to(m.q_indices),
            inv_indices=to(m.inv_indices),
            q_seqlens=m.q_seqlens,
            q_coords=to(m.q_coords),
            num_tokens=m.num_tokens,
            kv_indices=to(m.kv_indices),
            kv_seqlens=m.kv_seqlens,
            kv_coords=to(m.kv_coords),
            seqlens=m.seqlens.to(device),
        )


def _mapping(shapes, k, s, batch, kv_padding, shift_single_window, device) -> FLAMapping:
    shapes = check_int_pairs(shapes, "shapes", minimum=1)
    k = check_int(k, "window size k")
    if k < 1:
        raise ValueError(f"window size k must be >= 1, got {k}")
    s = check_int(s, "shift s")
    if not 0 <= s < k:
        raise ValueError(f"shift s must be in [0, k) = [0, {k}), got {s}")
    batch = check_int(batch, "batch")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if not isinstance(shift_single_window, bool):
        raise TypeError(f"shift_single_window must be a bool, got {shift_single_window!r}")
    device = torch.device(device if device is not None else "cpu")
    return _build(shapes, k, s, batch, kv_padding, shift_single_window, device)


def shift_window_mapping(
    h: int, w: int, k: int, s: int = 0, *, batch: int = 1, shift_single_window: bool = True, device=None
) -> FLAMapping:
    """(Shifted) window mapping of one ``h x w`` grid (HRSAM §3.3, Eq. 5–8, 14–15, Listing 1).

    Args:
        h, w: token grid size (any ``>= 1``).
        k: window size.
        s: shift, ``0`` (plain windows) or typically ``k // 2``; top/left padding ``(k - s) % k``.
        batch: samples stacked along the token axis (``B * h * w`` tokens).
        shift_single_window: also shift a grid that fits in one window (``h, w <= k``): True as
            HRSAM's Listing 1; False keeps it one window, as Inter2Former's code (module docstring).
        device: device of the index tensors (cached per device).

    Returns:
        :class:`FLAMapping` without KV fields; ``seqlens`` pairs each window with itself.
    """
    return _mapping(((h, w),), k, s, batch, False, shift_single_window, device)


def kv_padding_mapping(
    h: int, w: int, k: int, s: int = 0, *, batch: int = 1, shift_single_window: bool = True, device=None
) -> FLAMapping:
    """Shifted windows with KV-only padding (HRSAM §3.4, Eq. 16–18, Listing 2).

    Queries as in :func:`shift_window_mapping`; every window's keys are its ``k * k`` padded
    positions, virtual ones pointing at the pad token appended after the ``B * h * w`` tokens.
    Arguments as in :func:`shift_window_mapping`.
    """
    return _mapping(((h, w),), k, s, batch, True, shift_single_window, device)


def multi_scale_mapping(
    shapes: Sequence[tuple[int, int]],
    k: int,
    s: int = 0,
    *,
    batch: int = 1,
    shift_single_window: bool = True,
    device=None,
) -> FLAMapping:
    """Window mapping of several grids concatenated per sample (HRSAM §3.6, Eq. 19, Listing 3).

    Args:
        shapes: ``[(h_1, w_1), (h_2, w_2), ...]``; sample ``b`` holds the tokens of all scales,
            scale after scale, each flattened row-major (HRSAM++: full resolution, anchor map).
        k, s, batch, shift_single_window, device: as in :func:`shift_window_mapping`; each
            scale is padded and windowed on its own.
    """
    return _mapping(shapes, k, s, batch, False, shift_single_window, device)


def multi_scale_kv_padding_mapping(
    shapes: Sequence[tuple[int, int]],
    k: int,
    s: int = 0,
    *,
    batch: int = 1,
    shift_single_window: bool = True,
    device=None,
) -> FLAMapping:
    """Multi-scale KV-only padding with one shared pad token (HRSAM App. C.2, Listing 4).

    As :func:`multi_scale_mapping` plus KV indices; the pad token is shared by all scales and
    samples and sits at index ``num_tokens``.
    """
    return _mapping(shapes, k, s, batch, True, shift_single_window, device)
