"""Scoring a classifier on a labelled set: logits of every sample, then the metrics of `metrics.py`."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

from data2vec.evaluation.metrics import classification_metrics
from data2vec.train.device import autocast


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable[dict], device: torch.device, precision: str = "fp32"
            ) -> tuple[Tensor, Tensor]:
    """(logits `[N, C]` float32, labels `[N]`) of `model` (inputs, padding mask -> logits) over `batches`;
    unreadable samples the collate function dropped are not counted."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for batch in batches:
        if "inputs" not in batch:
            continue
        padding = batch.get("padding_mask")
        with autocast(device, precision):
            out = model(batch["inputs"].to(device), padding.to(device) if padding is not None else None)
        logits.append(out.float().cpu())
        labels.append(batch["label"])
    model.train(was_training)
    if not logits:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(logits), torch.cat(labels)


def evaluate_classifier(model: nn.Module, batches: Iterable[dict], device: torch.device, precision: str = "fp32"
                        ) -> dict[str, float]:
    """accuracy, f1, mcc (and top5 above five classes) of `model` on `batches`, plus the sample count."""
    logits, labels = predict(model, batches, device, precision)
    if labels.numel() == 0:
        return {"samples": 0}
    return {**classification_metrics(logits, labels), "samples": int(labels.numel())}
