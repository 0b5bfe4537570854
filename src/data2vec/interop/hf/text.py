"""Text models <-> `transformers`' Data2VecText (RoBERTa: post-LN blocks, learned positions offset by the pad
id, one token type, a sentence classification head on <s>)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from data2vec.config import Config, build_config
from data2vec.interop.hf.common import (
    MEAN_TEXT,
    TEXT,
    cannot_export,
    encoder_fields,
    labels,
    layer_pairs,
    log,
    take,
    unsupported,
    weights_from_hf,
    weights_to_hf,
    with_head,
)
from data2vec.interop.hf.pipeline import mean_pooled_classifier

# transformers' defaults (5.24) for the keys we read, for a config.json that leaves some out
TEXT_DEFAULTS = {
    "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 1,
    "bos_token_id": 0, "eos_token_id": 2, "is_decoder": False, "add_cross_attention": False,
    "position_embedding_type": "absolute", "classifier_dropout": None,
}
QKV = ("query", "key", "value")


# ---------------------------------------------------------------------------------------------- HF -> ours

def config_from_hf(hf: dict, weights: dict[str, Tensor], folder: Path) -> Config:
    """Our text config for an HF Data2VecText config; special ids from the folder's tokenizer when there."""
    get = lambda key: hf.get(key, TEXT_DEFAULTS[key])  # noqa: E731
    for key in ("is_decoder", "add_cross_attention"):
        if get(key):
            raise unsupported(key, get(key), "is not supported: data2vec text models are bidirectional encoders")
    if get("position_embedding_type") != "absolute":
        raise unsupported("position_embedding_type", get("position_embedding_type"),
                          "is not supported: data2vec text uses learned absolute positions (RoBERTa)")
    if get("pad_token_id") is None:
        raise unsupported("pad_token_id", None, "leaves RoBERTa positions undefined (they start at pad_token_id + 1)")
    cfg = build_config("text-base")
    for key, value in encoder_fields(hf, TEXT_DEFAULTS).items():
        setattr(cfg.model, key, value)
    m, t = cfg.model, cfg.text
    m.norm_first, m.qkv_bias, m.layer_scale, m.drop_path, m.final_norm = False, "all", 0.0, 0.0, False  # post-LN
    m.activation_dropout, m.layer_drop = None, 0.0  # training settings HF does not hold (not the recipe's)
    first = lambda v, default: (v[0] if isinstance(v, list) else v) if v is not None else default  # noqa: E731
    t.vocab_size, t.max_positions, t.pad_id = int(get("vocab_size")), int(get("max_position_embeddings")), int(get("pad_token_id"))
    t.bos_id, t.eos_id = int(first(get("bos_token_id"), 0)), int(first(get("eos_token_id"), 2))
    t.embed_norm_eps = m.norm_eps
    t.block_size = min(t.block_size, t.max_positions - t.pad_id - 1)
    t.mask_id = t.vocab_size - 1  # RoBERTa's <mask> is the last id; the tokenizer, when there, says for sure
    if (folder / "tokenizer.json").is_file():
        from data2vec.data.text import load_tokenizer, special_ids

        for key, value in special_ids(load_tokenizer(folder / "tokenizer.json")).items():
            setattr(t, key, value)
    return cfg


def pairs(cfg: Config) -> list[tuple[str, str]]:
    """(HF name, our name) of every text tensor that maps one to one (QKV and token types are handled apart)."""
    out = [("embeddings.word_embeddings.weight", "frontend.word_embeddings.weight"),
           ("embeddings.position_embeddings.weight", "frontend.position_embeddings.weight"),
           ("embeddings.LayerNorm.weight", "frontend.norm.weight"), ("embeddings.LayerNorm.bias", "frontend.norm.bias")]
    for i in range(cfg.model.depth):
        out += layer_pairs(f"encoder.layer.{i}.", f"encoder.blocks.{i}.",
                           [("attention.output.dense", "attn.proj"), ("attention.output.LayerNorm", "norm1"),
                            ("intermediate.dense", "mlp.fc1"), ("output.dense", "mlp.fc2"),
                            ("output.LayerNorm", "norm2")])
    return out


def attention(cfg: Config) -> list[tuple[str, str]]:
    """(HF prefix of query/key/value, our attention prefix) per block."""
    return [(f"encoder.layer.{i}.attention.self.", f"encoder.blocks.{i}.attn.") for i in range(cfg.model.depth)]


def encoder_from_hf(cfg: Config, weights: dict[str, Tensor], used: set[str]) -> dict[str, Tensor]:
    """Our encoder's tensors from an HF Data2VecText state dict (base-model names); token type 0 only."""
    ours = weights_from_hf(cfg, weights, pairs(cfg), attention(cfg), QKV, used)
    token_types = take(weights, "embeddings.token_type_embeddings.weight", used)
    if token_types.shape[0] > 1:
        log.warning("type_vocab_size=%d: keeping token type 0 only; data2vec text has no token type ids (HF "
                    "uses type 0 when token_type_ids is not passed)", token_types.shape[0])
    ours["frontend.token_type_embeddings.weight"] = token_types[:1]
    return ours


