"""`data2vec evaluate CHECKPOINT [data=PATH | --data PATH]`: the metrics of a fine-tuned model on labelled data.

Works on any checkpoint with a head (``head.safetensors``): one written by `data2vec finetune`, or a
fine-tuned Hugging Face model converted with `data2vec convert --from-hf`. Classifiers report accuracy, F1,
MCC (and top-5 above five classes), labels matched by name to the head's; CTC models report WER and CER of
greedy transcripts.
"""

from __future__ import annotations

import json
from pathlib import Path

from data2vec.data.build import eval_loader
from data2vec.data.labelled import labelled_set
from data2vec.errors import Data2VecError
from data2vec.evaluation.classify import evaluate_classifier, evaluate_ctc
from data2vec.finetuning.classifier import Classifier
from data2vec.nn.heads import load_head
from data2vec.train.device import resolve_device


def evaluate(checkpoint: str | Path, data: str | None = None, split: str = "valid", out: str | Path | None = None,
             batch_size: int = 128, device: str = "auto", option: str = "data=PATH") -> dict[str, float]:
    """Score the checkpoint's classifier on `split` of `data` (default: the run's validation set); writes
    `eval.json` beside the checkpoint (or into `out`) and returns the metrics. `option` is how the user gives
    `data`, named in the fix of a data error: the checkpoint's own ``data.*`` keys cannot be set here."""
    from data2vec.api import load
    from data2vec.checkpoint import resolve_checkpoint

    path = resolve_checkpoint(checkpoint)
    head = load_head(path)
    if head is None:
        raise Data2VecError(f"checkpoint '{path}' has no classifier (head.safetensors); fine-tune it first with "
                            "`data2vec finetune RECIPE checkpoint=...`, or probe its features with `data2vec probe`")
    encoder = load(path)
    cfg = encoder.cfg
    if cfg.modality == "text" and (path / "tokenizer.json").is_file():
        cfg.text.tokenizer = str(path / "tokenizer.json")
    if head.kind == "ctc":
        cfg.finetune.task = "ctc"
    dataset = labelled_set(cfg, split, classes=head.labels, path=data, option=option)
    dev = resolve_device(device)
    model = Classifier(encoder, head).to(dev)
    loader = eval_loader(dataset, batch_size)
    if head.kind == "ctc":
        metrics = evaluate_ctc(model, loader, dev, head.labels)
    else:
        metrics = evaluate_classifier(model, loader, dev)
    where = data or (cfg.data.path if split == "train" else cfg.data.eval_path or cfg.data.path)
    if metrics["samples"] == 0:
        raise Data2VecError(f"no readable labelled samples in '{where}'; check its files, or set {option} to "
                            "other labelled data")
    result = {"checkpoint": str(path), "data": where, "split": split, **metrics}
    target = Path(out) if out else path
    target.mkdir(parents=True, exist_ok=True)
    (target / "eval.json").write_text(json.dumps(result, indent=1))
    return result


