"""fairseq's data2vec 2.0 model settings (`Data2VecMultiConfig` and its modality section) -> our :class:`Config`.

Every key of fairseq's model section, of the modality's section and of its decoder is judged in one
:class:`~data2vec.interop.fairseq.common.Settings` per section: mapped onto one of our keys (`_encoder`,
`_objective`, `_masking` and the front-end functions), required to hold the one value we compute (anything
else stops the conversion naming the key), training only (not carried, logged and listed in ``fairseq.json``)
or ignored. The rest of the config starts from our recipe of that modality and size, with the file's optimiser
settings over it (:func:`~data2vec.interop.fairseq.common.train_overrides`, given by the caller).
"""

from __future__ import annotations

import math

from data2vec.config import Config, from_dict, load_recipe, merge, parse_overrides
from data2vec.errors import Data2VecError
from data2vec.interop.fairseq.common import Settings, conv_layers, unsupported

MODALITIES = {"IMAGE": "image", "AUDIO": "audio", "TEXT": "text"}
_OFF = "changes only how fairseq pretrained"
_GRAD_MULT = "scales the conv feature encoder's gradient (0: frozen, as finetune.freeze_frontend_steps=-1)"


def _model_settings() -> Settings:
    return Settings(
        "model",
        mapped={"loss_beta", "loss_scale", "depth", "num_heads", "norm_eps", "encoder_dropout", "attention_dropout",
                "activation_dropout", "layerdrop", "embed_dim", "mlp_ratio", "average_top_k_layers",
                "end_of_block_targets", "clone_batch", "layer_norm_target_layer", "instance_norm_target_layer",
                "instance_norm_targets", "layer_norm_targets", "ema_decay", "ema_end_decay", "ema_anneal_end_step",
                "ema_encoder_only", "cls_loss", "end_drop_path_rate", "post_mlp_drop", "supported_modality", "modalities"},
        required={"norm_affine": ((True,), "is a LayerNorm without scale and shift"),
                  "layer_norm_first": ((False,), "makes the v2 blocks pre-LN (every released v2 model is post-LN)"),
                  "shared_decoder": ((None,), "is a decoder shared by several modalities")},
        training={"start_drop_path_rate": (0.0, "starts the drop-path schedule; ours starts at 0"),
                  "dropout_input": (0.0, "is a dropout before the blocks"),
                  "batch_norm_target_layer": (False, _OFF), "recon_loss": (0.0, _OFF), "d2v_loss": (1.0, _OFF),
                  "decoder_group": (False, "is an optimizer group of the decoder")},
        # min_target_var / min_pred_var stop a collapsed run (ours warns: train.collapse_var)
        ignored={"min_target_var", "min_pred_var", "_name", "ema_same_dtype", "log_norms", "max_update", "mae_init", "seed", "skip_ema"})


def _modality_settings(modality: str) -> Settings:
    per = {"image": ({"input_size", "in_chans", "patch_size", "embed_dim", "fixed_positions"},
                     {"transformer_decoder": ((False,), "is a Transformer decoder"),
                      "enc_dec_transformer": ((False,), "is a Transformer decoder")}, {"alibi_dims", "alibi_distance"}),
           "audio": ({"feature_encoder_spec", "conv_pos_width", "conv_pos_groups", "conv_pos_depth"},
                     {"extractor_mode": (("layer_norm",), "is a feature encoder with group norm (ours: layer norm)"),
                      "conv_pos_pre_ln": ((False,), "is a LayerNorm before the positional convs")}, set()),
           "text": ({"max_source_positions", "dropout"},
                    {"learned_pos": ((True,), "are fixed sinusoidal positions"),
                     "no_scale_embedding": ((True,), "scales the token embeddings"),
                     "layernorm_embedding": ((True,), "leaves out the embeddings' LayerNorm"),
                     "no_token_positional_embeddings": ((False,), "leaves out the positions")}, set())}
    mapped, required, ignored = per[modality]
    return Settings(
        f"model.modalities.{modality}",
        mapped=mapped | {"prenet_depth", "num_extra_tokens", "mask_noise_std", "mask_prob", "inverse_mask",
                         "mask_prob_adjust", "mask_length", "ema_local_encoder", "use_alibi_encoder", "learned_alibi_scale",
                         "learned_alibi_scale_per_head", "decoder", "prenet_dropout", "prenet_layerdrop"},
        required={**required, "learned_alibi": ((False,), "is a learned ALiBi bias table"),
                  "learned_alibi_scale_per_layer": ((False,), "is an ALiBi scale per layer (ours: per head)")},
        training={"mask_prob_min": (None, "draws the mask ratio at random"), "keep_masked_pct": (0.0, _OFF),
                  "add_masks": (False, _OFF), "remove_masks": (False, _OFF), "mask_dropout": (0.0, _OFF),
                  "mask_channel_prob": (0.0, "masks channels"), "local_grad_mult": (1.0, _GRAD_MULT),
                  "start_drop_path_rate": (0.0, "is the prenet's drop-path schedule"),
                  "end_drop_path_rate": (0.0, "is the prenet's drop-path schedule")},
        ignored=ignored | {"type", "init_extra_token_zero", "model_depth", "num_alibi_heads", "mask_channel_length",
                           "alibi_max_pos", "alibi_scale", "encoder_zero_mask"})


