"""Classification heads on top of the encoder, as fine-tuned Hugging Face Data2Vec models carry them.

A head maps the encoder's output to logits `[B, C]`. It is stored beside a checkpoint's weights as
``head.safetensors``, its kind, labels and dropout in the file's metadata, so a converted fine-tuned model
keeps its classifier: ``encoder = data2vec.load(ckpt); head = load_head(ckpt)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

HEAD_FILE = "head.safetensors"


class LinearClassifier(nn.Module):
    """A linear layer on the pooled features (BEiT / HF `Data2VecVisionForImageClassification`)."""

    kind = "linear"

    def __init__(self, dim: int, num_labels: int, dropout: float = 0.0, labels: list[str] | None = None) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, num_labels)
        self.dropout = nn.Dropout(dropout)
        self.labels = labels or [f"LABEL_{i}" for i in range(num_labels)]

    def forward(self, hidden: Tensor, pooled: Tensor) -> Tensor:
        """hidden `[B, T, D]` (unused), pooled `[B, D]` -> logits `[B, C]`."""
        return self.fc(self.dropout(pooled))


class SentenceClassifier(nn.Module):
    """RoBERTa's sentence head: dropout, dense, tanh, dropout, linear on the first token, `<s>`
    (HF `Data2VecTextForSequenceClassification`)."""

    kind = "sentence"

    def __init__(self, dim: int, num_labels: int, dropout: float = 0.0, labels: list[str] | None = None) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, num_labels)
        self.dropout = nn.Dropout(dropout)
        self.labels = labels or [f"LABEL_{i}" for i in range(num_labels)]

    def forward(self, hidden: Tensor, pooled: Tensor) -> Tensor:
        """hidden `[B, T, D]`, pooled `[B, D]` (unused) -> logits `[B, C]`."""
        x = self.dropout(hidden[:, 0])
        return self.out_proj(self.dropout(torch.tanh(self.dense(x))))


class CTCHead(LinearClassifier):
    """A linear layer on every frame for CTC speech recognition: logits `[B, T, V]` over a character
    vocabulary whose index 0 is the CTC blank (HF `Data2VecAudioForCTC`'s `lm_head`). `labels` is the
    vocabulary."""

    kind = "ctc"

    def forward(self, hidden: Tensor, pooled: Tensor) -> Tensor:
        """hidden `[B, T, D]`, pooled `[B, D]` (unused) -> logits `[B, T, V]`."""
        return self.fc(self.dropout(hidden))


HEADS = {"linear": LinearClassifier, "sentence": SentenceClassifier, "ctc": CTCHead}


def head_file(head: LinearClassifier | SentenceClassifier | CTCHead) -> bytes:
    """The content of ``head.safetensors`` for `head`."""
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}
    meta = {"kind": head.kind, "labels": json.dumps(head.labels), "dropout": str(head.dropout.p)}
    return save(tensors, metadata=meta)


def load_head(checkpoint: str | Path) -> LinearClassifier | SentenceClassifier | CTCHead | None:
    """The classifier stored with a checkpoint (or run folder), in eval mode; None when it has none."""
    from safetensors import safe_open

    from data2vec.checkpoint import resolve_checkpoint

    path = resolve_checkpoint(checkpoint) / HEAD_FILE
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    cls = HEADS[meta["kind"]]
    labels = json.loads(meta["labels"])
    head = cls(tensors["out_proj.weight" if cls is SentenceClassifier else "fc.weight"].shape[1], len(labels),
               float(meta["dropout"]), labels)
    head.load_state_dict(tensors)
    return head.eval()
