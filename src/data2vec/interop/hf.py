"""Hugging Face `transformers` interop: Data2VecVision / Data2VecText / Data2VecAudio model folders <-> data2vec
checkpoints.

:func:`from_hf` reads a local model folder (``config.json`` and ``model.safetensors``, sharded or not, or
``pytorch_model.bin`` loaded with ``weights_only=True``) and writes a data2vec run folder holding one checkpoint;
:func:`to_hf` writes a folder that ``transformers.AutoModel.from_pretrained`` loads. Both read and write the files
directly, so converting needs no `transformers` (using the result in it needs the ``hf`` extra).

The layouts differ in names, in the attention projection (ours one fused QKV matrix, theirs query / key / value)
and in which optional pieces exist. Whatever an HF config asks for that our model cannot compute stops the
conversion with a :class:`Data2VecError` naming the option: a converted model computes what the original
computed, or conversion fails.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from pathlib import Path

import torch
from torch import Tensor

from data2vec.config import Config, build_config, save_config, to_dict
from data2vec.errors import Data2VecError

log = logging.getLogger("data2vec")

VISION, TEXT, AUDIO = "data2vec-vision", "data2vec-text", "data2vec-audio"
BASE_PREFIX = {VISION: "data2vec_vision.", TEXT: "data2vec_text.", AUDIO: "data2vec_audio."}  # inside task models
# transformers' defaults (5.24) for the keys we read, for a config.json that leaves some out
VISION_DEFAULTS = {
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
    "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "layer_norm_eps": 1e-12,
    "image_size": 224, "patch_size": 16, "num_channels": 3, "use_mask_token": False,
    "use_absolute_position_embeddings": False, "use_relative_position_bias": False,
    "use_shared_relative_position_bias": False, "layer_scale_init_value": 0.1, "drop_path_rate": 0.1,
    "use_mean_pooling": True,
}
TEXT_DEFAULTS = {
    "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 1,
    "bos_token_id": 0, "eos_token_id": 2, "is_decoder": False, "add_cross_attention": False,
    "position_embedding_type": "absolute", "classifier_dropout": None,
}
AUDIO_DEFAULTS = {
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
    "hidden_act": "gelu", "hidden_dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.1,
    "feat_proj_dropout": 0.0, "final_dropout": 0.1, "layerdrop": 0.1, "layer_norm_eps": 1e-5,
    "feat_extract_activation": "gelu", "conv_dim": [512] * 7, "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_bias": False, "num_conv_pos_embedding_groups": 16,
    "conv_pos_kernel_size": 19, "num_conv_pos_embeddings": 5, "vocab_size": 32, "pad_token_id": 0,
    "use_weighted_layer_sum": False, "add_adapter": False,
}
# ours that an HF file may lack (HF builds them only for masking): freshly initialised, used only by pretraining
OPTIONAL = {"frontend.mask_token", "frontend.masked_spec_embed"}
# buffers that some HF files hold and both sides recompute
IGNORED = re.compile(r"(relative_position_index|embeddings\.position_ids|embeddings\.token_type_ids)$")
DROPPED_WHY = {"pooler.dense": "RoBERTa's CLS pooler; data2vec text pools by the mean over tokens",
               "lm_head": "masked-LM head", "decode_head": "segmentation head", "auxiliary_head": "segmentation head",
               "fpn1": "segmentation head", "fpn2": "segmentation head",
               "classifier": "frame classification or x-vector head", "tdnn": "x-vector head", "objective": "x-vector head",
               "projector": "x-vector head", "feature_extractor": "x-vector head"}


# ---------------------------------------------------------------------------------------------- reading HF files

def read_hf_folder(folder: str | Path) -> tuple[dict, dict[str, Tensor]]:
    """(config.json as a dict, every tensor of the weights file(s)) of a local HF model folder."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise Data2VecError(f"'{folder}' has no config.json; give a local Hugging Face model folder (what "
                            "save_pretrained writes, e.g. a downloaded facebook/data2vec-vision-base)")
    try:
        config = json.loads((folder / "config.json").read_text())
    except ValueError as err:
        raise Data2VecError(f"'{folder / 'config.json'}' is not valid JSON ({err})") from None
    return config, _read_weights(folder)


