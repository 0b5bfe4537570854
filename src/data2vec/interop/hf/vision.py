"""Image models <-> `transformers`' Data2VecVision (BEiT: pre-LN blocks, QV biases, layer scale, relative
position bias, mean pooling)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from data2vec.config import Config, build_config
from data2vec.data.image import meta_eval_crop_pct, meta_normalization
from data2vec.interop.hf.common import (
    VISION,
    cannot_export,
    encoder_fields,
    fixed_positions,
    labels,
    layer_pairs,
    log,
    take,
    unsupported,
    weights_from_hf,
    weights_to_hf,
    with_head,
)
from data2vec.interop.hf.pipeline import eval_crop_pct_from_processor, normalization_from_processor

# transformers' defaults (5.24) for the keys we read, for a config.json that leaves some out
VISION_DEFAULTS = {
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
    "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "layer_norm_eps": 1e-12,
    "image_size": 224, "patch_size": 16, "num_channels": 3, "use_mask_token": False,
    "use_absolute_position_embeddings": False, "use_relative_position_bias": False,
    "use_shared_relative_position_bias": False, "layer_scale_init_value": 0.1, "drop_path_rate": 0.1,
    "use_mean_pooling": True,
}
QKV = ("query", "key", "value")


# ---------------------------------------------------------------------------------------------- HF -> ours

def _square(hf: dict, key: str) -> int:
    value = hf.get(key, VISION_DEFAULTS[key])
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise unsupported(key, value, "is not square; data2vec's image front-end takes square images and patches")
        value = value[0]
    return int(value)


def config_from_hf(hf: dict, weights: dict[str, Tensor], folder: Path) -> Config:
    """Our image config for an HF Data2VecVision config (and the weights, which say whether a pooler exists)."""
    get = lambda key: hf.get(key, VISION_DEFAULTS[key])  # noqa: E731
    if get("use_relative_position_bias") and get("use_shared_relative_position_bias"):
        raise unsupported("use_relative_position_bias", True, "together with use_shared_relative_position_bias=true "
                          "(both biases added) has no data2vec equivalent: image.rel_pos_bias is per_layer or shared")
    cfg = build_config("image-base")
    for key, value in encoder_fields(hf, VISION_DEFAULTS).items():
        setattr(cfg.model, key, value)
    mean = bool(get("use_mean_pooling"))
    m, img = cfg.model, cfg.image
    m.norm_first, m.qkv_bias, m.final_norm = True, "qv", not mean  # BEiT block; no final norm under mean pooling
    m.layer_scale = max(float(get("layer_scale_init_value")), 0.0)
    m.drop_path = float(get("drop_path_rate"))
    img.image_size, img.patch_size, img.in_chans = _square(hf, "image_size"), _square(hf, "patch_size"), int(get("num_channels"))
    if img.image_size % img.patch_size:
        raise unsupported("image_size", img.image_size, f"is not a multiple of patch_size={img.patch_size}")
    img.cls_token = True
    img.pos_embed = "learned" if get("use_absolute_position_embeddings") else "none"
    img.rel_pos_bias = ("per_layer" if get("use_relative_position_bias")
                        else "shared" if get("use_shared_relative_position_bias") else "none")
    img.pool = "mean" if mean else "cls"
    img.pool_norm = mean and "pooler.layernorm.weight" in weights  # only task models (and add_pooling_layer) have it
    # the folder's own resize + centre crop when it has one, else Meta's (data2vec_vision's evaluation)
    cfg.data.eval_crop_pct = (eval_crop_pct_from_processor(folder, img.image_size)
                              or meta_eval_crop_pct(img.image_size, v2=False))
    # the pixels the folder's processor feeds it (0.5 / 0.5 in the released facebook/data2vec-vision-* ones),
    # else Meta's: 0.5 / 0.5 for a classifier (v1 fine-tuning), ImageNet's for an encoder (v1 pretraining)
    finetuned = "classifier.weight" in weights
    cfg.data.image_mean, cfg.data.image_std = (normalization_from_processor(folder)
                                               or meta_normalization(v2=False, finetuned=finetuned))
    return cfg


def pairs(cfg: Config, with_pooler: bool = True) -> list[tuple[str, str]]:
    """(HF name, our name) of every vision tensor that maps one to one (the QKV projection is fused apart)."""
    img, m = cfg.image, cfg.model
    out = [("embeddings.cls_token", "frontend.cls_token"), ("embeddings.mask_token", "frontend.mask_token"),
           ("embeddings.patch_embeddings.projection.weight", "frontend.patch_embed.weight"),
           ("embeddings.patch_embeddings.projection.bias", "frontend.patch_embed.bias")]
    if img.pos_embed == "learned":
        out.append(("embeddings.position_embeddings", "frontend.pos_embed"))
    if img.rel_pos_bias == "shared":
        out.append(("encoder.relative_position_bias.relative_position_bias_table", "frontend.rel_pos.0.table"))
    for i in range(m.depth):
        h, o = f"encoder.layer.{i}.", f"encoder.blocks.{i}."
        out += layer_pairs(h, o, [("layernorm_before", "norm1"), ("attention.output.dense", "attn.proj"),
                                  ("layernorm_after", "norm2"), ("intermediate.dense", "mlp.fc1"),
                                  ("output.dense", "mlp.fc2")])
        if m.layer_scale > 0:
            out += [(f"{h}lambda_1", f"{o}ls1.gamma"), (f"{h}lambda_2", f"{o}ls2.gamma")]
        if img.rel_pos_bias == "per_layer":
            out.append((f"{h}attention.attention.relative_position_bias.relative_position_bias_table",
                        f"frontend.rel_pos.{i}.table"))
    if m.final_norm:
        out += [("layernorm.weight", "encoder.norm.weight"), ("layernorm.bias", "encoder.norm.bias")]
    if img.pool_norm and with_pooler:
        out += [("pooler.layernorm.weight", "frontend.pool_norm.weight"),
                ("pooler.layernorm.bias", "frontend.pool_norm.bias")]
    return out


def attention(cfg: Config) -> list[tuple[str, str]]:
    """(HF prefix of query/key/value, our attention prefix) per block."""
    return [(f"encoder.layer.{i}.attention.attention.", f"encoder.blocks.{i}.attn.") for i in range(cfg.model.depth)]


def encoder_from_hf(cfg: Config, weights: dict[str, Tensor], used: set[str]) -> dict[str, Tensor]:
    """Our encoder's tensors from an HF Data2VecVision state dict (base-model names)."""
    return weights_from_hf(cfg, weights, pairs(cfg), attention(cfg), QKV, used)


