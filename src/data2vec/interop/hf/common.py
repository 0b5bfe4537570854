"""What every modality of the Hugging Face converter shares: reading a model folder, the error messages, the
fused <-> split attention projection, head prefixes, the report of dropped tensors and the run folder that
:func:`~data2vec.interop.hf.from_hf` writes.

Each modality module (:mod:`.vision`, :mod:`.text`, :mod:`.audio`) holds the rest: its HF defaults, config
translation both ways, tensor names and heads.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import re
from pathlib import Path

import torch
from torch import Tensor

from data2vec.config import Config, save_config
from data2vec.errors import Data2VecError

log = logging.getLogger("data2vec")

VISION, TEXT, AUDIO = "data2vec-vision", "data2vec-text", "data2vec-audio"
MEAN_TEXT = "data2vec-text-mean"  # our export of a text classifier on the token mean (model code in the folder)
VISION2 = "data2vec2-vision"  # our export of images Data2VecVision cannot compute (model code in the folder)
AUDIO2 = "data2vec2-audio"  # our export of speech with ALiBi: Data2VecAudio + ALiBi (model code in the folder)
BASE_PREFIX = {VISION: "data2vec_vision.", TEXT: "data2vec_text.", AUDIO: "data2vec_audio.",
               MEAN_TEXT: "data2vec_text.", VISION2: "data2vec2_vision.", AUDIO2: "data2vec_audio."}  # in task models
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

def unsupported(option: str, value: object, why: str) -> Data2VecError:
    """The error for an HF config option that our model cannot compute."""
    return Data2VecError(f"cannot convert: Hugging Face config option {option}={value!r} {why}")


def cannot_export(key: str, value: object, why: str) -> Data2VecError:
    """The error for a setting of ours that the HF model cannot compute."""
    return Data2VecError(f"cannot export to Hugging Face: {key}={value!r} {why}")


def encoder_fields(hf: dict, defaults: dict) -> dict:
    """EncoderConfig sizes from an HF config, checked for what our block computes."""
    get = lambda key: hf.get(key, defaults[key])  # noqa: E731
    if get("hidden_act") != "gelu":
        raise unsupported("hidden_act", get("hidden_act"), "is not supported: data2vec blocks use exact GELU ('gelu')")
    dim, heads, hidden = int(get("hidden_size")), int(get("num_attention_heads")), int(get("intermediate_size"))
    if dim % heads:
        raise unsupported("num_attention_heads", heads, f"does not divide hidden_size={dim}")
    if int(dim * (hidden / dim)) != hidden:
        raise unsupported("intermediate_size", hidden, f"is not expressible as model.mlp_ratio x hidden_size={dim}")
    return {"dim": dim, "depth": int(get("num_hidden_layers")), "heads": heads, "mlp_ratio": hidden / dim,
            "norm_eps": float(get("layer_norm_eps")), "dropout": float(get("hidden_dropout_prob")),
            "attn_dropout": float(get("attention_probs_dropout_prob"))}


def fixed_positions(cfg: Config, order: str) -> Tensor:
    """Our fixed sin-cos positions `[1, P + N, D]` of sin-cos `order` (zeros at the CLS token), as the image
    front-end's buffer holds them: what an HF folder stores as position embeddings."""
    from data2vec.nn.image import sincos_pos_embed

    side, prefix = cfg.image.image_size // cfg.image.patch_size, int(cfg.image.cls_token)
    return torch.cat([torch.zeros(prefix, cfg.model.dim),
                      sincos_pos_embed(cfg.model.dim, (side, side), order)]).unsqueeze(0)


def fit_decoder(cfg: Config) -> None:
    """The v2 recipe's decoder made to fit a model of another width (for continued pretraining of a converted
    model): no wider than the model, its groups dividing both widths."""
    obj = cfg.objective
    obj.decoder_dim = min(obj.decoder_dim, cfg.model.dim)
    obj.decoder_groups = math.gcd(obj.decoder_groups, obj.decoder_dim, cfg.model.dim)