def _decoder_settings(modality: str) -> Settings:
    return Settings(
        f"model.modalities.{modality}.decoder",
        mapped={"decoder_dim", "decoder_groups", "decoder_kernel", "decoder_layers", "input_dropout",
                "decoder_residual", "projection_layers"},
        required={"projection_ratio": ((2.0, 2), "sizes the projection's hidden layer (ours: 2x)")},
        training={"add_positions_masked": (False, _OFF), "add_positions_all": (False, _OFF),
                  "final_layer_norm": (False, "is a LayerNorm after the decoder")})


def modality_of(model: dict) -> str:
    """Our modality name of a `data2vec_multi` model section."""
    mode = model.get("supported_modality")
    if mode not in MODALITIES:
        raise unsupported("model.supported_modality", mode, "is a model of several modalities (or none)")
    return MODALITIES[mode]


def check(model: dict, modality: str, dropped: list[str]) -> None:
    """Judge every key of the model section, the modality's section and its decoder (see the module docstring)."""
    mod = model["modalities"][modality]
    _model_settings().check(model, dropped)
    _modality_settings(modality).check(mod, dropped)
    if mod.get("decoder") is not None:
        _decoder_settings(modality).check(mod["decoder"], dropped)


def build(model: dict, task: dict, sizes: dict[str, int], dropped: list[str], train: list[str]) -> Config:
    """Our config for fairseq model section `model` (a `data2vec_multi` one, fine-tuning overrides applied) and
    task section `task`; `sizes` holds what only the weights say (text vocabulary and positions), `train` the
    file's optimizer settings as `train.*=value` overrides. Training-only settings ours cannot hold are appended
    to `dropped`."""
    modality = modality_of(model)
    mod = model["modalities"][modality]
    check(model, modality, dropped)
    prenet = int(mod["prenet_depth"])
    if prenet and modality == "text":
        raise unsupported("model.modalities.text.prenet_depth", prenet,
                          "puts a LayerNorm and blocks after the embeddings (ours: the embeddings' LayerNorm only)")
    if model.get("ema_encoder_only", True) and prenet:
        raise unsupported("model.ema_encoder_only", True, "leaves the prenet blocks out of the teacher")
    size = "large" if int(model["embed_dim"]) >= 1024 else "base"
    data = merge(load_recipe(f"{modality}-{size}-v2"), {
        "model": _encoder(model, mod, modality, dropped),
        "masking": _masking(mod, modality),
        "objective": _objective(model, mod, modality),
        modality: {"image": _image, "audio": _audio, "text": _text}[modality](model, mod, task, sizes),
    })
    try:
        return from_dict(Config, merge(data, parse_overrides(train)))
    except Data2VecError as err:  # a value of the file that our config refuses: say where it came from
        raise Data2VecError(f"cannot convert: the fairseq settings give an invalid data2vec config ({err})") from None


