"""Speech models <-> `transformers`' Data2VecAudio (wav2vec 2.0's conv feature encoder with a LayerNorm per
layer, a stack of positional convs, post-LN blocks; CTC and utterance classification heads)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from data2vec.config import Config, build_config
from data2vec.interop.hf.common import (
    AUDIO,
    AUDIO2,
    BASE_PREFIX,
    cannot_export,
    encoder_fields,
    fit_decoder,
    labels,
    layer_pairs,
    log,
    take,
    unsupported,
    weights_from_hf,
    weights_to_hf,
    with_head,
)

# transformers' defaults (5.24) for the keys we read, for a config.json that leaves some out
AUDIO_DEFAULTS = {
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
    "hidden_act": "gelu", "hidden_dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.1,
    "feat_proj_dropout": 0.0, "final_dropout": 0.1, "layerdrop": 0.1, "layer_norm_eps": 1e-5,
    "feat_extract_activation": "gelu", "conv_dim": [512] * 7, "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_bias": False, "num_conv_pos_embedding_groups": 16,
    "conv_pos_kernel_size": 19, "num_conv_pos_embeddings": 5, "vocab_size": 32, "pad_token_id": 0,
    "use_weighted_layer_sum": False, "add_adapter": False,
}
QKV = ("q_proj", "k_proj", "v_proj")
ALIBI_CODE = "modeling_data2vec2_audio.py"  # Data2VecAudio + ALiBi, shipped in the folder of a model with ALiBi


# ---------------------------------------------------------------------------------------------- HF -> ours

def config_from_hf(hf: dict, weights: dict[str, Tensor], folder: Path) -> Config:
    """Our speech config for an HF Data2VecAudio config; input settings from the folder's feature extractor."""
    get = lambda key: hf.get(key, AUDIO_DEFAULTS[key])  # noqa: E731
    if get("feat_extract_activation") != "gelu":
        raise unsupported("feat_extract_activation", get("feat_extract_activation"),
                          "is not supported: the data2vec speech front-end uses exact GELU ('gelu')")
    # wav2vec 2.0 options that Data2VecAudio does not read: a config that sets them describes another model
    if hf.get("feat_extract_norm", "layer") != "layer":
        raise unsupported("feat_extract_norm", hf["feat_extract_norm"], "is not supported: the data2vec speech "
                          "feature encoder has a LayerNorm in every conv layer ('layer')")
    if hf.get("do_stable_layer_norm"):
        raise unsupported("do_stable_layer_norm", True, "(pre-LN) is not supported: data2vec speech blocks are "
                          "post-LN")
    if get("add_adapter"):
        raise unsupported("add_adapter", True, "is not supported: data2vec has no adapter after the encoder")
    if get("use_weighted_layer_sum") and ("layer_weights" in weights or "classifier.weight" in weights):
        raise unsupported("use_weighted_layer_sum", True, "is not supported: data2vec heads read the last layer")
    layers = int(get("num_conv_pos_embeddings"))
    if layers < 1:  # HF's empty stack returns its input, which doubles the features
        raise unsupported("num_conv_pos_embeddings", layers, "is not supported: the data2vec speech front-end "
                          "needs at least one positional conv layer")
    dims, kernels, strides = (list(get(k)) for k in ("conv_dim", "conv_kernel", "conv_stride"))
    if not len(dims) == len(kernels) == len(strides) or not dims:
        raise unsupported("conv_dim", dims, f"needs one conv_kernel ({kernels}) and conv_stride ({strides}) per "
                          "layer")
    fields = encoder_fields({**hf, "hidden_dropout_prob": get("hidden_dropout"),
                             "attention_probs_dropout_prob": get("attention_dropout")},
                            {**AUDIO_DEFAULTS, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1})
    groups = int(get("num_conv_pos_embedding_groups"))
    if groups < 1 or fields["dim"] % groups:
        raise unsupported("num_conv_pos_embedding_groups", groups, f"does not divide hidden_size={fields['dim']}")
    v2 = hf.get("model_type") == AUDIO2  # our export of a data2vec 2.0 model with ALiBi (Data2VecAudio has none)
    cfg = build_config("audio-base-v2" if v2 else "audio-base")
    for key, value in fields.items():
        setattr(cfg.model, key, value)
    m, a = cfg.model, cfg.audio
    m.norm_first, m.qkv_bias, m.layer_scale, m.drop_path, m.final_norm = False, "all", 0.0, 0.0, False  # post-LN
    activation_dropout = float(get("activation_dropout"))
    m.activation_dropout = None if activation_dropout == m.dropout else activation_dropout
    m.layer_drop = 0.0  # HF's layerdrop is not converted (below)
    m.alibi = v2
    if v2:
        fit_decoder(cfg)
    a.conv_dim, a.conv_kernel = [int(d) for d in dims], [int(k) for k in kernels]
    a.conv_stride = [int(s) for s in strides]
    a.conv_bias = bool(get("conv_bias"))
    a.pos_conv_layers, a.pos_conv_kernel, a.pos_conv_groups = layers, int(get("conv_pos_kernel_size")), groups
    # as HF: padded frames zeroed before the first positional conv only; our data2vec2-audio code can skip it
    a.pos_conv_zero_padding = "once" if hf.get("zero_padding_before_pos_conv", True) else "none"
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


