"""The pretraining loop: data, forward, loss, backward, step, EMA, log, save. Nothing hidden.

Everything the loop needs (model on its device, optimiser, loader positioned at `start_step`) is built
before it is called, so the loop reads top to bottom. Host syncs happen at log steps, plus one per step for
the finiteness check of the gradient norm (`train.skip_nonfinite`), which is what lets a NaN batch be skipped
instead of poisoning the weights and the teacher.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Iterable

import torch

from data2vec.config import Config
from data2vec.ema import decay_at
from data2vec.errors import Preempted  # noqa: F401  (raised by save_or_stop; long imported from here)
from data2vec.model import Data2Vec
from data2vec.train.device import autocast
from data2vec.train.distributed import DistInfo, all_reduce_sum
from data2vec.train.logging import MetricsLogger
from data2vec.train.step import (Faults, LogWindow, clip_or_skip, micro_batches, save_or_stop, schedule, skip_empty,
                                 split, step_optimizer, to_device)

log = logging.getLogger("data2vec")
MODEL_INPUTS = ("inputs", "mask", "padding_mask", "student_inputs")


def train(
    model: Data2Vec,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[dict[str, Any]],
    cfg: Config,
    device: torch.device,
    start_step: int,
    save: Callable[[int], None],
    logger: MetricsLogger | None,
    scaler: torch.amp.GradScaler | None = None,
    step_model: torch.nn.Module | None = None,
    dist_info: DistInfo | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    steps_per_epoch: int | None = None,
) -> None:
    """Run updates `start_step .. train.max_steps - 1`; one item of `batches` per update.

    `step_model` is the (DDP-wrapped) module the forward goes through; `model` is the plain one that owns
    the teacher. Only the process with a `logger` writes metrics; every process joins the log reductions.
    `should_stop` is polled after every update (a pre-emption signal): the loop then saves and raises
    :class:`Preempted`.
    """
    tc, obj = cfg.train, cfg.objective
    step_model = step_model if step_model is not None else model
    info = dist_info or DistInfo()
    params = [p for _, p in model.trainable_parameters()]
    faults = Faults()
    step_model.train()
    window = LogWindow(("loss", "target_var", "pred_var"), device)
    for step, batch in zip(range(start_step, tc.max_steps), batches):
        lr = schedule(optimizer, step, cfg)
        decay = decay_at(step, obj.ema_start, obj.ema_end, obj.ema_anneal_steps)
        window.skipped += batch.get("skipped", 0)
        faults.skipped_this_epoch += batch.get("skipped", 0)
        if skip_empty(batch, step, faults, cfg, info, device):
            continue
        total = batch["inputs"].shape[0]
        pieces = split(to_device(batch, device, MODEL_INPUTS), micro_batches(total, cfg))
        # The loss of an update is the mean over the masked positions of the whole global batch, as fairseq
        # divides by the all-reduced sample size: each micro-batch's mean is weighted by its share of them
        # (times the world size, which DDP's gradient average divides out again). Masks with a varying count
        # (BEiT blocks, speech spans) then train the same at any world size and accumulation, and the logged
        # loss, averaged over processes, is the global mean too. No host sync.
        counts = [piece["mask"].sum().float() for piece in pieces]
        everywhere = all_reduce_sum(torch.stack(counts).sum(), info).clamp(min=1)
        sums = torch.zeros(3, device=device)  # loss, target variance, prediction variance of this update
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1  # gradients are all-reduced once per update, on the last micro-batch
            if hasattr(step_model, "set_requires_gradient_sync"):  # FSDP2
                step_model.set_requires_gradient_sync(last)
            sync = step_model.no_sync() if hasattr(step_model, "no_sync") and not last else contextlib.nullcontext()
            with sync:
                with autocast(device, tc.precision):
                    out = step_model(piece["inputs"], piece["mask"], piece.get("padding_mask"),
                                     **({"student_inputs": piece["student_inputs"]}
                                        if "student_inputs" in piece else {}))
                share = counts[i] * info.world_size / everywhere  # 1 for one piece in one process
                (scaler.scale(out["loss"] * share) if scaler else out["loss"] * share).backward()
            sums += torch.stack([out["loss"].detach().float(), out["target_var"], out["pred_var"]]) * share
        grad_norm = clip_or_skip(params, optimizer, step, faults, cfg, save, scaler)
        if grad_norm is None:  # a NaN/inf loss or gradient: no optimiser step and no EMA step
            continue
        window.add(sums, total)
        step_optimizer(optimizer, scaler)
        model.update_teacher(decay)
        if logger is not None:
            logger.step()
        done = step + 1
        if done % tc.log_every == 0 or done == tc.max_steps:
            _log(window.reduce(info), faults, logger, cfg, done, lr, decay, grad_norm, info.is_main)
        if steps_per_epoch and done % steps_per_epoch == 0:
            if faults.skipped_this_epoch and info.is_main:
                log.warning("epoch %d: %d unreadable samples skipped (named in the warnings above)",
                            done // steps_per_epoch - 1, faults.skipped_this_epoch)
            faults.skipped_this_epoch = 0
        save_or_stop(done, cfg, save, should_stop)


def _log(means: dict[str, float], faults: Faults, logger: MetricsLogger | None, cfg: Config, done: int, lr: float,
         decay: float, grad_norm: torch.Tensor, is_main: bool) -> None:
    """Write one metrics record of the window's means (reduced over processes) and warn of a collapse."""
    grad_norm = getattr(grad_norm, "full_tensor", lambda: grad_norm)()  # a DTensor under FSDP
    record = {"step": done, "loss": means["loss"], "lr": lr, "ema_decay": decay,
              "samples_per_s": means["samples_per_s"], "grad_norm": float(grad_norm),
              "target_var": means["target_var"], "pred_var": means["pred_var"], "skipped": means["skipped"],
              "nonfinite_skipped": faults.nonfinite_total}
    if logger is not None:
        logger.log(record)
    if is_main and means["target_var"] < cfg.train.collapse_var:
        log.warning("step %d: target variance %.3g is below train.collapse_var=%.3g; the representation may be "
                    "collapsing (lower train.lr or raise the EMA decay)", done, means["target_var"],
                    cfg.train.collapse_var)