def _encoder(model: dict, mod: dict, modality: str, dropped: list[str]) -> dict:
    """The Transformer's sizes and rates. fairseq has one dropout after attention (encoder_dropout), one after
    the FFN (post_mlp_drop) and one after the modality encoder's LayerNorm; ours is one rate (model.dropout):
    where they differ, the others are listed as not carried."""
    prenet = int(mod["prenet_depth"])
    others = {"model.post_mlp_drop": model["post_mlp_drop"]}
    if modality != "text":  # BlockEncoder's dropout after the LayerNorm, prenet or not (images: none of ours)
        others[f"model.modalities.{modality}.prenet_dropout"] = mod["prenet_dropout"]
    if modality == "text":  # the dropout after the embeddings' LayerNorm
        others["model.modalities.text.dropout"] = mod["dropout"]
    if prenet:
        others[f"model.modalities.{modality}.prenet_layerdrop"] = mod["prenet_layerdrop"]
    dropout, layer_drop = float(model["encoder_dropout"]), float(model["layerdrop"])
    for key, value in others.items():
        ours = layer_drop if key.endswith("layerdrop") else 0.0 if modality == "image" and "prenet" in key \
            else dropout
        if not math.isclose(float(value), ours):
            dropped.append(f"{key}={value!r}: ours is {ours} here (one rate: model.dropout / model.layer_drop)")
    if model.get("num_heads") != mod.get("num_alibi_heads", model.get("num_heads")) and mod.get("use_alibi_encoder"):
        raise unsupported(f"model.modalities.{modality}.num_alibi_heads", mod["num_alibi_heads"],
                          "differs from model.num_heads")
    alibi = bool(mod.get("use_alibi_encoder"))
    if alibi and modality == "image":
        raise unsupported("model.modalities.image.use_alibi_encoder", True, "is a 2-D ALiBi; ours is 1-D")
    if alibi and not mod.get("learned_alibi_scale"):
        dropped.append(f"model.modalities.{modality}.learned_alibi_scale=False: freezes the ALiBi scale (ours "
                       "learns it)")
    if alibi and not mod.get("learned_alibi_scale_per_head"):
        raise unsupported(f"model.modalities.{modality}.learned_alibi_scale_per_head", False,
                          "shares one ALiBi scale over the heads (ours: one per head)")
    return {"dim": int(model["embed_dim"]), "depth": int(model["depth"]) + prenet, "heads": int(model["num_heads"]),
            "mlp_ratio": float(model["mlp_ratio"]), "norm_first": False, "norm_eps": float(model["norm_eps"]),
            "layer_scale": 0.0, "qkv_bias": "all", "dropout": float(model["encoder_dropout"]),
            "attn_dropout": float(model["attention_dropout"]),
            "activation_dropout": float(model["activation_dropout"]),
            "drop_path": float(model["end_drop_path_rate"]), "layer_drop": layer_drop, "alibi": alibi, "final_norm": False}


def _objective(model: dict, mod: dict, modality: str) -> dict:
    if model["instance_norm_target_layer"] and model["layer_norm_target_layer"]:
        raise unsupported("model.layer_norm_target_layer", True, "is set together with instance_norm_target_layer")
    if model["instance_norm_targets"] and model["layer_norm_targets"]:
        raise unsupported("model.instance_norm_targets", True, "is set together with layer_norm_targets")
    scale = model.get("loss_scale")
    if scale is not None and not math.isclose(float(scale), 1.0):
        raise unsupported("model.loss_scale", scale, "scales the loss by another constant (ours: 1/sqrt(dim) for null, 1, 1/dim)")
    dec = mod.get("decoder")
    if dec is None:
        raise unsupported(f"model.modalities.{modality}.decoder", None, "means no decoder")
    return {"version": 2, "clones": int(model["clone_batch"]), "top_k": int(model["average_top_k_layers"]),
            "tap": "block" if model["end_of_block_targets"] else "ffn",
            "per_layer_norm": "instance" if model["instance_norm_target_layer"]
            else "layer" if model["layer_norm_target_layer"] else "none",
            "final_norm": "layer" if model["layer_norm_targets"]
            else "instance" if model["instance_norm_targets"] else "none",
            "loss_beta": float(model["loss_beta"]), "loss_scale": "inv_sqrt_dim" if scale is None else "none",
            "ema_start": float(model["ema_decay"]), "ema_end": float(model["ema_end_decay"]),
            "ema_anneal_steps": int(model["ema_anneal_end_step"]), "ema_scope": _ema_scope(model, mod, modality),
            "decoder_dim": int(dec["decoder_dim"]), "decoder_layers": int(dec["decoder_layers"]),
            "decoder_kernel": int(dec["decoder_kernel"]), "decoder_groups": int(dec["decoder_groups"]),
            "decoder_noise": float(mod["mask_noise_std"]), "decoder_input_proj": False,
            "decoder_residual": bool(dec["decoder_residual"]), "decoder_proj_layers": int(dec["projection_layers"]),
            "decoder_input_dropout": float(dec["input_dropout"]), "cls_loss_weight": float(model.get("cls_loss", 0)),
            "cls_head": False}