def pairs(cfg: Config) -> list[tuple[str, str]]:
    """(HF name, our name) of every speech tensor that maps one to one (QKV is handled apart). Our front-end
    keeps HF's names; HF puts the positional convs and the LayerNorm after them in its encoder."""
    a = cfg.audio
    out = [("masked_spec_embed", "frontend.masked_spec_embed")]
    for i in range(len(a.conv_dim)):
        h = f"feature_extractor.conv_layers.{i}."
        out += [(f"{h}conv.weight", f"frontend.{h}conv.weight")]
        out += layer_pairs(h, f"frontend.{h}", [("layer_norm", "layer_norm")])
        if a.conv_bias:
            out.append((f"{h}conv.bias", f"frontend.{h}conv.bias"))
    out += layer_pairs("", "frontend.", [("feature_projection.layer_norm", "feature_projection.layer_norm"),
                                         ("feature_projection.projection", "feature_projection.projection")])
    convs = [f"pos_conv_embed.layers.{i}.conv" for i in range(a.pos_conv_layers)]
    out += layer_pairs("encoder.", "frontend.", [(c, c) for c in convs] + [("layer_norm", "layer_norm")])
    for i in range(cfg.model.depth):
        out += layer_pairs(f"encoder.layers.{i}.", f"encoder.blocks.{i}.",
                           [("attention.out_proj", "attn.proj"), ("layer_norm", "norm1"),
                            ("feed_forward.intermediate_dense", "mlp.fc1"), ("feed_forward.output_dense", "mlp.fc2"),
                            ("final_layer_norm", "norm2")])
    return out


def attention(cfg: Config) -> list[tuple[str, str]]:
    """(HF prefix of q/k/v_proj, our attention prefix) per block."""
    return [(f"encoder.layers.{i}.attention.", f"encoder.blocks.{i}.attn.") for i in range(cfg.model.depth)]


def encoder_from_hf(cfg: Config, weights: dict[str, Tensor], used: set[str]) -> dict[str, Tensor]:
    """Our encoder's tensors (front-end included) from an HF Data2VecAudio state dict (base-model names)."""
    ours = weights_from_hf(cfg, weights, pairs(cfg), attention(cfg), QKV, used)
    if cfg.model.alibi:
        ours["encoder.alibi.scale"] = take(weights, "encoder.alibi_scale", used)
    return ours


def head_from_hf(hf: dict, weights: dict[str, Tensor], dim: int, used: set[str], folder: Path):
    """`Data2VecAudioForCTC`'s ``lm_head`` as a :class:`CTCHead`; `Data2VecAudioForSequenceClassification`'s
    projector and classifier as one :class:`LinearClassifier` (the mean over frames commutes with the
    projector, so classifier(mean(projector(h))) = (W_c W_p) mean(h) + W_c b_p + b_c)."""
    from data2vec.nn.heads import CTCHead, LinearClassifier

    if "lm_head.weight" in weights:
        if int(hf.get("pad_token_id", AUDIO_DEFAULTS["pad_token_id"]) or 0) != 0:
            raise unsupported("pad_token_id", hf["pad_token_id"], "is the CTC blank of Data2VecAudioForCTC; "
                              "data2vec's CTC blank is index 0")
        w, b = take(weights, "lm_head.weight", used), take(weights, "lm_head.bias", used)
        head = CTCHead(dim, w.shape[0], float(hf.get("final_dropout", AUDIO_DEFAULTS["final_dropout"])),
                       _ctc_vocabulary(hf, folder, w.shape[0]))
        head.load_state_dict({"fc.weight": w, "fc.bias": b})
        return head
    if "projector.weight" in weights and "classifier.weight" in weights and "tdnn.0.kernel.weight" not in weights:
        wp, bp = take(weights, "projector.weight", used).double(), take(weights, "projector.bias", used).double()
        wc, bc = take(weights, "classifier.weight", used).double(), take(weights, "classifier.bias", used).double()
        dtype = weights["classifier.weight"].dtype
        # HF's head has no dropout; one exported by to_hf keeps ours in final_dropout, which HF's classifier ignores
        dropout = float(hf.get("final_dropout", 0.0)) if isinstance(hf.get("data2vec"), dict) else 0.0
        head = LinearClassifier(dim, wc.shape[0], dropout, labels(hf, wc.shape[0]))
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
    names = labels(hf, n)
    if names[0] == "LABEL_0":
        log.warning("no vocab.json beside config.json: the CTC head's %d outputs are labelled LABEL_0... "
                    "(decoding needs the characters; copy the tokenizer's vocab.json into the folder)", n)
    return names


