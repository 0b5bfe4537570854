"""data2vec v1 fairseq checkpoints -> data2vec run folders: speech (``data2vec_audio``), its CTC fine-tunes
(``wav2vec_ctc`` over a ``data2vec_audio`` model) and text (``data2vec_text``).

The config starts from our Base recipe of the modality and sets every key the file decides (sizes, dropouts,
the objective, the masking, the optimiser); the weights go through :mod:`.weights`, the mapping the parity tests
check against fairseq's own forward. The EMA teacher is the file's ``_ema`` where it holds one.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from torch import Tensor

from data2vec.config import Config, build_config
from data2vec.errors import Data2VecError
from data2vec.interop.fairseq import weights as fm
from data2vec.interop.fairseq.common import (
    FAIRSEQ_JSON,
    Settings,
    conv_layers,
    ctc_labels,
    fairseq_json,
    report_dropped,
    train_overrides,
    unsupported,
    write_run,
)

log = logging.getLogger("data2vec")

# ---------------------------------------------------------------------------------------------- settings
_W2V2_UNUSED = {  # wav2vec 2.0's contrastive-loss and quantiser options: data2vec_audio inherits, never reads them
    "logit_temp", "quantize_targets", "quantize_input", "same_quantizer", "target_glu", "quantizer_depth",
    "quantizer_factor", "latent_vars", "latent_groups", "latent_dim", "num_negatives", "negatives_from_everywhere",
    "cross_sample_negatives", "codebook_negatives", "latent_temp", "final_dim", "dropout_features",
}
_AUDIO_ENCODER = Settings(  # the speech encoder's keys, shared by pretraining (model.*) and fine-tuning (w2v_args)
    "model",
    mapped={"_name", "encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_attention_heads",
            "dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop", "dropout_input",
            "conv_feature_layers", "conv_bias", "conv_pos", "conv_pos_groups", "mask_length", "mask_prob",
            "require_same_masks"},
    required={
        "extractor_mode": (("layer_norm",), ("is wav2vec 2.0's group-norm feature encoder; data2vec's normalises "
                                              "every conv layer (extractor_mode=layer_norm)")),
        "activation_fn": (("gelu",), "is not GELU, the only activation of data2vec's blocks"),
        "layer_type": (("transformer",), "is not the Transformer block data2vec has"),
        "layer_norm_first": ((False,), ("makes the speech encoder pre-LN (its LayerNorm after the blocks); "
                                        "data2vec's speech encoder is post-LN")),
        "pos_conv_depth": (lambda v: v > 1, ("is wav2vec 2.0's single weight-normed positional conv; data2vec has "
                                             "stacks of 2 or more convs with LayerNorm (pos_conv_depth > 1)")),
        "pos_enc_type": (("abs",), "is a relative / rotary position encoding data2vec does not have"),
        "attn_type": (("", None), "is an attention variant data2vec does not have"),
        "adp_num": ((-1,), "adds adapters to the blocks, which data2vec does not have"),
        "crop_seq_to_multiple": ((1,), "crops the frames to a multiple, which data2vec does not do"),
        "batch_norm_target_layer": ((False,), "normalises the targets with batch norm, which data2vec does not have"),
        "group_norm_target_layer": ((False,), "normalises the targets with group norm, which data2vec does not have"),
    },
    training={
        "feature_grad_mult": (1.0, ("scales the feature encoder's gradients; data2vec pretraining trains it at the "
                                    "full rate")),
        "mask_selection": ("static", "draws span lengths from a distribution; data2vec's spans have a fixed length"),
        "no_mask_overlap": (False, "keeps masked spans apart; data2vec's may overlap"),
        "mask_dropout": (0.0, "unmasks a share of the masked frames; data2vec has no such option"),
        "mask_channel_prob": (0.0, "masks feature channels; data2vec masks only time spans"),
    },
    ignored=_W2V2_UNUSED | {
        "mask_other", "mask_min_space", "mask_channel_length", "mask_channel_before", "mask_channel_selection",
        "mask_channel_other", "no_mask_channel_overlap", "mask_channel_min_space", "max_positions",
        "checkpoint_activations", "required_seq_len_multiple", "depthwise_conv_kernel_size", "fp16", "adp_dim",
        "adp_act_fn", "adp_trf_idx", "offload_activations", "min_params_to_wrap", "max_update",
        "min_target_var", "min_pred_var"},  # the last two stop a collapsing run; they do not change training
)
_AUDIO_OBJECTIVE = {"loss_beta", "loss_scale", "average_top_k_layers", "layer_norm_target_layer",
                    "instance_norm_target_layer", "instance_norm_targets", "layer_norm_targets", "ema_decay",
                    "ema_end_decay", "ema_anneal_end_step", "ema_transformer_only", "ema_layers_only"}
AUDIO = Settings(_AUDIO_ENCODER.section, _AUDIO_ENCODER.mapped | _AUDIO_OBJECTIVE, _AUDIO_ENCODER.required,
                 _AUDIO_ENCODER.training, _AUDIO_ENCODER.ignored)

CTC = Settings(
    "model",
    mapped={"_name", "w2v_args", "dropout_input", "final_dropout", "dropout", "attention_dropout",
            "activation_dropout", "layerdrop", "normalize"},
    required={
        "layer_type": (("transformer",), "is not the Transformer block data2vec has"),
        "adp_num": ((-1,), "adds adapters to the blocks, which data2vec does not have"),
        "blank_weight": ((0.0, 0), ("adds a constant to the CTC blank's logit when decoding, which data2vec's CTC "
                                    "head does not do")),
    },
    training={
        "apply_mask": (False, ("masks time spans while fine-tuning; give them to `data2vec finetune` as "
                               "masking.span_prob / masking.span_length")),
        "mask_channel_prob": (0.0, "masks feature channels while fine-tuning; data2vec masks only time spans"),
        "freeze_finetune_updates": (0, "trains only the CTC head at first; data2vec: finetune.freeze_encoder_steps"),
        "feature_grad_mult": (0.0, ("scales the feature encoder's gradients while fine-tuning; data2vec freezes it "
                                    "or trains it at the full rate (finetune.freeze_frontend_steps)")),
        "drop_path": (0.0, "drops residual branches while fine-tuning; data2vec: model.drop_path"),
        "layer_decay": (1.0, "decays the learning rate by layer; data2vec's speech fine-tuning does not"),
        "freeze_regex": (None, "freezes parameters by name; data2vec has no such option"),
        "zero_mask": (False, "masks with zeros (data2vec 2.0)"),
    },
    ignored={"w2v_path", "no_pretrained_weights", "mask_length", "mask_prob", "mask_selection", "mask_other",
             "no_mask_overlap", "mask_min_space", "require_same_masks", "mask_dropout", "mask_channel_length",
             "mask_channel_selection", "mask_channel_other", "no_mask_channel_overlap", "mask_channel_min_space",
             "mask_channel_before", "update_alibi", "data", "offload_activations", "min_params_to_wrap",
             "checkpoint_activations", "ddp_backend", "load_ema", "adp_dim", "adp_act_fn", "adp_trf_idx",
             "blank_mode"},
)

TEXT = Settings(
    "model",
    mapped={"_name", "max_positions", "head_layers", "transformer", "loss_beta", "loss_scale",
            "average_top_k_layers", "layer_norm_target_layer", "instance_norm_target_layer", "instance_norm_targets",
            "layer_norm_targets", "ema_decay", "ema_end_decay", "ema_anneal_end_step", "ema_transformer_layers_only"},
    required={"batch_norm_target_layer": ((False,), ("normalises the targets with batch norm, which data2vec does "
                                                     "not have"))},
    ignored={"load_checkpoint_heads"},
)
TEXT_TRANSFORMER = Settings(
    "model.transformer",
    mapped={"_name", "dropout", "attention_dropout", "activation_dropout", "relu_dropout", "encoder",
            "max_source_positions"},
    required={
        "activation_fn": (("gelu",), "is not GELU, the only activation of data2vec's blocks"),
        "adaptive_input": ((False,), "is an adaptive input embedding data2vec does not have"),
        "layernorm_embedding": ((True,), "leaves out the LayerNorm after the embeddings, which data2vec text has"),
        "no_scale_embedding": ((True,), "scales the token embeddings by sqrt(dim), which data2vec text does not"),
        "no_token_positional_embeddings": ((False,), "leaves out positions, which data2vec text always adds"),
        "char_inputs": ((False,), "embeds characters, which data2vec text does not"),
        "base_layers": ((0,), "adds BASE layers, which data2vec does not have"),
        "quant_noise": (lambda q: not q or (not q.get("pq") and not q.get("scalar")),
                        "adds quantisation noise, which data2vec does not have"),
    },
    ignored={"decoder", "max_target_positions", "share_decoder_input_output_embed", "share_all_embeddings",
             "merge_src_tgt_embed", "adaptive_softmax_cutoff", "adaptive_softmax_dropout", "adaptive_softmax_factor",
             "tie_adaptive_weights", "tie_adaptive_proj", "checkpoint_activations", "offload_activations",
             "no_cross_attention", "cross_self_attention", "min_params_to_wrap", "base_sublayers", "base_shuffle",
             "export", "no_decoder_final_norm"},
)
TEXT_ENCODER = Settings(
    "model.transformer.encoder",
    mapped={"_name", "embed_dim", "ffn_embed_dim", "layers", "attention_heads", "layerdrop"},
    required={"normalize_before": ((False,), ("makes the text encoder pre-LN; data2vec v1 text is post-LN "
                                              "(RoBERTa)")),
              "learned_pos": ((True,), "uses sinusoidal positions; data2vec text's are learned"),
              "layers_to_keep": ((None,), "prunes layers, which data2vec does not do")},
    ignored={"embed_path", "xformers_att_config"},
)


# ---------------------------------------------------------------------------------------------- shared pieces
def _encoder_overrides(dim: int, ffn: int, depth: int, heads: int, key: str) -> list[str]:
    if int(dim * (ffn / dim)) != ffn:  # our FFN width is int(dim * mlp_ratio)
        raise unsupported(key, ffn, f"is an FFN width that data2vec's model.mlp_ratio cannot express at width {dim}")
    return [f"model.dim={dim}", f"model.depth={depth}", f"model.heads={heads}", f"model.mlp_ratio={ffn / dim!r}",
            "model.norm_first=false", "model.norm_eps=1e-5", "model.final_norm=false", "model.qkv_bias=all"]


def _objective_overrides(m: dict[str, Any], section: str, depth: int) -> list[str]:
    """Targets, loss and EMA schedule of a v1 model section (speech and text name them alike)."""
    per_layer = [n for n, k in (("layer", "layer_norm_target_layer"), ("instance", "instance_norm_target_layer"))
                 if m.get(k)]
    final = [n for n, k in (("layer", "layer_norm_targets"), ("instance", "instance_norm_targets")) if m.get(k)]
    if len(per_layer) > 1:
        raise unsupported(f"{section}.instance_norm_target_layer", True, "comes with layer_norm_target_layer=true; "
                          "data2vec normalises each target layer one way")
    if len(final) > 1:
        raise unsupported(f"{section}.instance_norm_targets", True, "comes with layer_norm_targets=true")
    scale = m.get("loss_scale")
    if scale is None:
        loss_scale = "inv_sqrt_dim"
    elif float(scale) == 1.0:
        loss_scale = "none"
    else:
        raise unsupported(f"{section}.loss_scale", scale, "is a loss scale other than 1/sqrt(dim) (null) or 1, the "
                          "two data2vec has")
    top_k = int(m.get("average_top_k_layers", 8))
    if not 1 <= top_k <= depth:
        raise unsupported(f"{section}.average_top_k_layers", top_k, f"is not between 1 and the depth {depth}")
    out = [f"objective.top_k={top_k}", "objective.tap=ffn", f"objective.per_layer_norm={(per_layer or ['none'])[0]}",
           f"objective.final_norm={(final or ['none'])[0]}", f"objective.loss_beta={float(m.get('loss_beta', 0))!r}",
           f"objective.loss_scale={loss_scale}", f"objective.ema_start={float(m.get('ema_decay', 0.999))!r}",
           f"objective.ema_end={float(m.get('ema_end_decay', 0.9999))!r}", "objective.version=1"]
    anneal = m.get("ema_anneal_end_step")
    if isinstance(anneal, int):
        out.append(f"objective.ema_anneal_steps={anneal}")
    return out


_LAYER = (r"layers\.(?P<layer>\d+)\.(self_attn\.[qkv]_proj|self_attn\.out_proj|self_attn_layer_norm|fc1|fc2"
          r"|final_layer_norm)\.(weight|bias)")
_WB = r"\.(weight|bias)"
AUDIO_ENCODER_TENSORS = rf"pos_conv\.\d+\.0{_WB}|layer_norm{_WB}|{_LAYER}"  # fairseq's wav2vec 2.0 TransformerEncoder
AUDIO_TENSORS = (rf"feature_extractor\.conv_layers\.\d+\.(0|2\.1){_WB}|layer_norm{_WB}|post_extract_proj{_WB}|mask_emb"
                 rf"|encoder\.({AUDIO_ENCODER_TENSORS})")
TEXT_ENCODER_TENSORS = rf"(embed_tokens|embed_positions)\.weight|layernorm_embedding{_WB}|{_LAYER}|version"


def _check_state(state: dict[str, Tensor], pattern: str, depth: int, what: str) -> None:
    """Every tensor of the file's model must have a place in ours: one the mapping does not read (an adapter,
    a quantiser, a block beyond the config's depth) means a layout the converter does not know."""
    unknown = []
    for key in state:
        match = re.fullmatch(pattern, key)
        if match is None or any(int(v) >= depth for k, v in match.groupdict().items() if k.startswith("layer") and v):
            unknown.append(key)
    if unknown:
        raise Data2VecError(f"cannot convert: the {what} checkpoint holds tensors data2vec has no place for "
                            f"({', '.join(sorted(unknown)[:4])}{', ...' if len(unknown) > 4 else ''})")


