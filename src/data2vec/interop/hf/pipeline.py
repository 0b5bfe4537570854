"""What `transformers.pipeline` needs beside an exported model's weights, so that its output is ours.

A pipeline builds its tokenizer, image processor or feature extractor from files in the model folder; a folder
without them makes it refuse (images) or, for text, build an empty RoBERTa tokenizer and return confident
garbage. `--to-hf` therefore writes:

- text: our byte-level BPE as ``tokenizer.json`` with RoBERTa's ``<s> A </s>`` / ``<s> A </s></s> B </s>``
  template (we add the specials by hand when we encode), ``tokenizer_config.json`` naming the special tokens
  and ``model_max_length`` = ``text.block_size`` (what our data code cuts to), so that ``AutoTokenizer`` gives
  our ids;
- images: ``preprocessor_config.json`` for `BeitImageProcessor` with our evaluation transform (shorter side
  to ``int(image.image_size / data.eval_crop_pct)``, bicubic, centre crop, ``data.image_mean`` /
  ``data.image_std``), which :func:`eval_crop_pct_from_processor` and :func:`normalization_from_processor` read
  back from an HF folder;
- a text classifier on the mean of the tokens (``finetune.head=linear``), which no `transformers` class
  computes: `Data2VecTextModel` with that head as model code in the folder
  (``data2vec/interop/hf_code/modeling_data2vec_text_mean.py``), loaded with ``trust_remote_code=True``.

Speech folders get their feature extractor and CTC tokenizer from :mod:`data2vec.interop.hf.audio`.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from torch import Tensor

from data2vec.config import Config
from data2vec.errors import Data2VecError
from data2vec.interop.hf.common import MEAN_TEXT, TEXT, with_head

log = logging.getLogger("data2vec")
MEAN_TEXT_CODE = "modeling_data2vec_text_mean"  # in data2vec/interop/hf_code/
MEAN_TEXT_ARCH = "Data2VecTextForMeanPooledClassification"
TOKEN_NAMES = {"bos_token": "<s>", "eos_token": "</s>", "cls_token": "<s>", "sep_token": "</s>",
               "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>"}  # RoBERTa's roles


def pipeline_files(cfg: Config, checkpoint: Path) -> dict[str, dict | str]:
    """The tokenizer (text) or image processor (images) files of an export of `checkpoint`; {} for speech,
    whose files come with its export."""
    if cfg.modality == "text":
        return tokenizer_files(cfg, checkpoint)
    if cfg.modality == "image":
        return {"preprocessor_config.json": image_processor_config(cfg)}
    return {}


# ---------------------------------------------------------------------------------------------- text

def tokenizer_files(cfg: Config, checkpoint: Path) -> dict[str, dict | str]:
    """``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` of the tokenizer the model
    was trained with (the checkpoint's copy, else ``text.tokenizer``, else the one beside its pretraining
    data); {} with a warning when none is found."""
    from tokenizers import Tokenizer

    from data2vec.data.text import checked_tokenizer
    from data2vec.finetuning.setup import tokenizer_json

    try:
        text = tokenizer_json("", cfg, checkpoint)
    except Data2VecError as err:
        log.warning("no tokenizer found for '%s' (%s): the export has no tokenizer files, so transformers "
                    "pipelines cannot encode text for it; copy the tokenizer.json the model was trained with "
                    "into the checkpoint folder and export again", checkpoint, err)
        return {}
    tokenizer = Tokenizer.from_str(text)
    _, ids = checked_tokenizer(cfg.text.tokenizer or checkpoint / "tokenizer.json", cfg.text, tokenizer)
    return {"tokenizer.json": with_roberta_template(tokenizer, ids).to_str(pretty=True),
            **tokenizer_config(tokenizer, cfg.text.block_size)}


def with_roberta_template(tokenizer, ids: dict[str, int]):
    """`tokenizer` adding ``<s> A </s>`` and ``<s> A </s></s> B </s>`` (all type 0) as our labelled-text
    sets do, with no truncation or padding of its own (transformers sets those per call)."""
    from tokenizers import Tokenizer, processors

    out = Tokenizer.from_str(tokenizer.to_str())
    bos, eos = ("<s>", ids["bos_id"]), ("</s>", ids["eos_id"])
    out.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                       special_tokens=[bos, eos])
    out.no_truncation()
    out.no_padding()
    return out


def tokenizer_config(tokenizer, max_length: int) -> dict[str, dict]:
    """``tokenizer_config.json`` (`PreTrainedTokenizerFast`: the ``tokenizer.json`` as it is) and
    ``special_tokens_map.json``: RoBERTa's special tokens that the vocabulary has, our `max_length`, and no
    token type ids (Data2VecText has one token type)."""
    specials = {role: token for role, token in TOKEN_NAMES.items() if tokenizer.token_to_id(token) is not None}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **specials, "model_max_length": max_length,
              "model_input_names": ["input_ids", "attention_mask"], "padding_side": "right",
              "truncation_side": "right", "clean_up_tokenization_spaces": False}
    return {"tokenizer_config.json": config, "special_tokens_map.json": specials}


def mean_pooled_classifier(hf: dict, tensors: dict[str, Tensor], head) -> tuple[dict, dict[str, Tensor], dict]:
    """(config.json, tensors, files) of a text model with our linear head on the mean of the real tokens:
    `Data2VecTextModel` under ``data2vec_text.``, ``classifier`` = the head's linear layer, and the model code
    (`transformers` has no class computing it; `Data2VecTextForSequenceClassification` reads ``<s>`` through
    a dense + tanh layer, which cannot equal a mean)."""
    from data2vec.interop.hf_code import code_files

    head_tensors = {"classifier.weight": head.fc.weight, "classifier.bias": head.fc.bias}
    hf, tensors = with_head(hf, tensors, TEXT, head, head_tensors, MEAN_TEXT_ARCH)
    hf.update(model_type=MEAN_TEXT, classifier_dropout=head.dropout.p,
              auto_map={"AutoConfig": f"{MEAN_TEXT_CODE}.Data2VecTextMeanConfig",
                        "AutoModelForSequenceClassification": f"{MEAN_TEXT_CODE}.{MEAN_TEXT_ARCH}"})
    return hf, tensors, code_files(f"{MEAN_TEXT_CODE}.py")


# ---------------------------------------------------------------------------------------------- images

def image_processor_config(cfg: Config) -> dict:
    """``preprocessor_config.json`` of a `BeitImageProcessor` doing our evaluation transform
    (:func:`data2vec.data.image.eval_image_transform`): the shorter side to ``int(image_size / eval_crop_pct)``
    (bicubic; the longer one ``int(short * long / short_before)``), the centred ``image_size`` square, /255,
    the run's mean and std (``data.image_mean`` / ``data.image_std``)."""
    from data2vec.data.image import eval_image_transform

    transform = eval_image_transform(cfg)
    size = transform.size
    return {"image_processor_type": "BeitImageProcessor", "do_resize": True,
            "size": {"shortest_edge": transform.eval_resize}, "resample": 3, "do_center_crop": True,
            "crop_size": {"height": size, "width": size}, "do_rescale": True, "rescale_factor": 1 / 255,
            "do_normalize": True, "image_mean": list(transform.mean), "image_std": list(transform.std),
            "do_reduce_labels": False, "do_convert_rgb": True}


def _processor(folder: Path) -> dict | None:
    """An HF folder's ``preprocessor_config.json`` as a dict; None (and why, in the log) when it has none or it
    cannot be read."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return None
    try:
        proc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        log.warning("cannot read %s (%s); its settings are not used", path, err)
        return None
    if not isinstance(proc, dict):
        log.warning("%s is not a JSON object; its settings are not used", path)
        return None
    return proc


def normalization_from_processor(folder: Path) -> tuple[list[float], list[float]] | None:
    """(``data.image_mean``, ``data.image_std``) of an HF image folder's ``preprocessor_config.json``: its
    ``image_mean`` / ``image_std`` (one number stands for all three channels; `BeitImageProcessor`'s 0.5 / 0.5
    where it leaves them out), or 0 / 1 under ``do_normalize: false``. None (and why, in the log) when there is
    no such file or it rescales other than /255, which our transform always does."""
    proc = _processor(folder)
    if proc is None:
        return None
    path = folder / "preprocessor_config.json"
    if not proc.get("do_rescale", True) or not math.isclose(float(proc.get("rescale_factor", 1 / 255)), 1 / 255):
        log.warning("%s rescales pixels by %s (do_rescale %s), not 1/255 as data2vec's image transform; its mean "
                    "and std are not used", path, proc.get("rescale_factor"), proc.get("do_rescale"))
        return None
    if not proc.get("do_normalize", True):
        return [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    channels = []
    for key in ("image_mean", "image_std"):
        value = proc.get(key, [0.5, 0.5, 0.5])  # BeitImageProcessor's IMAGENET_STANDARD_MEAN / _STD
        value = [value] * 3 if isinstance(value, (int, float)) else value
        if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value)
                and (key == "image_mean" or min(value) > 0)):
            log.warning("%s has %s %r, not 3 numbers (R, G, B; a std above 0); its mean and std are not used", path,
                        key, value)
            return None
        channels.append([float(v) for v in value])
    return channels[0], channels[1]


def eval_crop_pct_from_processor(folder: Path, image_size: int) -> float | None:
    """The ``data.eval_crop_pct`` of an HF image folder's ``preprocessor_config.json`` when its processor does what
    our evaluation transform does (the shorter side to S, then the centred `image_size` square, as our exports
    write it): the largest value whose ``int(image_size / value)`` is S. None (and why, in the log) when there is
    no such file or it asks for something else, such as a resize to a square without a centre crop (the
    processor of the released ``facebook/data2vec-vision-*-ft1k``), which our transform does not compute."""
    proc = _processor(folder)
    if proc is None:
        return None
    path = folder / "preprocessor_config.json"
    size, crop = proc.get("size"), proc.get("crop_size")
    short = size.get("shortest_edge") if isinstance(size, dict) else None
    side = crop if isinstance(crop, int) else (crop.get("height") if isinstance(crop, dict) else None)
    square = isinstance(crop, int) or (isinstance(crop, dict) and crop.get("width") == side)
    if not (proc.get("do_resize", True) and proc.get("do_center_crop") and isinstance(short, int) and square
            and side == image_size and short >= image_size):
        log.info("%s does not resize the shorter side and centre-crop %d x %d (size %s, crop_size %s, "
                 "do_center_crop %s), which is data2vec's evaluation transform; its crop is not used", path,
                 image_size, image_size, size, crop, proc.get("do_center_crop"))
        return None
    pct = image_size / short
    while int(image_size / pct) < short:  # image_size / short can round below what int() gives back as short
        pct = math.nextafter(pct, 0.0)
    return pct
