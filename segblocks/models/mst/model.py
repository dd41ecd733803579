"""SimpleClick-style click model with MST blocks (Xu et al., "MST: Adaptive Multi-Scale Tokens
Guided Interactive Segmentation", §III, Fig. 3, Eq. 8; authors' code hahamyt/mst,
``isegm/model/is_adaptivevit_model.py``, ``modeling/adaptive_vit.py``).

Module and parameter names follow the authors' ``AdaptiveVitModel`` so their ViT-B checkpoints
load without renaming: ``backbone.{patch_embed,pos_embed,blocks.i}``, ``neck.down_{4,8,16,32}``,
``head.{convs.i.conv,fusion_conv.conv,conv_seg}``, ``patch_embed_coords.proj``.

Unlike SAM-style models, the whole network runs once per click (clicks and the previous mask enter
at the patch embedding), so :meth:`MSTClickModel.encode` only stores the image and
:meth:`MSTClickModel.decode` does all the work: the harness's online SPC equals its 20-SPC up to
the (negligible) cost of storing the image, as MST Table II times it (one full pass per click).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segblocks.blocks.mst import (
    CODE_PATCH_SIZES,
    PAPER_PATCH_SIZES,
    AdaptivePatchEmbed,
    MultiScaleTokenBlock,
    TopKTokenSelector,
    ViTBlock,
    click_token_index,
)
from segblocks.interactive.clicker import Clicks
from segblocks.interactive.encodings import disk_maps
from segblocks.interactive.protocol import ClickPrompts
from segblocks.layers.patch_embed import PatchEmbed
from segblocks.losses.token import score_focal_loss, token_targets, triplet_token_loss
from segblocks.models._registry import register_model
from segblocks.ops._checks import check_int, check_int_sequence

__all__ = [
    "MST_DEPTHS",
    "MSTBackbone",
    "MSTClickModel",
    "MSTSegHead",
    "MSTState",
    "SimpleFPN",
    "mst_tiny",
    "mst_vit_base",
    "simpleclick_vit_base",
]

#: Which blocks carry the MST module (0-based). The paper does not list them; the authors' code:
#: ``(d + 1) % 4 == 0`` on main / mst-448 and ``d % 4 == 0`` on mst-224 (``adaptive_vit.py``).
MST_DEPTHS = {"code-448": (3, 7, 11), "code-224": (0, 4, 8)}

_MEAN = (0.485, 0.456, 0.406)  # RITM / SimpleClick ImageNet normalisation (is_model.py)
_STD = (0.229, 0.224, 0.225)


class SimpleFPN(nn.Module):
    """SimpleClick's SimpleFPN (Li et al., ViTDet, ECCV 2022, §3; key names of the authors'
    ``SimpleFPN``): one stride-16 map to strides 4 / 8 / 16 / 32 with (transposed) convs + GroupNorm(1).

    Shapes:
        x: (B, in_dim, h, w) -> [(B, out_dims[0], 4h, 4w), (…, 2h, 2w), (…, h, w), (…, h/2, w/2)].
    """

    def __init__(self, *, in_dim: int, out_dims: Sequence[int] = (128, 256, 512, 1024)) -> None:
        super().__init__()
        o = check_int_sequence(out_dims, "out_dims", owner="SimpleFPN", minimum=1)
        if len(o) != 4:
            raise ValueError(f"SimpleFPN: out_dims must have 4 entries; got {o}")
        c4, c8, c32 = max(o[0] * 2, in_dim // 2), max(o[1], in_dim // 2), max(o[3], in_dim * 2)
        self.down_4 = nn.Sequential(
            nn.ConvTranspose2d(in_dim, c4, 2, stride=2), nn.GroupNorm(1, c4), nn.GELU(),
            nn.ConvTranspose2d(c4, c4 // 2, 2, stride=2), nn.GroupNorm(1, c4 // 2),
            nn.Conv2d(c4 // 2, o[0], 1), nn.GroupNorm(1, o[0]), nn.GELU(),
        )
        self.down_8 = nn.Sequential(
            nn.ConvTranspose2d(in_dim, c8, 2, stride=2), nn.GroupNorm(1, c8),
            nn.Conv2d(c8, o[1], 1), nn.GroupNorm(1, o[1]), nn.GELU(),
        )
        self.down_16 = nn.Sequential(nn.Conv2d(in_dim, o[2], 1), nn.GroupNorm(1, o[2]), nn.GELU())
        self.down_32 = nn.Sequential(
            nn.Conv2d(in_dim, c32, 2, stride=2), nn.GroupNorm(1, c32),
            nn.Conv2d(c32, o[3], 1), nn.GroupNorm(1, o[3]), nn.GELU(),
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.down_4(x), self.down_8(x), self.down_16(x), self.down_32(x)]


class _ConvAct(nn.Module):
    """1×1 conv + ReLU with mmcv ``ConvModule``'s key name ``conv``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


