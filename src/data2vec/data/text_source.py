"""Where a config's text comes from: its pretraining corpus (a built-in set or a binarised folder) with the
tokenizer that binarised it, and the tokenizer labelled text is read with."""

from __future__ import annotations

from pathlib import Path

from data2vec.config import Config
from data2vec.data.builtin_text import BUILTIN_TEXT, prepare_builtin
from data2vec.data.text import TextBlockDataset, TokenShards, checked_tokenizer
from data2vec.errors import Data2VecError


def text_source(cfg: Config, path: str | None = None) -> tuple[Path, object, dict[str, int]]:
    """(binarised folder, tokenizer, special ids) of `path` (default ``data.path``): `builtin:NAME` or a
    binarised folder; the tokenizer is ``text.tokenizer`` when set, else the data's own, checked against
    `cfg.text` so the model's vocabulary and mask id match the data's."""
    path = path or cfg.data.path
    if path.startswith("builtin:"):
        sub = prepare_builtin(path.split(":", 1)[1], cfg.text.vocab_size)
        folder, tok_path = sub / "bin", cfg.text.tokenizer or sub / "tokenizer.json"
    else:
        folder = Path(path)
        tok_path = cfg.text.tokenizer or folder / "tokenizer.json"
    tokenizer, ids = checked_tokenizer(tok_path, cfg.text)
    return folder, tokenizer, ids


def text_tokenizer(cfg: Config) -> tuple[object, dict[str, int]]:
    """(tokenizer, special ids) that labelled text is read with: ``text.tokenizer``, else (a probe of a
    pretraining run) the one of the pretraining corpus in ``data.path``, checked against the model's ids."""
    if cfg.text.tokenizer:
        return checked_tokenizer(cfg.text.tokenizer, cfg.text)
    path = cfg.data.path
    if (path.startswith("builtin:") and path.split(":", 1)[1] in BUILTIN_TEXT) or (Path(path) / "meta.json").is_file():
        return text_source(cfg)[1:]
    raise Data2VecError("text.tokenizer is empty; give the tokenizer.json the model was pretrained with")


def pretrain_text_dataset(cfg: Config) -> TextBlockDataset:
    t = cfg.text
    usable = t.max_positions - t.pad_id - 1  # RoBERTa's positions start at pad_id + 1
    if t.block_size > usable:
        raise Data2VecError(f"text.block_size={t.block_size} is more than the model's {usable} positions "
                            f"(text.max_positions - text.pad_id - 1); lower it or raise text.max_positions to "
                            f"{t.block_size + t.pad_id + 1}")
    folder, tokenizer, ids = text_source(cfg)
    m = cfg.masking
    return TextBlockDataset(TokenShards(folder), cfg.text.block_size, cfg.train.seed, m.token_prob, m.token_random,
                            m.token_keep, ids, tokenizer.get_vocab_size(),
                            clones=cfg.objective.clones if cfg.objective.version == 2 else 0, span=m.token_span)
