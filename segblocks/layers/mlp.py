"""Feed-forward layers: the transformer MLP in its two checkpoint layouts, SwiGLU, and the MLP head.

* :class:`Mlp` — ``fc2(act(fc1(x)))``, the ViT feed-forward block with the key names of timm,
  MAE, Swin and HRSAM checkpoints (``mlp.fc1``/``mlp.fc2``; Dosovitskiy et al., ICLR 2021, Eq. 3;
  Liu et al., ICCV 2021, Eq. 3; Huang et al., HRSAM, §3.1).
* :class:`MLPBlock` — the same computation with Segment Anything's key names
  (``mlp.lin1``/``mlp.lin2``; facebookresearch/segment-anything,
  ``segment_anything/modeling/common.py``), used by SAM's image encoder and two-way transformer.
* :class:`SwiGLU` — ``w3(norm(SiLU(w1 x) ⊙ w2 x))`` (Shazeer, "GLU Variants Improve
  Transformer", 2020, Eq. 6 ``FFN_SwiGLU``), with an optional sub-LayerNorm on the hidden
  activations before ``w3`` (Wang et al., "Foundation Transformers", 2022, Sub-LN; the experts of
  Inter2Former's HMoE, YouHuang67/inter2former, ``inter2former/necks/dpe_dha_hmoe.py``).
* :class:`MLPHead` — ``num_layers`` linear layers with ReLU in between (SAM's hypernetworks and
  IoU head, SAM App. A; Mask2Former's mask-embedding MLP, Cheng et al., CVPR 2022, §3.2), key
  names ``layers.{i}`` as in both official code bases.

Why :class:`Mlp` and :class:`MLPBlock` are two classes: in a PyTorch module the attribute name
*is* the state-dict key, and the official checkpoints spell the two linears differently
(``fc1``/``fc2`` vs ``lin1``/``lin2``). A naming argument would make the attributes
data-dependent (``getattr`` everywhere, invisible to readers and type checkers), and renaming at
load time would make ``state_dict()`` differ from the files users load. Two small classes with the
official names keep every checkpoint loadable as is.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MLPBlock", "MLPHead", "Mlp", "SwiGLU"]


def _check_features(name: str, **sizes: int | None) -> None:
    bad = {k: v for k, v in sizes.items() if v is not None and v < 1}
    if bad:
        raise ValueError(f"{name}: sizes must be >= 1; got {bad}")


class Mlp(nn.Module):
    """Two-layer feed-forward block ``fc2(act(fc1(x)))`` (timm / MAE / Swin / HRSAM key names).

    Args:
        in_features: input channels ``C``.
        hidden_features: hidden channels (``r · C``, ``r = 4`` in ViT-B).
        out_features: output channels (default ``in_features``).
        act_layer: activation class, instantiated without arguments (GELU by default).
        bias: biases of both linears.

    Shapes:
        x: (..., in_features) -> (..., out_features).
    """

    def __init__(
        self,
        *,
        in_features: int,
        hidden_features: int,
        out_features: int | None = None,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        bias: bool = True,
    ) -> None:
        super().__init__()
        _check_features("Mlp", in_features=in_features, hidden_features=hidden_features, out_features=out_features)
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MLPBlock(nn.Module):
    """Two-layer feed-forward block ``lin2(act(lin1(x)))`` with Segment Anything's key names.

    Same computation as :class:`Mlp`; see the module docstring for why both exist.

    Args:
        embedding_dim: input and output channels.
        mlp_dim: hidden channels.
        act: activation class (GELU in the image encoder, ReLU in the two-way transformer).

    Shapes:
        x: (..., embedding_dim) -> (..., embedding_dim).
    """

    def __init__(self, *, embedding_dim: int, mlp_dim: int, act: Callable[[], nn.Module] = nn.GELU) -> None:
        super().__init__()
        _check_features("MLPBlock", embedding_dim=embedding_dim, mlp_dim=mlp_dim)
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class SwiGLU(nn.Module):
    """Gated feed-forward block ``w3(norm(SiLU(w1 x) ⊙ w2 x))`` (Shazeer 2020, Eq. 6).

    Args:
        in_features: input channels ``C``.
        hidden_features: hidden channels ``H`` of both gate branches.
        out_features: output channels (default ``in_features``).
        bias: biases of the three linears (Inter2Former's experts have them).
        norm: optional sub-normalization over the ``H`` hidden channels, applied after the gate
            and before ``w3`` — e.g. ``nn.LayerNorm(H)`` for the sub-LN of Inter2Former's HMoE
            experts; ``None`` for the plain SwiGLU. Its parameters are stored under ``norm.*``.

    Shapes:
        x: (..., in_features) -> (..., out_features).
    """

    def __init__(
        self,
        *,
        in_features: int,
        hidden_features: int,
        out_features: int | None = None,
        bias: bool = True,
        norm: nn.Module | None = None,
    ) -> None:
        super().__init__()
        _check_features("SwiGLU", in_features=in_features, hidden_features=hidden_features, out_features=out_features)
        self.w1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.w2 = nn.Linear(in_features, hidden_features, bias=bias)
        self.norm = norm if norm is not None else nn.Identity()
        self.w3 = nn.Linear(hidden_features, out_features or in_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.silu(self.w1(x)) * self.w2(x)  # ... x H
        return self.w3(self.norm(hidden))


class MLPHead(nn.Module):
    """``num_layers`` linear layers with ReLU between them (no activation after the last).

    Args:
        input_dim, hidden_dim, output_dim: channel sizes.
        num_layers: number of linear layers (>= 1); ``layers.{i}`` in the checkpoints.

    Shapes:
        x: (..., input_dim) -> (..., output_dim).
    """

    def __init__(self, *, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MLPHead: num_layers must be >= 1; got {num_layers}")
        _check_features("MLPHead", input_dim=input_dim, hidden_dim=hidden_dim, output_dim=output_dim)
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x
