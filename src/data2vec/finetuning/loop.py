"""The fine-tuning loop: data, freeze, mix, forward, loss, backward, step, log, validate, save. Nothing hidden.

The loss is cross-entropy against soft targets (label smoothing, mixup and cutmix folded in) for a
classifier, or CTC against character targets for speech recognition (`finetune.task`).

Like the pretraining loop, everything it needs (model on its device, optimiser, loader positioned at
`start_step`) is built before it is called. What is random in a step is a function of (seed, step) or of the
restored RNG state, so a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F

from data2vec.config import Config
from data2vec.ctc import ctc_loss
from data2vec.data.seeding import keyed_generator
from data2vec.finetuning.classifier import Classifier, apply_freezing
from data2vec.finetuning.mixing import mix_batch, smooth_one_hot
from data2vec.train.device import autocast
from data2vec.train.distributed import DistInfo, average_gradients
from data2vec.train.logging import MetricsLogger
from data2vec.train.step import (Faults, LogWindow, clip_or_skip, micro_batches, save_or_stop, schedule, skip_empty,
                                 split, step_optimizer, to_device)

log = logging.getLogger("data2vec")
MIX_KEY = 0x6D6978  # keeps the mixing generator of a step apart from the samples' own generators


def finetune_loop(
    model: Classifier,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[dict[str, Any]],
    cfg: Config,
    device: torch.device,
    start_step: int,
    save: Callable[[int], None],
    validate: Callable[[int], None],
    logger: MetricsLogger | None,
    should_stop: Callable[[], bool] = lambda: False,
    dist_info: DistInfo | None = None,
) -> None:
    """Run updates `start_step .. train.max_steps - 1`, one item of `batches` per update; `validate(done)`
    every `finetune.eval_every` updates and at the end, `save(done)` every `train.save_every` and at the end.
    A pre-emption signal (`should_stop`) saves and raises :class:`Preempted`.

    Under torchrun every process runs this loop on its share of each batch; gradients are averaged over
    processes before clipping (:func:`average_gradients`), so all hold the same weights after every update.
    Every process calls `validate` and `save` (they decide who does the work)."""
    tc, ft = cfg.train, cfg.finetune
    info = dist_info or DistInfo()
    num_classes = len(model.labels)
    mix = cfg.modality == "image" and (ft.mixup > 0 or ft.cutmix > 0)
    model.train()
    faults = Faults()
    window = LogWindow(("loss",), device)
    for step, batch in zip(range(start_step, tc.max_steps), batches):
        lr = schedule(optimizer, step, cfg)
        apply_freezing(model, step, ft)
        window.skipped += batch.get("skipped", 0)
        if skip_empty(batch, step, faults, cfg, info, device):
            continue
        batch = to_device(batch, device)
        if ft.task == "classify":
            batch["soft"] = smooth_one_hot(batch["label"], num_classes, ft.label_smoothing)  # [B, C]
        if mix:
            batch["inputs"], batch["soft"], _ = mix_batch(batch["inputs"], batch["soft"],
                                                          keyed_generator(tc.seed, step, MIX_KEY), ft.mixup,
                                                          ft.cutmix, ft.mix_prob, ft.mix_switch_prob)
        total = batch["inputs"].shape[0]
        loss_sum = torch.zeros((), device=device)
        for piece in split(batch, micro_batches(total, cfg)):
            with autocast(device, tc.precision):
                logits, frames = model.run(piece["inputs"], piece.get("padding_mask"), piece.get("mask"))
            if ft.task == "ctc":
                loss = ctc_loss(logits, frames, piece["targets"], piece["target_lengths"])
            else:  # soft targets: smoothing and mixing included
                loss = F.cross_entropy(logits.float(), piece["soft"])
            share = piece["inputs"].shape[0] / total
            (loss * share).backward()
            loss_sum += loss.detach() * share
        params = [p for p in model.parameters() if p.requires_grad]
        average_gradients(params, info)  # not DDP: freezing changes the trained parameters during the run
        grad_norm = clip_or_skip(params, optimizer, step, faults, cfg, save)
        if grad_norm is None:
            continue
        step_optimizer(optimizer)
        window.add(loss_sum.reshape(1), total)
        if logger is not None:
            logger.step()
        done = step + 1
        if done % tc.log_every == 0 or done == tc.max_steps:
            means = window.reduce(info)
            if logger is not None:
                logger.log({"step": done, "loss": means["loss"], "lr": lr, "grad_norm": float(grad_norm),
                            "samples_per_s": means["samples_per_s"], "skipped": means["skipped"],
                            "nonfinite_skipped": faults.nonfinite_total})
        if (ft.eval_every > 0 and done % ft.eval_every == 0) or done == tc.max_steps:
            validate(done)
        save_or_stop(done, cfg, save, should_stop)