def restore(cfg: Config, saved: Config, ours: dict[str, Tensor], headless: bool) -> None:
    """Input handling and the padding rule; the architecture stays HF's."""
    for key in ("pos_conv_zero_padding", "normalize", "sample_rate", "max_sample_size", "min_sample_size",
                "max_batch_samples"):
        setattr(cfg.audio, key, getattr(saved.audio, key))


# ---------------------------------------------------------------------------------------------- ours -> HF

def export(cfg: Config, ours: dict[str, Tensor], head) -> tuple[dict, dict[str, Tensor], dict[str, dict | str]]:
    """(config.json, tensors, other files) of `Data2VecAudioModel`, `...ForCTC` (with the tokenizer's files) or
    `...ForSequenceClassification`; every one with the feature extractor's ``preprocessor_config.json``. A model
    with ALiBi (``model.alibi``: data2vec 2.0 speech) becomes the same model plus ALiBi, as model code in the
    folder (``Data2Vec2AudioModel`` / ``...ForCTC`` / ``...ForSequenceClassification``, model type
    ``data2vec2-audio``), which `transformers` loads with ``trust_remote_code=True``."""
    hf, tensors, files = _export_data2vec_audio(cfg, ours, head)
    a = cfg.audio
    if not cfg.model.alibi:
        if a.pos_conv_zero_padding == "none":
            log.warning("audio.pos_conv_zero_padding=none: Data2VecAudio zeroes padded frames before its positional "
                        "convs; outputs are identical without padding, but on a padded batch frames near the end of "
                        "the shorter utterances differ (from_hf of the export restores the setting)")
        return hf, tensors, files
    from data2vec.interop.hf_code import code_files

    classes = [arch.replace("Data2VecAudio", "Data2Vec2Audio") for arch in hf["architectures"]]
    module = Path(ALIBI_CODE).stem
    hf.update(model_type=AUDIO2, architectures=classes, zero_padding_before_pos_conv=a.pos_conv_zero_padding != "none",
              auto_map={
        "AutoConfig": f"{module}.Data2Vec2AudioConfig", "AutoModel": f"{module}.Data2Vec2AudioModel",
        "AutoModelForCTC": f"{module}.Data2Vec2AudioForCTC",
        "AutoModelForAudioClassification": f"{module}.Data2Vec2AudioForSequenceClassification"})
    prefix = BASE_PREFIX[AUDIO] if head is not None else ""
    tensors[f"{prefix}encoder.alibi_scale"] = ours["encoder.alibi.scale"]
    log.info("model.alibi: exported as Data2VecAudio + ALiBi with its model code (%s); load it with "
             "trust_remote_code=True", ALIBI_CODE)
    return hf, tensors, {**files, **code_files(ALIBI_CODE)}


def _export_data2vec_audio(cfg: Config, ours: dict[str, Tensor],
                           head) -> tuple[dict, dict[str, Tensor], dict[str, dict]]:
    """What :func:`export` writes for `transformers`' own Data2VecAudio classes."""
    m, a = cfg.model, cfg.audio
    if m.norm_first:
        raise cannot_export("model.norm_first", True, "(pre-LN): Data2VecAudio blocks are post-LN")
    if m.layer_scale > 0:
        raise cannot_export("model.layer_scale", m.layer_scale, "is not expressible: Data2VecAudio blocks have no "
                            "layer scale")
    if a.pos_conv_layers < 1:
        raise cannot_export("audio.pos_conv_layers", a.pos_conv_layers, "is not expressible: Data2VecAudio with "
                            "num_conv_pos_embeddings=0 adds its input to itself instead of nothing")
    if head is not None and head.kind == "sentence":
        raise cannot_export("finetune.head", head.kind, "is not expressible for speech: Data2VecAudio classifies the "
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
    tensors = weights_to_hf(cfg, ours, pairs(cfg), attention(cfg), QKV)
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
    hf, tensors = with_head(hf, tensors, AUDIO, head, head_tensors, "Data2VecAudioForSequenceClassification")
    return hf, tensors, files