def _read_weights(folder: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    for name, load in (("model.safetensors", lambda p: load_file(str(p))), ("pytorch_model.bin", _load_bin)):
        if (folder / name).is_file():
            return load(folder / name)
        index = folder / f"{name}.index.json"
        if index.is_file():  # sharded: the index maps each tensor to its shard file
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            weights: dict[str, Tensor] = {}
            for shard in shards:
                weights.update(load(folder / shard))
            return weights
    raise Data2VecError(f"'{folder}' has no model.safetensors or pytorch_model.bin (nor a sharded index of either)")


def _load_bin(path: Path) -> dict[str, Tensor]:
    try:  # weights_only: a pickle that would build arbitrary objects (run code) is refused
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise Data2VecError(f"refusing to load '{path}': it holds objects other than tensors "
                            f"({str(err).splitlines()[0][:120]}); ask for a model.safetensors instead") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise Data2VecError(f"'{path}' is not a state dict of tensors")
    return state


# ------------------------------------------------------------------------------------------ config translation

def _unsupported(option: str, value: object, why: str) -> Data2VecError:
    return Data2VecError(f"cannot convert: Hugging Face config option {option}={value!r} {why}")


def _cannot_export(key: str, value: object, why: str) -> Data2VecError:
    return Data2VecError(f"cannot export to Hugging Face: {key}={value!r} {why}")


def _square(hf: dict, key: str) -> int:
    value = hf.get(key, VISION_DEFAULTS[key])
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise _unsupported(key, value, "is not square; data2vec's image front-end takes square images and patches")
        value = value[0]
    return int(value)


def _encoder_fields(hf: dict, defaults: dict) -> dict:
    """EncoderConfig sizes from an HF config, checked for what our block computes."""
    get = lambda key: hf.get(key, defaults[key])  # noqa: E731
    if get("hidden_act") != "gelu":
        raise _unsupported("hidden_act", get("hidden_act"), "is not supported: data2vec blocks use exact GELU ('gelu')")
    dim, heads, hidden = int(get("hidden_size")), int(get("num_attention_heads")), int(get("intermediate_size"))
    if dim % heads:
        raise _unsupported("num_attention_heads", heads, f"does not divide hidden_size={dim}")
    if int(dim * (hidden / dim)) != hidden:
        raise _unsupported("intermediate_size", hidden, f"is not expressible as model.mlp_ratio x hidden_size={dim}")
    return {"dim": dim, "depth": int(get("num_hidden_layers")), "heads": heads, "mlp_ratio": hidden / dim,
            "norm_eps": float(get("layer_norm_eps")), "dropout": float(get("hidden_dropout_prob")),
            "attn_dropout": float(get("attention_probs_dropout_prob"))}


def _vision_config(hf: dict, weights: dict[str, Tensor]) -> Config:
    get = lambda key: hf.get(key, VISION_DEFAULTS[key])  # noqa: E731
    if get("use_relative_position_bias") and get("use_shared_relative_position_bias"):
        raise _unsupported("use_relative_position_bias", True, "together with use_shared_relative_position_bias=true "
                           "(both biases added) has no data2vec equivalent: image.rel_pos_bias is per_layer or shared")
    cfg = build_config("image-base")
    for key, value in _encoder_fields(hf, VISION_DEFAULTS).items():
        setattr(cfg.model, key, value)
    mean = bool(get("use_mean_pooling"))
    m, img = cfg.model, cfg.image
    m.norm_first, m.qkv_bias, m.final_norm = True, "qv", not mean  # BEiT block; no final norm under mean pooling
    m.layer_scale = max(float(get("layer_scale_init_value")), 0.0)
    m.drop_path = float(get("drop_path_rate"))
    img.image_size, img.patch_size, img.in_chans = _square(hf, "image_size"), _square(hf, "patch_size"), int(get("num_channels"))
    if img.image_size % img.patch_size:
        raise _unsupported("image_size", img.image_size, f"is not a multiple of patch_size={img.patch_size}")
    img.cls_token = True
    img.pos_embed = "learned" if get("use_absolute_position_embeddings") else "none"
    img.rel_pos_bias = ("per_layer" if get("use_relative_position_bias")
                        else "shared" if get("use_shared_relative_position_bias") else "none")
    img.pool = "mean" if mean else "cls"
    img.pool_norm = mean and "pooler.layernorm.weight" in weights  # only task models (and add_pooling_layer) have it
    return cfg


def _text_config(hf: dict, folder: Path) -> Config:
    get = lambda key: hf.get(key, TEXT_DEFAULTS[key])  # noqa: E731
    for key in ("is_decoder", "add_cross_attention"):
        if get(key):
            raise _unsupported(key, get(key), "is not supported: data2vec text models are bidirectional encoders")
    if get("position_embedding_type") != "absolute":
        raise _unsupported("position_embedding_type", get("position_embedding_type"),
                           "is not supported: data2vec text uses learned absolute positions (RoBERTa)")
    if get("pad_token_id") is None:
        raise _unsupported("pad_token_id", None, "leaves RoBERTa positions undefined (they start at pad_token_id + 1)")
    cfg = build_config("text-base")
    for key, value in _encoder_fields(hf, TEXT_DEFAULTS).items():
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


def _audio_config(hf: dict, weights: dict[str, Tensor], folder: Path) -> Config:
    get = lambda key: hf.get(key, AUDIO_DEFAULTS[key])  # noqa: E731
    if get("feat_extract_activation") != "gelu":
        raise _unsupported("feat_extract_activation", get("feat_extract_activation"),
                           "is not supported: the data2vec speech front-end uses exact GELU ('gelu')")
    # wav2vec 2.0 options that Data2VecAudio does not read: a config that sets them describes another model
    if hf.get("feat_extract_norm", "layer") != "layer":
        raise _unsupported("feat_extract_norm", hf["feat_extract_norm"], "is not supported: the data2vec speech "
                           "feature encoder has a LayerNorm in every conv layer ('layer')")
    if hf.get("do_stable_layer_norm"):
        raise _unsupported("do_stable_layer_norm", True, "(pre-LN) is not supported: data2vec speech blocks are "
                           "post-LN")
    if get("add_adapter"):
        raise _unsupported("add_adapter", True, "is not supported: data2vec has no adapter after the encoder")
    if get("use_weighted_layer_sum") and ("layer_weights" in weights or "classifier.weight" in weights):
        raise _unsupported("use_weighted_layer_sum", True, "is not supported: data2vec heads read the last layer")
    layers = int(get("num_conv_pos_embeddings"))
    if layers < 1:  # HF's empty stack returns its input, which doubles the features
        raise _unsupported("num_conv_pos_embeddings", layers, "is not supported: the data2vec speech front-end "
                           "needs at least one positional conv layer")
    dims, kernels, strides = (list(get(k)) for k in ("conv_dim", "conv_kernel", "conv_stride"))
    if not len(dims) == len(kernels) == len(strides) or not dims:
        raise _unsupported("conv_dim", dims, f"needs one conv_kernel ({kernels}) and conv_stride ({strides}) per "
                           "layer")
    fields = _encoder_fields({**hf, "hidden_dropout_prob": get("hidden_dropout"),
                              "attention_probs_dropout_prob": get("attention_dropout")},
                             {**AUDIO_DEFAULTS, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1})
    groups = int(get("num_conv_pos_embedding_groups"))
    if groups < 1 or fields["dim"] % groups:
        raise _unsupported("num_conv_pos_embedding_groups", groups, f"does not divide hidden_size={fields['dim']}")
    cfg = build_config("audio-base")
    for key, value in fields.items():
        setattr(cfg.model, key, value)
    m, a = cfg.model, cfg.audio
    m.norm_first, m.qkv_bias, m.layer_scale, m.drop_path, m.final_norm = False, "all", 0.0, 0.0, False  # post-LN
    activation_dropout = float(get("activation_dropout"))
    m.activation_dropout = None if activation_dropout == m.dropout else activation_dropout
    m.layer_drop = 0.0  # HF's layerdrop is not converted (below)
    a.conv_dim, a.conv_kernel = [int(d) for d in dims], [int(k) for k in kernels]
    a.conv_stride = [int(s) for s in strides]
    a.conv_bias = bool(get("conv_bias"))
    a.pos_conv_layers, a.pos_conv_kernel, a.pos_conv_groups = layers, int(get("conv_pos_kernel_size")), groups
    a.pos_conv_zero_padding = "once"  # as HF: padded frames zeroed before the first positional conv only
    a.feature_dropout = float(get("feat_proj_dropout"))
    if float(get("layerdrop")) > 0:
        log.info("layerdrop=%s is not converted (a training setting: set model.layer_drop or finetune.layer_drop)",
                 get("layerdrop"))
    preprocessor = folder / "preprocessor_config.json"
    if preprocessor.is_file():  # the feature extractor's input settings, when the folder has them
        try:
            pre = json.loads(preprocessor.read_text())
        except ValueError:
            pre = {}
        a.sample_rate = int(pre.get("sampling_rate", a.sample_rate))
        a.normalize = bool(pre.get("do_normalize", a.normalize))
    return cfg


# ---------------------------------------------------------------------------------------------- weight names

def _layer_pairs(hf_layer: str, our_block: str, names: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(f"{hf_layer}{a}.{t}", f"{our_block}{b}.{t}") for a, b in names for t in ("weight", "bias")]


def _vision_pairs(cfg: Config, with_pooler: bool = True) -> list[tuple[str, str]]:
    """(HF name, our name) of every vision tensor that maps one to one (the QKV projection is fused apart)."""
    img, m = cfg.image, cfg.model
    pairs = [("embeddings.cls_token", "frontend.cls_token"), ("embeddings.mask_token", "frontend.mask_token"),
             ("embeddings.patch_embeddings.projection.weight", "frontend.patch_embed.weight"),
             ("embeddings.patch_embeddings.projection.bias", "frontend.patch_embed.bias")]
    if img.pos_embed == "learned":
        pairs.append(("embeddings.position_embeddings", "frontend.pos_embed"))
    if img.rel_pos_bias == "shared":
        pairs.append(("encoder.relative_position_bias.relative_position_bias_table", "frontend.rel_pos.0.table"))
    for i in range(m.depth):
        h, o = f"encoder.layer.{i}.", f"encoder.blocks.{i}."
        pairs += _layer_pairs(h, o, [("layernorm_before", "norm1"), ("attention.output.dense", "attn.proj"),
                                     ("layernorm_after", "norm2"), ("intermediate.dense", "mlp.fc1"),
                                     ("output.dense", "mlp.fc2")])
        if m.layer_scale > 0:
            pairs += [(f"{h}lambda_1", f"{o}ls1.gamma"), (f"{h}lambda_2", f"{o}ls2.gamma")]
        if img.rel_pos_bias == "per_layer":
            pairs.append((f"{h}attention.attention.relative_position_bias.relative_position_bias_table",
                          f"frontend.rel_pos.{i}.table"))
    if m.final_norm:
        pairs += [("layernorm.weight", "encoder.norm.weight"), ("layernorm.bias", "encoder.norm.bias")]
    if img.pool_norm and with_pooler:
        pairs += [("pooler.layernorm.weight", "frontend.pool_norm.weight"),
                  ("pooler.layernorm.bias", "frontend.pool_norm.bias")]
    return pairs


def _text_pairs(cfg: Config) -> list[tuple[str, str]]:
    """(HF name, our name) of every text tensor that maps one to one (QKV and token types are handled apart)."""
    pairs = [("embeddings.word_embeddings.weight", "frontend.word_embeddings.weight"),
             ("embeddings.position_embeddings.weight", "frontend.position_embeddings.weight"),
             ("embeddings.LayerNorm.weight", "frontend.norm.weight"), ("embeddings.LayerNorm.bias", "frontend.norm.bias")]
    for i in range(cfg.model.depth):
        pairs += _layer_pairs(f"encoder.layer.{i}.", f"encoder.blocks.{i}.",
                              [("attention.output.dense", "attn.proj"), ("attention.output.LayerNorm", "norm1"),
                               ("intermediate.dense", "mlp.fc1"), ("output.dense", "mlp.fc2"),
                               ("output.LayerNorm", "norm2")])
    return pairs


def _audio_pairs(cfg: Config) -> list[tuple[str, str]]:
    """(HF name, our name) of every speech tensor that maps one to one (QKV is handled apart). Our front-end
    keeps HF's names; HF puts the positional convs and the LayerNorm after them in its encoder."""
    a = cfg.audio
    pairs = [("masked_spec_embed", "frontend.masked_spec_embed")]
    for i in range(len(a.conv_dim)):
        h = f"feature_extractor.conv_layers.{i}."
        pairs += [(f"{h}conv.weight", f"frontend.{h}conv.weight")]
        pairs += _layer_pairs(h, f"frontend.{h}", [("layer_norm", "layer_norm")])
        if a.conv_bias:
            pairs.append((f"{h}conv.bias", f"frontend.{h}conv.bias"))
    pairs += _layer_pairs("", "frontend.", [("feature_projection.layer_norm", "feature_projection.layer_norm"),
                                            ("feature_projection.projection", "feature_projection.projection")])
    convs = [f"pos_conv_embed.layers.{i}.conv" for i in range(a.pos_conv_layers)]
    pairs += _layer_pairs("encoder.", "frontend.", [(c, c) for c in convs] + [("layer_norm", "layer_norm")])
    for i in range(cfg.model.depth):
        pairs += _layer_pairs(f"encoder.layers.{i}.", f"encoder.blocks.{i}.",
                              [("attention.out_proj", "attn.proj"), ("layer_norm", "norm1"),
                               ("feed_forward.intermediate_dense", "mlp.fc1"), ("feed_forward.output_dense", "mlp.fc2"),
                               ("final_layer_norm", "norm2")])
    return pairs


def _attention_prefixes(cfg: Config) -> list[tuple[str, str]]:
    """(HF prefix of query/key/value, our attention prefix) per block."""
    if cfg.modality == "audio":
        return [(f"encoder.layers.{i}.attention.", f"encoder.blocks.{i}.attn.") for i in range(cfg.model.depth)]
    inner = "attention.attention." if cfg.modality == "image" else "attention.self."
    return [(f"encoder.layer.{i}.{inner}", f"encoder.blocks.{i}.attn.") for i in range(cfg.model.depth)]


def _qkv_names(cfg: Config) -> tuple[str, str, str]:
    return ("q_proj", "k_proj", "v_proj") if cfg.modality == "audio" else ("query", "key", "value")


def _take(weights: dict[str, Tensor], name: str, used: set[str]) -> Tensor:
    if name not in weights:
        raise Data2VecError(f"cannot convert: the weights lack '{name}', which config.json implies; the folder's "
                            "config.json and weights file do not belong together")
    used.add(name)
    return weights[name]


# ---------------------------------------------------------------------------------------------- HF -> ours

def from_hf(folder: str | Path, out: str | Path) -> Path:
    """Convert a local HF `Data2VecVision*` / `Data2VecText*` / `Data2VecAudio*` folder into a data2vec run folder
    `out` holding one checkpoint (step 0); returns the checkpoint path. `data2vec.load(out)` gives the encoder, a
    classifier or CTC head comes along as ``head.safetensors`` (:func:`data2vec.nn.heads.load_head`), and the run
    folder's
    ``config.yaml`` continues pretraining with ``data2vec pretrain OUT/config.yaml resume=auto``."""
    from data2vec.nn.heads import HEAD_FILE, head_file
    from data2vec.train.checkpoint import list_checkpoints

    folder, out = Path(folder), Path(out)
    if list_checkpoints(out):
        raise Data2VecError(f"'{out}' already holds checkpoints; give a new --out folder for the converted model")
    hf, raw = read_hf_folder(folder)
    model_type = hf.get("model_type")
    if model_type not in (VISION, TEXT, AUDIO):
        raise Data2VecError(f"'{folder}' holds a '{model_type}' model; data2vec converts {VISION}, {TEXT} and "
                            f"{AUDIO}")
    prefix = BASE_PREFIX[model_type]
    weights = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in raw.items()}
    used: set[str] = set()
    if model_type == VISION:
        cfg = _vision_config(hf, weights)
        ours = _weights_from_hf(cfg, weights, _vision_pairs(cfg), used)
    elif model_type == AUDIO:
        cfg = _audio_config(hf, weights, folder)
        ours = _weights_from_hf(cfg, weights, _audio_pairs(cfg), used)
    else:
        cfg = _text_config(hf, folder)
        ours = _weights_from_hf(cfg, weights, _text_pairs(cfg), used)
        token_types = _take(weights, "embeddings.token_type_embeddings.weight", used)
        if token_types.shape[0] > 1:
            log.warning("type_vocab_size=%d: keeping token type 0 only; data2vec text has no token type ids (HF "
                        "uses type 0 when token_type_ids is not passed)", token_types.shape[0])
        ours["frontend.token_type_embeddings.weight"] = token_types[:1]
    head = _head_from_hf(model_type, hf, weights, cfg.model.dim, used, folder)
    _warn_dropped(set(weights) - used)
    cfg.name = f"hf-{folder.resolve().name}"
    if isinstance(hf.get("data2vec"), dict):  # written by to_hf: our settings that HF's config has no room for
        _restore(cfg, hf["data2vec"], ours, headless=head is None)
    cfg.objective.top_k = min(cfg.objective.top_k, cfg.model.depth)  # the recipe's, for a model this deep
    cfg.out = str(out)
    extra = {HEAD_FILE: head_file(head)} if head is not None else {}
    if (folder / "tokenizer.json").is_file() and model_type == TEXT:
        extra["tokenizer.json"] = (folder / "tokenizer.json").read_bytes()
        cfg.text.tokenizer = str((out / "checkpoints" / "step_00000000" / "tokenizer.json").resolve())
    return _write_checkpoint(cfg, ours, out, extra)


