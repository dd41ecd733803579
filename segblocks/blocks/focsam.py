"""FocSAM's focus refiner and its blocks: Dwin / shift Dwin, Dwin-MSA, P-DyReLU, DCNv2 layer.

Huang et al., "FocSAM: Delving Deeply into Focused Objects in Segmenting Anything", CVPR 2024,
§3.1–3.3; the wiring follows the authors' code where the paper leaves details open
(YouHuang67/focsam, ``focsam/refine_heads/focus_refiner.py`` and ``engine/utils/zoom_in.py``),
and parameter names are those of that file, so an official refiner state dict loads as is.

Overview (FocSAM Fig. 2–3): :class:`FocusRefiner` takes SAM's image embedding ``F`` (B, C, h, w),
the coarse logits ``M^(K-1)`` and the click-fused query (mask) token ``q_c^(K-1)`` of the SAM
decoder, and returns a refined embedding ``F_r^(K)`` of the same shape that replaces ``F`` for the
later clicks. It stacks :class:`RefineBlock` s alternating plain Dwin and shift Dwin. Each block

1. **Dwin** (§3.2 "Dynamic window"): pads to a multiple of the window ``S``, partitions the whole
   batch into ``L = B·nW`` windows and keeps the ``M`` windows that intersect each sample's focus
   box (:func:`focus_box_mask`) — :class:`DynamicWindows`;
2. runs, on the selected windows only, the query→window cross-attention (Eq. 2,
   :class:`CrossAttentionBlock`) and the **MSA module** (Eq. 3–5, :class:`MSAModule`: window
   self-attention with an always-available zero key/value slot, :class:`PDyReLU` (Eq. 6–9) driven
   by the query, then a modulated deformable convolution, :class:`DeformLayer`);
3. scatters the windows back (unselected ones unchanged) and averages the per-window queries over
   the sample's windows, rescaled by the selected fraction (``cls_scale``; see
   :class:`RefineBlock`).

Windows use :func:`segblocks.layers.window_partition` / :func:`~segblocks.layers.window_unpartition`.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segblocks.layers.window import window_partition, window_unpartition
from segblocks.ops._checks import check_finite_float, check_int, check_module_dtype, check_positive_int, check_tensor
from segblocks.ops.deform_conv import modulated_deform_conv2d

__all__ = [
    "CrossAttentionBlock",
    "DeformLayer",
    "DwinAttention",
    "DwinWindows",
    "DynamicWindows",
    "FocusRefiner",
    "MSAModule",
    "ModulatedDeformConv2d",
    "PDyReLU",
    "RefineBlock",
    "bbox_to_mask",
    "expand_bbox",
    "focus_box_mask",
    "mask_bbox",
]


# ----------------------------------------------------------------------------- focus box


def mask_bbox(mask: torch.Tensor) -> torch.Tensor:
    """Tight box ``(left, top, right, bottom)`` (right/bottom exclusive) of each mask; empty → whole map.

    As ``get_bbox_from_mask`` of the authors' code (YouHuang67/focsam, ``engine/utils/zoom_in.py``),
    vectorised (no host synchronisation).

    Args:
        mask: ``(B, H, W)`` bool.

    Returns:
        ``(B, 4)`` int64.
    """
    B, H, W = mask.shape
    rows, cols = mask.any(-1), mask.any(-2)  # B x H, B x W
    ar_h = torch.arange(H, device=mask.device)
    ar_w = torch.arange(W, device=mask.device)
    top = torch.where(rows, ar_h, H).amin(-1) if H else mask.new_zeros(B, dtype=torch.long)
    bottom = torch.where(rows, ar_h + 1, 0).amax(-1) if H else mask.new_zeros(B, dtype=torch.long)
    left = torch.where(cols, ar_w, W).amin(-1) if W else mask.new_zeros(B, dtype=torch.long)
    right = torch.where(cols, ar_w + 1, 0).amax(-1) if W else mask.new_zeros(B, dtype=torch.long)
    box = torch.stack((left, top, right, bottom), -1).long()  # B x 4
    empty = ~rows.any(-1)  # B
    full = torch.tensor([0, 0, W, H], device=mask.device, dtype=torch.long)
    return torch.where(empty[:, None], full, box)


def expand_bbox(box: torch.Tensor, ratio: tuple[float, float], size: tuple[int, int]) -> torch.Tensor:
    """Scale boxes about their centres by ``(h_ratio, w_ratio)``, rounded and clipped to the map.

    ``round(c ± r·(edge − c))`` per edge as ``expand_bbox`` of the authors' code (``torch.round``,
    half to even); ratio 1.4 at test, ``U(1.0, 1.4)`` per axis in training (FocSAM code,
    ``focsam/segmentors/mixseg_refine.py``).

    Args:
        box: ``(B, 4)`` ``(left, top, right, bottom)``.
        ratio: ``(h_ratio, w_ratio)``.
        size: ``(H, W)`` of the map.

    Returns:
        ``(B, 4)`` int64.
    """
    rh, rw = ratio
    H, W = size
    b = box.double()
    xc, yc = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2  # B each
    left = torch.round(xc - rw * (xc - b[:, 0])).clamp(min=0)
    right = torch.round(xc - rw * (xc - b[:, 2])).clamp(max=W)
    top = torch.round(yc - rh * (yc - b[:, 1])).clamp(min=0)
    bottom = torch.round(yc - rh * (yc - b[:, 3])).clamp(max=H)
    return torch.stack((left, top, right, bottom), -1).long()


def bbox_to_mask(box: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, 4)`` boxes → ``(B, 1, H, W)`` float masks (1 inside ``[top, bottom) × [left, right)``)."""
    H, W = size
    ys = torch.arange(H, device=box.device).view(1, H, 1)
    xs = torch.arange(W, device=box.device).view(1, 1, W)
    inside = (
        (ys >= box[:, 1, None, None]) & (ys < box[:, 3, None, None]) & (xs >= box[:, 0, None, None]) & (xs < box[:, 2, None, None])
    )  # B x H x W
    return inside.unsqueeze(1).float()


