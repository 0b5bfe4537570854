"""Classification metrics as pure functions of logits or predictions and labels (tensors in, floats out).

Written out rather than borrowed so that evaluation needs nothing beyond torch and so each formula can be read
next to its definition; the tests check them against scikit-learn.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def confusion_matrix(pred: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Counts `[C, C]` int64: row = true class, column = predicted class. pred, labels int `[N]`."""
    index = labels.long() * num_classes + pred.long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy(pred: Tensor, labels: Tensor) -> float:
    """Share of `[N]` predictions equal to the labels."""
    return float((pred == labels).float().mean()) if labels.numel() else 0.0


def top_k_accuracy(logits: Tensor, labels: Tensor, k: int) -> float:
    """Share of samples whose label is among the `k` largest logits `[N, C]` (all of them when C <= k)."""
    k = min(k, logits.shape[1])
    hits = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
    return float(hits.float().mean()) if labels.numel() else 0.0


def f1_score(pred: Tensor, labels: Tensor, num_classes: int) -> float:
    """F1 of class 1 for two classes (GLUE's MRPC / QQP convention), else the unweighted mean over classes
    (macro F1) over the classes that occur in the labels or the predictions, as scikit-learn's default."""
    cm = confusion_matrix(pred, labels, num_classes).double()
    tp = cm.diag()
    predicted, actual = cm.sum(0), cm.sum(1)
    denom = predicted + actual
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp))
    if num_classes == 2:
        return float(f1[1])
    seen = denom > 0
    return float(f1[seen].mean()) if seen.any() else 0.0


def matthews_corrcoef(pred: Tensor, labels: Tensor, num_classes: int) -> float:
    """Matthews correlation (Gorodkin's multi-class form, the binary MCC for two classes); 0 when undefined
    (all predictions or all labels one class). GLUE's CoLA metric."""
    cm = confusion_matrix(pred, labels, num_classes).double()
    n = cm.sum()
    correct = cm.diag().sum()
    predicted, actual = cm.sum(0), cm.sum(1)
    cov_pa = correct * n - (predicted * actual).sum()
    cov_pp = n * n - (predicted * predicted).sum()
    cov_aa = n * n - (actual * actual).sum()
    denom = math.sqrt(float(cov_pp) * float(cov_aa))
    return float(cov_pa) / denom if denom > 0 else 0.0


def classification_metrics(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """accuracy (top-1), f1 (see :func:`f1_score`), mcc, and top5 when there are more than five classes,
    from logits `[N, C]` and labels int `[N]`."""
    num_classes = logits.shape[1]
    pred = logits.argmax(dim=1)
    out = {"accuracy": accuracy(pred, labels), "f1": f1_score(pred, labels, num_classes),
           "mcc": matthews_corrcoef(pred, labels, num_classes)}
    if num_classes > 5:
        out["top5"] = top_k_accuracy(logits, labels, 5)
    return out