def _restore(cfg: Config, stored: dict, ours: dict[str, Tensor], headless: bool) -> None:
    """Bring back what `to_hf` kept under config.json's "data2vec" key: the training sections whole, and the
    front-end choices HF computes identically (only where the weights still agree), so that a round trip
    ours -> HF -> ours gives the same config. The architecture itself always comes from HF's keys."""
    import yaml

    from data2vec.config import config_from_yaml_text
    from data2vec.nn.image import sincos_pos_embed

    try:
        saved = config_from_yaml_text(yaml.safe_dump(stored), source="config.json key 'data2vec'")
    except Data2VecError as err:
        log.warning("ignoring config.json key 'data2vec': %s", err)
        return
    if saved.modality != cfg.modality:
        return
    cfg.name, cfg.masking, cfg.objective, cfg.data, cfg.train = saved.name, saved.masking, saved.objective, saved.data, saved.train
    # training settings, which HF's config does not hold
    cfg.model.layer_drop, cfg.model.init = saved.model.layer_drop, saved.model.init
    if cfg.modality == "text":  # HF's RoBERTa has no key for it
        cfg.model.activation_dropout = saved.model.activation_dropout
    if cfg.modality == "image":
        if headless:  # HF's base model has no pooler, so our choice of pooling is free
            cfg.image.pool = saved.image.pool
        side = cfg.image.image_size // cfg.image.patch_size
        if saved.image.pos_embed == "sincos" and cfg.image.pos_embed == "learned":
            order = saved.image.sincos_order
            fixed = torch.cat([torch.zeros(1, cfg.model.dim),
                               sincos_pos_embed(cfg.model.dim, (side, side), order)]).unsqueeze(0)
            if torch.equal(ours["frontend.pos_embed"], fixed):
                cfg.image.pos_embed, cfg.image.sincos_order = "sincos", order
                del ours["frontend.pos_embed"]
    elif cfg.modality == "audio":  # input handling and the padding rule; the architecture stays HF's
        for key in ("pos_conv_zero_padding", "normalize", "sample_rate", "max_sample_size", "min_sample_size",
                    "max_batch_samples"):
            setattr(cfg.audio, key, getattr(saved.audio, key))
    elif cfg.modality == "text":
        cfg.text.mask_id, cfg.text.tokenizer = saved.text.mask_id, saved.text.tokenizer
        cfg.text.block_size = min(saved.text.block_size, cfg.text.max_positions - cfg.text.pad_id - 1)