def focus_box_mask(
    coarse_logits: torch.Tensor, input_size: tuple[int, int], expand_ratio: tuple[float, float] = (1.4, 1.4)
) -> torch.Tensor:
    """The focus box of FocSAM §3.2 as a mask over the model input.

    The coarse logits are resized (bilinear, ``align_corners=False``) to the padded input, the
    box of ``logit > 0`` is taken (empty → the whole input) and expanded about its centre
    (:func:`expand_bbox`), as the authors' ``FocusRefiner.forward``.

    Args:
        coarse_logits: ``(B, 1, h', w')`` logits over the padded input.
        input_size: ``(H, W)`` of the padded input.
        expand_ratio: ``(h_ratio, w_ratio)``.

    Returns:
        ``(B, 1, H, W)`` float {0, 1}.
    """
    owner = "focus_box_mask"
    check_tensor(coarse_logits, "coarse_logits", owner=owner, shape=("B", 1, "h", "w"))
    H, W = (check_positive_int(v, "input_size", owner=owner) for v in input_size)
    logits = F.interpolate(coarse_logits.float(), size=(H, W), mode="bilinear", align_corners=False)  # B x 1 x H x W
    box = expand_bbox(mask_bbox(logits[:, 0] > 0), tuple(expand_ratio), (H, W))
    return bbox_to_mask(box, (H, W))


# ----------------------------------------------------------------------------- Dwin


class DwinWindows(NamedTuple):
    """The selected windows of a batch (output of :meth:`DynamicWindows.partition`).

    Attributes:
        windows: ``(M, S², C)`` tokens of the selected windows, row-major inside a window.
        index: ``(M,)`` int64 position of each selected window among all ``B·nW`` windows.
        selected: ``(B, nW)`` bool, which windows of each sample are selected.
        all_windows: ``(B·nW, S², C)`` every window (the unselected ones are returned unchanged).
        attn_mask: ``(M, S², S²)`` bool (True = may attend) for the masked shift variant, else None.
        size: ``(H, W)`` before padding; ``padded``: ``(Hp, Wp)``.
    """

    windows: torch.Tensor
    index: torch.Tensor
    selected: torch.Tensor
    all_windows: torch.Tensor
    attn_mask: torch.Tensor | None
    size: tuple[int, int]
    padded: tuple[int, int]