def head_from_hf(hf: dict, weights: dict[str, Tensor], dim: int, used: set[str], folder: Path):
    """RoBERTa's sentence classifier (dense + tanh + out_proj on <s>), or the linear one on the token mean of
    our ``data2vec-text-mean`` exports, when present."""
    from data2vec.nn.heads import LinearClassifier, SentenceClassifier

    if hf.get("model_type") == MEAN_TEXT and "classifier.weight" in weights:
        fc = {n: take(weights, f"classifier.{n}", used) for n in ("weight", "bias")}
        head = LinearClassifier(dim, fc["weight"].shape[0], float(hf.get("classifier_dropout") or 0.0),
                                labels(hf, fc["weight"].shape[0]))
        head.fc.load_state_dict(fc)
        return head
    if "classifier.out_proj.weight" not in weights:
        return None
    names = ("dense.weight", "dense.bias", "out_proj.weight", "out_proj.bias")
    state = {n: take(weights, f"classifier.{n}", used) for n in names}
    dropout = hf.get("classifier_dropout")
    dropout = float(dropout if dropout is not None else hf.get("hidden_dropout_prob", 0.1))
    n = state["out_proj.weight"].shape[0]
    head = SentenceClassifier(dim, n, dropout, labels(hf, n))
    head.load_state_dict(state)
    return head


def restore(cfg: Config, saved: Config, ours: dict[str, Tensor], headless: bool) -> None:
    """The activation dropout (RoBERTa has no key for it), mask id, tokenizer and block size."""
    cfg.model.activation_dropout = saved.model.activation_dropout
    cfg.text.mask_id, cfg.text.tokenizer = saved.text.mask_id, saved.text.tokenizer
    cfg.text.block_size = min(saved.text.block_size, cfg.text.max_positions - cfg.text.pad_id - 1)


# ---------------------------------------------------------------------------------------------- ours -> HF

def export(cfg: Config, ours: dict[str, Tensor], head) -> tuple[dict, dict[str, Tensor], dict[str, dict]]:
    """(config.json, tensors, other files) of `Data2VecTextModel`, `...ForSequenceClassification` with a
    sentence head, or with a linear head on the token mean (``finetune.head=linear``) `Data2VecTextModel` and
    that head as model code in the folder (:func:`data2vec.interop.hf.pipeline.mean_pooled_classifier`)."""
    m, t = cfg.model, cfg.text
    if m.norm_first:
        raise cannot_export("model.norm_first", True, "(pre-LN): Data2VecText blocks are post-LN (RoBERTa)")
    if m.layer_scale > 0:
        raise cannot_export("model.layer_scale", m.layer_scale, "is not expressible: Data2VecText blocks have no layer scale")
    if t.embed_norm_eps != m.norm_eps:
        raise cannot_export("text.embed_norm_eps", t.embed_norm_eps, f"differs from model.norm_eps={m.norm_eps}: "
                            "Data2VecText has one layer_norm_eps for all its LayerNorms")
    hf = {"model_type": TEXT, "architectures": ["Data2VecTextModel"], "vocab_size": t.vocab_size, "hidden_size": m.dim,
          "num_hidden_layers": m.depth, "num_attention_heads": m.heads, "intermediate_size": int(m.dim * m.mlp_ratio),
          "hidden_act": "gelu", "hidden_dropout_prob": m.dropout, "attention_probs_dropout_prob": m.attn_dropout,
          "max_position_embeddings": t.max_positions, "type_vocab_size": 1, "layer_norm_eps": m.norm_eps,
          "pad_token_id": t.pad_id, "bos_token_id": t.bos_id, "eos_token_id": t.eos_id, "initializer_range": 0.02,
          "classifier_dropout": head.dropout.p if head is not None else None}
    tensors = weights_to_hf(cfg, ours, pairs(cfg), attention(cfg), QKV)
    tensors["embeddings.token_type_embeddings.weight"] = ours["frontend.token_type_embeddings.weight"]
    if head is None:  # AutoModel builds RoBERTa's CLS pooler, which data2vec does not have: HF's initialisation
        generator = torch.Generator().manual_seed(0)
        tensors["pooler.dense.weight"] = torch.randn(m.dim, m.dim, generator=generator) * 0.02
        tensors["pooler.dense.bias"] = torch.zeros(m.dim)
        log.info("Data2VecTextModel's pooler (dense + tanh on <s>) is freshly initialised: data2vec has none")
        return hf, tensors, {}
    if head.kind == "linear":  # the mean of the tokens: no transformers class computes it, so model code goes along
        return mean_pooled_classifier(hf, tensors, head)
    head_tensors = {f"classifier.{k}": v for k, v in head.state_dict().items()}
    hf, tensors = with_head(hf, tensors, TEXT, head, head_tensors, "Data2VecTextForSequenceClassification")
    return hf, tensors, {}