def _weights_from_hf(cfg: Config, weights: dict[str, Tensor], pairs: list[tuple[str, str]],
                     used: set[str]) -> dict[str, Tensor]:
    """Our encoder tensors from HF's: renamed, and query / key / value fused into one projection."""
    ours = {mine: weights[theirs] for theirs, mine in pairs if theirs in weights}
    used.update(theirs for theirs, _ in pairs if theirs in weights)
    missing = [theirs for theirs, mine in pairs if theirs not in weights and mine not in OPTIONAL]
    if missing:
        _take(weights, missing[0], used)  # raises, naming it
    q, k, v = _qkv_names(cfg)
    for h, o in _attention_prefixes(cfg):
        ours[f"{o}qkv.weight"] = torch.cat([_take(weights, f"{h}{n}.weight", used) for n in (q, k, v)])
        if cfg.model.qkv_bias == "all":
            ours[f"{o}qkv.bias"] = torch.cat([_take(weights, f"{h}{n}.bias", used) for n in (q, k, v)])
        else:  # BEiT: no key bias (it would cancel in the softmax anyway)
            ours[f"{o}q_bias"] = _take(weights, f"{h}{q}.bias", used)
            ours[f"{o}v_bias"] = _take(weights, f"{h}{v}.bias", used)
    return ours


