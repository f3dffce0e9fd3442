"""Top-k accuracy as counts of correct predictions, so that they can be summed over batches and ranks."""
from __future__ import annotations

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
