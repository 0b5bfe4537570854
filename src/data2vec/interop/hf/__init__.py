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

One module per modality (:mod:`.vision`, :mod:`.text`, :mod:`.audio`) holds that modality's config translation,
tensor names and heads, each with the same functions (``config_from_hf``, ``encoder_from_hf``, ``head_from_hf``,
``restore``, ``export``); :mod:`.common` holds what they share. This module picks the modality and writes files.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from data2vec.config import Config, to_dict
from data2vec.errors import Data2VecError
from data2vec.interop.hf import audio, text, vision, vision2
from data2vec.interop.hf.common import (
    AUDIO,
    AUDIO2,
    BASE_PREFIX,
    MEAN_TEXT,
    TEXT,
    VISION,
    VISION2,
    cannot_export,
    log,
    read_hf_folder,
    refuse_existing_run,
    warn_dropped,
    write_checkpoint,
    write_hf_folder,
)
from data2vec.interop.hf.pipeline import pipeline_files

# HF's model_type -> the module converting it (MEAN_TEXT, VISION2, AUDIO2: our exports with model code in the folder)
BY_MODEL_TYPE = {VISION: vision, TEXT: text, AUDIO: audio, MEAN_TEXT: text, VISION2: vision2, AUDIO2: audio}
BY_MODALITY = {"image": vision, "text": text, "audio": audio}  # our cfg.modality -> the module exporting it

__all__ = ["from_hf", "to_hf", "read_hf_folder"]


# ---------------------------------------------------------------------------------------------- HF -> ours

def from_hf(folder: str | Path, out: str | Path) -> Path:
    """Convert a local HF `Data2VecVision*` / `Data2VecText*` / `Data2VecAudio*` folder into a data2vec run folder
    `out` holding one checkpoint (step 0); returns the checkpoint path. `data2vec.load(out)` gives the encoder, a
    classifier or CTC head comes along as ``head.safetensors`` (:func:`data2vec.nn.heads.load_head`), and the run
    folder's
    ``config.yaml`` continues pretraining with ``data2vec pretrain OUT/config.yaml resume=auto``."""
    from data2vec.nn.heads import HEAD_FILE, head_file

    folder, out = Path(folder), Path(out)
    refuse_existing_run(out)
    hf, raw = read_hf_folder(folder)
    model_type = hf.get("model_type")
    if model_type not in BY_MODEL_TYPE:
        raise Data2VecError(f"'{folder}' holds a '{model_type}' model; data2vec converts {VISION}, {TEXT} and "
                            f"{AUDIO}")
    modality = BY_MODEL_TYPE[model_type]
    prefix = BASE_PREFIX[model_type]
    weights = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in raw.items()}
    used: set[str] = set()
    cfg = modality.config_from_hf(hf, weights, folder)
    ours = modality.encoder_from_hf(cfg, weights, used)
    head = modality.head_from_hf(hf, weights, cfg.model.dim, used, folder)
    warn_dropped(set(weights) - used)
    cfg.name = f"hf-{folder.resolve().name}"
    if isinstance(hf.get("data2vec"), dict):  # written by to_hf: our settings that HF's config has no room for
        _restore(cfg, hf["data2vec"], ours, headless=head is None, modality=modality)
    cfg.objective.top_k = min(cfg.objective.top_k, cfg.model.depth)  # the recipe's, for a model this deep
    cfg.out = str(out)
    extra = {HEAD_FILE: head_file(head)} if head is not None else {}
    if (folder / "tokenizer.json").is_file() and modality is text:
        extra["tokenizer.json"] = (folder / "tokenizer.json").read_bytes()
    return write_checkpoint(cfg, ours, out, extra)


def _restore(cfg: Config, stored: dict, ours: dict[str, Tensor], headless: bool, modality) -> None:
    """Bring back what `to_hf` kept under config.json's "data2vec" key: the training sections whole, and the
    front-end choices HF computes identically (only where the weights still agree), so that a round trip
    ours -> HF -> ours gives the same config (`modality`: the module that converted the folder). The architecture
    itself always comes from HF's keys."""
    import yaml

    from data2vec.config import config_from_yaml_text

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
    modality.restore(cfg, saved, ours, headless)


# ---------------------------------------------------------------------------------------------- ours -> HF

def to_hf(checkpoint: str | Path, out: str | Path, which: str = "student") -> Path:
    """Write checkpoint (or run folder) `checkpoint` as an HF model folder `out` (``config.json`` and
    ``model.safetensors``); `which="teacher"` exports the EMA teacher. A checkpoint with a classifier becomes
    `Data2VecVisionForImageClassification` / `Data2VecTextForSequenceClassification` /
    `Data2VecAudioForSequenceClassification`, one with a CTC head `Data2VecAudioForCTC` (with the tokenizer's
    ``vocab.json``), one without a head `Data2VecVisionModel` / `Data2VecTextModel` / `Data2VecAudioModel`,
    which `AutoModel.from_pretrained(out)` loads. Speech also gets the feature extractor's
    ``preprocessor_config.json``."""
    from data2vec.nn.heads import load_head
    from data2vec.checkpoint import load_checkpoint, resolve_checkpoint

    path = resolve_checkpoint(checkpoint)
    weights, _, cfg = load_checkpoint(path, with_state=False)
    prefix = f"{which}."
    ours = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    if not ours:
        raise Data2VecError(f"checkpoint '{path}' has no '{which}' weights; use which=student or which=teacher")
    head = load_head(path)
    if cfg.model.alibi and cfg.modality != "audio":  # speech: Data2VecAudio + ALiBi as model code (audio.py)
        raise cannot_export("model.alibi", True, "is not expressible: Hugging Face's Data2Vec models have no "
                            "ALiBi attention bias")
    if cfg.modality not in BY_MODALITY:
        raise Data2VecError(f"cannot export a '{cfg.modality}' checkpoint to Hugging Face")
    hf, tensors, files = BY_MODALITY[cfg.modality].export(cfg, ours, head)
    files.update(pipeline_files(cfg, path))  # tokenizer / image processor: what transformers.pipeline reads
    hf["data2vec"] = to_dict(cfg)  # transformers keeps unknown keys; from_hf restores what HF cannot express
    out = Path(out)
    write_hf_folder(out, hf, tensors, files)
    return out