def _labels(hf: dict, n: int) -> list[str]:
    id2label = hf.get("id2label") or {}
    labels = [id2label.get(str(i), id2label.get(i)) for i in range(n)]
    return labels if all(isinstance(x, str) for x in labels) else [f"LABEL_{i}" for i in range(n)]


def _head_from_hf(model_type: str, hf: dict, weights: dict[str, Tensor], dim: int, used: set[str], folder: Path):
    """The image classifier (linear on the pooled features), RoBERTa sentence classifier, speech CTC head or
    utterance classifier, when present."""
    from data2vec.nn.heads import LinearClassifier, SentenceClassifier

    if model_type == AUDIO:
        return _audio_head_from_hf(hf, weights, dim, used, folder)

    if model_type == VISION and "classifier.weight" in weights:
        w, b = _take(weights, "classifier.weight", used), _take(weights, "classifier.bias", used)
        head = LinearClassifier(dim, w.shape[0], 0.0, _labels(hf, w.shape[0]))
        head.load_state_dict({"fc.weight": w, "fc.bias": b})
        return head
    if model_type == TEXT and "classifier.out_proj.weight" in weights:
        names = ("dense.weight", "dense.bias", "out_proj.weight", "out_proj.bias")
        state = {n: _take(weights, f"classifier.{n}", used) for n in names}
        dropout = hf.get("classifier_dropout")
        dropout = float(dropout if dropout is not None else hf.get("hidden_dropout_prob", 0.1))
        n = state["out_proj.weight"].shape[0]
        head = SentenceClassifier(dim, n, dropout, _labels(hf, n))
        head.load_state_dict(state)
        return head
    return None


def _audio_head_from_hf(hf: dict, weights: dict[str, Tensor], dim: int, used: set[str], folder: Path):
    """`Data2VecAudioForCTC`'s ``lm_head`` as a :class:`CTCHead`; `Data2VecAudioForSequenceClassification`'s
    projector and classifier as one :class:`LinearClassifier` (the mean over frames commutes with the
    projector, so classifier(mean(projector(h))) = (W_c W_p) mean(h) + W_c b_p + b_c)."""
    from data2vec.nn.heads import CTCHead, LinearClassifier

    if "lm_head.weight" in weights:
        if int(hf.get("pad_token_id", AUDIO_DEFAULTS["pad_token_id"]) or 0) != 0:
            raise _unsupported("pad_token_id", hf["pad_token_id"], "is the CTC blank of Data2VecAudioForCTC; "
                               "data2vec's CTC blank is index 0")
        w, b = _take(weights, "lm_head.weight", used), _take(weights, "lm_head.bias", used)
        head = CTCHead(dim, w.shape[0], float(hf.get("final_dropout", AUDIO_DEFAULTS["final_dropout"])),
                       _ctc_vocabulary(hf, folder, w.shape[0]))
        head.load_state_dict({"fc.weight": w, "fc.bias": b})
        return head
    if "projector.weight" in weights and "classifier.weight" in weights and "tdnn.0.kernel.weight" not in weights:
        wp, bp = _take(weights, "projector.weight", used).double(), _take(weights, "projector.bias", used).double()
        wc, bc = _take(weights, "classifier.weight", used).double(), _take(weights, "classifier.bias", used).double()
        dtype = weights["classifier.weight"].dtype
        # HF's head has no dropout; one exported by to_hf keeps ours in final_dropout, which HF's classifier ignores
        dropout = float(hf.get("final_dropout", 0.0)) if isinstance(hf.get("data2vec"), dict) else 0.0
        head = LinearClassifier(dim, wc.shape[0], dropout, _labels(hf, wc.shape[0]))
        head.load_state_dict({"fc.weight": (wc @ wp).to(dtype), "fc.bias": (wc @ bp + bc).to(dtype)})
        return head
    return None