def head_from_hf(hf: dict, weights: dict[str, Tensor], dim: int, used: set[str], folder: Path):
    """The image classifier (linear on the pooled features), when present."""
    from data2vec.nn.heads import LinearClassifier

    if "classifier.weight" not in weights:
        return None
    w, b = take(weights, "classifier.weight", used), take(weights, "classifier.bias", used)
    head = LinearClassifier(dim, w.shape[0], 0.0, labels(hf, w.shape[0]))
    head.load_state_dict({"fc.weight": w, "fc.bias": b})
    return head


def restore(cfg: Config, saved: Config, ours: dict[str, Tensor], headless: bool) -> None:
    """The pooling choice (free without HF's pooler) and fixed sin-cos positions, where the weights agree."""
    if headless:  # HF's base model has no pooler, so our choice of pooling is free
        cfg.image.pool = saved.image.pool
    if saved.image.pos_embed == "sincos" and cfg.image.pos_embed == "learned":
        order = saved.image.sincos_order
        if torch.equal(ours["frontend.pos_embed"], fixed_positions(cfg, order)):
            cfg.image.pos_embed, cfg.image.sincos_order = "sincos", order
            del ours["frontend.pos_embed"]


# ---------------------------------------------------------------------------------------------- ours -> HF

def _not_data2vec_vision(cfg: Config, head) -> tuple[str, object, str] | None:
    """(key, value, why) of the first setting `Data2VecVisionModel` / `...ForImageClassification` cannot
    compute; None when it computes the model (and its head)."""
    m, img = cfg.model, cfg.image
    if not m.norm_first:
        return "model.norm_first", False, "(post-LN): Data2VecVision blocks are pre-LN (BEiT)"
    if not img.cls_token:
        return "image.cls_token", False, "is not expressible: Data2VecVision always has a CLS token"
    if img.embed_norm:
        return "image.embed_norm", True, "is not expressible: Data2VecVision has no LayerNorm before its first block"
    mean = not m.final_norm  # HF: use_mean_pooling drops the final LayerNorm
    if head is not None and not ((mean and img.pool == "mean" and img.pool_norm)
                                 or (not mean and img.pool == "cls" and not img.pool_norm)):
        return ("image.pool", img.pool, f"with model.final_norm={m.final_norm} and image.pool_norm={img.pool_norm}: "
                "Data2VecVisionForImageClassification classifies either LayerNorm(mean of patch tokens) without a "
                "final norm (final_norm=false, pool=mean, pool_norm=true) or the final-normed CLS token "
                "(final_norm=true, pool=cls, pool_norm=false)")
    return None


