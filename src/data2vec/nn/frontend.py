"""What a modality front-end provides: the one base class of the image, text and speech front-ends, so the
encoder, the objective and fine-tuning call what it states instead of probing for attributes."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn


class Frontend(nn.Module):
    """Inputs -> tokens for the shared Transformer.

    Every front-end has ``forward(inputs, mask, padding_mask)`` -> (tokens `[B, P + N, D]`, an additive
    attention bias or None, token padding `[B, P + N]` or None), with masked tokens (`mask` `[B, N]`, data2vec
    v1) replaced by its mask embedding; ``pool(hidden, padding)`` -> one vector `[B, D]`; ``_init_weights()``.
    Speech is `two_stage`: a local encoder (convolutions over the waveform) and a context stage (positional
    convolutions), which data2vec runs apart (`local_features`, `contextualize`, `forward_pair`)."""

    num_prefix: int = 0  # tokens before the input's own (the CLS token), dropped from the targets
    grid_hw: tuple[int, int] | None = None  # images: the patch grid (the v2 decoder is 2-D); None: a sequence
    # parts the EMA teacher averages under each front-end-splitting `objective.ema_scope` (speech only)
    ema_averaged: ClassVar[dict[str, tuple[str, ...]]] = {}
    two_stage: ClassVar[bool] = False
    # the sub-module `finetune.freeze_frontend_steps` freezes (speech: the conv feature encoder); None: all of it
    feature_encoder: ClassVar[str | None] = None

    def forward(self, inputs: Tensor, mask: Tensor | None = None, padding_mask: Tensor | None = None
                ) -> tuple[Tensor, Tensor | list[Tensor] | None, Tensor | None]:
        raise NotImplementedError

    def pool(self, hidden: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def _init_weights(self) -> None:
        raise NotImplementedError

    def mask_parameters(self) -> list[nn.Parameter]:
        """The mask embedding (data2vec v1 replaces masked tokens with it; v2 drops them, so it is unused)."""
        return []

    def pool_parameters(self) -> list[nn.Parameter]:
        """Parameters only `pool` uses (probes and fine-tuning; pretraining never reaches them)."""
        return []

    def local_features(self, inputs: Tensor, padding_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Two-stage front-ends: the local encoder's features `[B, N, D]` and the token padding."""
        raise NotImplementedError(f"{type(self).__name__} is not two-stage")

    def contextualize(self, x: Tensor, padding: Tensor | None, mask: Tensor | None = None,
                      hide: Tensor | None = None) -> Tensor:
        """Two-stage front-ends: the context stage over local features `x`."""
        raise NotImplementedError(f"{type(self).__name__} is not two-stage")

    def forward_pair(self, inputs: Tensor, mask: Tensor, padding_mask: Tensor | None, teacher: Frontend
                     ) -> tuple[tuple, tuple]:
        """Two-stage front-ends: the student's (masked) and `teacher`'s (clean) outputs from one local pass."""
        raise NotImplementedError(f"{type(self).__name__} is not two-stage")