def _ctc_vocabulary(hf: dict, folder: Path, n: int) -> list[str]:
    """The characters of the CTC head's outputs, from the tokenizer's ``vocab.json`` (token -> id), else
    ``id2label``, else ``LABEL_i`` with a warning."""
    path = folder / "vocab.json"
    if path.is_file():
        try:
            vocab = json.loads(path.read_text())
        except ValueError:
            vocab = None
        if isinstance(vocab, dict) and all(isinstance(i, int) for i in vocab.values()):
            by_id = {i: token for token, i in vocab.items()}
            if sorted(by_id) == list(range(n)):
                return [by_id[i] for i in range(n)]
        log.warning("'%s' is not a flat vocabulary of %d tokens numbered 0..%d; ignoring it", path, n, n - 1)
    labels = _labels(hf, n)
    if labels[0] == "LABEL_0":
        log.warning("no vocab.json beside config.json: the CTC head's %d outputs are labelled LABEL_0... "
                    "(decoding needs the characters; copy the tokenizer's vocab.json into the folder)", n)
    return labels


def _warn_dropped(names: set[str]) -> None:
    names = {n for n in names if not IGNORED.search(n)}
    if not names:
        return
    groups: dict[str, int] = {}
    for name in names:
        parts = name.split(".")
        key = ".".join(parts[:2]) if parts[0] == "pooler" else parts[0]
        groups[key] = groups.get(key, 0) + 1
    described = ", ".join(f"{k} ({DROPPED_WHY.get(k, 'no data2vec equivalent')}; {n} tensors)"
                          for k, n in sorted(groups.items()))
    log.warning("not converted, data2vec has no place for: %s", described)


def _write_checkpoint(cfg: Config, encoder_state: dict[str, Tensor], out: Path, extra: dict[str, bytes]) -> Path:
    """A checkpoint `data2vec.load` and `resume` accept: student and teacher both the converted encoder, a
    freshly initialised regression head, a fresh optimiser, step 0."""
    from data2vec.model import Data2Vec
    from data2vec.train.checkpoint import save_checkpoint
    from data2vec.train.loop import rng_state
    from data2vec.train.optim import build_optimizer

    with torch.random.fork_rng(devices=[]):  # the same file every time, and the caller's RNG untouched
        torch.manual_seed(cfg.train.seed)
        model = Data2Vec(cfg)
    state = model.student.state_dict()
    missing = set(state) - set(encoder_state)
    if missing - OPTIONAL or set(encoder_state) - set(state):  # a bug of ours, not the user's
        raise RuntimeError(f"HF conversion mapped {sorted(set(encoder_state) - set(state))}, "
                           f"left {sorted(missing)}")
    if missing:
        log.info("the Hugging Face model has no mask embedding (use_mask_token=false, or mask_time_prob=0 for "
                 "speech); data2vec's is freshly initialised (only pretraining uses it)")
    state.update(encoder_state)
    try:
        model.student.load_state_dict(state)
    except RuntimeError as err:  # shapes: config.json and the weights disagree
        raise Data2VecError(f"cannot convert: the weights do not fit config.json "
                            f"({str(err).splitlines()[-1].strip()[:200]})") from None
    model.teacher.load_state_dict(state)
    optimizer = build_optimizer(model.trainable_parameters(), cfg.train)
    train_state = {"step": 0, "optimizer": {"state": {}, "param_groups": _param_groups(model, optimizer)},
                   "rng": rng_state(), "world_size": 1}
    path = save_checkpoint(out, 0, model.state_dict(), train_state, cfg, extra_files=extra)
    save_config(cfg, out / "config.yaml")
    return path


def _param_groups(model, optimizer) -> list[dict]:
    """Optimiser groups keyed by parameter name, as `train.distributed.full_state` writes them."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[id(p)] for p in g["params"]]}
            for g in optimizer.param_groups]


# ---------------------------------------------------------------------------------------------- ours -> HF

def to_hf(checkpoint: str | Path, out: str | Path, which: str = "student") -> Path:
    """Write checkpoint (or run folder) `checkpoint` as an HF model folder `out` (``config.json`` and
    ``model.safetensors``); `which="teacher"` exports the EMA teacher. A checkpoint with a classifier becomes
    `Data2VecVisionForImageClassification` / `Data2VecTextForSequenceClassification` /
    `Data2VecAudioForSequenceClassification`, one with a CTC head `Data2VecAudioForCTC` (with the tokenizer's
    ``vocab.json``), one without a head `Data2VecVisionModel` / `Data2VecTextModel` / `Data2VecAudioModel`,
    which `AutoModel.from_pretrained(out)` loads. Speech also gets the feature extractor's
    ``preprocessor_config.json``."""
    from safetensors.torch import save_file

    from data2vec.nn.heads import load_head
    from data2vec.train.checkpoint import load_checkpoint, resolve_checkpoint

    path = resolve_checkpoint(checkpoint)
    weights, _, cfg = load_checkpoint(path, with_state=False)
    prefix = f"{which}."
    ours = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    if not ours:
        raise Data2VecError(f"checkpoint '{path}' has no '{which}' weights; use which=student or which=teacher")
    head = load_head(path)
    files: dict[str, dict] = {}  # other JSON files of the folder
    if cfg.model.alibi:
        raise _cannot_export("model.alibi", True, "is not expressible: Hugging Face's Data2Vec models have no "
                             "ALiBi attention bias")
    if cfg.modality == "image":
        hf, tensors = _vision_to_hf(cfg, ours, head)
    elif cfg.modality == "text":
        hf, tensors = _text_to_hf(cfg, ours, head)
    elif cfg.modality == "audio":
        hf, tensors, files = _audio_to_hf(cfg, ours, head)
    else:
        raise Data2VecError(f"cannot export a '{cfg.modality}' checkpoint to Hugging Face")
    hf["data2vec"] = to_dict(cfg)  # transformers keeps unknown keys; from_hf restores what HF cannot express
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
    for name, content in files.items():
        (out / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
    return out


def _split_qkv(cfg: Config, ours: dict[str, Tensor], o: str) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """(query, key, value) weights and biases of one block; absent biases are zeros."""
    weights = ours[f"{o}qkv.weight"].chunk(3)
    zero = torch.zeros(cfg.model.dim, dtype=weights[0].dtype)
    if cfg.model.qkv_bias == "all":
        return weights, ours[f"{o}qkv.bias"].chunk(3)
    if cfg.model.qkv_bias == "qv":
        return weights, (ours[f"{o}q_bias"], zero, ours[f"{o}v_bias"])
    return weights, (zero, zero, zero)


def _with_head(hf: dict, tensors: dict[str, Tensor], model_type: str, head, head_tensors: dict[str, Tensor],
               arch: str) -> tuple[dict, dict[str, Tensor]]:
    """A task model: base weights under the base-model prefix, the head's beside them, labels in the config."""
    if head is None:
        return hf, tensors
    hf["architectures"] = [arch]
    hf["id2label"] = {str(i): label for i, label in enumerate(head.labels)}
    hf["label2id"] = {label: i for i, label in enumerate(head.labels)}
    prefixed = {BASE_PREFIX[model_type] + k: v for k, v in tensors.items()}
    return hf, {**prefixed, **head_tensors}


