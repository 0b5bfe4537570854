"""data2vec 2.0 fairseq checkpoints -> data2vec run folders: pretrained image / speech / text models (student,
EMA teacher and decoder), the ImageNet classifiers of ``mae_image_classification`` and the CTC speech
recognisers of ``wav2vec_ctc`` around a v2 speech encoder.

fairseq keeps a v2 model's EMA teacher inside the model state as ``_ema``: the state of the blocks alone
(``ema_encoder_only``, text) or of the whole model less its decoder (images; speech also less its conv feature
encoder, ``ema_local_encoder: false``). What the teacher lacks is the student's, as in fairseq. A fine-tune holds
no teacher and no decoder: the run folder gets the student's copy and a fresh decoder. The settings are judged
in :mod:`.v2_config`; every tensor of the file is placed or the conversion stops naming it.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from data2vec.config import Config
from data2vec.data.image import meta_eval_crop_pct, meta_normalization
from data2vec.errors import Data2VecError
from data2vec.interop.fairseq import v2_config
from data2vec.interop.fairseq import weights as fm
from data2vec.interop.fairseq.common import (
    FAIRSEQ_JSON,
    Settings,
    ctc_labels,
    fairseq_json,
    report_dropped,
    train_overrides,
    unsupported,
    write_run,
)
from data2vec.interop.fairseq.tokenizer import tokenizer_files
from data2vec.nn.heads import CTCHead, LinearClassifier
from data2vec.nn.image import sincos_pos_embed

log = logging.getLogger("data2vec")
V2 = "data2vec_multi"
IMAGE_CLASSIFIER, CTC = "mae_image_classification", "wav2vec_ctc"
# fairseq model name -> (kind, prefix of the v2 model's tensors in the state, suffix of our config's name)
KINDS = {V2: ("v2 pretrained", "", ""), IMAGE_CLASSIFIER: ("v2 image classifier", "model.", "-ft"),
         CTC: ("v2 speech CTC", "w2v_encoder.w2v_model.", "-ctc")}


def _name(section: Any) -> str | None:
    return section.get("_name") if isinstance(section, dict) else None


def matches(cfg: dict) -> bool:
    """Whether a fairseq config (the file's ``cfg``) is a data2vec 2.0 model or a fine-tune of one."""
    model = (cfg or {}).get("model") or {}
    name = _name(model)
    if name == IMAGE_CLASSIFIER:
        return _name((model.get("pretrained_model_args") or {}).get("model")) == V2
    if name == CTC:
        return _name((model.get("w2v_args") or {}).get("model")) == V2
    return name == V2


def convert(ckpt: dict, out: Path, dictionary: Path | None = None) -> Path:
    """Write run folder `out` from `ckpt` (:func:`~data2vec.interop.fairseq.reader.read_checkpoint`'s plain
    data); `dictionary` labels a CTC head (see :func:`~data2vec.interop.fairseq.common.ctc_labels`). Returns the
    checkpoint path."""
    cfg, state = ckpt["cfg"], ckpt["model"]
    name = _name(cfg["model"])
    kind, prefix, suffix = KINDS[name]
    dropped: list[str] = []
    if name == IMAGE_CLASSIFIER:
        model_cfg, task = _classifier_model(cfg["model"], dropped)
    elif name == CTC:
        model_cfg, task = _ctc_model(cfg["model"], dropped)
    else:
        model_cfg, task = cfg["model"], cfg.get("task") or {}
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and k != "_ema"}
    ema = state.get(f"{prefix}_ema") if name == V2 else None
    modality = v2_config.modality_of(model_cfg)
    mode = modality.upper()
    enc = fm.sub(weights, f"modality_encoders.{mode}.")
    sizes = {}
    if modality == "text":
        sizes = {"vocab_size": enc["local_encoder.embed_tokens.weight"].shape[0],
                 "max_positions": enc["local_encoder.embed_positions.weight"].shape[0]}
    ours = v2_config.build(model_cfg, task, sizes, dropped, train_overrides(cfg) if name == V2 else [])
    ours.name = f"fairseq-{modality}-v2{suffix}"
    if modality == "image":  # fairseq's transforms (mae_image_dataset.py, mae_finetuning_image_dataset.py)
        ours.data.eval_crop_pct = meta_eval_crop_pct(ours.image.image_size, v2=True)
        ours.data.image_mean, ours.data.image_std = meta_normalization(v2=True, finetuned=name == IMAGE_CLASSIFIER)
    prenet = int(model_cfg["modalities"][modality]["prenet_depth"])
    student = _encoder(weights, modality, prenet, ours.model.depth)
    if modality == "image" and ours.image.pos_embed == "sincos":
        _check_positions(enc, ours)
    teacher = _teacher(ema, weights, modality, prenet, ours) if isinstance(ema, dict) else None
    if name == V2 and teacher is None:
        log.warning("the checkpoint holds no EMA teacher (_ema): the teacher starts as a copy of the student")
    extra = {f"decoder.{k}": v for k, v in fm.v2_decoder(fm.sub(enc, "decoder."), ours.model.dim, False).items()}
    head, placed = None, [*student.values(), *(teacher or {}).values(), *extra.values()]
    if name == IMAGE_CLASSIFIER:
        head, pool = _image_head(cfg["model"], state, ours, dictionary)
        student.update(pool)
        placed += [*pool.values(), state["head.weight"], state["head.bias"]]
    elif name == CTC:
        head = _ctc_head(cfg["model"], state, ours, dictionary)
        placed += [state["w2v_encoder.proj.weight"], state["w2v_encoder.proj.bias"]]
    _check_all_placed(state, ema, placed)
    report_dropped(dropped)
    files = {FAIRSEQ_JSON: fairseq_json(ckpt, kind, dropped)}
    if modality == "text":
        files.update(tokenizer_files(dictionary, ours.text.vocab_size))
    return write_run(ours, out, student, teacher, extra or None, head, files)