def export(cfg: Config, ours: dict[str, Tensor], head) -> tuple[dict, dict[str, Tensor], dict[str, dict]]:
    """(config.json, tensors, other files) of `Data2VecVisionModel`, or `...ForImageClassification` with a head;
    a model they cannot compute goes to :func:`data2vec.interop.hf.vision2.export` (model code in the folder)."""
    m, img = cfg.model, cfg.image
    blocker = _not_data2vec_vision(cfg, head)
    if blocker is not None:  # data2vec 2.0's post-LN encoder, among others: our model code in the folder
        if img.rel_pos_bias != "none":
            key, value, why = blocker
            raise cannot_export(key, value, f"{why}; and the data2vec 2.0 model code that --to-hf ships instead "
                                f"has no relative position bias (image.rel_pos_bias={img.rel_pos_bias})")
        from data2vec.interop.hf import vision2

        log.info("%s=%s: %s, so the export ships model code", *blocker)
        return vision2.export(cfg, ours, head)
    mean = not m.final_norm  # HF: use_mean_pooling drops the final LayerNorm
    if head is None and img.pool_norm:
        log.warning("image.pool_norm: Data2VecVisionModel has no pooler, so its LayerNorm is not exported "
                    "(hidden states are unaffected)")
    hf = {"model_type": VISION, "architectures": ["Data2VecVisionModel"], "hidden_size": m.dim,
          "num_hidden_layers": m.depth, "num_attention_heads": m.heads, "intermediate_size": int(m.dim * m.mlp_ratio),
          "hidden_act": "gelu", "hidden_dropout_prob": m.dropout, "attention_probs_dropout_prob": m.attn_dropout,
          "layer_norm_eps": m.norm_eps, "image_size": img.image_size, "patch_size": img.patch_size,
          "num_channels": img.in_chans, "use_mask_token": True, "use_absolute_position_embeddings": img.pos_embed != "none",
          "use_relative_position_bias": img.rel_pos_bias == "per_layer",
          "use_shared_relative_position_bias": img.rel_pos_bias == "shared", "layer_scale_init_value": m.layer_scale,
          "drop_path_rate": m.drop_path, "use_mean_pooling": mean, "initializer_range": 0.02}
    tensors = weights_to_hf(cfg, ours, pairs(cfg, with_pooler=head is not None), attention(cfg), QKV, key_bias=False)
    if img.pos_embed == "sincos":  # fixed positions become HF's learned ones, initialised to the same values
        tensors["embeddings.position_embeddings"] = fixed_positions(cfg, img.sincos_order)
        log.info("image.pos_embed=sincos exported as HF absolute position embeddings holding the sin-cos values")
    head_tensors = {"classifier.weight": head.fc.weight, "classifier.bias": head.fc.bias} if head is not None else {}
    hf, tensors = with_head(hf, tensors, VISION, head, head_tensors, "Data2VecVisionForImageClassification")
    return hf, tensors, {}
