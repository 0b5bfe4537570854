"""Scoring a fine-tuned model on a labelled set: classifier metrics from logits, or word and character error
rates of greedy CTC transcripts."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

from data2vec.ctc import decode, error_rates, greedy_decode
from data2vec.evaluation.metrics import classification_metrics
from data2vec.train.device import autocast

LOWER_IS_BETTER = ("wer", "cer")


TIE_BREAK = {"wer": "cer", "cer": "wer"}  # a tiny model's WER stays 1.0 long after its CER starts to fall


def better(metric: str, new: dict[str, float], best: dict[str, float] | None) -> bool:
    """Whether metrics `new` beat `best` (None: nothing yet) on `metric`; error rates improve downwards, and a
    tie on WER (CER) is decided by CER (WER)."""
    if best is None:
        return True
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    if new[metric] != best[metric] or metric not in TIE_BREAK:
        return sign * new[metric] > sign * best[metric]
    return new[TIE_BREAK[metric]] < best[TIE_BREAK[metric]]


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


@torch.no_grad()
def transcribe(model: nn.Module, batches: Iterable[dict], device: torch.device, vocab: list[str],
               precision: str = "fp32") -> tuple[list[str], list[str]]:
    """(greedy CTC transcripts, reference transcripts) of every utterance in `batches`."""
    was_training = model.training
    model.eval()
    hyps, refs = [], []
    for batch in batches:
        if "inputs" not in batch:
            continue
        padding = batch.get("padding_mask")
        with autocast(device, precision):
            logits, frames = model.run(batch["inputs"].to(device), padding.to(device) if padding is not None else None)
        hyps += [decode(ids, vocab) for ids in greedy_decode(logits.float().cpu(),
                                                             frames.cpu() if frames is not None else None)]
        refs += batch["texts"]
    model.train(was_training)
    return hyps, refs


def evaluate_ctc(model: nn.Module, batches: Iterable[dict], device: torch.device, vocab: list[str],
                 precision: str = "fp32") -> dict[str, float]:
    """Corpus WER and CER of greedy transcripts, plus the utterance count."""
    hyps, refs = transcribe(model, batches, device, vocab, precision)
    return {**error_rates(hyps, refs), "samples": len(refs)}