class MSTSegHead(nn.Module):
    """The light all-MLP head (SegFormer's, the authors' ``SwinTransfomerSegHead``; MST Fig. 3
    "two-layer MLP"): per-level 1×1 conv + ReLU to ``channels``, bilinear resize to stride 4,
    concat, 1×1 fusion conv + ReLU, dropout, 1×1 classifier.

    Shapes:
        4 maps (B, in_channels[i], H/s_i, W/s_i) -> (B, 1, H/4, W/4) logits.
    """

    def __init__(self, *, in_channels: Sequence[int] = (128, 256, 512, 1024), channels: int = 256,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.convs = nn.ModuleList(_ConvAct(c, channels) for c in in_channels)
        self.fusion_conv = _ConvAct(channels * len(in_channels), channels)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, 1, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[-2:]
        outs = [F.interpolate(conv(f), size=size, mode="bilinear", align_corners=False) for conv, f in zip(self.convs, feats)]
        return self.conv_seg(self.dropout(self.fusion_conv(torch.cat(outs, 1))))  # B x 1 x H/4 x W/4


class MSTBackbone(nn.Module):
    """ViT with adaptive multi-scale tokens (MST Fig. 3; the authors' ``AdaptiveVisionTransformer``).

    Base tokens come from the 16-px :class:`~segblocks.blocks.mst.AdaptivePatchEmbed` plus the
    click/mask tokens plus the position embedding; the small and large tokens from the same
    kernel PI-resized, plus the resized position embedding. Blocks in ``mst_depths`` are
    :class:`~segblocks.blocks.mst.MultiScaleTokenBlock`; the others plain ViT blocks.

    ``pos_embed`` is ``(1, 1 + G², C)`` with the (unused) class-token slot of the authors'
    checkpoints, ``G = img_size // 16``.

    Shapes:
        images (B, 3, H, W) normalised, extra (B, h, w, C) tokens added to the base tokens,
        click_index (B, P) base-token indices of positive clicks -> ((B, h, w, C), list of aux dicts).
    """

    def __init__(
        self, *, img_size: int = 448, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
        mlp_ratio: float = 4.0, patch_sizes: Sequence[int] = PAPER_PATCH_SIZES, mst_depths: Sequence[int] = (3, 7, 11),
        fusion: Literal["paper", "code"] = "paper", ratio: int = 12, kernel: Literal["mean", "attention"] = "mean",
        sr_ratio: int = 4, gamma_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.patch_sizes = check_int_sequence(patch_sizes, "patch_sizes", owner="MSTBackbone", minimum=1)
        if len(self.patch_sizes) != 3 or self.patch_sizes[1] != 16:
            raise ValueError(f"MSTBackbone: patch_sizes must be (small, 16, large); got {self.patch_sizes}")
        self.mst_depths = check_int_sequence(mst_depths, "mst_depths", owner="MSTBackbone", minimum=0)
        if any(d >= depth for d in self.mst_depths):
            raise ValueError(f"MSTBackbone: mst_depths must be < depth {depth}; got {self.mst_depths}")
        grid = check_int(img_size, "img_size", owner="MSTBackbone", minimum=16) // 16
        self.pos_grid = grid
        self.patch_embed = AdaptivePatchEmbed(in_chans=3, embed_dim=embed_dim, patch_sizes=self.patch_sizes)
        self.pos_embed = nn.Parameter(torch.randn(1, grid * grid + 1, embed_dim) * 0.02)
        blocks = []
        for d in range(depth):
            if d in self.mst_depths:
                sel = TopKTokenSelector(ratio=ratio, kernel=kernel)
                blocks.append(MultiScaleTokenBlock(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, selector=sel,
                                                   fusion=fusion, sr_ratio=sr_ratio, gamma_init=gamma_init))
            else:
                blocks.append(ViTBlock(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio))
        self.blocks = nn.ModuleList(blocks)

    def _pos(self, grid: tuple[int, int]) -> torch.Tensor:
        C = self.pos_embed.shape[-1]
        table = self.pos_embed[:, 1:].reshape(1, self.pos_grid, self.pos_grid, C)  # 1 x G x G x C
        return AdaptivePatchEmbed.position_embedding(table, grid)  # 1 x h x w x C

    def forward(self, images: torch.Tensor, extra: torch.Tensor | None, click_index: torch.Tensor):
        x = self.patch_embed(images, 16)  # B x h x w x C
        B, h, w, C = x.shape
        if extra is not None:
            x = x + extra
        x = x + self._pos((h, w))
        scales = []
        if self.mst_depths:
            for p in (self.patch_sizes[0], self.patch_sizes[2]):
                t = self.patch_embed(images, p)  # B x H/p x W/p x C
                pos = self._pos(t.shape[1:3])  # 1 x H/p x W/p x C
                scales.append(((t + pos).flatten(1, 2), pos.flatten(1, 2)))  # B x N_j x C, 1 x N_j x C
        aux = []
        tokens = x.reshape(B, h * w, C)  # B x N x C
        for blk in self.blocks:
            if isinstance(blk, MultiScaleTokenBlock):
                out, scales, a = blk(tokens.reshape(B, h, w, C), scales, click_index)
                tokens = out.reshape(B, h * w, C)
                aux.append(a)
            else:
                tokens = blk(tokens)
        return tokens.reshape(B, h, w, C), aux


@dataclass(frozen=True, eq=False)
class MSTState:
    """What :meth:`MSTClickModel.encode` keeps: the images (no computation happens there)."""

    images: torch.Tensor
    valid_size: torch.Tensor


class MSTClickModel(nn.Module):
    """SimpleClick-style interactive model with MST blocks, an :class:`~segblocks.interactive.InteractiveModel`.

    Per click: normalise the image (ImageNet mean/std on 0–1), draw the clicks as disks of radius
    ``disk_radius`` (RITM ``DistMaps(use_disks=True, norm_radius=5)``), stack ``[previous mask,
    positive disks, negative disks]`` (previous mask = sigmoid of the previous logits), embed them
    with ``patch_embed_coords`` (16-px, 3 → C) and add them to the base tokens; run the
    :class:`MSTBackbone`, :class:`SimpleFPN`, :class:`MSTSegHead`.

    Inputs whose sides are not multiples of ``lcm(patch sizes)`` are zero-padded at the
    bottom/right for the network and the logits are resized to the padded size and cropped, so
    :meth:`decode` returns ``(B, 1, H, W)`` then; otherwise ``(B, 1, H/4, W/4)``.

    Training losses (Eq. 8): the NFL comes from the training loop; :meth:`auxiliary_losses`
    adds ``token_loss_weight`` × the triplet token loss (Eq. 6-7, averaged over MST blocks,
    scales and samples that have positives and negatives) and ``score_loss_weight`` × the
    authors' score focal loss. Set a weight to 0 to switch a loss off (ablation).

    Args:
        backbone, neck, head: the injected parts.
        disk_radius: click disk radius in input pixels (5).
        token_loss_weight, score_loss_weight: Eq. 8 weights (the 448 code: 1 and 1; mst-224: 1e-3).
    """

    def __init__(
        self, *, backbone: MSTBackbone, neck: SimpleFPN, head: MSTSegHead, disk_radius: float = 5.0,
        token_loss_weight: float = 1.0, score_loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.backbone, self.neck, self.head = backbone, neck, head
        C = backbone.pos_embed.shape[-1]
        self.patch_embed_coords = PatchEmbed(patch_size=16, in_chans=3, embed_dim=C)
        if token_loss_weight < 0 or score_loss_weight < 0:
            raise ValueError(f"loss weights must be >= 0; got {token_loss_weight}, {score_loss_weight}")
        self.disk_radius = disk_radius
        self.token_loss_weight, self.score_loss_weight = token_loss_weight, score_loss_weight
        self.register_buffer("pixel_mean", torch.tensor(_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(_STD).view(1, 3, 1, 1) * 255, persistent=False)
        self._multiple = math.lcm(*backbone.patch_sizes) if backbone.mst_depths else 16
        self._last_aux: list[dict] | None = None

    # ------------------------------------------------------------------ InteractiveModel
    def encode(self, images: torch.Tensor, valid_size: torch.Tensor) -> MSTState:
        """Stores the images: MST re-runs the backbone at every click (online SPC = 20-SPC)."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
            got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"MSTClickModel.encode: images must be float (B, 3, H, W); got {got}")
        return MSTState(images=images, valid_size=valid_size)

    def decode(self, state: MSTState, prompts: ClickPrompts, previous: torch.Tensor | None) -> torch.Tensor:
        images = state.images
        B, _, H, W = images.shape
        points, labels = prompts.points()  # B x N x 2 (x, y) in the input, +0.5 centres
        coords = points.flip(-1).floor().long()  # B x N x 2 (y, x) pixels of the input
        clicks = Clicks(coords=coords, labels=labels)
        Hp, Wp = -(-H // self._multiple) * self._multiple, -(-W // self._multiple) * self._multiple
        x = (images - self.pixel_mean) / self.pixel_std
        prev = torch.zeros(B, 1, H, W, dtype=x.dtype, device=x.device) if previous is None else torch.sigmoid(
            F.interpolate(previous.to(x.dtype), size=(H, W), mode="bilinear", align_corners=False))
        maps = torch.cat([prev, disk_maps(clicks, H, W, radius=self.disk_radius, dtype=x.dtype)], 1)  # B x 3 x H x W
        if (Hp, Wp) != (H, W):
            x, maps = F.pad(x, (0, Wp - W, 0, Hp - H)), F.pad(maps, (0, Wp - W, 0, Hp - H))  # B x 3 x Hp x Wp
        extra = self.patch_embed_coords(maps)  # B x Hp/16 x Wp/16 x C
        index = click_token_index(coords, labels, patch_size=16, grid=(Hp // 16, Wp // 16))  # B x N
        feats, aux = self.backbone(x, extra, index)
        logits = self.head(self.neck(feats.permute(0, 3, 1, 2)))  # B x 1 x Hp/4 x Wp/4
        self._last_aux = aux if (self.training and torch.is_grad_enabled()) else None
        if (Hp, Wp) != (H, W):
            logits = F.interpolate(logits, size=(Hp, Wp), mode="bilinear", align_corners=False)[..., :H, :W]
        return logits

    # ------------------------------------------------------------------ training hook
    def auxiliary_losses(self, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eq. 8's extra terms for the last decode run with gradients in training mode.

        Args:
            target: ``(B, H, W)`` labels of the model input (1 object, 0 background, 255 ignore).

        Returns:
            ``{"token_loss": w_t · L_c, "score_loss": w_s · L_score}`` (weighted; terms with weight
            0 are left out), to be added to the loss as they are. Empty without MST blocks.
        """
        aux, self._last_aux = self._last_aux, None
        if not aux:
            return {}
        H, W = target.shape[-2:]
        sizes = {"t": self.backbone.patch_sizes[0], "l": self.backbone.patch_sizes[2]}
        Hp, Wp = -(-H // self._multiple) * self._multiple, -(-W // self._multiple) * self._multiple
        padded = F.pad(target, (0, Wp - W, 0, Hp - H))  # padding = background
        trip, n_trip, score, n_score = 0.0, 0, 0.0, 0
        for a in aux:
            for j, p in sizes.items():
                sel = a[f"selection_{j}"]
                tgt = token_targets(padded, (Hp // p, Wp // p))  # B x N_j
                if self.token_loss_weight > 0:
                    loss, counted = triplet_token_loss(sel.kernel, a[f"selected_{j}"], sel.index, tgt, sel.has_click)
                    trip, n_trip = trip + loss.sum(), n_trip + counted.sum()
                if self.score_loss_weight > 0:
                    loss, counted = score_focal_loss(sel.scores, tgt, sel.has_click)
                    score, n_score = score + loss.sum(), n_score + counted.sum()
        out = {}  # per-sample terms of non-counted samples are 0, so the sums stay in the graph
        if self.token_loss_weight > 0:
            out["token_loss"] = self.token_loss_weight * trip / n_trip.clamp(min=1)
        if self.score_loss_weight > 0:
            out["score_loss"] = self.score_loss_weight * score / n_score.clamp(min=1)
        return out


def _build(
    *, img_size: int, embed_dim: int, depth: int, num_heads: int, mst_depths: Sequence[int], variant: str,
    out_dims: Sequence[int], head_channels: int, token_loss_weight: float, score_loss_weight: float,
    patch_sizes: Sequence[int] | None = None,
) -> MSTClickModel:
    if variant not in ("paper", "code"):
        raise ValueError(f"variant must be 'paper' or 'code'; got {variant!r}")
    code = variant == "code"
    backbone = MSTBackbone(
        img_size=img_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads, mst_depths=mst_depths,
        patch_sizes=patch_sizes or (CODE_PATCH_SIZES if code else PAPER_PATCH_SIZES), fusion=variant,
        ratio=16 if code else 12, kernel="attention" if code else "mean",
    )
    return MSTClickModel(
        backbone=backbone, neck=SimpleFPN(in_dim=embed_dim, out_dims=out_dims),
        head=MSTSegHead(in_channels=out_dims, channels=head_channels),
        token_loss_weight=token_loss_weight, score_loss_weight=score_loss_weight,
    )


@register_model
def mst_vit_base(
    *, img_size: int = 448, variant: Literal["paper", "code"] = "code", mst_depths: Sequence[int] = MST_DEPTHS["code-448"],
    token_loss_weight: float = 1.0, score_loss_weight: float = 1.0,
) -> MSTClickModel:
    """MST ViT-B (MST §IV-A; authors' ``models/adaptivevit_base448_cclvs.py``): ViT-B/16, MST at
    blocks 3, 7, 11, SimpleFPN (128, 256, 512, 1024), head 256 channels.

    ``variant="code"`` (default, the authors' 448 checkpoints): patch sizes 8/16/32, k = N/16,
    attention-pooled kernel, small ← γ·CrossAttn(small, large) fusion. ``variant="paper"``:
    8/16/28, k = N/12, mean kernel, higher-score scale (its checkpoint lacks ``gamma``,
    ``norm6``, ``norm7``, ``score_l_s``).
    """
    return _build(img_size=img_size, embed_dim=768, depth=12, num_heads=12, mst_depths=mst_depths, variant=variant,
                  out_dims=(128, 256, 512, 1024), head_channels=256, token_loss_weight=token_loss_weight,
                  score_loss_weight=score_loss_weight)


@register_model
def simpleclick_vit_base(*, img_size: int = 448) -> MSTClickModel:
    """The plain SimpleClick ViT-B baseline (MST Table II row "SimpleClick-ViT-B-448"): no MST blocks."""
    return _build(img_size=img_size, embed_dim=768, depth=12, num_heads=12, mst_depths=(), variant="paper",
                  out_dims=(128, 256, 512, 1024), head_channels=256, token_loss_weight=0.0, score_loss_weight=0.0)


@register_model
def mst_tiny(
    *, img_size: int = 112, variant: Literal["paper", "code"] = "paper", mst_depths: Sequence[int] = (1, 3),
    token_loss_weight: float = 1.0, score_loss_weight: float = 1.0,
) -> MSTClickModel:
    """A CPU-sized MST (width 64, depth 4, 2 heads, MST at blocks 1 and 3) for tests and the recipe.
    ``mst_depths=()`` is the MST-off ablation (a plain tiny SimpleClick)."""
    return _build(img_size=img_size, embed_dim=64, depth=4, num_heads=2, mst_depths=mst_depths, variant=variant,
                  out_dims=(16, 32, 64, 128), head_channels=32, token_loss_weight=token_loss_weight,
                  score_loss_weight=score_loss_weight)
