"""Image models that `transformers`' Data2VecVision cannot compute <-> a folder with model code shipped beside
the weights (``hf_code/modeling_data2vec2_vision.py``), loaded with ``trust_remote_code=True``.

Meta's data2vec 2.0 image encoder is post-LN with a LayerNorm on the tokens before the first block; no
`transformers` vision class is (BEiT / Data2VecVision blocks are pre-LN). :func:`export` writes such a model
(and any other of ours without relative position bias: no CLS token, a classifier on an unnormalised mean)
as model type ``data2vec2-vision``, whose code computes what our encoder computes; the tensor names mirror ours.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from data2vec.config import Config, build_config
from data2vec.data.image import meta_eval_crop_pct, meta_normalization
from data2vec.interop.hf.common import (
    VISION2,
    cannot_export,
    encoder_fields,
    fixed_positions,
    fit_decoder,
    labels,
    layer_pairs,
    log,
    split_qkv,
    take,
    unsupported,
    with_head,
)
from data2vec.interop.hf.pipeline import eval_crop_pct_from_processor, normalization_from_processor
from data2vec.interop.hf_code import code_files

CONFIG_FILE, MODEL_FILE = "configuration_data2vec2_vision.py", "modeling_data2vec2_vision.py"
BASE_ARCH, CLASSIFIER_ARCH = "Data2Vec2VisionModel", "Data2Vec2VisionForImageClassification"
# the model code's defaults (configuration_data2vec2_vision.py), for a config.json that leaves some out
VISION2_DEFAULTS = {
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
    "hidden_act": "gelu", "layer_norm_eps": 1e-6, "image_size": 224, "patch_size": 16, "num_channels": 3,
    "layer_norm_first": False, "layer_scale_init_value": 0.0, "use_cls_token": True, "position_embeddings": "fixed",
    "use_embed_norm": True, "use_final_norm": False, "pooling": "mean", "use_pool_norm": False,
    "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "activation_dropout": 0.0,
    "drop_path_rate": 0.0,
}


def pairs(cfg: Config) -> list[tuple[str, str]]:
    """(HF name, our name) of every tensor that maps one to one (the QKV bias and sin-cos positions apart)."""
    m, img = cfg.model, cfg.image
    out = [("embeddings.patch_embeddings.weight", "frontend.patch_embed.weight"),
           ("embeddings.patch_embeddings.bias", "frontend.patch_embed.bias")]
    if img.cls_token:
        out.append(("embeddings.cls_token", "frontend.cls_token"))
    if img.pos_embed == "learned":
        out.append(("embeddings.position_embeddings", "frontend.pos_embed"))
    if img.embed_norm:
        out += layer_pairs("embeddings.", "frontend.", [("layernorm", "embed_norm")])
    for i in range(m.depth):
        h, o = f"encoder.layer.{i}.", f"encoder.blocks.{i}."
        out += layer_pairs(h, o, [("norm1", "norm1"), ("attention.proj", "attn.proj"), ("norm2", "norm2"),
                                  ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")])
        out.append((f"{h}attention.qkv.weight", f"{o}attn.qkv.weight"))
        if m.layer_scale > 0:
            out += [(f"{h}lambda_1", f"{o}ls1.gamma"), (f"{h}lambda_2", f"{o}ls2.gamma")]
    if m.norm_first and m.final_norm:
        out += layer_pairs("", "encoder.", [("layernorm", "norm")])
    if img.pool_norm:
        out += layer_pairs("pooler.", "frontend.", [("layernorm", "pool_norm")])
    return out


# ---------------------------------------------------------------------------------------------- ours -> HF

def export(cfg: Config, ours: dict[str, Tensor], head) -> tuple[dict, dict[str, Tensor], dict[str, str]]:
    """(config.json, tensors, model code files) of `Data2Vec2VisionModel`, or
    `Data2Vec2VisionForImageClassification` with a linear head."""
    m, img = cfg.model, cfg.image
    if img.rel_pos_bias != "none":
        raise cannot_export("image.rel_pos_bias", img.rel_pos_bias, "is not expressible in the data2vec 2.0 model "
                            "code that --to-hf ships (it has no relative position bias)")
    hf = {"model_type": VISION2, "architectures": [BASE_ARCH], "hidden_size": m.dim, "num_hidden_layers": m.depth,
          "num_attention_heads": m.heads, "intermediate_size": int(m.dim * m.mlp_ratio), "hidden_act": "gelu",
          "layer_norm_eps": m.norm_eps, "image_size": img.image_size, "patch_size": img.patch_size,
          "num_channels": img.in_chans, "layer_norm_first": m.norm_first, "layer_scale_init_value": m.layer_scale,
          "use_cls_token": img.cls_token,
          "position_embeddings": {"sincos": "fixed", "learned": "learned", "none": "none"}[img.pos_embed],
          "use_embed_norm": img.embed_norm, "use_final_norm": m.norm_first and m.final_norm, "pooling": img.pool,
          "use_pool_norm": img.pool_norm, "hidden_dropout_prob": m.dropout,
          "attention_probs_dropout_prob": m.attn_dropout,
          "activation_dropout": m.dropout if m.activation_dropout is None else m.activation_dropout,
          "drop_path_rate": m.drop_path, "initializer_range": 0.02,
          "auto_map": {"AutoConfig": f"{Path(CONFIG_FILE).stem}.Data2Vec2VisionConfig",
                       "AutoModel": f"{Path(MODEL_FILE).stem}.{BASE_ARCH}",
                       "AutoModelForImageClassification": f"{Path(MODEL_FILE).stem}.{CLASSIFIER_ARCH}"}}
    tensors = {theirs: ours[mine] for theirs, mine in pairs(cfg)}
    if img.pos_embed == "sincos":
        tensors["embeddings.position_embeddings"] = fixed_positions(cfg, img.sincos_order)
    for i in range(m.depth):
        _, (bq, bk, bv) = split_qkv(cfg, ours, f"encoder.blocks.{i}.attn.")
        tensors[f"encoder.layer.{i}.attention.qkv.bias"] = torch.cat([bq, bk, bv])  # absent biases are zeros
    files = code_files(CONFIG_FILE, MODEL_FILE)
    log.info("exported with the data2vec 2.0 image model code (%s); load it with trust_remote_code=True",
             MODEL_FILE)
    if head is None:
        return hf, tensors, files
    if head.kind != "linear":
        raise cannot_export("finetune.head", head.kind, "is not expressible: the image classifier is linear")
    hf["classifier_dropout"] = head.dropout.p
    head_tensors = {"classifier.weight": head.fc.weight, "classifier.bias": head.fc.bias}
    hf, tensors = with_head(hf, tensors, VISION2, head, head_tensors, CLASSIFIER_ARCH)
    return hf, tensors, files


# ---------------------------------------------------------------------------------------------- HF -> ours

def config_from_hf(hf: dict, weights: dict[str, Tensor], folder: Path) -> Config:
    """Our image config for a ``data2vec2-vision`` config.json; fixed positions that are our sin-cos values
    (either order) become ``image.pos_embed=sincos`` again."""
    get = lambda key: hf.get(key, VISION2_DEFAULTS[key])  # noqa: E731
    cfg = build_config("image-base-v2")
    for key, value in encoder_fields(hf, VISION2_DEFAULTS).items():
        setattr(cfg.model, key, value)
    m, img = cfg.model, cfg.image
    m.norm_first, m.qkv_bias, m.layer_scale = bool(get("layer_norm_first")), "all", float(get("layer_scale_init_value"))
    m.final_norm = bool(get("use_final_norm")) if m.norm_first else False
    m.drop_path = float(get("drop_path_rate"))
    activation_dropout = float(get("activation_dropout"))
    m.activation_dropout = None if activation_dropout == m.dropout else activation_dropout
    img.image_size, img.patch_size = int(get("image_size")), int(get("patch_size"))
    img.in_chans = int(get("num_channels"))
    if img.image_size % img.patch_size:
        raise unsupported("image_size", img.image_size, f"is not a multiple of patch_size={img.patch_size}")
    img.cls_token, img.embed_norm = bool(get("use_cls_token")), bool(get("use_embed_norm"))
    img.pool, img.pool_norm, img.rel_pos_bias = str(get("pooling")), bool(get("use_pool_norm")), "none"
    fit_decoder(cfg)
    # the folder's own resize + centre crop when it has one, else Meta's (fairseq data2vec 2.0's evaluation)
    cfg.data.eval_crop_pct = (eval_crop_pct_from_processor(folder, img.image_size)
                              or meta_eval_crop_pct(img.image_size, v2=True))
    cfg.data.image_mean, cfg.data.image_std = (normalization_from_processor(folder)  # else fairseq's: ImageNet's
                                               or meta_normalization(v2=True, finetuned=False))
    kind = get("position_embeddings")
    if kind not in ("fixed", "learned", "none"):
        raise unsupported("position_embeddings", kind, "is not one of fixed, learned, none")
    img.pos_embed = "none" if kind == "none" else "learned"
    stored = weights.get("embeddings.position_embeddings")
    if kind == "fixed" and stored is not None:
        for order in ("xy", "yx"):
            fixed = fixed_positions(cfg, order)
            if stored.shape == fixed.shape and torch.equal(stored, fixed):
                img.pos_embed, img.sincos_order = "sincos", order
                break
        else:
            log.warning("position_embeddings=fixed holds values other than data2vec's sin-cos positions: "
                        "converted as learned positions (image.pos_embed=learned)")
    return cfg


def encoder_from_hf(cfg: Config, weights: dict[str, Tensor], used: set[str]) -> dict[str, Tensor]:
    """Our encoder's tensors; the fused QKV bias keeps the key bias (zero when it came from ours)."""
    ours = {mine: take(weights, theirs, used) for theirs, mine in pairs(cfg)}
    if cfg.image.pos_embed == "sincos":
        take(weights, "embeddings.position_embeddings", used)  # recomputed by our front-end
    for i in range(cfg.model.depth):
        ours[f"encoder.blocks.{i}.attn.qkv.bias"] = take(weights, f"encoder.layer.{i}.attention.qkv.bias", used)
    return ours


def head_from_hf(hf: dict, weights: dict[str, Tensor], dim: int, used: set[str], folder: Path):
    """The linear classifier on the pooled output, when present."""
    from data2vec.nn.heads import LinearClassifier

    if "classifier.weight" not in weights:
        return None
    w, b = take(weights, "classifier.weight", used), take(weights, "classifier.bias", used)
    head = LinearClassifier(dim, w.shape[0], float(hf.get("classifier_dropout") or 0.0), labels(hf, w.shape[0]))
    head.load_state_dict({"fc.weight": w, "fc.bias": b})
    return head


def restore(cfg: Config, saved: Config, ours: dict[str, Tensor], headless: bool) -> None:
    """config.json holds every architecture choice; only ``model.final_norm`` of a post-LN model, which
    computes nothing there (post-LN blocks end in a LayerNorm already), comes back from the saved config."""
    if not cfg.model.norm_first:
        cfg.model.final_norm = saved.model.final_norm

