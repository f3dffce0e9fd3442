"""Top-k accuracy as counts of correct predictions, so that they can be summed over batches and ranks.

Also the confusion matrix and the per-class scores (precision, recall, F1) read off it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def topk_correct(output: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...] = (1, 5)) -> list[int]:
    """Number of samples whose target is among the k highest logits, for each k.

    k is capped at the number of classes, so top-5 on a 3-class problem is top-3 (the ImageNet example crashes).
    """
    maxk = min(max(topk), output.shape[1])
    pred = output.topk(maxk, dim=1).indices  # (N, maxk)
    hits = pred.eq(target.view(-1, 1))  # (N, maxk) bool
    return [int(hits[:, : min(k, maxk)].any(dim=1).sum()) for k in topk]


def accuracy(output: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...] = (1, 5)) -> list[float]:
    """Top-k accuracy in percent for each k (the PyTorch ImageNet example's ``accuracy``)."""
    n = max(1, target.numel())
    return [100.0 * c / n for c in topk_correct(output, target, topk)]


def confusion_matrix(targets: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) int64 counts: row = true class, column = predicted class."""
    flat = targets.long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@dataclass(frozen=True)
class ClassScores:
    """Per-class counts and scores read off a confusion matrix, each a (C,) tensor; undefined ratios are 0."""

    support: torch.Tensor
    correct: torch.Tensor
    predicted: torch.Tensor
    precision: torch.Tensor
    recall: torch.Tensor
    f1: torch.Tensor


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp(min=1e-12), torch.zeros_like(num))


def class_scores(cm: torch.Tensor) -> ClassScores:
    """Support, correct count, precision, recall and F1 of every class from a (true x predicted) matrix."""
    correct = cm.diag().double()
    support, predicted = cm.sum(1).double(), cm.sum(0).double()
    precision, recall = _ratio(correct, predicted), _ratio(correct, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return ClassScores(support.long(), correct.long(), predicted.long(), precision, recall, f1)