def labels(hf: dict, n: int) -> list[str]:
    """The `n` class names of an HF config's ``id2label``, else ``LABEL_i``."""
    id2label = hf.get("id2label") or {}
    names = [id2label.get(str(i), id2label.get(i)) for i in range(n)]
    return names if all(isinstance(x, str) for x in names) else [f"LABEL_{i}" for i in range(n)]


# ---------------------------------------------------------------------------------------------- weight names

def layer_pairs(hf_layer: str, our_block: str, names: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(HF name, our name) of the weight and bias of each (HF module, our module) pair of one layer."""
    return [(f"{hf_layer}{a}.{t}", f"{our_block}{b}.{t}") for a, b in names for t in ("weight", "bias")]


def take(weights: dict[str, Tensor], name: str, used: set[str]) -> Tensor:
    """HF tensor `name`, recorded as converted; a one-line error when the file lacks it."""
    if name not in weights:
        raise Data2VecError(f"cannot convert: the weights lack '{name}', which config.json implies; the folder's "
                            "config.json and weights file do not belong together")
    used.add(name)
    return weights[name]


def split_qkv(cfg: Config, ours: dict[str, Tensor], o: str) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """(query, key, value) weights and biases of our block's attention at prefix `o`; absent biases are zeros."""
    weights = ours[f"{o}qkv.weight"].chunk(3)
    zero = torch.zeros(cfg.model.dim, dtype=weights[0].dtype)
    if cfg.model.qkv_bias == "all":
        return weights, ours[f"{o}qkv.bias"].chunk(3)
    if cfg.model.qkv_bias == "qv":
        return weights, (ours[f"{o}q_bias"], zero, ours[f"{o}v_bias"])
    return weights, (zero, zero, zero)


def weights_from_hf(cfg: Config, weights: dict[str, Tensor], pairs: list[tuple[str, str]],
                    attention: list[tuple[str, str]], qkv_names: tuple[str, str, str],
                    used: set[str]) -> dict[str, Tensor]:
    """Our encoder tensors from HF's: renamed by `pairs`, and query / key / value (named `qkv_names` under each
    HF prefix of `attention`, a list of (HF prefix, our prefix)) fused into one projection."""
    ours = {mine: weights[theirs] for theirs, mine in pairs if theirs in weights}
    used.update(theirs for theirs, _ in pairs if theirs in weights)
    missing = [theirs for theirs, mine in pairs if theirs not in weights and mine not in OPTIONAL]
    if missing:
        take(weights, missing[0], used)  # raises, naming it
    q, k, v = qkv_names
    for h, o in attention:
        ours[f"{o}qkv.weight"] = torch.cat([take(weights, f"{h}{n}.weight", used) for n in (q, k, v)])
        if cfg.model.qkv_bias == "all":
            ours[f"{o}qkv.bias"] = torch.cat([take(weights, f"{h}{n}.bias", used) for n in (q, k, v)])
        else:  # BEiT: no key bias (it would cancel in the softmax anyway)
            ours[f"{o}q_bias"] = take(weights, f"{h}{q}.bias", used)
            ours[f"{o}v_bias"] = take(weights, f"{h}{v}.bias", used)
    return ours


def weights_to_hf(cfg: Config, ours: dict[str, Tensor], pairs: list[tuple[str, str]],
                  attention: list[tuple[str, str]], qkv_names: tuple[str, str, str],
                  key_bias: bool = True) -> dict[str, Tensor]:
    """HF's tensors from our encoder's, the inverse of :func:`weights_from_hf`: renamed by `pairs`, and our fused
    projection split into query / key / value (named `qkv_names` under each HF prefix of `attention`). BEiT's
    layout (`key_bias=False`) has no key bias: the softmax cancels it."""
    tensors = {theirs: ours[mine] for theirs, mine in pairs}
    q, k, v = qkv_names
    for h, o in attention:
        (wq, wk, wv), (bq, bk, bv) = split_qkv(cfg, ours, o)
        tensors.update({f"{h}{q}.weight": wq, f"{h}{k}.weight": wk, f"{h}{v}.weight": wv,
                        f"{h}{q}.bias": bq, f"{h}{v}.bias": bv})
        if key_bias:
            tensors[f"{h}{k}.bias"] = bk
    return tensors


def with_head(hf: dict, tensors: dict[str, Tensor], model_type: str, head, head_tensors: dict[str, Tensor],
              arch: str) -> tuple[dict, dict[str, Tensor]]:
    """A task model: base weights under the base-model prefix, the head's beside them, labels in the config."""
    if head is None:
        return hf, tensors
    hf["architectures"] = [arch]
    hf["id2label"] = {str(i): label for i, label in enumerate(head.labels)}
    hf["label2id"] = {label: i for i, label in enumerate(head.labels)}
    prefixed = {BASE_PREFIX[model_type] + k: v for k, v in tensors.items()}
    return hf, {**prefixed, **head_tensors}


# ---------------------------------------------------------------------------------------------- writing

def warn_dropped(names: set[str]) -> None:
    """One warning listing the HF tensors (grouped by module) that have no place in our model."""
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


def refuse_existing_run(out: Path) -> None:
    """A conversion writes a new run folder: one that already holds checkpoints stops it before anything is read."""
    from data2vec.checkpoint import list_checkpoints

    if list_checkpoints(out):
        raise Data2VecError(f"'{out}' already holds checkpoints; give a new --out folder for the converted model")


def write_checkpoint(cfg: Config, encoder_state: dict[str, Tensor], out: Path, extra: dict[str, bytes],
                     teacher_state: dict[str, Tensor] | None = None,
                     model_state: dict[str, Tensor] | None = None) -> Path:
    """A weights-only checkpoint (step 0, no training state) that `data2vec.load` reads and `resume` continues
    with a fresh optimiser: student and teacher both the converted encoder, a freshly initialised regression
    head. A converted file that holds more (fairseq's:
    an EMA teacher, the regression head, a v2 decoder) gives the teacher's encoder tensors as `teacher_state`
    (what it lacks is the student's) and other tensors of the full model (``head.*``, ``decoder.*``) as
    `model_state`. A ``tokenizer.json`` in `extra` becomes the run's ``text.tokenizer``."""
    from data2vec.model import Data2Vec
    from data2vec.checkpoint import save_checkpoint

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
    except RuntimeError as err:  # shapes: the file's config and its weights disagree
        raise Data2VecError(f"cannot convert: the weights do not fit the model's config "
                            f"({str(err).splitlines()[-1].strip()[:200]})") from None
    if teacher_state is not None and set(teacher_state) - set(state):  # a bug of ours, as above
        raise RuntimeError(f"conversion mapped teacher tensors {sorted(set(teacher_state) - set(state))}")
    model.teacher.load_state_dict({**state, **(teacher_state or {})})
    if model_state:
        full = model.state_dict()
        if set(model_state) - set(full):
            raise RuntimeError(f"conversion mapped model tensors {sorted(set(model_state) - set(full))}")
        model.load_state_dict({**full, **model_state})
    if "tokenizer.json" in extra:  # where save_checkpoint stores it: step 0's folder
        cfg.text.tokenizer = str((out / "checkpoints" / "step_00000000" / "tokenizer.json").resolve())
    path = save_checkpoint(out, 0, model.state_dict(), None, cfg, extra_files=extra)
    save_config(cfg, out / "config.yaml")
    return path


def write_hf_folder(out: Path, hf: dict, tensors: dict[str, Tensor], files: dict[str, dict | str | bytes]) -> None:
    """``config.json``, ``model.safetensors`` and the other files of an HF folder: a dict is written as JSON,
    a str as text, bytes as they are."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
    for name, content in files.items():
        if isinstance(content, bytes):
            (out / name).write_bytes(content)
        elif isinstance(content, str):
            (out / name).write_text(content)
        else:
            (out / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
