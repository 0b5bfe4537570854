"""A pretrained encoder with a classification head, and which of its parts are frozen at a given step.

The head is one of :mod:`data2vec.nn.heads` (the layouts Hugging Face's fine-tuned Data2Vec models use), so a
fine-tuned checkpoint exports with `data2vec convert --to-hf` and a converted HF classifier evaluates here.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from data2vec.config import FinetuneConfig
from data2vec.errors import Data2VecError
from data2vec.model import Data2VecEncoder
from data2vec.nn.heads import HEADS, CTCHead, LinearClassifier, SentenceClassifier
from data2vec.train.optim import layer_id

log = logging.getLogger("data2vec")
# Encoder tensors a pretrained checkpoint may lack (fresh here) or have in excess (unused here): the BEiT
# pooler norm that mean pooling adds, the final norm it drops (or CLS pooling brings back), the mask token.
MAY_BE_FRESH = {"frontend.pool_norm.weight", "frontend.pool_norm.bias", "frontend.mask_token", "encoder.norm.weight",
                "encoder.norm.bias"}
MAY_BE_UNUSED = {"encoder.norm.weight", "encoder.norm.bias", "frontend.pool_norm.weight", "frontend.pool_norm.bias"}
NOT_TRAINED = ("frontend.mask_token",)  # classification never masks its input, so the mask token gets no gradient


class Classifier(nn.Module):
    """Logits `[B, C]` of inputs: the encoder's last layer, its front-end's pooling, then the head."""

    def __init__(self, encoder: Data2VecEncoder, head: LinearClassifier | SentenceClassifier | CTCHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        for name, p in encoder.named_parameters():
            if name in NOT_TRAINED:
                p.requires_grad_(False)

    @property
    def labels(self) -> list[str]:
        return self.head.labels

    def forward(self, inputs: Tensor, padding_mask: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """Logits: `[B, C]` for a classifier, `[B, T, V]` per frame for CTC. `mask` `[B, N]` (True = masked)
        replaces tokens by the mask embedding, as wav2vec 2.0 fine-tuning does for speech."""
        return self.run(inputs, padding_mask, mask)[0]

    def run(self, inputs: Tensor, padding_mask: Tensor | None = None, mask: Tensor | None = None
            ) -> tuple[Tensor, Tensor | None]:
        """(logits, token padding mask `[B, T]` or None): CTC needs to know which frames are real."""
        out = self.encoder(inputs, mask=mask, padding_mask=padding_mask)
        pooled = self.encoder.frontend.pool(out.last_hidden_state, out.padding_mask)  # [B, D]
        return self.head(out.last_hidden_state, pooled), out.padding_mask

    def named_for_decay(self) -> list[tuple[str, nn.Parameter]]:
        """Parameters named as :func:`data2vec.train.optim.layer_id` expects (encoder-relative, or head.*)."""
        return [(n[len("encoder."):] if n.startswith("encoder.") else n, p) for n, p in self.named_parameters()]


def new_head(kind: str, dim: int, labels: list[str], dropout: float, init_scale: float = 1.0
             ) -> LinearClassifier | SentenceClassifier | CTCHead:
    """A freshly initialised head: truncated normal (std 0.02) weights, the output layer's scaled by
    `init_scale` (BEiT starts its classifier near zero with 0.001), zero biases."""
    head = HEADS[kind](dim, len(labels), dropout, labels)
    for module in head.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
    out = head.fc if isinstance(head, LinearClassifier) else head.out_proj
    with torch.no_grad():
        out.weight.mul_(init_scale)
    return head


def load_pretrained(encoder: Data2VecEncoder, weights: dict[str, Tensor], source: str) -> None:
    """Copy a checkpoint's student into `encoder`; only the pooling norms and mask token may differ."""
    state = {k[len("student."):]: v for k, v in weights.items() if k.startswith("student.")}
    if not state:
        raise Data2VecError(f"checkpoint '{source}' holds no encoder (student) weights; give a data2vec "
                            "pretraining or fine-tuning checkpoint")
    try:
        result = encoder.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes differ: a config and weights that do not belong together
        raise Data2VecError(f"checkpoint '{source}' does not fit its own config "
                            f"({str(err).splitlines()[-1].strip()[:200]})") from None
    fresh, unused = set(result.missing_keys), set(result.unexpected_keys)
    if fresh - MAY_BE_FRESH or unused - MAY_BE_UNUSED:  # a bug of ours: the config was resolved wrongly
        raise RuntimeError(f"fine-tuning left {sorted(fresh - MAY_BE_FRESH)} fresh and "
                           f"{sorted(unused - MAY_BE_UNUSED)} unused")
    if fresh or unused:
        log.info("from %s: fresh %s; unused %s", source, ", ".join(sorted(fresh)) or "none",
                 ", ".join(sorted(unused)) or "none")


def frozen(name: str, step: int, depth: int, ft: FinetuneConfig, feature_encoder: str | None = None) -> bool:
    """Whether encoder parameter `name` (encoder-relative) gets no update at update `step` (0-based): all of
    them during the first `freeze_encoder_steps`; during `freeze_frontend_steps` (always when -1) the
    front-end's `feature_encoder` sub-module when it has one (`Frontend.feature_encoder`; speech:
    ``frontend.feature_extractor``, the convolutions wav2vec 2.0 and data2vec keep fixed), else the whole
    front-end (layer 0: patch or token embeddings)."""
    if step < ft.freeze_encoder_steps:
        return True
    if not (ft.freeze_frontend_steps < 0 or step < ft.freeze_frontend_steps):
        return False
    if feature_encoder is not None:
        return name.startswith(f"frontend.{feature_encoder}.")
    return layer_id(name, depth) == 0


def apply_freezing(model: Classifier, step: int, ft: FinetuneConfig) -> None:
    """Set `requires_grad` of the encoder's parameters for update `step`. A frozen parameter gets no gradient,
    so AdamW skips it entirely: no moment update and no weight decay."""
    depth = len(model.encoder.encoder.blocks)
    features = model.encoder.frontend.feature_encoder
    for name, p in model.encoder.named_parameters():
        p.requires_grad_(name not in NOT_TRAINED and not frozen(name, step, depth, ft, features))
