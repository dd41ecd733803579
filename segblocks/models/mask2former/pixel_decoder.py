"""Mask2Former's multi-scale deformable pixel decoder with a swappable encoder and pixel embedding.

Cheng et al., "Masked-attention Mask Transformer for Universal Image Segmentation" (CVPR 2022),
§3.1/§4: res3-res5 are projected to C channels (1×1 conv + GroupNorm), encoded by a deformable
transformer encoder, and res2 is merged FPN-style (lateral 1×1 conv + upsampled encoder res3
output) into the per-pixel embedding, followed by a 1×1 ``mask_features`` projection.

PRO-SCALE swaps two parts (its Fig. 3): the encoder (:class:`ProgressiveScaleEncoder` with
(p1, p2, p3) stages, optionally with TRC) and the res2 3×3 output conv (→ :class:`LightPixelEmbedding`).
"""
from __future__ import annotations

from typing import Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segblocks.blocks.proscale import LightPixelEmbedding, ProgressiveScaleEncoder
from segblocks.ops._checks import check_int_sequence, check_module_dtype, check_positive_int, check_same, check_tensor

__all__ = ["MSDeformPixelDecoder"]

LEVELS = ("res2", "res3", "res4", "res5")


def _conv_gn(in_ch: int, out_ch: int, kernel: int, groups: int, relu: bool, bias: bool = False) -> nn.Sequential:
    conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=bias)
    nn.init.kaiming_uniform_(conv.weight, a=1)  # detectron2's c2_xavier_fill
    if bias:
        nn.init.zeros_(conv.bias)
    layers = [conv, nn.GroupNorm(groups, out_ch)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class MSDeformPixelDecoder(nn.Module):
    """Pixel decoder: input projections → transformer encoder → FPN on res2 → mask features.

    Args:
        in_channels: backbone channels of res2..res5 (a list of four, or a dict keyed
            ``res2``..``res5``, e.g. a backbone's ``out_channels``).
        encoder: transformer encoder over the three coarsest levels (res5, res4, res3), e.g.
            ``ProgressiveScaleEncoder(layers_per_stage=(0, 0, 6), token_recalibration=False)`` for
            Mask2Former or ``ProgressiveScaleEncoder()`` ((3, 3, 3) with TRC) for PRO-SCALE. Its
            ``d_model`` must equal ``conv_dim``.
        pixel_embedding: what follows the res2 FPN merge: ``"conv"`` → Mask2Former's 3×3 conv +
            GroupNorm + ReLU; ``"lpe"`` → PRO-SCALE's :class:`LightPixelEmbedding` (max pool);
            ``"lpe_avg"`` → LPE with average pooling (supp. Table T3).
        conv_dim: channels C of the encoder and FPN (256).
        mask_dim: channels of the per-pixel embedding (256).
        num_groups: GroupNorm groups (32).

    Forward: dict of backbone features ``res2..res5`` (B, C_l, H/s, W/s) →
    ``(mask_features (B, mask_dim, H/4, W/4), [res5, res4, res3] encoder maps (B, C, h, w))``.
    """

    def __init__(
        self,
        *,
        in_channels: Sequence[int] | Mapping[str, int],
        encoder: ProgressiveScaleEncoder,
        pixel_embedding: Literal["conv", "lpe", "lpe_avg"] = "conv",
        conv_dim: int = 256,
        mask_dim: int = 256,
        num_groups: int = 32,
    ) -> None:
        super().__init__()
        if isinstance(in_channels, Mapping):
            in_channels = [in_channels[k] for k in LEVELS]
        owner = "MSDeformPixelDecoder"
        in_channels = check_int_sequence(in_channels, "in_channels", owner=owner, minimum=1)
        if len(in_channels) != 4:
            raise ValueError(f"MSDeformPixelDecoder: in_channels must give res2..res5 (4 values), got {in_channels}")
        self.in_channels = list(in_channels)
        conv_dim = check_positive_int(conv_dim, "conv_dim", owner=owner)
        mask_dim = check_positive_int(mask_dim, "mask_dim", owner=owner)
        num_groups = check_positive_int(num_groups, "num_groups", owner=owner)
        if conv_dim % num_groups:
            raise ValueError(f"{owner}: conv_dim={conv_dim} must be divisible by num_groups={num_groups}")
        if getattr(encoder, "d_model", conv_dim) != conv_dim:
            raise ValueError(f"MSDeformPixelDecoder: encoder d_model={encoder.d_model} must equal conv_dim={conv_dim}")
        if encoder.num_levels != 3:
            raise ValueError(f"MSDeformPixelDecoder: the encoder must cover 3 levels (res5..res3), got {encoder.num_levels}")
        # coarse → fine: res5, res4, res3. The 1×1 convs have a bias (then GroupNorm), as in
        # Mask2Former (facebookresearch/Mask2Former, mask2former/modeling/pixel_decoder/msdeformattn.py,
        # ``input_proj``: Conv2d(in, conv_dim, 1) with its default bias, zero-initialised) and in
        # PRO-SCALE (abhishekaich27/proscale-pytorch, mask2former/modeling/pixel_decoder/proscale.py),
        # so their checkpoints load with every key. The FPN's lateral/output convs have none.
        self.input_proj = nn.ModuleList(
            _conv_gn(c, conv_dim, 1, num_groups, relu=False, bias=True) for c in reversed(self.in_channels[1:])
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
        self.encoder = encoder
        self.lateral = _conv_gn(self.in_channels[0], conv_dim, 1, num_groups, relu=False)
        if pixel_embedding == "conv":
            self.pixel_embedding = _conv_gn(conv_dim, conv_dim, 3, num_groups, relu=True)
        elif pixel_embedding in ("lpe", "lpe_avg"):
            pool = "max" if pixel_embedding == "lpe" else "avg"
            self.pixel_embedding = LightPixelEmbedding(channels=conv_dim, pool=pool, num_groups=num_groups)
        else:
            raise ValueError(f"pixel_embedding must be 'conv', 'lpe' or 'lpe_avg', got {pixel_embedding!r}")
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 1)
        nn.init.kaiming_uniform_(self.mask_features.weight, a=1)
        nn.init.zeros_(self.mask_features.bias)
        self.mask_dim = mask_dim
        self.conv_dim = conv_dim

    def forward(self, features: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        owner = "MSDeformPixelDecoder"
        if not isinstance(features, Mapping):
            raise TypeError(
                f"{owner}: features must be a dict of backbone maps {LEVELS}, got {type(features).__name__}"
            )
        missing = [k for k in LEVELS if k not in features]
        if missing:
            raise ValueError(f"MSDeformPixelDecoder: backbone features must contain {LEVELS}; missing {missing}")
        batch = None
        for k in LEVELS:
            b = check_tensor(features[k], f"features[{k!r}]", owner=owner, shape=("B", "C", "H", "W"))[0]
            if batch is not None and b != batch:
                raise ValueError(f"{owner}: every backbone map must have the batch size B={batch} of res2, {k} has {b}")
            batch = b
        check_same({k: features[k] for k in LEVELS}, owner=owner)
        check_module_dtype(features["res2"], self, "features", owner=owner)
        got = [features[k].shape[1] for k in LEVELS]
        if got != self.in_channels:
            raise ValueError(f"MSDeformPixelDecoder: expected backbone channels {self.in_channels} for {LEVELS}, got {got}")
        coarse_to_fine = [features[k] for k in reversed(LEVELS[1:])]
        encoded = self.encoder([proj(f) for proj, f in zip(self.input_proj, coarse_to_fine)])
        res2 = features["res2"]
        y = self.lateral(res2) + F.interpolate(encoded[-1], size=res2.shape[-2:], mode="bilinear", align_corners=False)
        y = self.pixel_embedding(y)
        return self.mask_features(y), encoded
