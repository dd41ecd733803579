"""Loading the authors' checkpoint layout (``inter2former_sa1b_hq.pth``, YouHuang67/inter2former).

The authors' modules keep their parameters under ``backbone.``, ``edge_detector.``, ``neck.`` and
``decode_head.`` (mmseg segmentor attributes), as :class:`Inter2Former` does. Inside them, the
names given in the authors' code are used as is where our modules have the same structure, and
translated otherwise (:func:`official_to_segblocks`, applied automatically when
``load_state_dict`` sees a file in that layout):

===================================================  ===========================================
official (``inter2former/...``)                      segblocks
===================================================  ===========================================
``backbone.patch_embed.proj.weight`` (unfold +       ``backbone.patch_embed.proj.weight``
Linear, ``(C, 3·16·16)``)                            (Conv2d, reshaped to ``(C, 3, 16, 16)``)
``backbone.pos_embed`` ``(1, 1 + 14², C)``           ``(1, 14, 14, C)`` (class token dropped)
``backbone.blocks.{i}.attn.padding``                 ``backbone.blocks.{i}.attn.pad_token``
``backbone.fusion_norms.{s}`` (*)                    ``backbone.stage_proj.{s}.norm``
``backbone.fusion_projs.{s}.{0,1}`` (*)              ``backbone.stage_proj.{s}.proj.{0,1}``
``backbone.out_conv.{0,1}`` (*)                      ``backbone.refine.{0,1}``
``neck.ref_embeds`` / ``neck.ref_conv.convs.{j}``    ``neck.dpe.ref_embeds`` / ``neck.dpe.ref_conv.convs.{j}``
``neck.blocks.{i}.attn.{qkv_proj,o_proj}``           same
``neck.blocks.{i}.attn.global_attn.{code_proj,       ``neck.blocks.{i}.attn.bsqa.*``
codebook}`` (*)
``neck.blocks.{i}.moe.shared_ffn.w{1,2,3}`` (*)      ``neck.blocks.{i}.ffn.shared_ffn.w{1,2,3}``
``neck.blocks.{i}.moe.shared_ln``                    ``neck.blocks.{i}.ffn.shared_ffn.norm``
``neck.blocks.{i}.moe.{shared,expert}_gate.0``       ``neck.blocks.{i}.ffn.{shared,expert}_gate``
(Linear + Sigmoid)
``neck.blocks.{i}.moe.select_ffn_{w,b}{1,2,3}``,     ``neck.blocks.{i}.ffn.*`` (same names)
``select_ln``, ``exp_bias``, ``steps``
``edge_detector.*``, ``decode_head.*``               same
===================================================  ===========================================

(*) The authors' public description names the layer but not its attribute; these names are our
reading of the module structure and are not verified against the released file, which is
hosted outside GitHub. A file that differs only in such names loads after one more entry in
:data:`OFFICIAL_RENAMES`.
"""
from __future__ import annotations

import re

import torch

__all__ = ["OFFICIAL_RENAMES", "is_official_state_dict", "official_to_segblocks"]

#: ``(pattern, replacement)`` regex pairs applied in order to every official key.
OFFICIAL_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^backbone\.blocks\.(\d+)\.attn\.padding$", r"backbone.blocks.\1.attn.pad_token"),
    (r"^backbone\.fusion_norms\.(\d+)\.", r"backbone.stage_proj.\1.norm."),
    (r"^backbone\.fusion_projs\.(\d+)\.", r"backbone.stage_proj.\1.proj."),
    (r"^backbone\.out_conv\.", r"backbone.refine."),
    (r"^neck\.ref_(embeds|conv)\.", r"neck.dpe.ref_\1."),
    (r"^neck\.blocks\.(\d+)\.attn\.global_attn\.", r"neck.blocks.\1.attn.bsqa."),
    (r"^neck\.blocks\.(\d+)\.moe\.shared_ln\.", r"neck.blocks.\1.ffn.shared_ffn.norm."),
    (r"^neck\.blocks\.(\d+)\.moe\.(shared|expert)_gate\.0\.", r"neck.blocks.\1.ffn.\2_gate."),
    (r"^neck\.blocks\.(\d+)\.moe\.", r"neck.blocks.\1.ffn."),
)


def is_official_state_dict(state_dict: dict[str, torch.Tensor]) -> bool:
    """True for the authors' layout (recognised by ``neck.ref_embeds.weight``)."""
    return "neck.ref_embeds.weight" in state_dict


def official_to_segblocks(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (and reshape) an official state dict to :class:`Inter2Former`'s keys (module docstring)."""
    out = {}
    for key, value in state_dict.items():
        new = key
        for pattern, repl in OFFICIAL_RENAMES:
            new = re.sub(pattern, repl, new)
        if new == "backbone.patch_embed.proj.weight" and value.dim() == 2:
            c = value.shape[0]
            p = int(round((value.shape[1] / 3) ** 0.5))
            value = value.reshape(c, 3, p, p)  # unfold order (C, kh, kw) = Conv2d weight layout
        out[new] = value
    return out
