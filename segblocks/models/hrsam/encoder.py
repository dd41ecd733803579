"""HRSAM and HRSAM++ image encoders: Flash Swin ViT with Cycle-scan, for SAM's prompt encoder and decoder.

Huang et al., "HRSAM: Efficient Interactive Segmentation in High-Resolution Images"; authors' code
YouHuang67/High-Resolution-Segment-Anything (``models/backbones/hrsam.py``, ``hrsam_plusplus.py``,
``configs/hrsam/``).

HRSAM (§3.1, Fig. 2, supp. D.2): a ViT-B on 16×16 patches whose 12 blocks form 4 stages of 3.
Every block is pre-LN Flash Swin attention (window 16, shifts 0 / 8 alternating, KV-only padding,
RoPE; §3.3-3.4) plus a GELU FFN (×4); a Cycle-scan module (§3.5) runs before the last block of
each stage. The four stage outputs are fused by summation and refined by a convolution into SAM's
256-d embeddings at stride 16, so SAM's prompt encoder and mask decoder are used unchanged.

HRSAM++ (§3.6, Fig. 8, supp. D.2): the input is also resized to a fixed 512² *anchor map* that
goes through the same weights as a second scale of the same token sequence (multi-scale FLA,
App. C). Each stage cycle-scans every scale on its own before its last block and fuses the scales
with one Cycle-scan over their concatenation after it; the anchor features are upsampled and
channel-concatenated with the original-scale ones before the projection to 256-d.

Details the paper leaves open follow the authors' code (the files above, and the shared ViT of
YouHuang67/inter2former, ``inter2former/backbones/hrsam_no_ssm.py``): the absolute position embedding is a 14×14 grid (MAE ViT-B at 224 px, class token
dropped) resized bilinearly to every scale's token grid; Cycle-scan sits before blocks 2, 5, 8,
11 and these blocks' outputs are the stage outputs; each stage output is projected by
``Linear(C, 256, bias=False) + LN`` (HRSAM++: ``LN(C)`` on both scales, anchor upsampled,
channel concatenation, ``Linear(2C, 256, bias=False) + LN``), the projections are summed, and
the refinement is a depthwise 3×3 convolution (no bias) + channel LayerNorm (supp. D.2 words it
as "summed and passed through a convolution layer to reduce the dimension to 256"; the code
reduces per stage before the sum); every LayerNorm has ``nn.LayerNorm``'s default eps 1e-5
(blocks, stage projections and the channel LayerNorm of the refinement); the anchor is a square
resize whatever the aspect ratio; drop-path rates grow linearly over the blocks to 0.2 (base
config; 0 in the HQSeg fine-tune config).

Weights: MAE ViT-B checkpoints (He et al., "Masked Autoencoders Are Scalable Vision Learners",
CVPR 2022; facebookresearch/mae ``models_mae.py``), the authors' initialisation, load through
:func:`mae_to_hrsam` — applied automatically by ``load_state_dict`` (a load pre-hook) when the keys
are in MAE's layout. The parameters MAE has no counterpart for (:data:`MAE_ABSENT_KEYS`) keep
their initialisation; the one checkpoint convention loads such a file strictly except for
exactly those keys (``create_model("hrsam_vit_b", checkpoint="mae_pretrain_vit_base.pth")``). The blocks use MAE's / the authors' key names
(``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``).
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from segblocks.blocks.hrsam_attention import FlashSwinAttention
from segblocks.blocks.hrsam_cyclescan import CycleScan, MultiScaleCycleScan, PerScaleCycleScan
from segblocks.layers.drop_path import DropPath
from segblocks.layers.mlp import Mlp
from segblocks.layers.norm import LayerNorm2d
from segblocks.layers.patch_embed import PatchEmbed
from segblocks.models._registry import register_model
from segblocks.models.sam.image_encoder import resize_pos_embed
from segblocks.ops._checks import check_int, check_module_dtype

__all__ = [
    "HRSAMBlock",
    "HRSAMEncoder",
    "HRSAMPlusPlusEncoder",
    "MAE_ABSENT_KEYS",
    "hrsam_pp_tiny",
    "hrsam_pp_vit_b",
    "hrsam_tiny",
    "hrsam_vit_b",
    "interpolate_pos_embed",
    "is_mae_state_dict",
    "mae_to_hrsam",
]


def interpolate_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize a ``(1, Gh, Gw, C)`` absolute embedding to ``grid`` (authors' ``HRSAMViT.forward``)."""
    return resize_pos_embed(pos_embed, grid, mode="bilinear")