# ----------------------------------------------------------------------------------------------- weights
def _encoder(model: dict[str, Tensor], modality: str, prenet: int, depth: int) -> dict[str, Tensor]:
    """Our student encoder from fairseq's model state (`blocks.*`, `modality_encoders.<MODE>.*`)."""
    enc = fm.sub(model, f"modality_encoders.{modality.upper()}.")
    if modality == "image":
        return fm.v2_image_encoder(model, prenet, depth)  # with a zero mask token (v1 only)
    front = fm.v2_text_frontend(enc) if modality == "text" else fm.v2_audio_frontend(enc, enc)
    return {**front, **fm.v2_alibi(enc), **fm.v2_blocks(model, enc, prenet, depth)}


def _teacher(ema: dict[str, Tensor], model: dict[str, Tensor], modality: str, prenet: int, cfg: Config
             ) -> dict[str, Tensor]:
    """Our teacher encoder's tensors that fairseq's EMA holds: the blocks (``ema_encoder_only``), or the whole
    model less what the teacher shares with the student (speech: the conv feature encoder)."""
    depth, mode = cfg.model.depth, modality.upper()
    if cfg.objective.ema_scope == "encoder" and "blocks.0.norm1.weight" not in ema:  # the blocks' own state
        return fm.blocks(ema, "", depth, fm.alt_block)
    t_enc = fm.sub(ema, f"modality_encoders.{mode}.")
    if modality == "image":
        return fm.v2_image_encoder(ema, prenet, depth)
    blocks = fm.v2_blocks(ema, t_enc, prenet, depth)
    if modality == "audio":
        local = t_enc if "project_features.2.weight" in t_enc else fm.sub(model, f"modality_encoders.{mode}.")
        return {**fm.v2_audio_frontend(local, t_enc), **fm.v2_alibi(t_enc), **blocks}
    s_enc = fm.sub(model, f"modality_encoders.{mode}.")
    return {**fm.v2_text_frontend(t_enc if "local_encoder.embed_tokens.weight" in t_enc else s_enc),
            **fm.v2_alibi(t_enc if "alibi_scale" in t_enc else s_enc), **blocks}


def _check_positions(enc: dict[str, Tensor], cfg: Config) -> None:
    """fairseq stores its fixed positions; ours computes them: they must be the same sin-cos table."""
    stored = enc.get("fixed_positional_encoder.positions")
    side = cfg.image.image_size // cfg.image.patch_size
    ours = sincos_pos_embed(cfg.model.dim, (side, side), cfg.image.sincos_order)
    if stored is None or stored.reshape(-1, cfg.model.dim).shape != ours.shape or \
            not torch.allclose(stored.reshape(ours.shape).float(), ours, atol=1e-5):
        raise unsupported("modality_encoders.IMAGE.fixed_positional_encoder.positions", "(tensor)",
                          "is not the 2-D sin-cos table of the image and patch size")


# tensors no converted model needs: fairseq's own copy of the fixed positions (checked above), a stored zero
# mask that fairseq itself drops when fine-tuning without zero_mask
NOT_NEEDED = ("fixed_positional_encoder.positions", "encoder_mask")


