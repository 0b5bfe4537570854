"""The fine-tuning loop: data, freeze, mix, forward, loss, backward, step, log, validate, save. Nothing hidden.

The loss is cross-entropy against soft targets (label smoothing, mixup and cutmix folded in) for a
classifier, or CTC against character targets for speech recognition (`finetune.task`).

Like the pretraining loop, everything it needs (model on its device, optimiser, loader positioned at
`start_step`) is built before it is called. What is random in a step is a function of (seed, step) or of the
restored RNG state, so a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F

from data2vec.config import Config
from data2vec.data.seeding import keyed_generator
from data2vec.errors import Data2VecError
from data2vec.finetune.classifier import Classifier, apply_freezing
from data2vec.finetune.ctc import ctc_loss
from data2vec.finetune.mixing import mix_batch, smooth_one_hot
from data2vec.train.device import autocast
from data2vec.train.distributed import DistInfo, all_reduce_mean, all_reduce_sum, any_process, average_gradients
from data2vec.train.logging import MetricsLogger
from data2vec.train.loop import Preempted, micro_batches
from data2vec.train.optim import lr_at, set_lr

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
    window = {"loss": torch.zeros((), device=device), "samples": 0, "steps": 0, "start": time.perf_counter()}
    bad_in_a_row = empty_in_a_row = 0
    for step, batch in zip(range(start_step, tc.max_steps), batches):
        lr = lr_at(step, tc)
        set_lr(optimizer, lr)
        apply_freezing(model, step, ft)
        empty = "inputs" not in batch or batch["inputs"].shape[0] == 0
        if any_process(empty, info, device):  # all skip together, or the others would wait for its gradients
            empty_in_a_row += 1
            log.warning("step %d: every sample of %s batch was unreadable; skipping the update", step + 1,
                        "this process's" if empty else "another process's")
            if empty_in_a_row >= tc.max_bad_steps:
                raise Data2VecError(f"{empty_in_a_row} batches in a row had no readable sample; check "
                                    f"data.path={cfg.data.path} (see the warnings above for the files)")
            continue
        empty_in_a_row = 0
        batch = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        if ft.task == "classify":
            batch["soft"] = smooth_one_hot(batch["label"], num_classes, ft.label_smoothing)  # [B, C]
        if mix:
            batch["inputs"], batch["soft"], _ = mix_batch(batch["inputs"], batch["soft"],
                                                          keyed_generator(tc.seed, step, MIX_KEY), ft.mixup,
                                                          ft.cutmix, ft.mix_prob, ft.mix_switch_prob)
        total = batch["inputs"].shape[0]
        chunks = micro_batches(total, cfg)
        pieces = [dict(zip(batch, values)) for values in zip(*(v.chunk(chunks) for v in batch.values()))]
        loss_sum = torch.zeros((), device=device)
        for piece in pieces:
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
        average_gradients(params, info)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.clip_grad if tc.clip_grad > 0 else math.inf)
        if tc.skip_nonfinite and not torch.isfinite(grad_norm).item():
            optimizer.zero_grad(set_to_none=True)
            bad_in_a_row += 1
            log.warning("step %d: non-finite loss or gradient, update skipped (%d in a row)", step + 1, bad_in_a_row)
            if bad_in_a_row >= tc.max_bad_steps:
                raise Data2VecError(f"{bad_in_a_row} updates in a row had a non-finite loss or gradient; lower "
                                    "train.lr or use train.precision=fp32")
            continue
        bad_in_a_row = 0
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        window["loss"] += loss_sum
        window["samples"] += total
        window["steps"] += 1
        if logger is not None:
            logger.step()
        done = step + 1
        if done % tc.log_every == 0 or done == tc.max_steps:
            elapsed = time.perf_counter() - window["start"]
            loss = all_reduce_mean(window["loss"] / max(window["steps"], 1), info)
            samples = all_reduce_sum(torch.tensor(float(window["samples"]), device=device), info)
            record = {"step": done, "loss": float(loss), "lr": lr, "grad_norm": float(grad_norm),
                      "samples_per_s": float(samples) / max(elapsed, 1e-9)}
            if logger is not None:
                logger.log(record)
            window.update(loss=torch.zeros((), device=device), samples=0, steps=0, start=time.perf_counter())
        if (ft.eval_every > 0 and done % ft.eval_every == 0) or done == tc.max_steps:
            validate(done)
        stop = should_stop()
        if done % tc.save_every == 0 or done == tc.max_steps or stop:
            save(done)
        if stop and done < tc.max_steps:
            raise Preempted(done)
