"""The fine-tuning config: a recipe's training settings on a checkpoint's architecture (and tokenizer)."""

from __future__ import annotations

import copy
from pathlib import Path

from data2vec.config import Config
from data2vec.data.text import load_tokenizer
from data2vec.data.text_source import text_source
from data2vec.errors import Data2VecError

ARCH_SECTIONS = ("model", "image", "text", "audio")  # what the weights fix; the recipe cannot change them
AUDIO_DATA_KEYS = ("max_sample_size", "min_sample_size", "max_batch_samples")  # audio.* keys about data, not weights
CTC_MIN_CROP_SECONDS = 35  # LibriSpeech's longest utterance: a transcribed utterance must never be cut


def resolve_config(cfg: Config, source: Config, source_name: str) -> Config:
    """`cfg` (a fine-tuning recipe with overrides) with the architecture of `source` (the config of the
    checkpoint the weights come from), then the fine-tuning changes to it: regularisation rates from
    `finetune.drop_path / dropout / attn_dropout / activation_dropout / layer_drop`, and image pooling from
    `finetune.pool` (mean: BEiT's LayerNorm of the mean patch token, without the final norm; cls: the
    final-normed CLS token)."""
    if source.modality != cfg.modality:
        raise Data2VecError(f"checkpoint '{source_name}' holds a {source.modality} model but recipe '{cfg.name}' "
                            f"fine-tunes {cfg.modality} models; use a {source.modality} fine-tuning recipe "
                            "(`data2vec recipes` lists them)")
    out = copy.deepcopy(cfg)
    for section in ARCH_SECTIONS:
        if hasattr(source, section):
            setattr(out, section, copy.deepcopy(getattr(source, section)))
    if cfg.text.tokenizer:  # a tokenizer given for fine-tuning wins over the checkpoint's
        out.text.tokenizer = cfg.text.tokenizer
    ft = out.finetune
    for key in ("drop_path", "dropout", "attn_dropout", "activation_dropout", "layer_drop"):
        if getattr(ft, key) is not None:
            setattr(out.model, key, getattr(ft, key))
    if out.modality == "image":
        out.image.pool, out.image.pool_norm = ft.pool, ft.pool == "mean"
        if out.model.norm_first:
            out.model.final_norm = ft.pool == "cls"
    if out.modality == "audio":
        _audio_data_keys(cfg, out)
    if ft.head == "sentence" and out.modality != "text":
        raise Data2VecError("finetune.head=sentence is RoBERTa's head on the <s> token, for text models; use "
                            "finetune.head=linear")
    return out


def tokenizer_json(given: str, source: Config, source_dir: Path) -> str:
    """The content of the tokenizer a text model was pretrained with: `given` (text.tokenizer of the
    fine-tuning command), else the one stored in the checkpoint folder, else the checkpoint config's
    text.tokenizer, else the one beside its pretraining data."""
    if given:
        return load_tokenizer(given).to_str()
    if (source_dir / "tokenizer.json").is_file():
        return (source_dir / "tokenizer.json").read_text()
    if source.text.tokenizer:
        return load_tokenizer(source.text.tokenizer).to_str()
    _, tokenizer, _ = text_source(source)
    return tokenizer.to_str()


def _audio_data_keys(cfg: Config, out: Config) -> None:
    """The audio section comes from the checkpoint, but its data keys (crop length, shortest file, padded
    samples per batch) are always the fine-tuning run's own: they describe the labelled data, not the
    weights, and a value that happens to equal the default must still win over the checkpoint's. CTC never
    crops (a crop would cut the audio but not its transcript): its crop is at least CTC_MIN_CROP_SECONDS."""
    for key in AUDIO_DATA_KEYS:
        setattr(out.audio, key, getattr(cfg.audio, key))
    if out.finetune.task == "ctc":
        out.audio.max_sample_size = max(out.audio.max_sample_size, CTC_MIN_CROP_SECONDS * out.audio.sample_rate)