def _check_all_placed(state: dict[str, Any], ema: Any, placed: list[Tensor]) -> None:
    """Every tensor of the file went somewhere (compared by storage: mapped tensors are the file's, or views
    of them), so a layout this converter does not know stops it instead of losing weights."""
    seen = {(t.data_ptr(), t.numel()) for t in placed}
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    if isinstance(ema, dict):
        tensors.update({f"_ema.{k}": v for k, v in ema.items() if isinstance(v, Tensor)})
    left = sorted(k for k, v in tensors.items() if (v.data_ptr(), v.numel()) not in seen
                  and not k.endswith(NOT_NEEDED) and not (k.startswith("_ema.") and "decoder." in k))
    if left:
        shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
        raise Data2VecError(f"cannot convert: the fairseq checkpoint holds {len(left)} tensor(s) data2vec's model has "
                            f"no place for ({shown}), a layout this converter does not know; docs/checkpoints.md "
                            "lists what converts")


# ----------------------------------------------------------------------------------------------- image classifier
def _classifier_settings() -> Settings:
    train = "changes only how fairseq fine-tuned"
    return Settings(
        "model",
        mapped={"num_classes", "mixup", "cutmix", "label_smoothing", "layer_decay", "mixup_prob", "mixup_switch_prob",
                "drop_path_rate", "pretrained_model_args", "norm_eps", "encoder_dropout", "post_mlp_drop",
                "attention_dropout", "activation_dropout", "dropout_input", "layerdrop", "prenet_layerdrop",
                "prenet_dropout", "use_fc_norm", "linear_classifier"},
        required={"prediction_mode": (("MEAN_POOLING", "CLS_TOKEN"),
                                      "pools by a log-sum-exp of sigmoids (ours: the mean or the CLS token)")},
        training={"mixup_mode": ("batch", "mixes per batch element or pair (ours: per batch)"),
                  "no_decay_blocks": (True, train), "remove_alibi": (False, "drops an ALiBi bias")},
        ignored={"_name", "model_path", "no_pretrained_weights", "data"})


def _classifier_model(ft: dict, dropped: list[str]) -> tuple[dict, dict]:
    """The v2 model section as `MaeImageClassificationModel` builds it: the stored pretraining arguments with
    the fine-tuning's regularisation written over them."""
    _classifier_settings().check(ft, dropped)
    args = ft.get("pretrained_model_args") or {}
    model = copy.deepcopy(args["model"])
    model.pop("drop_path_rate", None)  # fairseq writes the fine-tuning's rate here too; read from `ft` below
    for key in ("encoder_dropout", "post_mlp_drop", "attention_dropout", "activation_dropout", "dropout_input",
                "layerdrop"):
        model[key] = ft[key]
    image = model["modalities"]["image"]
    image["prenet_layerdrop"], image["prenet_dropout"] = ft["prenet_layerdrop"], ft["prenet_dropout"]
    model["start_drop_path_rate"], model["end_drop_path_rate"] = 0.0, ft["drop_path_rate"]
    image["start_drop_path_rate"] = image["end_drop_path_rate"] = 0.0
    if ft.get("norm_eps") is not None:
        model["norm_eps"] = ft["norm_eps"]
    return model, args.get("task") or {}


def _image_head(ft: dict, state: dict[str, Tensor], cfg: Config, dictionary: Path | None
                ) -> tuple[LinearClassifier, dict[str, Tensor]]:
    """fairseq's `head` (Linear on the pooled features) and `fc_norm` (LayerNorm, eps 1e-6, on them): our
    linear head and the image front-end's pooling norm."""
    cfg.image.pool = "cls" if ft["prediction_mode"] == "CLS_TOKEN" else "mean"
    cfg.image.pool_norm = bool(ft["use_fc_norm"])
    if cfg.image.pool_norm and not math.isclose(cfg.model.norm_eps, 1e-6):
        raise unsupported("model.use_fc_norm", True, f"is a LayerNorm of eps 1e-6 after pooling, and ours takes "
                          f"model.norm_eps ({cfg.model.norm_eps})")
    w, b = state["head.weight"], state["head.bias"]
    head = LinearClassifier(cfg.model.dim, w.shape[0], 0.0, class_labels(w.shape[0], dictionary))
    head.load_state_dict({"fc.weight": w, "fc.bias": b})
    f = cfg.finetune
    f.task, f.head, f.pool, f.metric = "classify", "linear", cfg.image.pool, "accuracy"
    f.label_smoothing, f.layer_decay = float(ft["label_smoothing"]), float(ft["layer_decay"] or 1.0)
    f.mixup, f.cutmix = float(ft["mixup"]), float(ft["cutmix"])
    f.mix_prob, f.mix_switch_prob = float(ft["mixup_prob"]), float(ft["mixup_switch_prob"])
    f.freeze_encoder_steps = cfg.train.max_steps if ft.get("linear_classifier") else 0
    pool = {"frontend.pool_norm.weight": state["fc_norm.weight"], "frontend.pool_norm.bias": state["fc_norm.bias"]} \
        if cfg.image.pool_norm else {}
    return head, pool


IMAGENET_CLASSES = Path(__file__).with_name("imagenet_classes.txt")


