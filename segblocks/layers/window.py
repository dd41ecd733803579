"""Window partition and its inverse for windowed attention on channels-last maps.

Swin (Liu et al., ICCV 2021, §3.2) and the windowed blocks of SAM's ViT (Kirillov et al., ICCV
2023, App. A, after ViTDet) attend inside non-overlapping ``M × M`` windows. A map whose sides are
not multiples of ``M`` is zero-padded on the bottom/right first (as in both authors' codes:
facebookresearch/segment-anything ``modeling/image_encoder.py``, microsoft/Swin-Transformer
detection code), and :func:`window_unpartition` crops the padding away again. Windows are in
row-major order over the window grid; tokens are row-major inside a window.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["window_partition", "window_unpartition"]


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Split a channels-last map into ``M × M`` windows, zero-padding the bottom/right if needed.

    Args:
        x: (B, H, W, C).
        window_size: window side ``M``.

    Returns:
        (B, nW, M·M, C) with ``nW = ceil(H / M) · ceil(W / M)``; padded positions are zeros.
    """
    if x.dim() != 4:
        raise ValueError(f"window_partition: expected (B, H, W, C); got shape {tuple(x.shape)}")
    if window_size < 1:
        raise ValueError(f"window_partition: window_size must be >= 1; got {window_size}")
    m = window_size
    b, h, w, c = x.shape
    x = F.pad(x, (0, 0, 0, -w % m, 0, -h % m))  # B x Hp x Wp x C
    hp, wp = x.shape[1:3]
    x = x.reshape(b, hp // m, m, wp // m, m, c)  # B x nH x M x nW x M x C
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, (hp // m) * (wp // m), m * m, c)  # B x nW x M² x C


def window_unpartition(windows: torch.Tensor, window_size: int, size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: reassemble windows and crop the padding.

    Args:
        windows: (B, nW, M·M, C) windows of a map of ``size`` (before padding).
        window_size: window side ``M``.
        size: ``(H, W)`` of the map given to :func:`window_partition`.

    Returns:
        (B, H, W, C).
    """
    m = window_size
    h, w = (int(v) for v in size)
    hp, wp = -(-h // m) * m, -(-w // m) * m
    b, nw, n, c = windows.shape
    if n != m * m or nw != (hp // m) * (wp // m):
        raise ValueError(
            f"window_unpartition: windows {tuple(windows.shape)} do not tile a {h}x{w} map with window {m} "
            f"(expected nW={(hp // m) * (wp // m)}, M²={m * m})"
        )
    x = windows.reshape(b, hp // m, wp // m, m, m, c)  # B x nH x nW x M x M x C
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)  # B x Hp x Wp x C
    return x[:, :h, :w]