def _vision_to_hf(cfg: Config, ours: dict[str, Tensor], head) -> tuple[dict, dict[str, Tensor]]:
    from data2vec.nn.image import sincos_pos_embed

    m, img = cfg.model, cfg.image
    if not m.norm_first:
        raise _cannot_export("model.norm_first", False, "(post-LN): Data2VecVision blocks are pre-LN (BEiT)")
    if not img.cls_token:
        raise _cannot_export("image.cls_token", False, "is not expressible: Data2VecVision always has a CLS token")
    if img.embed_norm:
        raise _cannot_export("image.embed_norm", True, "is not expressible: Data2VecVision has no LayerNorm before "
                             "its first block")
    mean = not m.final_norm  # HF: use_mean_pooling drops the final LayerNorm
    if head is not None and not ((mean and img.pool == "mean" and img.pool_norm)
                                 or (not mean and img.pool == "cls" and not img.pool_norm)):
        raise _cannot_export("image.pool", img.pool, f"with model.final_norm={m.final_norm} and image.pool_norm="
                             f"{img.pool_norm}: Data2VecVisionForImageClassification classifies either LayerNorm(mean "
                             "of patch tokens) without a final norm (final_norm=false, pool=mean, pool_norm=true) or "
                             "the final-normed CLS token (final_norm=true, pool=cls, pool_norm=false)")
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
    tensors = {theirs: ours[mine] for theirs, mine in _vision_pairs(cfg, with_pooler=head is not None)}
    if img.pos_embed == "sincos":  # fixed positions become HF's learned ones, initialised to the same values
        side = img.image_size // img.patch_size
        tensors["embeddings.position_embeddings"] = torch.cat(
            [torch.zeros(1, m.dim), sincos_pos_embed(m.dim, (side, side), img.sincos_order)]).unsqueeze(0)
        log.info("image.pos_embed=sincos exported as HF absolute position embeddings holding the sin-cos values")
    for h, o in _attention_prefixes(cfg):
        (wq, wk, wv), (bq, bk, bv) = _split_qkv(cfg, ours, o)
        tensors.update({f"{h}query.weight": wq, f"{h}key.weight": wk, f"{h}value.weight": wv,
                        f"{h}query.bias": bq, f"{h}value.bias": bv})  # no key bias in BEiT: softmax cancels it
    head_tensors = {"classifier.weight": head.fc.weight, "classifier.bias": head.fc.bias} if head is not None else {}
    return _with_head(hf, tensors, VISION, head, head_tensors, "Data2VecVisionForImageClassification")


def _text_to_hf(cfg: Config, ours: dict[str, Tensor], head) -> tuple[dict, dict[str, Tensor]]:
    m, t = cfg.model, cfg.text
    if head is not None and head.kind != "sentence":
        raise _cannot_export("finetune.head", head.kind, "is not expressible: Data2VecTextForSequenceClassification "
                             "has RoBERTa's sentence head on <s>; fine-tune with finetune.head=sentence")
    if m.norm_first:
        raise _cannot_export("model.norm_first", True, "(pre-LN): Data2VecText blocks are post-LN (RoBERTa)")
    if m.layer_scale > 0:
        raise _cannot_export("model.layer_scale", m.layer_scale, "is not expressible: Data2VecText blocks have no layer scale")
    if t.embed_norm_eps != m.norm_eps:
        raise _cannot_export("text.embed_norm_eps", t.embed_norm_eps, f"differs from model.norm_eps={m.norm_eps}: "
                             "Data2VecText has one layer_norm_eps for all its LayerNorms")
    hf = {"model_type": TEXT, "architectures": ["Data2VecTextModel"], "vocab_size": t.vocab_size, "hidden_size": m.dim,
          "num_hidden_layers": m.depth, "num_attention_heads": m.heads, "intermediate_size": int(m.dim * m.mlp_ratio),
          "hidden_act": "gelu", "hidden_dropout_prob": m.dropout, "attention_probs_dropout_prob": m.attn_dropout,
          "max_position_embeddings": t.max_positions, "type_vocab_size": 1, "layer_norm_eps": m.norm_eps,
          "pad_token_id": t.pad_id, "bos_token_id": t.bos_id, "eos_token_id": t.eos_id, "initializer_range": 0.02,
          "classifier_dropout": head.dropout.p if head is not None else None}
    tensors = {theirs: ours[mine] for theirs, mine in _text_pairs(cfg)}
    tensors["embeddings.token_type_embeddings.weight"] = ours["frontend.token_type_embeddings.weight"]
    for h, o in _attention_prefixes(cfg):
        (wq, wk, wv), (bq, bk, bv) = _split_qkv(cfg, ours, o)
        tensors.update({f"{h}query.weight": wq, f"{h}key.weight": wk, f"{h}value.weight": wv,
                        f"{h}query.bias": bq, f"{h}key.bias": bk, f"{h}value.bias": bv})
    if head is None:  # AutoModel builds RoBERTa's CLS pooler, which data2vec does not have: HF's initialisation
        generator = torch.Generator().manual_seed(0)
        tensors["pooler.dense.weight"] = torch.randn(m.dim, m.dim, generator=generator) * 0.02
        tensors["pooler.dense.bias"] = torch.zeros(m.dim)
        log.info("Data2VecTextModel's pooler (dense + tanh on <s>) is freshly initialised: data2vec has none")
        return hf, tensors
    head_tensors = {f"classifier.{k}": v for k, v in head.state_dict().items()}
    return _with_head(hf, tensors, TEXT, head, head_tensors, "Data2VecTextForSequenceClassification")