def _config(recipe: str, overrides: list[str], name: str) -> Config:
    try:
        cfg = build_config(recipe, overrides)
    except Data2VecError as err:  # a value of the file that our config refuses: say where it came from
        raise Data2VecError(f"cannot convert: the fairseq settings give an invalid data2vec config ({err})") from None
    cfg.name = name
    return cfg


# ---------------------------------------------------------------------------------------------- speech
def _audio_config(m: dict[str, Any], task: dict[str, Any], section: str, dropped: list[str],
                  settings: Settings = AUDIO) -> list[str]:
    """Our overrides for a ``data2vec_audio`` model section `m` (at cfg path `section`) and its task."""
    settings = Settings(section, settings.mapped, settings.required, settings.training, settings.ignored)
    settings.check(m, dropped)
    dim, depth = int(m.get("encoder_embed_dim", 768)), int(m.get("encoder_layers", 12))
    layers = conv_layers(m.get("conv_feature_layers", "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2"),
                         f"{section}.conv_feature_layers")
    depth_pos = int(m.get("pos_conv_depth", 5))
    kernel = max(3, int(m.get("conv_pos", 95)) // depth_pos)
    if kernel % 2 == 0:
        raise unsupported(f"{section}.conv_pos", m.get("conv_pos"), f"gives positional convs of even width {kernel} "
                          "(fairseq trims one frame); data2vec's have odd widths")
    out = _encoder_overrides(dim, int(m.get("encoder_ffn_embed_dim", 3072)), depth,
                             int(m.get("encoder_attention_heads", 12)), f"{section}.encoder_ffn_embed_dim")
    out += [f"model.dropout={float(m.get('dropout', 0.1))!r}",
            f"model.attn_dropout={float(m.get('attention_dropout', 0.1))!r}",
            f"model.activation_dropout={float(m.get('activation_dropout', 0.0))!r}",
            f"model.layer_drop={float(m.get('encoder_layerdrop', 0.0))!r}",
            f"audio.conv_dim={[c for c, _, _ in layers]}", f"audio.conv_kernel={[k for _, k, _ in layers]}",
            f"audio.conv_stride={[s for _, _, s in layers]}",
            f"audio.conv_bias={str(bool(m.get('conv_bias', False))).lower()}",
            f"audio.pos_conv_layers={depth_pos}", f"audio.pos_conv_kernel={kernel}",
            f"audio.pos_conv_groups={int(m.get('conv_pos_groups', 16))}", "audio.pos_conv_zero_padding=once",
            f"audio.feature_dropout={float(m.get('dropout_input', 0.0))!r}",
            f"masking.span_prob={float(m.get('mask_prob', 0.65))!r}",
            f"masking.span_length={int(m.get('mask_length', 10))}",
            f"masking.same_count={str(bool(m.get('require_same_masks', True))).lower()}"]
    for key, ours in (("normalize", "audio.normalize"), ("sample_rate", "audio.sample_rate"),
                      ("max_sample_size", "audio.max_sample_size"), ("min_sample_size", "audio.min_sample_size")):
        value = task.get(key)
        if isinstance(value, bool):
            out.append(f"{ours}={str(value).lower()}")
        elif isinstance(value, int):
            out.append(f"{ours}={value}")
    return out


def _audio_ema_scope(m: dict[str, Any]) -> str:
    if m.get("ema_layers_only", True):  # fairseq forces transformer_only then
        return "layers"
    return "context" if m.get("ema_transformer_only", True) else "all"


def convert_audio(ckpt: dict[str, Any], out: Path) -> Path:
    """A ``data2vec_audio`` pretraining checkpoint: student, EMA teacher (``_ema``) and regression head."""
    cfg_in, state = ckpt["cfg"], ckpt["model"]
    m, dropped = cfg_in["model"], []
    overrides = _audio_config(m, cfg_in.get("task") or {}, "model", dropped)
    depth = int(m.get("encoder_layers", 12))
    overrides += _objective_overrides(m, "model", depth) + [f"objective.ema_scope={_audio_ema_scope(m)}",
                                                            "objective.head_layers=1"]
    overrides += train_overrides(cfg_in, dropped)
    cfg = _config("audio-base", overrides, "fairseq-data2vec-audio")
    ema = state.get("_ema")
    whole = rf"{AUDIO_TENSORS}|final_proj\.(weight|bias)"
    _check_state({k: v for k, v in state.items() if k != "_ema"}, whole, depth, "data2vec_audio")
    if isinstance(ema, dict):
        scope = whole if _audio_ema_scope(m) == "all" else AUDIO_ENCODER_TENSORS
        _check_state(ema, scope, depth, "data2vec_audio EMA (_ema)")
    student = fm.v1_audio_encoder(state, fm.sub(state, "encoder."), depth)
    teacher = None
    if isinstance(ema, dict) and ema:
        if cfg.objective.ema_scope == "all":  # the EMA of the whole model: its own front-end too
            teacher = fm.v1_audio_encoder(ema, fm.sub(ema, "encoder."), depth)
        else:  # the EMA of the Transformer only (`encoder.*`); the conv feature encoder is the student's
            teacher = fm.v1_audio_encoder(state, {**fm.sub(state, "encoder."), **ema}, depth)
    else:
        log.warning("the checkpoint holds no EMA teacher (_ema): the teacher starts as a copy of the student")
    head = {"head.weight": state["final_proj.weight"], "head.bias": state["final_proj.bias"]}
    report_dropped(dropped)
    return write_run(cfg, out, student, teacher, head,
                     extra_files={FAIRSEQ_JSON: fairseq_json(ckpt, "v1 speech (data2vec_audio)", dropped)})


def convert_audio_ctc(ckpt: dict[str, Any], out: Path, dictionary: Path | None) -> Path:
    """A ``wav2vec_ctc`` fine-tune of a ``data2vec_audio`` model: the encoder and the CTC head (``head.safetensors``);
    the fine-tuning's dropouts and layer drop are the model's."""
    from data2vec.nn.heads import CTCHead

    cfg_in, state = ckpt["cfg"], ckpt["model"]
    m, dropped = cfg_in["model"], []
    CTC.check(m, dropped)
    w2v = m["w2v_args"]
    pre = w2v["model"]
    overrides = _audio_config(pre, w2v.get("task") or {}, "model.w2v_args.model", dropped)
    depth = int(pre.get("encoder_layers", 12))
    overrides += _objective_overrides(pre, "model.w2v_args.model", depth) + [
        f"objective.ema_scope={_audio_ema_scope(pre)}", "objective.head_layers=1"]
    overrides += [f"model.dropout={float(m.get('dropout', 0.0))!r}",
                  f"model.attn_dropout={float(m.get('attention_dropout', 0.0))!r}",
                  f"model.activation_dropout={float(m.get('activation_dropout', 0.0))!r}",
                  f"model.layer_drop={float(m.get('layerdrop', 0.0))!r}",
                  f"audio.feature_dropout={float(m.get('dropout_input', 0.0))!r}"]
    task = cfg_in.get("task") or {}
    if isinstance(task.get("normalize"), bool):
        overrides.append(f"audio.normalize={str(task['normalize']).lower()}")
    cfg = _config("audio-base", overrides, "fairseq-data2vec-audio-ctc")
    prefix = "w2v_encoder.w2v_model."
    _check_state(state, rf"{re.escape(prefix)}({AUDIO_TENSORS})|w2v_encoder\.proj\.(weight|bias)", depth,
                 "wav2vec_ctc")
    model = fm.sub(state, prefix)
    student = fm.v1_audio_encoder(model, fm.sub(model, "encoder."), depth)
    weight, bias = state["w2v_encoder.proj.weight"], state["w2v_encoder.proj.bias"]
    head = CTCHead(cfg.model.dim, weight.shape[0], float(m.get("final_dropout", 0.0)),
                   ctc_labels(dictionary, weight.shape[0]))
    head.load_state_dict({"fc.weight": weight, "fc.bias": bias})
    report_dropped(dropped)
    return write_run(cfg, out, student, head=head,
                     extra_files={FAIRSEQ_JSON: fairseq_json(ckpt, "v1 speech CTC (wav2vec_ctc over data2vec_audio)",
                                                             dropped)})


# ---------------------------------------------------------------------------------------------- text
def convert_text(ckpt: dict[str, Any], out: Path, dictionary: Path | None) -> Path:
    """A ``data2vec_text`` pretraining checkpoint: student, EMA teacher and regression head; the tokenizer is
    built from fairseq's dictionary and GPT-2 BPE files when `dictionary` names them (:mod:`.tokenizer`)."""
    from data2vec.interop.fairseq.tokenizer import tokenizer_files

    cfg_in, state = ckpt["cfg"], ckpt["model"]
    m, dropped = cfg_in["model"], []
    TEXT.check(m, dropped)
    t = m.get("transformer") or {}
    TEXT_TRANSFORMER.check(t, dropped)
    enc = t.get("encoder") or {}
    TEXT_ENCODER.check(enc, dropped)
    depth = int(enc.get("layers", 6))
    _check_state(state, rf"encoder\.sentence_encoder\.({TEXT_ENCODER_TENSORS})|encoder\.regression_head\.\d+{_WB}"
                 r"|encoder\._ema", depth, "data2vec_text")
    if isinstance(state.get("encoder._ema"), dict):
        _check_state(state["encoder._ema"], TEXT_ENCODER_TENSORS, depth, "data2vec_text EMA (encoder._ema)")
    fs = fm.sub(state, "encoder.sentence_encoder.")
    vocab, dim = fs["embed_tokens.weight"].shape
    positions = fs["embed_positions.weight"].shape[0]
    activation = float(t.get("activation_dropout", 0.0)) or float(t.get("relu_dropout", 0.0) or 0.0)
    overrides = _encoder_overrides(dim, int(enc.get("ffn_embed_dim", 4 * dim)), depth,
                                   int(enc.get("attention_heads", 8)), "model.transformer.encoder.ffn_embed_dim")
    overrides += [f"model.dropout={float(t.get('dropout', 0.1))!r}",
                  f"model.attn_dropout={float(t.get('attention_dropout', 0.0))!r}",
                  f"model.activation_dropout={activation!r}", f"model.layer_drop={float(enc.get('layerdrop', 0.0))!r}",
                  f"text.vocab_size={vocab}", f"text.max_positions={positions}", "text.pad_id=1", "text.bos_id=0",
                  "text.eos_id=2", f"text.mask_id={vocab - 1}", "text.embed_norm_eps=1e-5"]
    block = m.get("max_positions")
    if isinstance(block, int):
        overrides.append(f"text.block_size={min(block, positions - 2)}")
    overrides += _objective_overrides(m, "model", depth)
    head_layers = int(m.get("head_layers", 1))
    if head_layers not in (1, 2):
        raise unsupported("model.head_layers", head_layers, "is a regression head of more than 2 layers")
    overrides += [f"objective.head_layers={head_layers}",
                  f"objective.ema_scope={'encoder' if m.get('ema_transformer_layers_only', True) else 'all'}"]
    task = cfg_in.get("task") or {}
    for key, ours in (("mask_prob", "masking.token_prob"), ("random_token_prob", "masking.token_random"),
                      ("leave_unmasked_prob", "masking.token_keep"), ("mask_multiple_length", "masking.token_span")):
        if isinstance(task.get(key), (int, float)) and not isinstance(task.get(key), bool):
            overrides.append(f"{ours}={task[key]!r}")
    overrides += train_overrides(cfg_in, dropped)
    cfg = _config("text-base", overrides, "fairseq-data2vec-text")
    extra = tokenizer_files(dictionary, vocab)
    student = fm.v1_text_encoder(fs, depth)
    ema = state.get("encoder._ema")
    teacher = fm.v1_text_encoder({**fs, **ema}, depth) if isinstance(ema, dict) and ema else None
    if teacher is None:
        log.warning("the checkpoint holds no EMA teacher (_ema): the teacher starts as a copy of the student")
    head = {f"head.{k}": v for k, v in fm.sequential_head(fm.sub(state, "encoder.regression_head.")).items()}
    if not head:
        raise Data2VecError("cannot convert: the data2vec_text checkpoint has no regression head "
                            "(encoder.regression_head.*); is it a fine-tuned model?")
    report_dropped(dropped)
    extra[FAIRSEQ_JSON] = fairseq_json(ckpt, "v1 text (data2vec_text)", dropped)
    return write_run(cfg, out, student, teacher, head, extra_files=extra)


def kind(cfg: dict[str, Any]) -> str | None:
    """"audio", "audio_ctc", "text" for the v1 kinds this module converts; None otherwise."""
    model = cfg.get("model") or {}
    name = model.get("_name")
    if name == "data2vec_audio":
        return "audio"
    if name == "data2vec_text":
        return "text"
    if name in ("wav2vec_ctc", "wav2vec2_ctc") and isinstance(model.get("w2v_args"), dict):
        inner = (model["w2v_args"].get("model") or {}).get("_name")
        return "audio_ctc" if inner == "data2vec_audio" else None
    return None