def _ema_scope(model: dict, mod: dict, modality: str) -> str:
    """What fairseq's teacher averages of the front-end: nothing (`ema_encoder_only`: the blocks), all of it
    (`ema_local_encoder`), or the speech front-end after its conv feature encoder."""
    if model.get("ema_encoder_only", True):
        return "encoder"
    if mod.get("ema_local_encoder"):
        return "all"
    if modality == "image":
        raise unsupported("model.modalities.image.ema_local_encoder", False, "averages the CLS token and prenet "
                          "but not the patch embedding")
    return {"audio": "context", "text": "encoder"}[modality]  # text: no prenet, nothing else to average


def _masking(mod: dict, modality: str) -> dict:
    if modality == "image":
        return {"ratio": float(mod["mask_prob"]), "inverse": bool(mod["inverse_mask"]),
                "block_size": int(mod["mask_length"]), "prob_adjust": float(mod["mask_prob_adjust"])}
    if mod.get("inverse_mask"):
        raise unsupported(f"model.modalities.{modality}.inverse_mask", True, f"inverts the {modality} masks (ours: images only)")
    if modality == "audio":
        return {"span_prob": float(mod["mask_prob"]), "span_length": int(mod["mask_length"]),
                "prob_adjust": float(mod["mask_prob_adjust"])}
    if int(mod["mask_length"]) != 1:
        raise unsupported("model.modalities.text.mask_length", mod["mask_length"], "masks spans of tokens (ours drops single tokens)")
    return {"token_prob": float(mod["mask_prob"]), "token_random": 0.0, "token_keep": 0.0, "token_span": 1}


def _image(model: dict, mod: dict, task: dict, sizes: dict[str, int]) -> dict:
    if int(mod["embed_dim"]) != int(model["embed_dim"]):
        raise unsupported("model.modalities.image.embed_dim", mod["embed_dim"],
                          "differs from model.embed_dim (a Linear after the patch embedding)")
    tokens = int(mod["num_extra_tokens"])
    if tokens > 1:
        raise unsupported("model.modalities.image.num_extra_tokens", tokens, "adds several extra tokens (ours: a CLS token or none)")
    return {"image_size": int(mod["input_size"]), "patch_size": int(mod["patch_size"]),
            "in_chans": int(mod["in_chans"]), "cls_token": tokens == 1,
            "pos_embed": "sincos" if mod["fixed_positions"] else "none", "sincos_order": "xy", "embed_norm": True,
            "rel_pos_bias": "none", "pool": "mean", "pool_norm": False}


def _audio(model: dict, mod: dict, task: dict, sizes: dict[str, int]) -> dict:
    convs = conv_layers(mod["feature_encoder_spec"], "model.modalities.audio.feature_encoder_spec")
    depth = int(mod["conv_pos_depth"])
    out = {"conv_dim": [c[0] for c in convs], "conv_kernel": [c[1] for c in convs],
           "conv_stride": [c[2] for c in convs], "conv_bias": False, "pos_conv_layers": depth,
           "pos_conv_kernel": max(3, int(mod["conv_pos_width"]) // depth) if depth else 3,
           "pos_conv_groups": int(mod["conv_pos_groups"]), "feature_dropout": 0.0,
           "pos_conv_zero_padding": "none"}  # fairseq v2 does not zero padded frames before its positional convs
    if "normalize" in task:
        out["normalize"] = bool(task["normalize"])
    if "sample_rate" in task:
        out["sample_rate"] = int(task["sample_rate"])
    return out


def _text(model: dict, mod: dict, task: dict, sizes: dict[str, int]) -> dict:
    """Token ids of fairseq's dictionary (<s> <pad> </s> <unk> = 0..3, <mask> added last by masked_lm);
    vocabulary and position counts from the weights."""
    vocab, positions = sizes["vocab_size"], sizes["max_positions"]
    out = {"vocab_size": vocab, "max_positions": positions, "pad_id": 1, "bos_id": 0, "eos_id": 2,
           "mask_id": vocab - 1, "embed_norm_eps": 1e-5}
    block = int(task.get("tokens_per_sample") or mod.get("max_source_positions") or positions - 2)
    out["block_size"] = min(block, positions - 2)
    return out
