"""`data2vec finetune RECIPE checkpoint=PATH [key=value ...]`: train a classifier on a pretrained encoder.

A run folder like pretraining's: ``config.yaml`` (the resolved config, architecture from the checkpoint),
``metrics.jsonl`` (training records, and validation records with ``"split": "valid"``), ``checkpoints/``
(exact resume with ``resume=auto``), ``best/`` (the checkpoint with the best validation `finetune.metric`)
and ``results.json``. Each checkpoint holds the encoder as ``student.*`` in ``model.safetensors`` (so
``data2vec.load`` reads it) and the classifier as ``head.safetensors`` (the Hugging Face head layouts).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

from data2vec.checkpoint import load_checkpoint, load_config, resolve_checkpoint, save_checkpoint
from data2vec.config import Config
from data2vec.data.build import eval_loader
from data2vec.data.labelled import labelled_set
from data2vec.data.text import checked_tokenizer
from data2vec.errors import Data2VecError
from data2vec.evaluation.classify import better, evaluate_classifier, evaluate_ctc
from data2vec.finetuning.classifier import Classifier, load_pretrained, new_head
from data2vec.finetuning.loop import finetune_loop
from data2vec.finetuning.setup import resolve_config, tokenizer_json
from data2vec.model import Data2VecEncoder
from data2vec.nn.heads import HEAD_FILE, head_file, load_head
from data2vec.train.harness import checkpoint_saver, continue_randomness, open_run, running, started
from data2vec.train.optim import layer_decay_groups

log = logging.getLogger("data2vec")
BEST = "best"


def finetune(cfg: Config, progress: bool = True) -> Path:
    """Fine-tune per `cfg` (`finetune.checkpoint` gives the encoder); returns the run folder. Resumes exactly
    when `cfg.resume` points at a checkpoint of the run (`auto`: the newest)."""
    if cfg.train.strategy != "ddp":
        raise Data2VecError(f"finetune trains data-parallel only; train.strategy={cfg.train.strategy} (sharding) is "
                            "for pretraining: drop it")
    if cfg.train.precision == "fp16":
        raise Data2VecError("finetune runs in train.precision=fp32 or bf16; fp16 (with its loss scaler) is for "
                            "pretraining only")
    ctc = cfg.finetune.task == "ctc"
    if ctc != (cfg.finetune.metric in ("wer", "cer")):
        raise Data2VecError(f"finetune.metric={cfg.finetune.metric} does not score finetune.task="
                            f"{cfg.finetune.task}; use {'wer or cer' if ctc else 'accuracy, top5, f1 or mcc'}")

    def fresh_config() -> Config:  # what a new run would save, to compare with a run already in `out`
        _require_checkpoint(cfg)
        return _resolve(cfg, load_config(cfg.finetune.checkpoint), resolve_checkpoint(cfg.finetune.checkpoint))

    run = open_run(cfg, fresh_config)  # torchrun: every process trains on its share of each batch
    info, device = run.info, run.device
    resuming = run.resume_from is not None
    # The architecture comes from where the weights come from: the run's own checkpoint when resuming.
    if resuming:
        source_dir, weights, source = resolve_checkpoint(run.resume_from), run.weights, run.source
        cfg.finetune.checkpoint = cfg.finetune.checkpoint or source.finetune.checkpoint  # where the run started
        cfg.finetune.random_init = source.finetune.random_init
    else:
        _require_checkpoint(cfg)
        source_dir = resolve_checkpoint(cfg.finetune.checkpoint)
        weights, _, source = load_checkpoint(source_dir, with_state=False)
    given_tokenizer = "" if resuming else (cfg.text.tokenizer or source.text.tokenizer)
    cfg = run.cfg = _resolve(cfg, source, source_dir)
    tokenizer, tokenizer_text = None, None
    if cfg.modality == "text":
        tokenizer_text = tokenizer_json(given_tokenizer, source, source_dir)
        tokenizer = checked_tokenizer(cfg.text.tokenizer, cfg.text, Tokenizer.from_str(tokenizer_text))

    # Data before the model: a bad path or label fails in a second.
    train_set = labelled_set(cfg, "train", augment=True, tokenizer=tokenizer)
    classes = train_set.classes  # for CTC, the character vocabulary
    if cfg.finetune.task == "classify" and len(classes) < 2:
        raise Data2VecError(f"the training data '{cfg.data.path}' has {len(classes)} class; a classifier needs at "
                            "least two")
    head = load_head(source_dir) if resuming else None
    if head is not None and head.labels != classes:
        raise Data2VecError(f"the classes of '{cfg.data.path}' ({', '.join(classes[:5])}...) differ from those of "
                            f"the run being resumed ({', '.join(head.labels[:5])}...); resume with the same data")
    valid_set = labelled_set(cfg, "valid", classes=classes, tokenizer=tokenizer)
    if cfg.finetune.metric == "top5" and len(classes) <= 5:
        raise Data2VecError(f"finetune.metric=top5 needs more than five classes, the data has {len(classes)}; use "
                            "accuracy, f1 or mcc")
    loader = run.loader(train_set)  # pretraining's, workers capped
    valid_loader = eval_loader(valid_set, cfg.finetune.eval_batch_size)

    torch.manual_seed(cfg.train.seed)
    encoder = Data2VecEncoder(cfg)
    if head is None:
        head = new_head("ctc" if ctc else cfg.finetune.head, cfg.model.dim, classes, cfg.finetune.head_dropout,
                        cfg.finetune.head_init_scale)
    if resuming:
        encoder.load_state_dict({k[len("student."):]: v for k, v in weights.items() if k.startswith("student.")})
    elif not cfg.finetune.random_init:
        load_pretrained(encoder, weights, str(source_dir))
    model = Classifier(encoder, head).to(device)
    tc = cfg.train
    groups = layer_decay_groups(model.named_for_decay(), tc.weight_decay, cfg.model.depth, cfg.finetune.layer_decay,
                                per_layer_rel_pos=cfg.modality == "image" and cfg.image.rel_pos_bias == "per_layer")
    optimizer = torch.optim.AdamW(groups, lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=tc.eps)
    if "optimizer" in run.state:  # not strict: parameters frozen so far (or never trained) have no state yet
        set_optimizer_state_dict(model, optimizer, run.state["optimizer"],
                                 options=StateDictOptions(full_state_dict=True, strict=False))
    best: dict | None = run.state.get("best")
    continue_randomness(run)
    files = {"tokenizer.json": tokenizer_text} if tokenizer_text is not None else {}
    with started(run, files) as todo:
        if not todo:
            return run.out
        out = run.out
        n_params = sum(p.numel() for p in model.parameters())
        log.info("fine-tune %s: %s from %s%s, %.2fM parameters, %d classes, %d train / %d validation samples, "
                 "%d steps, %d process(es)", out, cfg.name, cfg.finetune.checkpoint,
                 " (random init)" if cfg.finetune.random_init else "", n_params / 1e6, len(classes), len(train_set),
                 len(valid_set), tc.max_steps, info.world_size)
        extra = {name: text.encode() for name, text in files.items()}

        def weights_now() -> dict[str, torch.Tensor]:  # the encoder as `student.*`, which data2vec.load reads
            return {f"student.{k}": v for k, v in model.encoder.state_dict().items()}

        def files_now() -> dict[str, bytes]:
            return {HEAD_FILE: head_file(model.head), **extra}

        save = checkpoint_saver(run, model, optimizer, weights_now, lambda: {"best": best}, files_now)
        last: dict = {}

        def validate(step: int) -> None:
            nonlocal best
            # Every process scores the whole validation set (the main one alone would leave the others waiting in a
            # collective, where NCCL's 10-minute timeout can hit on a large set); only the main one writes.
            if ctc:
                metrics = evaluate_ctc(model, valid_loader, device, classes, tc.precision)
            else:
                metrics = evaluate_classifier(model, valid_loader, device, tc.precision)
            last.update(step=step, **metrics)
            if logger is not None:
                logger.log({"step": step, "split": "valid", **metrics}, group="valid")
            log.info("step %d validation: %s", step, "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                                                                   if k != "samples"))
            if better(cfg.finetune.metric, metrics, best):
                best = {"step": step, **metrics}
                if not info.is_main:
                    return
                save_checkpoint(out / BEST, step, weights_now(), {"step": step, "metrics": metrics}, cfg, keep_last=1,
                                extra_files=files_now())

        start = time.perf_counter()
        with running(run, progress, desc="finetune") as (logger, stop):
            finetune_loop(model, optimizer, loader, cfg, device, run.start_step, save, validate, logger,
                          should_stop=stop, dist_info=info)
        if not info.is_main:
            return out
        result = {"recipe": cfg.name, "checkpoint": cfg.finetune.checkpoint, "random_init": cfg.finetune.random_init,
                  "metric": cfg.finetune.metric, "classes": classes, "final": last, "best": best,
                  "seconds": round(time.perf_counter() - start, 1)}
        (out / "results.json").write_text(json.dumps(result, indent=1))
        return out


def _require_checkpoint(cfg: Config) -> None:
    if not cfg.finetune.checkpoint:
        raise Data2VecError("no checkpoint to fine-tune: give checkpoint=PATH (a pretraining run or checkpoint "
                            "folder); add finetune.random_init=true for the from-scratch baseline")


def _resolve(cfg: Config, source: Config, source_dir: Path) -> Config:
    """The config this run saves: the recipe on the checkpoint's architecture, and for text the tokenizer
    the run folder keeps (out/tokenizer.json)."""
    resolved = resolve_config(cfg, source, str(source_dir))
    if resolved.modality == "text":
        resolved.text.tokenizer = str((Path(cfg.out) / "tokenizer.json").resolve())
    return resolved
