"""Hybrid Mixture of Experts (HMoE), Inter2Former §3.6, Eq. 15-20.

Every token goes through the shared expert ``FFN_M`` (Eq. 15); edge tokens are also routed top-1
among ``M`` experts by sigmoid affinity (Eq. 16-17) and mix the two outputs with softmax weights
of the affinities (Eq. 18). Routed tokens are executed sorted by expert (Eq. 19-20):
``π = argsort(a)``, contiguous groups, one grouped GEMM per linear layer
(:func:`segblocks.ops.grouped_gemm.grouped_gemm`: a padded batched matmul on CPU, a Triton kernel
on GPU), then the inverse permutation.

Details from the authors' code (YouHuang67/inter2former, ``inter2former/necks/dpe_dha_hmoe.py``,
``HybridMoE``):

* experts are SwiGLUs with a sub-LayerNorm, ``w3(LN(SiLU(w1 x) ⊙ w2 x))``, of hidden width
  ``hidden_dim / M`` (512 / 8 = 64); the shared expert has its own LN, the routed experts share
  one (``select_ln``); routed weights are stacked ``(M, out, in)`` tensors, each slice initialised
  like an ``nn.Linear``;
* gates ``shared_gate = Linear(d, 1)``, ``expert_gate = Linear(d, M)`` with sigmoid;
* auxiliary-loss-free balancing (DeepSeek-V3): a bias ``exp_bias`` is added to the affinities for
  the **selection only**; after every forward in training mode, ``exp_bias -= lr · sign(count_e -
  total / M)`` with ``lr = 1e-3`` and the counts summed over all DDP ranks (``all_reduce``), while
  ``steps < max_update_steps`` (100 000). ``exp_bias`` and ``steps`` are persistent buffers. The
  no-grad click simulation runs in eval mode and does not move them. Under DDP every rank must
  run the same number of training forwards (the all-reduce is a collective), which the
  one-graded-forward-per-step training loop guarantees; it is issued even for an empty selection.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from segblocks.layers.mlp import SwiGLU
from segblocks.ops._checks import check_finite_float, check_int, check_module_dtype, check_tensor
from segblocks.ops.grouped_gemm import grouped_gemm, sort_by_group

__all__ = ["HybridMoE"]


class HybridMoE(nn.Module):
    """HMoE (Eq. 15-20) with sorted grouped execution and aux-loss-free balancing.

    Args:
        embed_dim: token width ``d`` (256).
        hidden_dim: total hidden width ``mlp_ratio · d`` (512), split evenly over the experts.
        num_experts: routed experts ``M`` (8).
        bias_lr: balancing step (1e-3).
        max_update_steps: training forwards that move the bias (100 000).
        backend: grouped-GEMM backend (``"auto"``; ``"loop"`` = one matmul per expert).

    Forward:
        x: ``(N, d)`` tokens (any flattening, e.g. ``B * h * w``).
        index: ``(M_sel,)`` int64 rows of the edge tokens (Eq. 5; empty allowed).
        Returns ``(N, d)``.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 256,
        hidden_dim: int = 512,
        num_experts: int = 8,
        bias_lr: float = 1e-3,
        max_update_steps: int = 100_000,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        d = check_int(embed_dim, "embed_dim", owner=owner, minimum=1)
        E = check_int(num_experts, "num_experts", owner=owner, minimum=1)
        hidden_dim = check_int(hidden_dim, "hidden_dim", owner=owner, minimum=1)
        if hidden_dim % E:
            raise ValueError(f"{owner}: hidden_dim ({hidden_dim}) must be divisible by num_experts ({E})")
        hid = hidden_dim // E
        self.embed_dim, self.num_experts, self.expert_dim = d, E, hid
        self.bias_lr = check_finite_float(bias_lr, "bias_lr", owner=owner)
        self.max_update_steps = check_int(max_update_steps, "max_update_steps", owner=owner, minimum=0)
        self.backend = backend
        self.shared_ffn = SwiGLU(in_features=d, hidden_features=hid, norm=nn.LayerNorm(hid))
        self.select_ffn_w1 = nn.Parameter(torch.empty(E, hid, d))
        self.select_ffn_b1 = nn.Parameter(torch.empty(E, hid))
        self.select_ffn_w2 = nn.Parameter(torch.empty(E, hid, d))
        self.select_ffn_b2 = nn.Parameter(torch.empty(E, hid))
        self.select_ffn_w3 = nn.Parameter(torch.empty(E, d, hid))
        self.select_ffn_b3 = nn.Parameter(torch.empty(E, d))
        self.select_ln = nn.LayerNorm(hid)
        self.shared_gate = nn.Linear(d, 1)
        self.expert_gate = nn.Linear(d, E)
        self.register_buffer("exp_bias", torch.zeros(E))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.reset_expert_parameters()

    def reset_expert_parameters(self) -> None:
        """Each expert slice initialised like ``nn.Linear`` (Kaiming-uniform weight, uniform bias)."""
        for i in (1, 2, 3):
            w, b = getattr(self, f"select_ffn_w{i}"), getattr(self, f"select_ffn_b{i}")
            bound = 1 / math.sqrt(w.shape[-1])
            for e in range(self.num_experts):
                nn.init.kaiming_uniform_(w.data[e], a=math.sqrt(5))
            nn.init.uniform_(b, -bound, bound)

    # ------------------------------------------------------------------ routing
    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eq. 16-18 on the edge tokens: expert ids ``a`` ``(M,)``, mix weights ``(M,)`` of shared and expert."""
        s = torch.sigmoid(self.expert_gate(x))  # M x E, Eq. 16
        a = torch.argmax(s + self.exp_bias.to(s.dtype), dim=-1)  # M, Eq. 17 (bias: selection only)
        s_e = s.gather(1, a[:, None])[:, 0]  # M
        s_shared = torch.sigmoid(self.shared_gate(x))[:, 0]  # M
        w = torch.softmax(torch.stack([s_shared, s_e], -1), dim=-1)  # M x 2, Eq. 18
        return a, w[:, 0], w[:, 1]

    def experts(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Routed experts on ``x`` ``(M, d)`` with ids ``a``, sorted grouped execution (Eq. 19-20).

        ``backend="auto"`` on CPU (and ``"bmm"``) keeps the whole expert FFN in the padded
        ``(E, L_max, ·)`` layout: one scatter in, three batched matmuls, one gather out. Other
        backends run :func:`~segblocks.ops.grouped_gemm.grouped_gemm` per linear on sorted rows.
        """
        if self.backend == "bmm" or (self.backend == "auto" and x.device.type == "cpu"):
            return self._experts_padded(x, a)
        order, offsets = sort_by_group(a, self.num_experts)  # π, Eq. 19
        xs = x[order]  # M x d, contiguous groups (Eq. 20)
        h1 = grouped_gemm(xs, offsets, self.select_ffn_w1, self.select_ffn_b1, backend=self.backend)  # M x hid
        h2 = grouped_gemm(xs, offsets, self.select_ffn_w2, self.select_ffn_b2, backend=self.backend)  # M x hid
        hidden = self.select_ln(F.silu(h1) * h2)
        ys = grouped_gemm(hidden, offsets, self.select_ffn_w3, self.select_ffn_b3, backend=self.backend)  # M x d
        return torch.empty_like(ys).index_copy(0, order, ys)  # π^-1

    def _experts_padded(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Eq. 19-20 in a zero-padded expert batch: row ``j`` of expert ``e`` at ``e * L + j``."""
        E, d = self.num_experts, self.embed_dim
        order, offsets = sort_by_group(a, E)  # π, Eq. 19
        slot = torch.empty_like(order)
        slot[order] = torch.arange(order.numel(), device=a.device) - offsets[a[order]]  # rank within the group
        L = int((offsets[1:] - offsets[:-1]).max())
        flat = a * L + slot  # M: position in the padded batch
        xp = x.new_zeros(E * L, d).index_copy_(0, flat, x).view(E, L, d)  # E x L x d, Eq. 20
        h1 = torch.baddbmm(self.select_ffn_b1.unsqueeze(1), xp, self.select_ffn_w1.transpose(1, 2))  # E x L x hid
        h2 = torch.baddbmm(self.select_ffn_b2.unsqueeze(1), xp, self.select_ffn_w2.transpose(1, 2))
        hidden = self.select_ln(F.silu(h1) * h2)
        y = torch.baddbmm(self.select_ffn_b3.unsqueeze(1), hidden, self.select_ffn_w3.transpose(1, 2))  # E x L x d
        return y.reshape(E * L, d).index_select(0, flat)  # π^-1: back to token order

    def experts_vanilla(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The unsorted baseline: a Python loop over the used experts with boolean masks (the
        authors' GPU/training path); same result as :meth:`experts`, for benchmarks (Fig. 3c)."""
        out = x.new_zeros(x.shape[0], self.embed_dim)
        for e in torch.unique(a).tolist():
            m = a == e
            xe = x[m]
            h = F.silu(F.linear(xe, self.select_ffn_w1[e], self.select_ffn_b1[e])) * F.linear(
                xe, self.select_ffn_w2[e], self.select_ffn_b2[e])
            out[m] = F.linear(self.select_ln(h), self.select_ffn_w3[e], self.select_ffn_b3[e])
        return out

    @torch.no_grad()
    def update_bias(self, a: torch.Tensor) -> None:
        """One aux-loss-free balancing step from the expert ids of this forward (module docstring)."""
        if int(self.steps) >= self.max_update_steps:
            return
        counts = torch.bincount(a, minlength=self.num_experts).float()  # E
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        delta = torch.sign(counts - counts.sum() / self.num_experts) * self.bias_lr  # E
        self.exp_bias.sub_(delta.to(self.exp_bias.dtype))
        self.steps.add_(1)

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        owner = type(self).__name__
        check_tensor(x, "x", owner=owner, shape=("N", ("d", self.embed_dim)))
        check_tensor(index, "index", owner=owner, shape=("M",), dtype="integer")
        check_module_dtype(x, self, owner=owner)
        out = self.shared_ffn(x)  # N x d, Eq. 15
        if index.numel() == 0:
            if self.training:
                self.update_bias(index.new_zeros(0, dtype=torch.long))
            return out
        xe = x[index]  # M x d
        a, w_shared, w_expert = self.route(xe)
        if self.training:
            self.update_bias(a)
        mixed = w_shared[:, None] * out[index] + w_expert[:, None] * self.experts(xe, a)  # M x d, Eq. 18
        return out.index_copy(0, index, mixed)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_experts={self.num_experts}, expert_dim={self.expert_dim}"