#: Parameters of :class:`HRSAMEncoder` / :class:`HRSAMPlusPlusEncoder` that an MAE ViT checkpoint
#: has no counterpart for (``fnmatch`` patterns on the key names): the KV pad token of every block,
#: the Cycle-scan modules (and HRSAM++'s fusion scans), the per-stage projections and the
#: refinement head. They keep their initialisation when MAE weights are loaded.
MAE_ABSENT_KEYS = ("blocks.*.attn.pad_token", "cycle_scans.*", "fusion_scans.*", "stage_proj.*", "refine.*")
# MAE keys with no place in the encoder: class / mask tokens, the final (or global-pool) norm,
# the classifier, and the whole pixel decoder.
_MAE_DROPPED = re.compile(r"cls_token|mask_token|(?:norm|fc_norm|head)\..+|decoder_.+")


def is_mae_state_dict(state_dict: dict[str, torch.Tensor]) -> bool:
    """True when ``state_dict`` is in MAE's layout: a ``pos_embed`` of shape ``(1, L, C)`` (token list)."""
    pos = state_dict.get("pos_embed")
    return isinstance(pos, torch.Tensor) and pos.dim() == 3


def mae_to_hrsam(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map an MAE ViT state dict (He et al., CVPR 2022; facebookresearch/mae ``models_mae.py``) to HRSAM's keys.

    * ``pos_embed`` ``(1, 1 + g², C)`` (class token first, then the ``g × g`` grid row-major)
      → ``(1, g, g, C)``, class token dropped (the authors use ``pos_embed[:, 1:]``);
    * ``patch_embed.proj.*`` and ``blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1,
      mlp.fc2}.*`` keep their names;
    * ``cls_token``, ``mask_token``, ``norm.*`` / ``fc_norm.*``, ``head.*`` and every
      ``decoder_*`` key are dropped;
    * any other key is kept unchanged (so that a strict load reports it).

    The encoder keys MAE does not provide are listed in :data:`MAE_ABSENT_KEYS`.

    Args:
        state_dict: MAE state dict (pre-training or fine-tuning checkpoint's ``"model"``).

    Returns:
        A new state dict; the input is not modified.
    """
    pos = state_dict.get("pos_embed")
    if not isinstance(pos, torch.Tensor) or pos.dim() != 3 or pos.shape[0] != 1:
        shape = tuple(pos.shape) if isinstance(pos, torch.Tensor) else None
        raise ValueError(f"mae_to_hrsam: expected an MAE 'pos_embed' of shape (1, 1 + g*g, C); got {shape}")
    tokens = pos[:, 1:] if "cls_token" in state_dict or not _is_square(pos.shape[1]) else pos  # 1 x g² x C
    grid = math.isqrt(tokens.shape[1])
    if grid * grid != tokens.shape[1] or grid == 0:
        raise ValueError(f"mae_to_hrsam: pos_embed holds {tokens.shape[1]} grid tokens, not a square grid")
    out = {k: v for k, v in state_dict.items() if k != "pos_embed" and not _MAE_DROPPED.fullmatch(k)}
    out["pos_embed"] = tokens.reshape(1, grid, grid, tokens.shape[-1]).contiguous()  # 1 x g x g x C
    return out


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def _convert_on_load(module: nn.Module, state_dict, prefix, *args) -> None:
    """Load-state-dict pre-hook: convert an MAE layout and resize ``pos_embed`` to the module's grid."""
    key = prefix + "pos_embed"
    pos = state_dict.get(key)
    if isinstance(pos, torch.Tensor) and pos.dim() == 3:
        own = {k[len(prefix):]: state_dict.pop(k) for k in [k for k in state_dict if k.startswith(prefix)]}
        state_dict.update({prefix + k: v for k, v in mae_to_hrsam(own).items()})
    pos = state_dict.get(key)
    if isinstance(pos, torch.Tensor) and pos.dim() == 4 and pos.shape != module.pos_embed.shape:
        if pos.shape[-1] == module.pos_embed.shape[-1]:
            state_dict[key] = interpolate_pos_embed(pos, tuple(module.pos_embed.shape[1:3]))


class HRSAMBlock(nn.Module):
    """Pre-LN transformer block with Flash Swin attention (HRSAM §3.1, supp. D.2).

    ``x = x + DropPath(FlashSwin(LN(x)))``, then ``x = x + DropPath(FFN(LN(x)))``, FFN =
    ``Linear(C, rC) → GELU → Linear(rC, C)`` (:class:`~segblocks.layers.Mlp`, keys ``mlp.fc1`` /
    ``mlp.fc2``). Both LayerNorms use eps 1e-5, ``nn.LayerNorm``'s default, as the authors'
    ``Block`` (MAE's own ViT uses 1e-6; HRSAM's code loads MAE weights into 1e-5 norms).

    Args:
        dim, num_heads: width and heads.
        window_size: window side ``k``.
        shift: 0 or ``k // 2``.
        mlp_ratio: FFN expansion ``r``.
        drop_path: stochastic-depth probability.
        kv_padding, rope, shift_single_window: see
            :class:`~segblocks.blocks.hrsam_attention.FlexibleLocalAttention`.
        backend: varlen-attention backend of the attention.

    Forward:
        x: ``(B, N, C)`` tokens of one or several scales, each row-major.
        shapes: ``[(h, w), ...]`` per scale with ``N = Σ h·w``. Returns ``(B, N, C)``.
    """

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        window_size: int,
        shift: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        kv_padding: bool = True,
        rope: bool = True,
        shift_single_window: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = FlashSwinAttention(
            dim=dim, num_heads=num_heads, window_size=window_size, shift=shift, kv_padding=kv_padding, rope=rope,
            shift_single_window=shift_single_window, backend=backend,
        )
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, shapes: list[tuple[int, int]]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), shapes))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _init_vit_weights(module: nn.Module) -> None:
    """ViT/MAE init for training from scratch: truncated-normal linears, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class HRSAMEncoder(nn.Module):
    """HRSAM image encoder (§3.1, Fig. 2, supp. D.2) for any input whose sides are multiples of 16.

    Stage ``s`` holds blocks ``s·n … s·n + n − 1`` (``n = blocks_per_stage``); block ``i`` uses
    shift 0 for even ``i`` and ``window_size // 2`` for odd ``i``; ``cycle_scans[s]`` runs
    before the stage's last block, whose output is the stage output ``F_s``. Output::

        E = LN2d(DWConv3x3(Σ_s LN(F_s W_s)))          W_s: C → out_chans, no bias

    Args:
        patch_size: patch side, the output stride (16).
        in_chans: input channels.
        embed_dim, num_heads, mlp_ratio: ViT width, heads, FFN expansion (768, 12, 4).
        num_stages, blocks_per_stage: 4 stages of 3 blocks.
        window_size: Flash Swin window side (16).
        out_chans: embedding channels (256, SAM's decoder width).
        d_state, cycle_repeats: Cycle-scan state size (32) and number of cycles (3).
        drop_path_rate: stochastic depth of the last block (linear from 0); 0.2 as the authors'
            base config (their HQSeg fine-tune config uses 0).
        pos_embed_grid: side of the stored absolute embedding (14: MAE ViT-B at 224 px).
        kv_padding, rope: Flash Swin options (§3.4, §3.1).
        shift_single_window: shift a scale that fits in one window too (True: HRSAM's App. A
            Listing 1; False: Inter2Former's rule), see :mod:`segblocks.ops.fla_mapping`.
        attn_backend: varlen-attention backend (``"auto"``; ``"reference"`` loops over windows,
            which on CPU is far lighter than the dense-mask ``"sdpa"`` for large inputs).
        scan_backend: selective-scan backend of the Cycle-scan modules.

    Shapes:
        x: ``(B, in_chans, H, W)`` normalized images, ``H, W`` multiples of ``patch_size`` →
        ``(B, out_chans, H / patch_size, W / patch_size)``.
    """

    def __init__(
        self,
        *,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        num_stages: int = 4,
        blocks_per_stage: int = 3,
        window_size: int = 16,
        out_chans: int = 256,
        d_state: int = 32,
        cycle_repeats: int = 3,
        drop_path_rate: float = 0.2,
        pos_embed_grid: int = 14,
        kv_padding: bool = True,
        rope: bool = True,
        shift_single_window: bool = True,
        attn_backend: str = "auto",
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        sizes = dict(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, num_stages=num_stages,
                     blocks_per_stage=blocks_per_stage, out_chans=out_chans, pos_embed_grid=pos_embed_grid)
        for name, value in sizes.items():
            check_int(value, name, owner=type(self).__name__)  # 2.5 or True must not become a size
        if min(patch_size, in_chans, embed_dim, num_stages, blocks_per_stage, out_chans, pos_embed_grid) < 1:
            raise ValueError(
                "patch_size, in_chans, embed_dim, num_stages, blocks_per_stage, out_chans and pos_embed_grid must be "
                f">= 1; got {patch_size}, {in_chans}, {embed_dim}, {num_stages}, {blocks_per_stage}, {out_chans}, "
                f"{pos_embed_grid}"
            )
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1); got {drop_path_rate}")
        self.patch_size, self.in_chans, self.embed_dim, self.out_chans = patch_size, in_chans, embed_dim, out_chans
        depth = num_stages * blocks_per_stage
        #: Index of the last block of every stage (the authors' ``out_indices``, (2, 5, 8, 11)).
        self.out_indices = tuple(s * blocks_per_stage + blocks_per_stage - 1 for s in range(num_stages))

        self.patch_embed = PatchEmbed(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, pos_embed_grid, pos_embed_grid, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            HRSAMBlock(
                dim=embed_dim, num_heads=num_heads, window_size=window_size, shift=0 if i % 2 == 0 else window_size // 2,
                mlp_ratio=mlp_ratio, drop_path=rates[i], kv_padding=kv_padding, rope=rope,
                shift_single_window=shift_single_window, backend=attn_backend,
            )
            for i in range(depth)
        )
        self.stage_proj = nn.ModuleList(self._make_stage_proj() for _ in range(num_stages))
        self.blocks.apply(_init_vit_weights)
        self.stage_proj.apply(_init_vit_weights)
        scan = self._scan_class()
        self.cycle_scans = nn.ModuleList(
            scan(dim=embed_dim, d_state=d_state, repeats=cycle_repeats, backend=scan_backend) for _ in range(num_stages)
        )
        self.refine = nn.Sequential(
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, groups=out_chans, bias=False),
            LayerNorm2d(num_channels=out_chans, eps=1e-5),  # authors' out_conv: nn.LayerNorm default eps
        )
        self.register_load_state_dict_pre_hook(_convert_on_load)

    # ------------------------------------------------------------------ weights
    def checkpoint_absent_keys(self, state_dict: dict[str, torch.Tensor]) -> tuple[str, ...]:
        """Keys a file may lack: :data:`MAE_ABSENT_KEYS` when it is in MAE's layout (see :mod:`segblocks.models.checkpoint`)."""
        return MAE_ABSENT_KEYS if is_mae_state_dict(state_dict) else ()

    # ------------------------------------------------------------------ hooks HRSAM++ overrides
    def _scan_class(self) -> type[CycleScan]:
        return CycleScan

    def _make_stage_proj(self) -> nn.Module:
        return nn.Sequential(nn.Linear(self.embed_dim, self.out_chans, bias=False), nn.LayerNorm(self.out_chans))

    def _stage_output(self, stage: int, x: torch.Tensor, shapes: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens after the stage's last block → (tokens passed on, ``(B, h, w, out_chans)`` projection)."""
        (h, w), b = shapes[0], x.shape[0]
        return x, self.stage_proj[stage](x.reshape(b, h, w, -1))  # B x h x w x out

    def _before_last_block(self, stage: int, x: torch.Tensor, shapes: list[tuple[int, int]]) -> torch.Tensor:
        return self.cycle_scans[stage](x)

    # ------------------------------------------------------------------ forward
    def _check_images(self, x: torch.Tensor, name: str = "x") -> tuple[int, int]:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{name} must be a floating point tensor; got {getattr(x, 'dtype', type(x))}")
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"{name} must be images (B, {self.in_chans}, H, W); got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        p = self.patch_size
        if h == 0 or w == 0 or h % p or w % p:
            raise ValueError(f"{name} height and width must be positive multiples of {p}; got {h}x{w}")
        check_module_dtype(x, self, name, owner=type(self).__name__)
        return h // p, w // p

    def embed_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding plus the absolute embedding resized to the grid: (B, 3, H, W) → (B, h·w, C), row-major."""
        t = self.patch_embed(x)  # B x h x w x C
        t = t + interpolate_pos_embed(self.pos_embed, t.shape[1:3]).to(t.dtype)
        return t.flatten(1, 2)  # B x hw x C

    def _run(self, x: torch.Tensor, shapes: list[tuple[int, int]]) -> torch.Tensor:
        """Blocks, Cycle-scans and the output head over tokens ``(B, N, C)`` of ``shapes``."""
        stage, fused = 0, None
        for i, block in enumerate(self.blocks):
            last = i in self.out_indices
            if last:
                x = self._before_last_block(stage, x, shapes)
            x = block(x, shapes)
            if last:
                x, proj = self._stage_output(stage, x, shapes)
                fused = proj if fused is None else fused + proj
                stage += 1
        return self.refine(fused.permute(0, 3, 1, 2))  # B x out x h x w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self._check_images(x)
        if x.shape[0] == 0:  # empty batch: empty embeddings
            return x.new_zeros(0, self.out_chans, *grid)
        return self._run(self.embed_tokens(x), [grid])


class HRSAMPlusPlusEncoder(HRSAMEncoder):
    """HRSAM++ image encoder (§3.6, Fig. 8, supp. D.2): HRSAM plus a fixed-size anchor map.

    The anchor map (the input bilinearly resized to ``anchor_size²``, or an explicit ``anchor``)
    is patch-embedded by the same ``patch_embed`` and ``pos_embed`` and appended to the token
    sequence as a second scale, so every block, Cycle-scan and the KV pad token are shared
    (multi-scale FLA, App. C). In stage ``s``:

    * ``cycle_scans[s]`` (:class:`~segblocks.blocks.hrsam_cyclescan.PerScaleCycleScan`) scans
      each scale separately before the last block;
    * ``fusion_scans[s]`` (:class:`~segblocks.blocks.hrsam_cyclescan.MultiScaleCycleScan`) scans
      the concatenation ``[original; anchor]`` after it (the fused tokens feed the next stage);
    * the stage output is ``LN(W_s [LN(F_s) ‖ up(LN(F_s^anchor))])``, ``W_s: 2C → out_chans``,
      with the anchor tokens bilinearly upsampled to the original grid first (authors' order:
      resize, then the shared LayerNorm).

    Args:
        anchor_size: side of the square anchor map (512), a multiple of ``patch_size``.
        **kwargs: :class:`HRSAMEncoder` arguments.

    Shapes:
        x: ``(B, in_chans, H, W)``, anchor: optional ``(B, in_chans, A, A)`` →
        ``(B, out_chans, H / patch_size, W / patch_size)``.
    """

    def __init__(self, *, anchor_size: int = 512, **kwargs) -> None:
        patch = kwargs.get("patch_size", 16)
        if anchor_size < 1 or anchor_size % patch:
            raise ValueError(f"anchor_size must be a positive multiple of patch_size={patch}; got {anchor_size}")
        super().__init__(**kwargs)
        self.anchor_size = anchor_size
        self.fusion_scans = nn.ModuleList(
            MultiScaleCycleScan(
                dim=self.embed_dim, d_state=scan.d_state, repeats=scan.repeats, backend=scan.backend
            )
            for scan in self.cycle_scans
        )

    def _scan_class(self) -> type[CycleScan]:
        return PerScaleCycleScan

    def _make_stage_proj(self) -> nn.Module:
        return nn.ModuleDict({
            "norm": nn.LayerNorm(self.embed_dim),
            "proj": nn.Sequential(nn.Linear(2 * self.embed_dim, self.out_chans, bias=False), nn.LayerNorm(self.out_chans)),
        })

    @staticmethod
    def _split(x: torch.Tensor, shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
        return list(x.split([h * w for h, w in shapes], dim=1))  # per scale: B x h_l w_l x C

    def _before_last_block(self, stage: int, x: torch.Tensor, shapes: list[tuple[int, int]]) -> torch.Tensor:
        return torch.cat(self.cycle_scans[stage](self._split(x, shapes)), dim=1)

    def _stage_output(self, stage: int, x: torch.Tensor, shapes: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        scales = self.fusion_scans[stage](self._split(x, shapes))
        (h, w), (ha, wa), b = shapes[0], shapes[1], x.shape[0]
        anchor = scales[1].reshape(b, ha, wa, -1).permute(0, 3, 1, 2)  # B x C x ha x wa
        anchor = F.interpolate(anchor, size=(h, w), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)  # B x h x w x C
        head = self.stage_proj[stage]
        feats = torch.cat([head["norm"](scales[0].reshape(b, h, w, -1)), head["norm"](anchor)], dim=-1)  # B x h x w x 2C
        return torch.cat(scales, dim=1), head["proj"](feats)  # B x N x C, B x h x w x out

    def forward(self, x: torch.Tensor, anchor: torch.Tensor | None = None) -> torch.Tensor:
        grid = self._check_images(x)
        if anchor is None:
            # Square resize whatever the aspect ratio (authors' hrsam_plusplus.py).
            anchor = F.interpolate(x, size=(self.anchor_size, self.anchor_size), mode="bilinear", align_corners=False)
        anchor_grid = self._check_images(anchor, "anchor")
        if anchor.shape[0] != x.shape[0]:
            raise ValueError(f"anchor must have the batch size of x ({x.shape[0]}); got {anchor.shape[0]}")
        if x.shape[0] == 0:  # empty batch: empty embeddings
            return x.new_zeros(0, self.out_chans, *grid)
        tokens = torch.cat([self.embed_tokens(x), self.embed_tokens(anchor)], dim=1)  # B x (hw + ha wa) x C
        return self._run(tokens, [grid, anchor_grid])


# A CPU-trainable size for 128-256 px inputs (not from the paper): 8x8-16x16 token grids need
# windows of 4 for the shifted windows to matter; width and decoder match ``sam_tiny``'s 64-d.
# No drop path: the 8-block demo models train for minutes, where stochastic depth only slows them.
_TINY = dict(
    embed_dim=64, num_heads=2, blocks_per_stage=2, window_size=4, out_chans=64, d_state=8, pos_embed_grid=8,
    drop_path_rate=0.0,
)


@register_model
def hrsam_vit_b(**kwargs) -> HRSAMEncoder:
    """HRSAM-ViT-B (supp. D.2): 768-d, 12 heads, 4 stages x 3 blocks, window 16, 256-d output, drop path 0.2."""
    return HRSAMEncoder(**kwargs)


@register_model
def hrsam_pp_vit_b(**kwargs) -> HRSAMPlusPlusEncoder:
    """HRSAM++-ViT-B (supp. D.2): :func:`hrsam_vit_b` plus the 512² anchor map (drop path 0.2)."""
    return HRSAMPlusPlusEncoder(**kwargs)


@register_model
def hrsam_tiny(**kwargs) -> HRSAMEncoder:
    """Small CPU HRSAM (not from the paper): 64-d, 2 heads, 4 stages x 2 blocks, window 4, state 8, 64-d output.

    Drop path is 0 here (the authors' 0.2 is for ViT-B); pass ``drop_path_rate`` to change it.
    """
    return HRSAMEncoder(**{**_TINY, **kwargs})


@register_model
def hrsam_pp_tiny(**kwargs) -> HRSAMPlusPlusEncoder:
    """Small CPU HRSAM++ (not from the paper): :func:`hrsam_tiny` with a 64² anchor map (drop path 0)."""
    return HRSAMPlusPlusEncoder(**{**_TINY, "anchor_size": 64, **kwargs})


#: The four encoder presets by short name (the registry names are the function names).