def _audio_to_hf(cfg: Config, ours: dict[str, Tensor], head) -> tuple[dict, dict[str, Tensor], dict[str, dict]]:
    m, a = cfg.model, cfg.audio
    if m.norm_first:
        raise _cannot_export("model.norm_first", True, "(pre-LN): Data2VecAudio blocks are post-LN")
    if m.layer_scale > 0:
        raise _cannot_export("model.layer_scale", m.layer_scale, "is not expressible: Data2VecAudio blocks have no "
                             "layer scale")
    if a.pos_conv_layers < 1:
        raise _cannot_export("audio.pos_conv_layers", a.pos_conv_layers, "is not expressible: Data2VecAudio with "
                             "num_conv_pos_embeddings=0 adds its input to itself instead of nothing")
    if head is not None and head.kind == "sentence":
        raise _cannot_export("finetune.head", head.kind, "is not expressible for speech: Data2VecAudio classifies the "
                             "mean over frames (finetune.head=linear)")
    if a.pos_conv_zero_padding == "every_layer" and a.pos_conv_layers > 1:
        log.warning("audio.pos_conv_zero_padding=every_layer: Hugging Face zeroes padded frames only before the "
                    "first positional conv layer; outputs are identical without padding, but on a padded batch the "
                    "shorter utterances' frames differ slightly (from_hf of the export restores the setting)")
    hf = {"model_type": AUDIO, "architectures": ["Data2VecAudioModel"], "hidden_size": m.dim,
          "num_hidden_layers": m.depth, "num_attention_heads": m.heads, "intermediate_size": int(m.dim * m.mlp_ratio),
          "hidden_act": "gelu", "hidden_dropout": m.dropout,
          "activation_dropout": m.dropout if m.activation_dropout is None else m.activation_dropout,
          "attention_dropout": m.attn_dropout, "feat_proj_dropout": a.feature_dropout, "layerdrop": 0.0,
          "layer_norm_eps": m.norm_eps, "feat_extract_activation": "gelu", "conv_dim": list(a.conv_dim),
          "conv_kernel": list(a.conv_kernel), "conv_stride": list(a.conv_stride), "conv_bias": a.conv_bias,
          "num_conv_pos_embeddings": a.pos_conv_layers, "conv_pos_kernel_size": a.pos_conv_kernel,
          "num_conv_pos_embedding_groups": a.pos_conv_groups, "mask_time_prob": 0.05,  # HF keeps masked_spec_embed
          "initializer_range": 0.02, "use_weighted_layer_sum": False, "add_adapter": False}
    tensors = {theirs: ours[mine] for theirs, mine in _audio_pairs(cfg)}
    q, k, v = _qkv_names(cfg)
    for h, o in _attention_prefixes(cfg):
        (wq, wk, wv), (bq, bk, bv) = _split_qkv(cfg, ours, o)
        tensors.update({f"{h}{q}.weight": wq, f"{h}{k}.weight": wk, f"{h}{v}.weight": wv,
                        f"{h}{q}.bias": bq, f"{h}{k}.bias": bk, f"{h}{v}.bias": bv})
    files = {"preprocessor_config.json": {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1, "sampling_rate": a.sample_rate,
        "padding_value": 0.0, "padding_side": "right", "do_normalize": a.normalize, "return_attention_mask": True}}
    if head is None:
        return hf, tensors, files
    hf["final_dropout"] = head.dropout.p
    if head.kind == "ctc":  # blank = pad = index 0; the vocabulary as the tokenizer's vocab.json
        hf.update(vocab_size=len(head.labels), pad_token_id=0, bos_token_id=None, eos_token_id=None)
        hf["architectures"] = ["Data2VecAudioForCTC"]
        files["vocab.json"] = {label: i for i, label in enumerate(head.labels)}
        files["tokenizer_config.json"] = {
            "tokenizer_class": "Wav2Vec2CTCTokenizer", "pad_token": head.labels[0], "unk_token": head.labels[0],
            "bos_token": None, "eos_token": None, "word_delimiter_token": "|", "do_lower_case": False}
        prefixed = {BASE_PREFIX[AUDIO] + name: value for name, value in tensors.items()}
        return hf, {**prefixed, "lm_head.weight": head.fc.weight, "lm_head.bias": head.fc.bias}, files
    # utterance classifier: HF's projector (to classifier_proj_size) is the identity, its classifier ours
    hf["classifier_proj_size"] = m.dim
    head_tensors = {"projector.weight": torch.eye(m.dim, dtype=head.fc.weight.dtype),
                    "projector.bias": torch.zeros(m.dim, dtype=head.fc.bias.dtype),
                    "classifier.weight": head.fc.weight, "classifier.bias": head.fc.bias}
    hf, tensors = _with_head(hf, tensors, AUDIO, head, head_tensors, "Data2VecAudioForSequenceClassification")
    return hf, tensors, files
