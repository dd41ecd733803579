"""Hybrid Mixture of Experts (HMoE), Inter2Former §3.6, Eq. 15-20.

Every token goes through the shared expert ``FFN_M`` (Eq. 15); edge tokens are also routed top-1
among ``M`` experts by sigmoid affinity (Eq. 16-17) and mix the two outputs with softmax weights
of the affinities (Eq. 18). Routed tokens are executed sorted by expert (Eq. 19-20):
``π`` sorts the expert ids ``a``, contiguous groups, one grouped GEMM per linear layer
(:mod:`segblocks.ops.grouped_gemm`: per-expert ``addmm`` or one padded batched matmul on CPU,
a Triton kernel on GPU), then the inverse permutation.

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
import threading

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from segblocks.layers.mlp import SwiGLU
from segblocks.ops._checks import check_finite_float, check_int, check_module_dtype, check_tensor
from segblocks.ops.grouped_gemm import select_grouped_gemm_backend

__all__ = ["HybridMoE"]

#: CPU choice between the padded FFN and the per-expert loop (``max_pad_rows`` of
#: :func:`~segblocks.ops.grouped_gemm.select_grouped_gemm_backend`): the padded batch pays its
#: layout once for three matmuls, so it stays faster up to about 40 padding rows per expert
#: (measured on one thread, 4-64 experts, 64-4096 tokens, balanced and skewed routing).
PADDED_FFN_MAX_PAD_ROWS = 32

#: No-grad calls whose padded intermediates hold at least this many elements (2 MiB in fp32)
#: write them into a reused buffer (:meth:`HybridMoE._inference_buffers`); measured on two threads:
#: reuse halves the call where the allocator faults fresh multi-MB temporaries back in (4 experts,
#: 1024 edge tokens: 0.84 M elements) and ties elsewhere (16-64 experts, 256-2048 tokens); smaller
#: calls allocate cheaply.
REUSE_MIN_ELEMENTS = 1 << 19


class _Scratch(dict):
    """Per-instance derived-tensor cache that copies and pickles as empty (never saved with the module)."""

    def __deepcopy__(self, memo) -> "_Scratch":
        return _Scratch()

    def __reduce__(self):
        return (_Scratch, ())


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
        """Routed experts on ``x`` ``(M, d)`` with ids ``a`` ``(M,)``, sorted grouped execution (Eq. 19-20).

        One sort of the ids (``π``, Eq. 19) makes every expert a contiguous group, and a
        ``searchsorted`` of the sorted ids into themselves gives every sorted row its group's first
        row, hence its position inside the group and ``L_max`` (no per-expert counting pass);
        ``w1`` and ``w2`` are stacked so one grouped GEMM computes both SwiGLU branches; the shared
        sub-LayerNorm runs once on all rows. The grouped-GEMM backend
        (:func:`~segblocks.ops.grouped_gemm.select_grouped_gemm_backend`; ``backend=`` picks one
        by name) decides the layout:

        * ``bmm`` (CPU unless the padding is too costly): the whole FFN stays in the padded
          ``(E, L_max, ·)`` batch — one gather in, two batched matmuls, one gather out
          (:meth:`_experts_padded`);
        * ``loop`` (CPU, padding more than ``PADDED_FFN_MAX_PAD_ROWS`` rows per expert):
          ``torch.split`` + one ``addmm`` per expert, no padding;
        * ``triton`` (CUDA): the grouped-GEMM kernel per layer on the sorted rows.
        """
        E, d = self.num_experts, self.embed_dim
        M = x.shape[0]
        if M == 0:
            return x.new_zeros(0, d)
        sorted_a, order = torch.sort(a)  # M each: π, Eq. 19 (any order inside a group)
        within = torch.arange(M, device=a.device) - torch.searchsorted(sorted_a, sorted_a)  # M: place in its group
        L = int(within.max()) + 1 if x.device.type == "cpu" else None  # L_max, read once on CPU
        chosen = select_grouped_gemm_backend(x, self.select_ffn_w1, self.select_ffn_b1, max_count=L,
                                              backend=self.backend, max_pad_rows=PADDED_FFN_MAX_PAD_ROWS)
        padded = chosen.name == "bmm"
        w12, b12, w3, b3 = self._expert_weights(padded)
        if padded:
            L = int(within.max()) + 1 if L is None else L
            return self._experts_padded(x, order, torch.add(within, sorted_a, alpha=L), L, w12, b12, w3, b3)
        offsets = torch.searchsorted(sorted_a, torch.arange(E + 1, device=a.device))  # E+1: group e = rows offsets[e]:offsets[e+1]
        gemm = chosen.load()
        xs = x.index_select(0, order)  # M x d, grouped (Eq. 20)
        h1, h2 = gemm(xs, offsets, w12, b12).chunk(2, dim=-1)  # M x hid each
        hidden = self.select_ln(F.silu(h1) * h2)  # M x hid
        ys = gemm(hidden, offsets, w3, b3)  # M x d
        return torch.empty_like(ys).index_copy_(0, order, ys)  # π^-1: back to token order

    def _expert_weights(self, padded: bool) -> tuple[torch.Tensor, ...]:
        """The expert weights in the layout of the chosen path, ``w1`` and ``w2`` stacked.

        Grouped GEMM (``padded=False``): ``w12`` ``(E, 2·hid, d)``, ``b12`` ``(E, 2·hid)``,
        ``w3`` ``(E, d, hid)``, ``b3`` ``(E, d)``. Padded batch (the ``baddbmm`` operands):
        ``w12`` as ``(E, d, 2·hid)``, ``b12`` as ``(E, 1, 2·hid)``, ``w3`` as ``(E, hid, d)``,
        ``b3`` as ``(E, 1, d)``.

        Without autograd (inference, the no-grad click simulation) the result is cached, contiguous,
        and rebuilt only when a parameter changes (its storage or in-place version counter:
        optimiser steps, ``load_state_dict``, ``.to()``); the cache holds the source storages so
        they cannot be recycled under it.
        """
        P = self._parameters  # direct: Module.__getattr__ costs ~1 µs per name on a sub-ms call
        ps = (P["select_ffn_w1"], P["select_ffn_w2"], P["select_ffn_b1"], P["select_ffn_b2"],
              P["select_ffn_w3"], P["select_ffn_b3"])
        grad = torch.is_grad_enabled()
        if not grad:
            # storage address + version identify the values: the cache holds the storages, so an
            # address cannot be reused by another tensor (a dtype/device change is a new storage)
            key = (padded, torch.is_inference_mode_enabled()) + tuple((p.data_ptr(), p._version) for p in ps)
            scratch = self.__dict__.setdefault("_scratch", _Scratch())
            cache = scratch.get("weights")
            if cache is not None and cache[0] == key:
                return cache[2]
        w12, b12 = torch.cat(ps[:2], dim=1), torch.cat(ps[2:4], dim=1)  # E x 2hid x d, E x 2hid
        w3, b3 = ps[4], ps[5]  # E x d x hid, E x d
        if padded:
            w12, b12 = w12.transpose(1, 2), b12.unsqueeze(1)  # E x d x 2hid, E x 1 x 2hid
            w3, b3 = w3.transpose(1, 2), b3.unsqueeze(1)  # E x hid x d, E x 1 x d
        out = (w12, b12, w3, b3)
        if not grad:
            out = tuple(t.contiguous() for t in out)
            scratch["weights"] = (key, [p.data for p in ps], out)
        return out

    def _experts_padded(self, x, order, slot, L, w12t, b12, w3t, b3) -> torch.Tensor:
        """Eq. 19-20 in a padded expert batch: the ``j``-th row of expert ``e``'s group at row ``e · L + j``.

        ``order`` ``(M,)`` is ``π`` (token of every sorted row), ``slot`` ``(M,)`` the padded row of
        every sorted row, ``L`` the largest group ``L_max``. The batch is one gather of ``x``; a
        padding row re-reads token 0 (nothing is zero-filled) and its output is never gathered
        back, so it gets zero gradient. SiLU runs on both branches of the first matmul's output
        (contiguous: SiLU on the strided half alone takes the slow non-vectorised loop).
        Without autograd the large intermediates go to reused buffers (:meth:`_inference_buffers`).
        """
        E, d = self.num_experts, self.embed_dim
        hid = self.expert_dim
        outs = self._inference_buffers(x, ((E * L, d), (E, L, 2 * hid), (E, L, d)))  # xp, h, y
        src = torch.zeros(E * L, dtype=torch.long, device=order.device).index_copy_(0, slot, order)  # E*L: token per row
        slot = torch.empty_like(order).index_copy_(0, order, slot)  # M: padded row of every token (π^-1)
        xp = torch.index_select(x, 0, src, out=outs[0]).view(E, L, d)  # E x L x d, Eq. 20
        h = torch.baddbmm(b12, xp, w12t, out=outs[1])  # E x L x 2hid: [w1 x | w2 x]
        ln = self.select_ln
        hidden = F.layer_norm(F.silu(h)[..., :hid] * h[..., hid:], ln.normalized_shape, ln.weight, ln.bias, ln.eps)  # E x L x hid
        y = torch.baddbmm(b3, hidden, w3t, out=outs[2])  # E x L x d
        return y.view(E * L, d).index_select(0, slot)  # M x d, token order

    def _inference_buffers(self, like: torch.Tensor, shapes) -> list:
        """Views of one reused buffer for the padded FFN's large intermediates (no-grad calls only).

        Fresh multi-megabyte temporaries on every call are returned to the OS and faulted back in
        by the allocator (measured: 2-3x the whole call at 1024 edge tokens); inference and the
        no-grad click simulation reuse one buffer per thread, dtype and device instead (it grows to
        the largest call and is never saved with the module); the views of the last shapes are
        kept too, since cutting them costs as much as a small kernel. All None (fresh tensors) under
        autograd, whose saved tensors must stay untouched, and below :data:`REUSE_MIN_ELEMENTS`,
        where fresh allocations are cheap.
        """
        if torch.is_grad_enabled():
            return [None] * len(shapes)
        sizes = [math.prod(s) for s in shapes]
        total = sum(sizes)
        if total < REUSE_MIN_ELEMENTS:
            return [None] * len(shapes)
        key = ("buffer", threading.get_ident(), torch.is_inference_mode_enabled(), like.device, like.dtype)
        scratch = self.__dict__.setdefault("_scratch", _Scratch())
        entry = scratch.get(key)  # (buffer, shapes, views)
        if entry is not None and entry[1] == shapes:
            return entry[2]
        buf = entry[0] if entry is not None and entry[0].numel() >= total else like.new_empty(total)
        views = [t.view(s) for t, s in zip(buf[:total].split(sizes), shapes)]
        scratch[key] = (buf, shapes, views)
        return views

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
        return out.index_copy_(0, index, mixed)  # in place: the shared output is not saved for backward

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_experts={self.num_experts}, expert_dim={self.expert_dim}"

    def forward_static(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` with static shapes, for ``torch.export`` / ONNX (inference only).

        Every token is routed (Eq. 16-18 are per token) and every expert runs on every token (a
        static loop over the ``M`` experts, each token keeping its own expert's output); ``mask``
        ``(N,)`` bool then picks the mixed output for the edge tokens and the shared one for the
        others. Same outputs as ``forward(x, mask.nonzero()[:, 0])`` at ``M`` times the expert
        cost (speed, not correctness). It never moves the balancing bias, so it refuses training mode.
        """
        owner = type(self).__name__
        if self.training:
            raise RuntimeError(f"{owner}.forward_static is an inference path (it does not move the balancing bias); call .eval()")
        check_tensor(x, "x", owner=owner, shape=("N", ("d", self.embed_dim)))
        check_tensor(mask, "mask", owner=owner, shape=(("N", x.shape[0]),), dtype="bool")
        check_module_dtype(x, self, owner=owner)
        out = self.shared_ffn(x)  # N x d, Eq. 15
        a, w_shared, w_expert = self.route(x)  # N each, Eq. 16-18
        routed = torch.zeros_like(out)  # N x d
        for e in range(self.num_experts):  # Eq. 19-20 densely
            h = F.silu(F.linear(x, self.select_ffn_w1[e], self.select_ffn_b1[e])) * F.linear(
                x, self.select_ffn_w2[e], self.select_ffn_b2[e])  # N x hid
            y = F.linear(self.select_ln(h), self.select_ffn_w3[e], self.select_ffn_b3[e])  # N x d
            routed = torch.where((a == e)[:, None], y, routed)
        mixed = w_shared[:, None] * out + w_expert[:, None] * routed  # N x d, Eq. 18
        return torch.where(mask[:, None], mixed, out)