class DynamicWindows(nn.Module):
    """Dynamic window selection (Dwin) and its shifted variant (FocSAM §3.2, Fig. 3 (c)(d)).

    ``partition``: zero-pad ``(B, C, H, W)`` and the box mask bottom/right to a multiple of the
    window ``S``, roll both by ``-shift`` (shift Dwin), partition the *whole batch* into ``B·nW``
    windows and select the windows in which the box mask is non-zero (``nonzero`` over all windows
    of all samples, so boxes of any size per sample are handled in one call). ``merge`` writes the
    processed selected windows back, keeps the others unchanged, unpartitions, rolls back and crops.

    The shift variant of the authors' code rolls **without** Swin's attention mask, so tokens
    wrapped around from the opposite border share a window and attend to each other
    (``ShiftRefineBlock`` in YouHuang67/focsam ``focsam/refine_heads/focus_refiner.py``). That is
    the default (``masked_shift=False``), because the official refiner weights were trained with
    it. ``masked_shift=True`` adds Swin's mask (Liu et al., ICCV 2021, §3.2 "efficient batch
    computation"): tokens of different pre-roll regions do not attend to each other. The mask only
    restricts the window self-attention; the query cross-attention and the deformable convolution
    still see the whole window.

    Args:
        window_size: ``S`` (16 in FocSAM).
        shift: roll size (0: plain Dwin; ``S // 2``: shift Dwin).
        masked_shift: Swin-style mask for the wrapped regions (only meaningful with ``shift > 0``).
    """

    def __init__(self, *, window_size: int, shift: int = 0, masked_shift: bool = False) -> None:
        super().__init__()
        owner = "DynamicWindows"
        self.window_size = check_positive_int(window_size, "window_size", owner=owner)
        self.shift = check_int(shift, "shift", owner=owner, minimum=0)
        if self.shift >= self.window_size:
            raise ValueError(f"{owner}: shift must be < window_size={self.window_size}, got {self.shift}")
        self.masked_shift = bool(masked_shift)

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}, shift={self.shift}, masked_shift={self.masked_shift}"

    def partition(self, x: torch.Tensor, box_mask: torch.Tensor) -> DwinWindows:
        """Select the windows of ``x`` (B, C, H, W) that meet ``box_mask`` (B, 1, H, W) (non-zero = inside)."""
        owner = "DynamicWindows"
        B, C, H, W = check_tensor(x, "x", owner=owner, shape=("B", "C", "H", "W"))
        check_tensor(box_mask, "box_mask", owner=owner, shape=(("B", B), 1, ("H", H), ("W", W)), dtype=None)
        S, s = self.window_size, self.shift
        Hp, Wp = -(-H // S) * S, -(-W // S) * S
        xs = F.pad(x, (0, Wp - W, 0, Hp - H)).permute(0, 2, 3, 1)  # B x Hp x Wp x C
        ms = F.pad(box_mask.to(x.dtype), (0, Wp - W, 0, Hp - H)).permute(0, 2, 3, 1)  # B x Hp x Wp x 1
        if s:
            xs = torch.roll(xs, shifts=(-s, -s), dims=(1, 2))
            ms = torch.roll(ms, shifts=(-s, -s), dims=(1, 2))
        win = window_partition(xs, S)  # B x nW x S² x C
        nW = win.shape[1]
        selected = window_partition(ms, S).amax(dim=(2, 3)) > 0  # B x nW
        all_windows = win.reshape(B * nW, S * S, C)  # BnW x S² x C
        index = selected.flatten().nonzero().flatten()  # M
        attn_mask = None
        if s and self.masked_shift:
            region = self._regions(Hp, Wp, x.device)  # nW x S²
            same = region[:, :, None] == region[:, None, :]  # nW x S² x S²
            attn_mask = same[index % nW]  # M x S² x S²
        return DwinWindows(all_windows[index], index, selected, all_windows, attn_mask, (H, W), (Hp, Wp))

    def _regions(self, Hp: int, Wp: int, device: torch.device) -> torch.Tensor:
        """Swin's region labels of the rolled map, partitioned: ``(nW, S²)``."""
        S, s = self.window_size, self.shift
        label = torch.zeros(1, Hp, Wp, 1, device=device)
        cnt = 0
        for hs in (slice(0, -S), slice(-S, -s), slice(-s, None)):
            for ws in (slice(0, -S), slice(-S, -s), slice(-s, None)):
                label[:, hs, ws] = cnt
                cnt += 1
        return window_partition(label, S)[0, :, :, 0]  # nW x S²

    def merge(self, parts: DwinWindows, windows: torch.Tensor) -> torch.Tensor:
        """Write ``windows`` (M, S², C) back into ``parts`` and return the map (B, C, H, W)."""
        S, s = self.window_size, self.shift
        (H, W), (Hp, Wp) = parts.size, parts.padded
        B, nW = parts.selected.shape
        C = parts.all_windows.shape[-1]
        out = parts.all_windows.index_copy(0, parts.index, windows.to(parts.all_windows.dtype))  # BnW x S² x C
        xs = window_unpartition(out.view(B, nW, S * S, C), S, (Hp, Wp))  # B x Hp x Wp x C
        if s:
            xs = torch.roll(xs, shifts=(s, s), dims=(1, 2))
        return xs[:, :H, :W].permute(0, 3, 1, 2)  # B x C x H x W

    def forward(self, x: torch.Tensor, box_mask: torch.Tensor) -> DwinWindows:
        """Same as :meth:`partition`."""
        return self.partition(x, box_mask)


# ----------------------------------------------------------------------------- attention


class DwinAttention(nn.Module):
    """Multi-head attention (FocSAM Eq. 1) with an always-available zero key/value slot.

    ``softmax(q Kᵀ/√d) V`` where ``K`` and ``V`` get one extra all-zero token per head (the
    authors' ``Attention``: ``k = cat(k, 0)``, ``v = cat(v, 0)``), so a query can put weight on
    "nothing" (logit 0, value 0) instead of being forced onto the window tokens.

    Args:
        embed_dim: ``C``.
        num_heads: heads (``C`` divisible by it).

    Shapes: ``q`` (n, Nq, C), ``k``/``v`` (n, Nk, C), optional ``attn_mask`` (n, Nq, Nk) bool
    (True = may attend; the null slot is always allowed) → (n, Nq, C).
    """

    def __init__(self, *, embed_dim: int, num_heads: int = 8) -> None:
        super().__init__()
        owner = "DwinAttention"
        self.embed_dim = check_positive_int(embed_dim, "embed_dim", owner=owner)
        self.num_heads = check_positive_int(num_heads, "num_heads", owner=owner)
        if embed_dim % num_heads:
            raise ValueError(f"{owner}: embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim**-0.5
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        owner, C = "DwinAttention", self.embed_dim
        n, Nq, _ = check_tensor(q, "q", owner=owner, shape=("n", "Nq", ("C", C)))
        _, Nk, _ = check_tensor(k, "k", owner=owner, shape=(("n", n), "Nk", ("C", C)))
        check_tensor(v, "v", owner=owner, shape=(("n", n), ("Nk", Nk), ("C", C)))
        check_module_dtype(q, self, "q", owner=owner)
        h, d = self.num_heads, self.head_dim
        qh = self.q_proj(q).view(n, Nq, h, d).transpose(1, 2)  # n x h x Nq x d
        kh = self.k_proj(k).view(n, Nk, h, d).transpose(1, 2)  # n x h x Nk x d
        vh = self.v_proj(v).view(n, Nk, h, d).transpose(1, 2)  # n x h x Nk x d
        kh = torch.cat([kh, kh.new_zeros(n, h, 1, d)], dim=2)  # n x h x (Nk+1) x d
        vh = torch.cat([vh, vh.new_zeros(n, h, 1, d)], dim=2)  # n x h x (Nk+1) x d
        mask = None
        if attn_mask is not None:
            check_tensor(attn_mask, "attn_mask", owner=owner, shape=(("n", n), ("Nq", Nq), ("Nk", Nk)), dtype=torch.bool)
            mask = torch.cat([attn_mask, attn_mask.new_ones(n, Nq, 1)], dim=-1)[:, None]  # n x 1 x Nq x (Nk+1)
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=self.scale)  # n x h x Nq x d
        return self.proj(out.transpose(1, 2).reshape(n, Nq, C))  # n x Nq x C


class CrossAttentionBlock(nn.Module):
    """Query → window cross-attention (FocSAM Eq. 2): ``q_f = (Q, K, V)(q_c, f, f)``, pre-norm.

    As coded (``CrossAttentionBlock`` of the authors): ``x = q + γ1·Attn(LN_q(q), LN_kv(f), LN_kv(f))``,
    then ``x = x + γ2·MLP(LN(x))`` with ``MLP = Linear(C, rC) → ReLU → Linear(rC, C)`` and learnable
    ``γ1 = γ2 = 1`` per channel.

    Shapes: ``q`` (n, 1, C), ``kv`` (n, N, C) → (n, 1, C).
    """

    def __init__(self, *, embed_dim: int, num_heads: int = 8, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(check_finite_float(mlp_ratio, "mlp_ratio", owner="CrossAttentionBlock", positive=True) * embed_dim)
        self.norm_q = nn.LayerNorm(embed_dim)
        self.norm_kv = nn.LayerNorm(embed_dim)
        self.attn = DwinAttention(embed_dim=embed_dim, num_heads=num_heads)
        self.gamma1 = nn.Parameter(torch.ones(embed_dim))
        self.norm = nn.LayerNorm(embed_dim)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, embed_dim))
        self.gamma2 = nn.Parameter(torch.ones(embed_dim))

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        kvn = self.norm_kv(kv)
        x = q + self.gamma1 * self.attn(self.norm_q(q), kvn, kvn)  # n x 1 x C
        return x + self.gamma2 * self.mlp(self.norm(x))


