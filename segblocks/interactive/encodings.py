"""Click encodings: disk maps for dense models, point prompts for SAM-style decoders.

* :func:`disk_maps`: RITM-style binary disks (``use_disks=True``, ``norm_radius=5``) that MST
  stacks with the previous mask and feeds to its click patch embedding (hahamyt/mst).
* :func:`clicks_to_points` / :func:`scale_points`: SAM point prompts. HRSAM and FocSAM shift
  clicks to pixel centres (``+0.5``) and resize them to the longest side of the encoder input
  (YouHuang67/High-Resolution-Segment-Anything, ``models/necks/sam_prompt.py``); padding points
  carry label ``-1`` (SAM's ``not_a_point_embed``). The resize geometry is
  :mod:`segblocks.ops.geometry`.
"""
from __future__ import annotations

import torch

from segblocks.interactive.clicker import Clicks
from segblocks.ops.geometry import longest_side_shape

__all__ = ["clicks_to_points", "disk_maps", "scale_points"]


def disk_maps(
    clicks: Clicks, height: int, width: int, *, radius: float = 5.0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Binary disks around the clicks, one channel per polarity.

    Pixel ``(i, j)`` is 1 in channel 0 (positive) / 1 (negative) when some click ``(y, x)`` of
    that polarity has ``(i - y)**2 + (j - x)**2 <= radius**2``. Padding clicks draw nothing;
    clicks outside the map draw the part of their disk inside it.

    Args:
        clicks: ``B`` samples of up to ``N`` clicks.
        height, width: map size ``H, W``.
        radius: disk radius in pixels (>= 0).

    Returns:
        ``(B, 2, H, W)`` tensor of ``dtype`` on the clicks' device.
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0; got {radius}")
    if height < 0 or width < 0:
        raise ValueError(f"height and width must be >= 0; got {height}x{width}")
    B, N = clicks.labels.shape
    device = clicks.coords.device
    rows = torch.arange(height, device=device).view(1, height, 1)  # 1 x H x 1
    cols = torch.arange(width, device=device).view(1, 1, width)  # 1 x 1 x W
    maps = torch.zeros(B, 2, height, width, dtype=torch.bool, device=device)
    for n in range(N):  # one (B, H, W) distance map at a time keeps memory at O(B H W)
        y = clicks.coords[:, n, 0].view(B, 1, 1)  # B x 1 x 1
        x = clicks.coords[:, n, 1].view(B, 1, 1)  # B x 1 x 1
        inside = (rows - y) ** 2 + (cols - x) ** 2 <= radius**2  # B x H x W
        label = clicks.labels[:, n].view(B, 1, 1)  # B x 1 x 1
        maps[:, 0] |= inside & (label == 1)
        maps[:, 1] |= inside & (label == 0)
    return maps.to(dtype)


def clicks_to_points(clicks: Clicks) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM point prompts at pixel centres.

    Returns:
        ``points`` ``(B, N, 2)`` float32 ``(x + 0.5, y + 0.5)`` (zeros at padding) and
        ``labels`` ``(B, N)`` int64 with 1 / 0 / -1 (padding). SAM's prompt encoder adds the
        0.5 itself; a model fed these points must not add it again.
    """
    valid = (clicks.labels >= 0).unsqueeze(-1)  # B x N x 1
    points = clicks.coords.flip(-1).float() + 0.5  # B x N x 2, (y, x) -> (x, y)
    return points * valid, clicks.labels.clone()


def scale_points(points: torch.Tensor, original_size: tuple[int, int], longest_side: int) -> torch.Tensor:
    """Map pixel-centre points of an ``original_size`` image into its longest-side resize.

    Follows SAM: the pixel index is scaled by ``new / old`` per axis and the 0.5 centre shift is
    added afterwards, i.e. ``p' = (p - 0.5) * s + 0.5``, so the result equals SAM's
    ``apply_coords`` followed by its prompt encoder's ``+ 0.5``. Padding entries (any value)
    should be masked by their label ``-1``.

    Args:
        points: ``(..., 2)`` float ``(x, y)`` from :func:`clicks_to_points`.
        original_size: ``(H, W)`` of the frame the clicks live in.
        longest_side: target longer side (e.g. 1024 for SAM, T for HRSAM).

    Returns:
        ``(..., 2)`` float points in the resized frame.
    """
    if not points.dtype.is_floating_point or points.shape[-1] != 2:
        raise TypeError(f"points must be a float tensor (..., 2); got {points.dtype} {tuple(points.shape)}")
    H, W = original_size
    new_h, new_w = longest_side_shape(H, W, longest_side)
    scale = points.new_tensor([new_w / W, new_h / H])  # (x, y) order
    return (points - 0.5) * scale + 0.5