def class_labels(n: int, dictionary: Path | None) -> list[str]:
    """Names of a classifier's `n` classes, which fairseq's file does not hold: one per line of `dictionary`
    (``--dict``), else, for 1000 classes, ImageNet-1k's class folders in the order fairseq's ImageFolder read
    them (so `data2vec evaluate` matches an ImageNet folder's classes), else ``LABEL_i``."""
    if dictionary is not None:
        if not dictionary.is_file():
            raise Data2VecError(f"--dict '{dictionary}' is not a file; for an image classifier give a file with "
                                "one class name per line, in the order of the classifier's outputs")
        names = [line.strip() for line in dictionary.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(names) != n:
            raise Data2VecError(f"--dict '{dictionary}' names {len(names)} classes but the classifier has {n}")
        return names
    if n == 1000:
        log.info("labelling the classifier's 1000 outputs with ImageNet-1k's class folders (WordNet ids, sorted)")
        return [line for line in IMAGENET_CLASSES.read_text().split("\n") if line and not line.startswith("#")]
    return [f"LABEL_{i}" for i in range(n)]


# ----------------------------------------------------------------------------------------------- speech CTC
def _ctc_settings() -> Settings:
    train = "changes only how fairseq fine-tuned"
    masking = {k: (v, "is fine-tuning's input masking (SpecAugment); not carried") for k, v in {
        "apply_mask": False, "mask_prob": None, "mask_length": None, "mask_selection": "static", "mask_other": 0.0,
        "no_mask_overlap": False, "mask_min_space": 1, "require_same_masks": True, "mask_dropout": 0.0,
        "mask_channel_prob": 0.0, "mask_channel_selection": "static", "mask_channel_other": 0.0,
        "no_mask_channel_overlap": False, "mask_channel_min_space": 1, "mask_channel_before": False}.items()}
    masking["mask_prob"] = masking["mask_length"] = (lambda v: True, "")
    return Settings(
        "model",
        mapped={"w2v_args", "final_dropout", "freeze_finetune_updates", "feature_grad_mult", "layer_decay"},
        required={"normalize": ((True,), "feeds unnormalised audio (v2 speech models normalise)"),
                  "layer_type": (("transformer",), "is another block type"),
                  "adp_num": ((-1,), "adds adapters to the blocks"),
                  "blank_weight": ((0.0, 0), "adds a constant to the blank's logit when decoding")},
        training={**masking, "dropout_input": (0.0, "is a dropout on the features"), "zero_mask": (False, train),
                  "freeze_regex": (None, train), "mask_channel_length": (lambda v: True, "")},
        ignored={"_name", "w2v_path", "no_pretrained_weights", "data", "offload_activations", "min_params_to_wrap",
                 "checkpoint_activations", "ddp_backend", "load_ema", "blank_mode", "update_alibi", "drop_path",
                 "adp_dim", "adp_act_fn", "adp_trf_idx",
                 # written into w2v_args when the pretrained model was loaded: read from there
                 "dropout", "attention_dropout", "activation_dropout", "layerdrop"})


def _ctc_model(ft: dict, dropped: list[str]) -> tuple[dict, dict]:
    """The v2 model section of `w2v_args`: fairseq wrote the fine-tuning's overrides (dropouts, layer drop,
    frozen feature encoder) into it when it loaded the pretrained model."""
    _ctc_settings().check(ft, dropped)
    args = ft["w2v_args"]
    model = copy.deepcopy(args["model"])
    audio = model["modalities"]["audio"]
    if float(ft.get("feature_grad_mult", 1.0)) == 0.0 and float(audio.get("local_grad_mult", 1.0)) == 0.0:
        audio["local_grad_mult"] = 1.0  # fairseq's frozen feature encoder: finetune.freeze_frontend_steps=-1
    return model, args.get("task") or {}


def _ctc_head(ft: dict, state: dict[str, Tensor], cfg: Config, dictionary: Path | None) -> CTCHead:
    w, b = state["w2v_encoder.proj.weight"], state["w2v_encoder.proj.bias"]
    head = CTCHead(cfg.model.dim, w.shape[0], float(ft["final_dropout"]), ctc_labels(dictionary, w.shape[0]))
    head.load_state_dict({"fc.weight": w, "fc.bias": b})
    f = cfg.finetune
    f.task, f.metric = "ctc", "wer"
    f.freeze_encoder_steps = int(ft["freeze_finetune_updates"])
    f.freeze_frontend_steps = -1 if float(ft["feature_grad_mult"]) == 0.0 else 0
    f.layer_decay = float(ft.get("layer_decay") or 1.0)
    cfg.audio.max_sample_size = max(cfg.audio.max_sample_size, 35 * cfg.audio.sample_rate)  # CTC never crops
    return head