class PDyReLU(nn.Module):
    """Pixel-wise dynamic ReLU (FocSAM §3.3, Eq. 6–9).

    Two linear pieces, each with input-dependent slope ``a`` and intercept ``b`` per pixel and
    channel, combined by an elementwise max (Eq. 9, ``K = 2`` pieces of DyReLU's Eq. 6):

    * pixel branch (Eq. 7, first line): the similarity ``s = f̂ · q_fᵀ`` of every pixel to the query
      → ``Linear(1, C) → ReLU → Linear(C, 2C) → Tanh`` (Eq. 8) → ``·exp(pixel_scale) + pixel_bias``
      → ``(a⁰, b⁰)``;
    * channel branch (Eq. 7, second line): the spatial mean of ``f̂`` → ``Linear(C, C) → ReLU →
      Linear(C, 2C) → Tanh`` → ``·exp(channel_scale) + channel_bias`` → ``(a¹, b¹)``;
    * ``y = max(a⁰ ⊙ f̂ + b⁰, a¹ ⊙ f̂ + b¹)``.

    Scales and biases start at 0 as in the authors' ``PDyReLU`` (so ``a, b ∈ (−1, 1)`` at init;
    this is not the identity).

    Shapes: ``x`` (n, N, C), ``query`` (n, 1, C) → (n, N, C).
    """

    def __init__(self, *, channels: int) -> None:
        super().__init__()
        C = self.channels = check_positive_int(channels, "channels", owner="PDyReLU")
        self.pixel_scale = nn.Parameter(torch.zeros(2 * C))
        self.pixel_bias = nn.Parameter(torch.zeros(2 * C))
        self.pixel_mlp = nn.Sequential(nn.Linear(1, C), nn.ReLU(), nn.Linear(C, 2 * C), nn.Tanh())
        self.channel_scale = nn.Parameter(torch.zeros(2 * C))
        self.channel_bias = nn.Parameter(torch.zeros(2 * C))
        self.channel_mlp = nn.Sequential(nn.Linear(C, C), nn.ReLU(), nn.Linear(C, 2 * C), nn.Tanh())

    def forward(self, x: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        owner, C = "PDyReLU", self.channels
        n, N, _ = check_tensor(x, "x", owner=owner, shape=("n", "N", ("C", C)))
        check_tensor(query, "query", owner=owner, shape=(("n", n), 1, ("C", C)))
        check_module_dtype(x, self, owner=owner)
        pix = self.pixel_mlp(x @ query.transpose(-1, -2))  # n x N x 2C
        pix = pix * self.pixel_scale.exp() + self.pixel_bias  # n x N x 2C
        pixel_act = pix[..., :C] * x + pix[..., C:]  # n x N x C
        if N:
            chan = self.channel_mlp(x.mean(1, keepdim=True))  # n x 1 x 2C
        else:  # no pixel: the mean is undefined, and nothing reads it
            chan = x.new_zeros(n, 1, 2 * C)
        chan = chan * self.channel_scale.exp() + self.channel_bias  # n x 1 x 2C
        channel_act = chan[..., :C] * x + chan[..., C:]  # n x N x C
        return torch.maximum(pixel_act, channel_act)


# ----------------------------------------------------------------------------- deformable conv


class ModulatedDeformConv2d(nn.Module):
    """Modulated deformable convolution v2 (Zhu et al., CVPR 2019, Eq. 3) holding its weight.

    The parameters of mmcv's ``ModulatedDeformConv2d`` (``weight`` (C_out, C/groups, k, k), optional
    ``bias``); offsets and mask are inputs (:func:`segblocks.ops.deform_conv.modulated_deform_conv2d`).

    Shapes: ``x`` (B, C, H, W), ``offset`` (B, 2·G_d·k², Ho, Wo), ``mask`` (B, G_d·k², Ho, Wo) →
    (B, C_out, Ho, Wo).
    """

    def __init__(
        self, *, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 1,
        dilation: int = 1, groups: int = 1, bias: bool = False, backend: str = "auto",
    ) -> None:
        super().__init__()
        owner = "ModulatedDeformConv2d"
        in_channels = check_positive_int(in_channels, "in_channels", owner=owner)
        out_channels = check_positive_int(out_channels, "out_channels", owner=owner)
        k = check_positive_int(kernel_size, "kernel_size", owner=owner)
        self.groups = check_positive_int(groups, "groups", owner=owner)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{owner}: in_channels={in_channels} and out_channels={out_channels} must be divisible by groups={groups}")
        self.stride = check_positive_int(stride, "stride", owner=owner)
        self.padding = check_int(padding, "padding", owner=owner, minimum=0)
        self.dilation = check_positive_int(dilation, "dilation", owner=owner)
        self.kernel_size = k
        self.backend = backend
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, k, k))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        check_module_dtype(x, self, owner="ModulatedDeformConv2d")
        return modulated_deform_conv2d(
            x, offset, mask, self.weight, self.bias, stride=self.stride, padding=self.padding,
            dilation=self.dilation, groups=self.groups, backend=self.backend,
        )


