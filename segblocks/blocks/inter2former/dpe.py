"""Dynamic Prompt Embedding (DPE), Inter2Former §3.3, Eq. 1-3.

The reference label map ``M_ref`` (five states, :class:`~segblocks.interactive.ref_label.RefLabel`)
is embedded and downsampled to the token grid **only inside a box** around everything that is not
"possible background"; every other token gets one learned background embedding ``e_bg``.

Details the paper leaves open follow the authors' code (YouHuang67/inter2former,
``inter2former/necks/dpe_dha_hmoe.py``, ``Inter2FormerDecoderNeck.forward`` / ``get_back_embed``;
box rule in ``engine/utils/zoom_in.py``):

* ``Embed`` is ``nn.Embedding(5, 5)``; ``Conv_4`` is four ``Conv2d(k=3, stride 2, pad 1) + ReLU``
  (ReLU after the last one too), channels ``(32, 64, 128, 256)``, total stride 16;
* box: the bounding box of ``M_ref != POSSIBLE_BG``, left/top floored and right/bottom (exclusive)
  ceiled to multiples of 16, then grown by 16 px per side and clamped to the image; an empty mask
  gives the whole image. Each sample has its own box (a loop over the batch);
* ``e_bg``: the constant POSSIBLE_BG label tiled to ``48 x 48`` (three strides), embedded and
  convolved; the centre output ``[1, 1]`` (its receptive field is interior, so zero padding does
  not reach it). It is recomputed from the current weights at every call, so it trains.

Static shapes (:meth:`DynamicPromptEmbedding.forward_static`, for ``torch.export`` / ONNX): the
whole map is embedded and, at the input of every convolution, the features outside the box
(:func:`box_mask`, the box scaled to that stage) are zeroed. The box corners are multiples of the
total stride, so the crop's stride grid is the map's and the zeroed ring is exactly the zero
padding the crop sees at its border: the tokens inside the box equal the cropped computation.
It costs a full-map embedding instead of a box-sized one.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segblocks.interactive.ref_label import RefLabel
from segblocks.ops._checks import check_int, check_int_sequence, check_tensor

__all__ = ["DynamicPromptEmbedding", "PatchConv", "box_mask", "prompt_boxes"]


class PatchConv(nn.Module):
    """``Conv2d(k = 2(s-1)+1, stride s, pad s-1) + ReLU`` per stage (DPE's ``Conv_4``, Eq. 2).

    Args:
        in_chans: input channels (5).
        dims: output channels per stage ((32, 64, 128, 256)).
        strides: stride per stage ((2, 2, 2, 2)).

    Shapes:
        x: ``(B, in_chans, H, W)`` → ``(B, dims[-1], H / Π strides, W / Π strides)``.
        boxes: optional ``(B, 4)`` ``(y0, x0, y1, x1)`` in pixels of ``x``, multiples of the total
            stride: every stage input is zeroed outside its sample's box (scaled to that stage), the
            whole-map equivalent of running on the crop with its zero padding.
    """

    def __init__(self, *, in_chans: int, dims: Sequence[int], strides: Sequence[int]) -> None:
        super().__init__()
        dims = check_int_sequence(dims, "dims", owner="PatchConv", minimum=1)
        strides = check_int_sequence(strides, "strides", owner="PatchConv", minimum=1)
        if len(dims) != len(strides) or not dims:
            raise ValueError(f"PatchConv: dims and strides need the same non-zero length; got {dims}, {strides}")
        chans = (check_int(in_chans, "in_chans", owner="PatchConv", minimum=1), *dims)
        self.convs = nn.ModuleList(
            nn.Conv2d(chans[i], chans[i + 1], kernel_size=2 * (s - 1) + 1, stride=s, padding=s - 1)
            for i, s in enumerate(strides)
        )
        self.stride = 1
        for s in strides:
            self.stride *= s

    def forward(self, x: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        f = 1  # stride of the current stage input
        for conv in self.convs:
            if boxes is not None:
                x = x * box_mask(boxes // f, x.shape[-2], x.shape[-1])  # B x C x h x w, zero outside
            x = F.relu(conv(x))
            f *= conv.stride[0]
        return x


def prompt_boxes(ref_label: torch.Tensor, stride: int, *, expand: int = 1) -> torch.Tensor:
    """Per-sample DPE boxes (module docstring): ``(B, 4)`` int64 ``(y0, x0, y1, x1)``, multiples of ``stride``.

    Args:
        ref_label: ``(B, H, W)`` integer ``M_ref``.
        stride: box alignment (16).
        expand: growth per side in strides (1).
    """
    B, H, W = ref_label.shape
    fg = ref_label != RefLabel.POSSIBLE_BG  # B x H x W
    rows, cols = fg.any(2), fg.any(1)  # B x H, B x W
    ar_h = torch.arange(H, device=ref_label.device)
    ar_w = torch.arange(W, device=ref_label.device)
    y0 = torch.where(rows, ar_h, H).min(1).values
    y1 = torch.where(rows, ar_h, -1).max(1).values + 1
    x0 = torch.where(cols, ar_w, W).min(1).values
    x1 = torch.where(cols, ar_w, -1).max(1).values + 1
    pad = expand * stride
    y0 = (y0 // stride * stride - pad).clamp(min=0)
    x0 = (x0 // stride * stride - pad).clamp(min=0)
    y1 = ((y1 + stride - 1) // stride * stride + pad).clamp(max=H)
    x1 = ((x1 + stride - 1) // stride * stride + pad).clamp(max=W)
    empty = ~rows.any(1)  # B
    boxes = torch.stack([y0, x0, y1, x1], dim=1)  # B x 4
    full = torch.tensor([0, 0, H, W], device=ref_label.device)
    return torch.where(empty[:, None], full, boxes)


def box_mask(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(B, 1, height, width)`` bool, True inside each sample's box ``(y0, x0, y1, x1)`` (``(B, 4)``, exclusive ends)."""
    ys = torch.arange(height, device=boxes.device)  # height
    xs = torch.arange(width, device=boxes.device)  # width
    rows = (ys >= boxes[:, 0:1]) & (ys < boxes[:, 2:3])  # B x height
    cols = (xs >= boxes[:, 1:2]) & (xs < boxes[:, 3:4])  # B x width
    return (rows[:, :, None] & cols[:, None, :])[:, None]  # B x 1 x height x width


class DynamicPromptEmbedding(nn.Module):
    """DPE (Inter2Former §3.3, Eq. 1-3): prompt tokens from ``M_ref``, computed inside a box only.

    ``E_init = Embed(M_ref[box])`` (Eq. 1), ``F_B = Conv_4(E_init)`` (Eq. 2), and ``P`` is ``F_B``
    inside the box and ``e_bg`` elsewhere (Eq. 3).

    Args:
        embed_dim: output channels ``d`` (= ``dims[-1]``).
        dims: ``Conv_4`` channels ((32, 64, 128, 256)).
        strides: ``Conv_4`` strides ((2, 2, 2, 2), total 16).
        label_dim: width of the label embedding (5).
        box_expand: box growth per side in strides (1).
        local: True (DPE): embed the box only; False: embed the whole map ("Non-DPE" of Table 2 /
            Fig. 3a, same weights).

    Forward:
        ref_label: ``(B, 1, H, W)`` or ``(B, H, W)`` integer ``M_ref`` with values 0..4, ``H, W``
            multiples of the total stride.
        Returns ``P`` ``(B, d, H / 16, W / 16)`` and the boxes ``(B, 4)`` int64 ``(y0, x0, y1, x1)``
        in pixels.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 256,
        dims: Sequence[int] = (32, 64, 128, 256),
        strides: Sequence[int] = (2, 2, 2, 2),
        label_dim: int = 5,
        box_expand: int = 1,
        local: bool = True,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        embed_dim = check_int(embed_dim, "embed_dim", owner=owner, minimum=1)
        dims = check_int_sequence(dims, "dims", owner=owner, minimum=1)
        if dims and dims[-1] != embed_dim:
            raise ValueError(f"{owner}: dims[-1] must equal embed_dim={embed_dim}; got {dims}")
        self.embed_dim = embed_dim
        self.box_expand = check_int(box_expand, "box_expand", owner=owner, minimum=0)
        self.local = bool(local)
        self.ref_embeds = nn.Embedding(len(RefLabel), check_int(label_dim, "label_dim", owner=owner, minimum=1))
        self.ref_conv = PatchConv(in_chans=label_dim, dims=dims, strides=strides)

    @property
    def stride(self) -> int:
        return self.ref_conv.stride

    def embed(self, labels: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. 1-2 on a label crop: ``(B, h, w)`` integer → ``(B, d, h / 16, w / 16)`` (``boxes``: see :class:`PatchConv`)."""
        e = self.ref_embeds(labels.long()).permute(0, 3, 1, 2)  # B x 5 x h x w
        return self.ref_conv(e, boxes)

    def background_embedding(self) -> torch.Tensor:
        """``e_bg`` ``(d,)``: centre token of a ``3s x 3s`` constant POSSIBLE_BG tile (module docstring)."""
        s = self.stride
        tile = torch.full((1, 3 * s, 3 * s), int(RefLabel.POSSIBLE_BG), device=self.ref_embeds.weight.device)
        return self.embed(tile)[0, :, 1, 1]  # d

    def _check_shape(self, ref_label: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` or ``(B, H, W)`` integer, ``H, W`` multiples of the stride → ``(B, H, W)``."""
        owner = type(self).__name__
        if isinstance(ref_label, torch.Tensor) and ref_label.dim() == 4:
            check_tensor(ref_label, "ref_label", owner=owner, shape=("B", ("1", 1), "H", "W"), dtype="integer")
            ref_label = ref_label[:, 0]
        _, H, W = check_tensor(ref_label, "ref_label", owner=owner, shape=("B", "H", "W"), dtype="integer")
        s = self.stride
        if H % s or W % s:
            raise ValueError(f"{owner}: ref_label height and width must be multiples of {s}; got {H}x{W}")
        return ref_label

    def _embed_whole(self, ref_label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The "Non-DPE" path: the whole map embedded, boxes = the whole image."""
        B, H, W = ref_label.shape
        return self.embed(ref_label), torch.tensor([[0, 0, H, W]], device=ref_label.device).expand(B, 4)

    def forward_static(self, ref_label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` with static shapes (module docstring), for ``torch.export`` / ONNX.

        Same outputs as :meth:`forward`; the values of ``ref_label`` are not checked (that needs
        their range, a data-dependent test): they must be the 5 M_ref states 0..4.
        """
        ref_label = self._check_shape(ref_label)
        _, H, W = ref_label.shape
        s = self.stride
        if not self.local:
            return self._embed_whole(ref_label)
        boxes = prompt_boxes(ref_label, s, expand=self.box_expand)  # B x 4, multiples of s
        x = self.embed(ref_label, boxes)  # B x d x h x w, Eq. 1-2, zero outside the box = the crop's zero padding
        inside = box_mask(boxes // s, H // s, W // s)  # B x 1 x h x w
        out = torch.where(inside, x, self.background_embedding().view(1, -1, 1, 1))  # B x d x h x w, Eq. 3
        return out, boxes

    def forward(self, ref_label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        owner = type(self).__name__
        ref_label = self._check_shape(ref_label)
        B, H, W = ref_label.shape
        s = self.stride
        if ref_label.numel() and (int(ref_label.min()) < 0 or int(ref_label.max()) > 4):
            raise ValueError(
                f"{owner}: ref_label must hold the 5 M_ref states 0..4; got range "
                f"[{int(ref_label.min())}, {int(ref_label.max())}]"
            )
        h, w = H // s, W // s
        if not self.local:
            return self._embed_whole(ref_label)
        boxes = prompt_boxes(ref_label, s, expand=self.box_expand)  # B x 4
        bg = self.background_embedding()  # d
        out = bg.view(1, -1, 1, 1).expand(B, self.embed_dim, h, w).clone()  # B x d x h x w
        for b, (y0, x0, y1, x1) in enumerate(boxes.tolist()):
            if y1 > y0 and x1 > x0:
                out[b, :, y0 // s:y1 // s, x0 // s:x1 // s] = self.embed(ref_label[b:b + 1, y0:y1, x0:x1])[0]
        return out, boxes
