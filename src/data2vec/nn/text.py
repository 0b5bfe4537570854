"""The RoBERTa text front-end: token + learned position (+ one token type) embeddings, LayerNorm, dropout.

The layout is Hugging Face's `Data2VecText` / RoBERTa embedding module, so its weights map one to one:
position ids count non-padding tokens from ``pad_id + 1`` (padding keeps position ``pad_id``).
BERT masking happens on the token ids (the mask token is in the vocabulary), so the `mask` argument of
`forward` is not used here: the student simply gets corrupted ids.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from data2vec.config import EncoderConfig, TextConfig
from data2vec.nn.frontend import Frontend


class TextFrontend(Frontend):
    """Token ids `[B, T]` -> embeddings `[B, T, D]` (no prefix token; pooling is a mean over real tokens)."""

    def __init__(self, cfg: TextConfig, enc: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.word_embeddings = nn.Embedding(cfg.vocab_size, enc.dim, padding_idx=cfg.pad_id)
        self.position_embeddings = nn.Embedding(cfg.max_positions, enc.dim, padding_idx=cfg.pad_id)
        self.token_type_embeddings = nn.Embedding(1, enc.dim)
        self.norm = nn.LayerNorm(enc.dim, eps=cfg.embed_norm_eps)
        self.dropout = nn.Dropout(enc.dropout)
        self._init_weights()

    def _init_weights(self) -> None:
        for emb in (self.word_embeddings, self.position_embeddings, self.token_type_embeddings):
            nn.init.normal_(emb.weight, std=0.02)
            if emb.padding_idx is not None:
                nn.init.zeros_(emb.weight[emb.padding_idx])

    def position_ids(self, padding_mask: Tensor) -> Tensor:
        """RoBERTa positions `[B, T]`: pad_id + 1, pad_id + 2, ... over real tokens; pad_id at padding."""
        real = (~padding_mask).long()
        return torch.cumsum(real, dim=1) * real + self.cfg.pad_id

    def forward(self, ids: Tensor, mask: Tensor | None = None, padding_mask: Tensor | None = None
                ) -> tuple[Tensor, None, Tensor | None]:
        """ids int64 `[B, T]`, padding_mask bool `[B, T]` (True = padding) -> (tokens `[B, T, D]`, None, padding)."""
        if ids.ndim != 2 or ids.dtype != torch.int64:
            raise ValueError(f"expected int64 token ids [B, T], got {ids.dtype} {list(ids.shape)}")
        if ids.shape[1] > self.cfg.max_positions - self.cfg.pad_id - 1:
            raise ValueError(f"{ids.shape[1]} tokens exceed text.max_positions={self.cfg.max_positions} "
                             f"(positions start at pad_id + 1 = {self.cfg.pad_id + 1})")
        real = padding_mask if padding_mask is not None else ids.new_zeros(ids.shape, dtype=torch.bool)
        x = (self.word_embeddings(ids) + self.position_embeddings(self.position_ids(real))
             + self.token_type_embeddings.weight[0])
        return self.dropout(self.norm(x)), None, padding_mask

    def pool(self, hidden: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Sentence embedding `[B, D]`: mean over non-padding tokens."""
        if padding_mask is None:
            return hidden.mean(dim=1)
        keep = (~padding_mask).unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
        return (hidden * keep).sum(1) / keep.sum(1).clamp(min=1)
