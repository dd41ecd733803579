"""Binary Spherical Quantization Attention (BSQA), Inter2Former §3.5, Eq. 7-14 and §3.8.

Keys are quantized with BSQ (Zhao et al., 2024): ``B = K W_BSQ`` (Eq. 11, ``code_proj``),
``U = B / ||B||`` (Eq. 12), ``Û = sign(U) / sqrt(S)`` (Eq. 13) with a straight-through
estimator, bits ``I = Û sqrt(S) / 2 + 1/2`` and ``K̂ = [I, 1 - I] [C¹; C⁰]`` (Eq. 14) from ``2S``
learned base vectors (``codebook``; rows ``0..S-1`` are ``C¹``, rows ``S..2S-1`` are ``C⁰``).

* **Training** (§3.8): softmax attention of the queries over all ``N`` quantized keys of their
  sample (``varlen_attention``), plus the commitment loss ``β · mse(Û, U)`` (β = 0.25; gradient
  into ``U`` only, as the authors' ``vq_loss``).
* **Inference** (Eq. 8-9): keys with the same ``S``-bit code are identical, so with per-sample
  value sums ``Δᵀ V`` and counts ``Δᵀ 1`` over the ``2^S`` codes,
  ``softmax(q K̂ᵀ) V = Σ_c e^{q·C_c} (ΔᵀV)_c / Σ_c e^{q·C_c} (Δᵀ1)_c`` — the **same** value,
  computed in ``O(N · 2^S)`` instead of ``O(N²)``. It is implemented as a softmax over the codes
  with logits ``q·C_c / sqrt(D) + log count_c`` applied to the per-code value means.
* **Static shapes** (:meth:`BSQAttention.forward_dense`, for ``torch.export`` / ONNX): the same two
  forms on a padded ``(B, L, H, D)`` batch in which every sample has the same lengths; the
  per-code sums and counts come from a one-hot ``(B, L, H, 2^S)`` matrix instead of a scatter.

Layout and sizes follow the authors' code (YouHuang67/inter2former,
``inter2former/necks/dpe_dha_hmoe.py``, ``BSQAttention``): ``code_proj = Linear(D, S)``, codebook
``(2S, D)`` initialised N(0, 1), code index ``Σ b_i 2^(S-1-i)``; with several heads the projection
and codebook are shared by the heads.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segblocks.ops._checks import check_finite_float, check_int, check_int_sequence, check_same, check_tensor
from segblocks.ops.varlen_attention import SeqLens, varlen_attention

__all__ = ["BSQAttention"]


class BSQAttention(nn.Module):
    """BSQ attention over ragged per-sample key sets (Eq. 11-14; Eq. 8-9 at inference).

    Args:
        head_dim: channels ``D`` per head (32 in Inter2Former).
        code_size: bits ``S`` (8: a ``2^8 = 256``-entry implicit codebook from 16 base vectors).
        beta: commitment-loss weight (0.25).
        backend: ``varlen_attention`` backend of the training path.

    Forward:
        q: ``(Nq, H, D)`` queries packed per sample (``q_lengths``).
        k, v: ``(Nk, H, D)`` keys and values packed per sample (``kv_lengths``).
        q_lengths, kv_lengths: per-sample lengths (same count; a sample with queries needs keys).
        exact: True = the ``O(N·2^S)`` inference form, False = training form; default
            ``not self.training``.
        Returns ``out`` ``(Nq, H, D)`` and the commitment loss (a scalar).
    """

    def __init__(self, *, head_dim: int, code_size: int = 8, beta: float = 0.25, backend: str = "auto") -> None:
        super().__init__()
        owner = type(self).__name__
        self.head_dim = check_int(head_dim, "head_dim", owner=owner, minimum=1)
        self.code_size = check_int(code_size, "code_size", owner=owner, minimum=1)
        if code_size > 16:
            raise ValueError(f"{owner}: code_size must be <= 16 (2^S codes per sample); got {code_size}")
        self.beta = check_finite_float(beta, "beta", owner=owner)
        self.backend = backend
        self.code_proj = nn.Linear(head_dim, code_size)
        self.codebook = nn.Parameter(torch.randn(2 * code_size, head_dim))

    # ------------------------------------------------------------------ quantization
    def quantize(self, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eq. 11-14: ``(N, H, D)`` keys → bits ``I`` ``(N, H, S)`` (STE), code ids ``(N, H)``, loss."""
        S = self.code_size
        u = F.normalize(self.code_proj(k), dim=-1)  # N x H x S, Eq. 11-12
        sign = torch.where(u >= 0, 1.0, -1.0).to(u.dtype) / S ** 0.5  # Eq. 13
        loss = self.beta * F.mse_loss(u, sign) if u.numel() else u.sum() * 0.0
        u_q = u + (sign - u).detach()  # straight-through estimator
        bits = u_q * (S ** 0.5 / 2) + 0.5  # N x H x S in {0, 1}
        weights = 2 ** torch.arange(S - 1, -1, -1, device=k.device)  # S: MSB first
        codes = ((sign > 0).long() * weights).sum(-1)  # N x H
        return bits, codes, loss

    def dequantize(self, bits: torch.Tensor) -> torch.Tensor:
        """Eq. 14: ``[I, 1 - I] [C¹; C⁰]`` → ``(..., D)``."""
        return torch.cat([bits, 1 - bits], dim=-1) @ self.codebook.to(bits.dtype)

    def code_table(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """All ``2^S`` quantized keys ``(2^S, D)`` (row ``c`` = the key of code ``c``)."""
        S = self.code_size
        c = torch.arange(2 ** S, device=self.codebook.device)
        place = 2 ** torch.arange(S - 1, -1, -1, device=c.device)  # S: MSB first
        # bit i of c as (c // 2^i) % 2, not c >> i: ONNX has no shift for int64 tensors
        bits = (torch.div(c[:, None], place, rounding_mode="floor") % 2).to(dtype or self.codebook.dtype)  # 2^S x S
        return self.dequantize(bits)  # 2^S x D

    # ------------------------------------------------------------------ attention
    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        q_lengths: Sequence[int],
        kv_lengths: Sequence[int],
        *,
        exact: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        owner = type(self).__name__
        _, H, D = check_tensor(q, "q", owner=owner, shape=("Nq", "H", ("D", self.head_dim)))
        check_tensor(k, "k", owner=owner, shape=("Nk", ("H", H), ("D", D)))
        check_tensor(v, "v", owner=owner, shape=(("Nk", k.shape[0]), ("H", H), ("D", D)))
        check_same({"q": q, "k": k, "v": v}, owner=owner)
        q_lengths = check_int_sequence(q_lengths, "q_lengths", owner=owner, minimum=0)
        kv_lengths = check_int_sequence(kv_lengths, "kv_lengths", owner=owner, minimum=0)
        if len(q_lengths) != len(kv_lengths) or sum(q_lengths) != q.shape[0] or sum(kv_lengths) != k.shape[0]:
            raise ValueError(
                f"{owner}: q_lengths (sum {sum(q_lengths)}) and kv_lengths (sum {sum(kv_lengths)}) must have one entry "
                f"per sample and sum to Nq={q.shape[0]}, Nk={k.shape[0]}"
            )
        if any(a > 0 and b == 0 for a, b in zip(q_lengths, kv_lengths)):
            raise ValueError(f"{owner}: a sample with queries needs keys; got q_lengths {q_lengths}, kv_lengths {kv_lengths}")
        bits, codes, loss = self.quantize(k)
        exact = (not self.training) if exact is None else exact
        if q.shape[0] == 0:
            return q.clone(), loss
        if not exact:
            k_hat = self.dequantize(bits)  # Nk x H x D
            out = varlen_attention(q, k_hat, v, SeqLens.from_seqlens(q_lengths, kv_lengths, device=q.device),
                                   backend=self.backend)
            return out, loss
        return self._exact(q, v, codes, q_lengths, kv_lengths), loss

    def forward_dense(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, exact: bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` on a padded batch with static shapes (``torch.export`` / ONNX).

        Equal to :meth:`forward` with ``q_lengths = (Lq,) * B`` and ``kv_lengths = (Lk,) * B`` on
        the flattened tensors (same loss): train form = softmax over all quantized keys of the
        sample, exact form (Eq. 8-9) = per-code value sums and counts from a one-hot matrix
        (``O(B · Lk · 2^S)`` memory) instead of :meth:`forward`'s scatter. No Python loop over the
        batch and no data-dependent shape.

        Args:
            q: ``(B, Lq, H, D)`` queries.
            k, v: ``(B, Lk, H, D)`` keys and values (``Lk >= 1``).
            exact: as in :meth:`forward`.

        Returns:
            ``out`` ``(B, Lq, H, D)`` and the commitment loss.
        """
        owner = type(self).__name__
        B, _, H, D = check_tensor(q, "q", owner=owner, shape=("B", "Lq", "H", ("D", self.head_dim)))
        check_tensor(k, "k", owner=owner, shape=(("B", B), "Lk", ("H", H), ("D", D)))
        check_tensor(v, "v", owner=owner, shape=(("B", B), ("Lk", k.shape[1]), ("H", H), ("D", D)))
        check_same({"q": q, "k": k, "v": v}, owner=owner)
        bits, codes, loss = self.quantize(k)  # B x Lk x H x S, B x Lk x H
        exact = (not self.training) if exact is None else exact
        if not exact:
            k_hat = self.dequantize(bits)  # B x Lk x H x D
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k_hat.transpose(1, 2), v.transpose(1, 2))  # B x H x Lq x D
            return out.transpose(1, 2), loss  # B x Lq x H x D
        C = 2 ** self.code_size
        one_hot = (codes[..., None] == torch.arange(C, device=q.device)).to(q.dtype)  # B x Lk x H x C
        counts = one_hot.sum(1)  # B x H x C
        sums = torch.einsum("blhc,blhd->bhcd", one_hot, v)  # B x H x C x D
        logits = torch.einsum("bqhd,cd->bqhc", q, self.code_table(q.dtype)) * D ** -0.5  # B x Lq x H x C
        w = self._code_weights(logits, counts[:, None])  # B x Lq x H x C
        return torch.einsum("bqhc,bhcd->bqhd", w, self._code_means(sums, counts)), loss

    @staticmethod
    def _code_means(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Per-code value means ``(..., C, D)`` from sums ``(..., C, D)`` and counts ``(..., C)`` (empty codes: 0)."""
        return sums / counts.clamp(min=1)[..., None]

    @staticmethod
    def _code_weights(logits: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Eq. 8-9 weights over the codes: ``softmax(q·C_c / sqrt(D) + log count_c)`` (empty codes: 0)."""
        log_counts = torch.where(counts > 0, counts.clamp(min=1).log(), float("-inf"))
        return torch.softmax(logits + log_counts, dim=-1)

    def _exact(self, q, v, codes, q_lengths, kv_lengths) -> torch.Tensor:
        """Eq. 8-9 per sample: value sums and counts per code, softmax over the ``2^S`` codes."""
        H, D = q.shape[1:]
        C = 2 ** self.code_size
        B = len(kv_lengths)
        seg = torch.repeat_interleave(torch.arange(B, device=q.device), torch.tensor(kv_lengths, device=q.device),
                                      output_size=codes.shape[0])  # Nk
        slot = (seg[:, None] * H + torch.arange(H, device=q.device)) * C + codes  # Nk x H
        counts = torch.bincount(slot.reshape(-1), minlength=B * H * C).view(B, H, C).to(q.dtype)  # B x H x C
        sums = v.new_zeros(B * H * C, D).index_add_(0, slot.reshape(-1), v.reshape(-1, D)).view(B, H, C, D)
        means = self._code_means(sums, counts)  # B x H x C x D
        logits = torch.einsum("nhd,cd->nhc", q, self.code_table(q.dtype)) * D ** -0.5  # Nq x H x C
        outs = []
        start = 0
        for b, n in enumerate(q_lengths):
            if n:
                w = self._code_weights(logits[start:start + n], counts[b])  # n x H x C
                outs.append(torch.einsum("nhc,hcd->nhd", w, means[b]))
            start += n
        return torch.cat(outs)  # Nq x H x D

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, code_size={self.code_size}, beta={self.beta}"
