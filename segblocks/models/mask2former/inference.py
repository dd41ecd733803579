"""Mask-classification post-processing for semantic, panoptic and instance outputs.

MaskFormer/Mask2Former (§4, "Post-processing"; MaskFormer §3.4) turn ``N`` (class, mask) pairs
into each task's output format. All functions work on one image: ``mask_cls`` (Q, K+1) class
logits (last = no object) and ``mask_pred`` (Q, H, W) mask logits already resized to the output
size. Thresholds and the top-k rule follow the authors' code (the papers do not list them).
"""
from __future__ import annotations

from typing import Collection

import torch

__all__ = ["instance_inference", "panoptic_inference", "semantic_inference"]


def _check(mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> None:
    if mask_cls.dim() != 2 or mask_cls.shape[1] < 2:
        raise ValueError(f"mask_cls must be (Q, K+1) with K >= 1, got {tuple(mask_cls.shape)}")
    if mask_pred.dim() != 3 or mask_pred.shape[0] != mask_cls.shape[0]:
        raise ValueError(f"mask_pred must be (Q={mask_cls.shape[0]}, H, W), got {tuple(mask_pred.shape)}")


def semantic_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> torch.Tensor:
    """Per-class score maps ``Σ_q p_q(c) · σ(m_q)`` (MaskFormer §3.4, "semantic inference").

    Args:
        mask_cls: (Q, K+1) class logits.
        mask_pred: (Q, H, W) mask logits.

    Returns:
        (K, H, W) scores; ``argmax(0)`` gives the semantic map.
    """
    _check(mask_cls, mask_pred)
    probs = mask_cls.softmax(-1)[:, :-1]  # Q x K
    return torch.einsum("qk,qhw->khw", probs, mask_pred.sigmoid())


def panoptic_inference(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    *,
    thing_classes: Collection[int],
    object_mask_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
) -> tuple[torch.Tensor, list[dict]]:
    """Non-overlapping panoptic segments (MaskFormer §3.4, "panoptic inference").

    Queries predicting "no object" or with top class probability ``<= object_mask_threshold``
    are dropped. Each pixel goes to the query maximising ``p_q · σ(m_q)``; a query keeps the
    pixels it wins where ``σ(m_q) >= 0.5``, and is discarded if it wins less than
    ``overlap_threshold`` of its own binarized mask (mostly occluded). Stuff queries of the
    same class are merged into one segment.

    Args:
        mask_cls: (Q, K+1) class logits.
        mask_pred: (Q, H, W) mask logits.
        thing_classes: contiguous ids of the thing classes (the rest are stuff).
        object_mask_threshold: minimum class probability of a kept query.
        overlap_threshold: minimum visible fraction of a query's mask.

    Returns:
        ``panoptic_seg`` (H, W) int64 with 0 = void and segment ids ``1..n``, and
        ``segments_info``: one dict per segment with ``id``, ``category_id``, ``isthing`` and
        ``score`` (the class probability of the segment's first query).
    """
    _check(mask_cls, mask_pred)
    num_classes = mask_cls.shape[1] - 1
    scores, labels = mask_cls.softmax(-1).max(-1)  # Q, Q
    keep = (labels != num_classes) & (scores > object_mask_threshold)
    scores, labels, probs = scores[keep], labels[keep], mask_pred[keep].sigmoid()  # n, n, n x H x W
    panoptic_seg = torch.zeros(mask_pred.shape[-2:], dtype=torch.int64, device=mask_pred.device)
    segments_info: list[dict] = []
    if probs.shape[0] == 0:
        return panoptic_seg, segments_info
    winner = (scores[:, None, None] * probs).argmax(0)  # H x W
    things = set(int(c) for c in thing_classes)
    stuff_ids: dict[int, int] = {}
    for k in range(probs.shape[0]):
        category = int(labels[k])
        binary = probs[k] >= 0.5
        won = winner == k
        visible = won & binary
        won_area, original_area, visible_area = won.sum().item(), binary.sum().item(), visible.sum().item()
        if won_area == 0 or original_area == 0 or visible_area == 0:
            continue
        if won_area / original_area < overlap_threshold:
            continue
        isthing = category in things
        if not isthing and category in stuff_ids:
            panoptic_seg[visible] = stuff_ids[category]
            continue
        segment_id = len(segments_info) + 1
        if not isthing:
            stuff_ids[category] = segment_id
        panoptic_seg[visible] = segment_id
        segments_info.append(
            {"id": segment_id, "category_id": category, "isthing": isthing, "score": float(scores[k])}
        )
    return panoptic_seg, segments_info


def instance_inference(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    *,
    thing_classes: Collection[int] | None,
    num_queries: int | None = None,
    test_topk_per_image: int = 100,
) -> dict[str, torch.Tensor]:
    """Top-k (query, class) pairs as instances (Mask2Former §4.2, instance evaluation).

    Every query may yield several classes: the ``test_topk_per_image`` largest entries of the
    (Q, K) class-probability matrix are kept, then non-thing classes are dropped. An instance's
    score is its class probability times its mask score, the mean ``σ(m)`` inside the binarized
    mask ``m > 0`` (authors' code).

    Args:
        mask_cls: (Q, K+1) class logits.
        mask_pred: (Q, H, W) mask logits.
        thing_classes: contiguous ids of the thing classes; ``None`` keeps all classes.
        num_queries: expected Q (checked when given).
        test_topk_per_image: number of candidates before the thing-class filter.

    Returns:
        ``masks`` (k, H, W) bool, ``scores`` (k,) and ``labels`` (k,) int64, sorted by
        decreasing score.
    """
    _check(mask_cls, mask_pred)
    q, num_classes = mask_cls.shape[0], mask_cls.shape[1] - 1
    if num_queries is not None and num_queries != q:
        raise ValueError(f"num_queries={num_queries} but mask_cls has {q} queries")
    if test_topk_per_image <= 0:
        raise ValueError(f"test_topk_per_image must be positive, got {test_topk_per_image}")
    probs = mask_cls.softmax(-1)[:, :-1].flatten()  # (Q·K), query-major
    top_scores, top = probs.topk(min(test_topk_per_image, probs.numel()))
    labels, query = top % num_classes, torch.div(top, num_classes, rounding_mode="floor")
    if thing_classes is not None:
        ids = torch.as_tensor(sorted(int(c) for c in thing_classes), dtype=labels.dtype, device=labels.device)
        keep = torch.isin(labels, ids)
        top_scores, labels, query = top_scores[keep], labels[keep], query[keep]
    logits = mask_pred[query]  # k x H x W
    masks = logits > 0
    mask_scores = (logits.sigmoid() * masks).flatten(1).sum(1) / (masks.flatten(1).sum(1) + 1e-6)
    scores = top_scores * mask_scores
    order = scores.argsort(descending=True)
    return {"masks": masks[order], "scores": scores[order], "labels": labels[order]}