class DeformLayer(nn.Module):
    """The residual deformable convolution of the MSA module (FocSAM Eq. 5, ``DeformConv``).

    As coded (``DeformLayer`` of the authors): ``dcn_offset = Conv2d(C, 27, 3, padding 1)`` (default
    init) gives 27 channels, split into three chunks of 9: the first 18 are the offsets (in the
    (Δy, Δx)-interleaved layout that mmcv reads) and the last 9 go through a sigmoid as the mask;
    ``dcn`` is a 3×3 modulated DCNv2 without bias, initialised with Caffe2's "MSRA fill" as coded:
    ``N(0, √(2 / (fan_in + fan_out)))`` with ``fan_in = C·9``, ``fan_out = C_out``.

    Shapes: (B, C, H, W) → (B, C_out, H, W).
    """

    def __init__(self, *, in_channels: int, out_channels: int, backend: str = "auto") -> None:
        super().__init__()
        self.dcn_offset = nn.Conv2d(in_channels, 27, kernel_size=3, padding=1)
        self.dcn = ModulatedDeformConv2d(
            in_channels=in_channels, out_channels=out_channels, kernel_size=3, padding=1, bias=False, backend=backend
        )
        w = self.dcn.weight
        std = math.sqrt(2.0 / (w[0].numel() + w.shape[0]))
        nn.init.normal_(w, 0.0, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        om = self.dcn_offset(x)  # B x 27 x H x W
        return self.dcn(x, om[:, :18], om[:, 18:].sigmoid())  # B x C_out x H x W


class MSAModule(nn.Module):
    """The MSA module of a refine block (FocSAM §3.2, Eq. 3–5, Fig. 3 (e)), on windows.

    As coded (``MSAModule`` of the authors), with ``f`` the window (n, C, S, S) and ``q_f`` the
    query of Eq. 2::

        f̂   = LN(Attn(f, f, f))                        # Eq. 3, zero key/value slot
        f̂_q = P-DyReLU(f̂; LN(Linear(q_f)))            # Eq. 4 (cls_proj)
        u   = f + γ1 · f̂_q
        out = f + γ2 · ReLU(GN(DeformConv(u)))          # Eq. 5: the residual is to f, not to u

    ``γ1``, ``γ2`` are learnable per channel, initialised to 1. ``attn_mask`` (n, S², S²) restricts
    the self-attention (the masked shift-Dwin variant).

    Shapes: ``x`` (n, C, S, S), ``query`` (n, 1, C) → (n, C, S, S).
    """

    def __init__(self, *, embed_dim: int, num_heads: int = 8, dcn_backend: str = "auto") -> None:
        super().__init__()
        C = embed_dim
        self.cls_proj = nn.Sequential(nn.Linear(C, C), nn.LayerNorm(C))
        self.attn = DwinAttention(embed_dim=C, num_heads=num_heads)
        self.norm1 = nn.LayerNorm(C)
        self.relu1 = PDyReLU(channels=C)
        self.conv2 = DeformLayer(in_channels=C, out_channels=C, backend=dcn_backend)
        self.norm2 = nn.GroupNorm(1, C)
        self.relu2 = nn.ReLU()
        self.gamma1 = nn.Parameter(torch.ones(1, C, 1, 1))
        self.gamma2 = nn.Parameter(torch.ones(1, C, 1, 1))

    def forward(self, x: torch.Tensor, query: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        n, C, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # n x hw x C
        out = self.attn(tokens, tokens, tokens, attn_mask)  # n x hw x C
        out = self.relu1(self.norm1(out), self.cls_proj(query))  # n x hw x C
        out = x + self.gamma1 * out.transpose(1, 2).reshape(n, C, h, w)  # n x C x h x w
        out = self.relu2(self.norm2(self.conv2(out)))  # n x C x h x w
        return x + self.gamma2 * out


# ----------------------------------------------------------------------------- refine block


class RefineBlock(nn.Module):
    """Dwin-MSA refine block (FocSAM §3.2, Fig. 3 (b)); shift Dwin with ``shift = S // 2``.

    On the windows selected by :class:`DynamicWindows` only: ``q_f = CrossAttentionBlock(q, f)``
    (Eq. 2) per window, then ``f ← MSAModule(f, q_f)`` (Eq. 3–5); unselected windows keep their
    embeddings and query. The next query averages the per-window queries over **all** ``nW``
    windows of the sample (unselected ones contribute the input query), then, with ``cls_scale``,
    rescales the update by the selected fraction ``r``:
    ``q ← q + exp(w·(−log max(r, 0.01)) + b)·(q̄ − q)`` with ``cls_scale_proj = Linear(1, 1)``
    initialised to ``w = 1, b = 0``, i.e. at init exactly the mean over the selected windows
    (the paper's "average summation"; authors' ``RefineBlock``).

    Args:
        embed_dim, num_heads, mlp_ratio: widths (256, 8, 4.0 in FocSAM).
        window_size: ``S`` (16).
        shift: 0 (plain Dwin) or the roll of shift Dwin (``S // 2``).
        masked_shift: Swin-style mask in the shifted windows (see :class:`DynamicWindows`).
        cls_scale: learn the selected-fraction scaling (all blocks but the last in FocSAM).

    Shapes: ``x`` (B, C, H, W), ``query`` (B, 1, C), ``box_mask`` (B, 1, H, W) →
    ``(x', query')`` of the same shapes. ``H, W`` need not be multiples of ``S``.

    Export (:mod:`segblocks.models.focsam.export`): the same code runs under ``torch.export``. The
    number ``M`` of selected windows is then an unbacked symbolic size (it depends on the box
    values); while exporting, the block asserts ``M >= 1`` with ``torch._check`` instead of branching
    on ``M`` (a runtime check in the exported program), so ``box_mask`` must select at least one
    window of the batch there. Eagerly an empty selection still returns the input unchanged.
    """

    def __init__(
        self, *, embed_dim: int = 256, num_heads: int = 8, mlp_ratio: float = 4.0, window_size: int = 16,
        shift: int = 0, masked_shift: bool = False, cls_scale: bool = True, dcn_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.embed_dim = check_positive_int(embed_dim, "embed_dim", owner="RefineBlock")
        self.dwin = DynamicWindows(window_size=window_size, shift=shift, masked_shift=masked_shift)
        self.img2cls = CrossAttentionBlock(embed_dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio)
        self.cls2img = MSAModule(embed_dim=embed_dim, num_heads=num_heads, dcn_backend=dcn_backend)
        if cls_scale:
            self.cls_scale_proj = nn.Linear(1, 1)
            nn.init.ones_(self.cls_scale_proj.weight)
            nn.init.zeros_(self.cls_scale_proj.bias)
        else:
            self.cls_scale_proj = None

    def forward(self, x: torch.Tensor, query: torch.Tensor, box_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        owner, C = "RefineBlock", self.embed_dim
        B, _, H, W = check_tensor(x, "x", owner=owner, shape=("B", ("C", C), "H", "W"))
        check_tensor(query, "query", owner=owner, shape=(("B", B), 1, ("C", C)))
        check_module_dtype(x, self, owner=owner)
        parts = self.dwin.partition(x, box_mask)
        S = self.dwin.window_size
        nW = parts.selected.shape[1]
        q_all = query.expand(B, nW, C).reshape(B * nW, 1, C)  # BnW x 1 x C
        M = parts.index.numel()
        if torch.compiler.is_exporting():
            # torch.export / ONNX: M is an unbacked (data-dependent) size; a non-empty box (as
            # FocusRefiner's focus box with expand ratio >= 1) selects >= 1 window, so no branch
            torch._check(M >= 1)
        if M:
            q_sel = self.img2cls(q_all[parts.index], parts.windows)  # M x 1 x C
            f = parts.windows.transpose(1, 2).reshape(M, C, S, S)  # M x C x S x S
            f = self.cls2img(f, q_sel, parts.attn_mask)  # M x C x S x S
            x = self.dwin.merge(parts, f.flatten(2).transpose(1, 2))  # B x C x H x W
            q_all = q_all.index_copy(0, parts.index, q_sel)  # BnW x 1 x C
        new_query = q_all.view(B, nW, C).mean(1, keepdim=True)  # B x 1 x C
        if self.cls_scale_proj is not None:
            frac = parts.selected.to(x.dtype).mean(1).view(B, 1, 1)  # B x 1 x 1
            scale = self.cls_scale_proj(-frac.clamp(min=1e-2).log()).exp()  # B x 1 x 1
            new_query = query + scale * (new_query - query)
        return x, new_query


class FocusRefiner(nn.Module):
    """FocSAM's focus refiner (§3.1 "FocSAM's pipeline", Fig. 2 (b), Fig. 3 (a)).

    ``x = Conv1×1(F)``, ``q = Linear(q_c)``; the focus box (:func:`focus_box_mask`) is max-pooled
    to the embedding grid and shared by all blocks; ``depth`` :class:`RefineBlock` s alternate
    plain (even ``i``) and shift Dwin (odd ``i``, roll ``S // 2``), ``cls_scale`` in all but the
    last; the output is the last block's embedding (the refined query is discarded).

    Args:
        embed_dim: ``C`` of SAM's embeddings (256).
        depth: blocks (12: 6 plain + 6 shift).
        num_heads, mlp_ratio: 8, 4.0.
        window_size: 16 (FocSAM §4.1; the authors' class default is 14, their config sets 16).
        expand_ratio: ``(h, w)`` focus-box expansion at test time (1.4); training draws it per
            step (pass ``expand_ratio=`` to :meth:`forward`).
        masked_shift: Swin-style mask in the shift blocks (default False: the authors' behaviour,
            which the official weights were trained with).
        dcn_backend: backend of the deformable convolution.

    Shapes: ``image_embeddings`` (B, C, h, w), ``coarse_logits`` (B, 1, h', w') over the padded
    input, ``mask_token`` (B, 1, C) or (B, C) → (B, C, h, w).
    """

    def __init__(
        self, *, embed_dim: int = 256, depth: int = 12, num_heads: int = 8, mlp_ratio: float = 4.0,
        window_size: int = 16, expand_ratio: float | Sequence[float] = 1.4, masked_shift: bool = False,
        dcn_backend: str = "auto",
    ) -> None:
        super().__init__()
        owner = "FocusRefiner"
        self.embed_dim = check_positive_int(embed_dim, "embed_dim", owner=owner)
        depth = check_positive_int(depth, "depth", owner=owner)
        window_size = check_positive_int(window_size, "window_size", owner=owner)
        self.expand_ratio = self._ratio(expand_ratio)
        self.embed_proj = nn.Conv2d(embed_dim, embed_dim, kernel_size=1)
        self.token_proj = nn.Linear(embed_dim, embed_dim)
        self.blocks = nn.ModuleList(
            RefineBlock(
                embed_dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, window_size=window_size,
                shift=(window_size // 2) * (i % 2), masked_shift=masked_shift, cls_scale=i < depth - 1,
                dcn_backend=dcn_backend,
            )
            for i in range(depth)
        )

    @staticmethod
    def _ratio(value: float | Sequence[float]) -> tuple[float, float]:
        vals = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
        if len(vals) != 2:
            raise ValueError(f"FocusRefiner: expand_ratio must be a number or an (h, w) pair, got {value!r}")
        return tuple(check_finite_float(v, "expand_ratio", owner="FocusRefiner", positive=True) for v in vals)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        coarse_logits: torch.Tensor,
        mask_token: torch.Tensor,
        input_size: tuple[int, int],
        *,
        expand_ratio: float | Sequence[float] | None = None,
        box_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Refine ``image_embeddings`` around the object of ``coarse_logits``.

        Args:
            image_embeddings: (B, C, h, w) SAM embeddings of the padded input.
            coarse_logits: (B, 1, h', w') logits over the padded input (SAM's stride-4 masks).
            mask_token: (B, 1, C) or (B, C) click-fused query token (SAM decoder mask token 0).
            input_size: ``(H, W)`` of the padded input the logits cover.
            expand_ratio: focus-box expansion for this call (default ``self.expand_ratio``).
            box_mask: (B, 1, H, W) precomputed focus box (overrides the logits).

        Returns:
            (B, C, h, w) refined embeddings.
        """
        owner, C = "FocusRefiner", self.embed_dim
        B, _, h, w = check_tensor(image_embeddings, "image_embeddings", owner=owner, shape=("B", ("C", C), "h", "w"))
        check_module_dtype(image_embeddings, self, "image_embeddings", owner=owner)
        if isinstance(mask_token, torch.Tensor) and mask_token.dim() == 2:
            mask_token = mask_token.unsqueeze(1)  # B x 1 x C
        check_tensor(mask_token, "mask_token", owner=owner, shape=(("B", B), 1, ("C", C)))
        size = tuple(check_positive_int(v, "input_size", owner=owner) for v in input_size)
        if box_mask is None:
            check_tensor(coarse_logits, "coarse_logits", owner=owner, shape=(("B", B), 1, "h'", "w'"))
            ratio = self.expand_ratio if expand_ratio is None else self._ratio(expand_ratio)
            box_mask = focus_box_mask(coarse_logits, size, ratio)  # B x 1 x H x W
        else:
            check_tensor(box_mask, "box_mask", owner=owner, shape=(("B", B), 1, "H", "W"), dtype=None)
        if B == 0 or h * w == 0:
            return self.embed_proj(image_embeddings)
        grid_mask = F.adaptive_max_pool2d(box_mask.float(), (h, w)).to(image_embeddings.dtype)  # B x 1 x h x w
        x = self.embed_proj(image_embeddings)  # B x C x h x w
        q = self.token_proj(mask_token)  # B x 1 x C
        for block in self.blocks:
            x, q = block(x, q, grid_mask)
        return x
