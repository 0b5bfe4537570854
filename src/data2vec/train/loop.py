"""The pretraining loop: data, forward, loss, backward, step, EMA, log, save. Nothing hidden.

Everything the loop needs (model on its device, optimiser, loader positioned at `start_step`) is built
before it is called, so the loop reads top to bottom. Host syncs (`.item()`) happen only at log steps.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from data2vec.config import Config
from data2vec.ema import decay_at
from data2vec.model import Data2Vec
from data2vec.train.device import autocast
from data2vec.train.distributed import DistInfo, all_reduce_mean, all_reduce_sum
from data2vec.train.logging import MetricsLogger
from data2vec.train.optim import lr_at, set_lr

log = logging.getLogger("data2vec")


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def micro_batches(per_rank_batch: int, cfg: Config) -> int:
    """How many forward/backward passes one rank splits its share of the global batch into: at least
    `train.accum_steps`, and enough that none exceeds `train.device_batch_size` (0: no limit). This is how a
    recipe written for 16 GPUs trains the same on 4: each of the 4 accumulates 4 micro-batches."""
    chunks = max(cfg.train.accum_steps, 1)
    if cfg.train.device_batch_size > 0:
        chunks = max(chunks, math.ceil(per_rank_batch / cfg.train.device_batch_size))
    return min(chunks, max(per_rank_batch, 1))


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
) -> None:
    """Run updates `start_step .. train.max_steps - 1`; one item of `batches` per update.

    `step_model` is the (DDP-wrapped) module the forward goes through; `model` is the plain one that owns
    the teacher. Only the process with a `logger` writes metrics; every process joins the log reductions.
    """
    tc, obj = cfg.train, cfg.objective
    step_model = step_model if step_model is not None else model
    info = dist_info or DistInfo()
    params = [p for _, p in model.trainable_parameters()]
    step_model.train()
    window = {"loss": torch.zeros((), device=device), "target_var": torch.zeros((), device=device),
              "pred_var": torch.zeros((), device=device), "samples": 0, "skipped": 0, "steps": 0,
              "start": time.perf_counter()}
    step = start_step
    for step, batch in zip(range(start_step, tc.max_steps), batches):
        lr = lr_at(step, tc)
        set_lr(optimizer, lr)
        window["skipped"] += batch.get("skipped", 0)
        if "inputs" not in batch or batch["inputs"].shape[0] == 0:
            if not batch.get("skipped"):
                raise RuntimeError(f"step {step}: the loader returned an empty batch without skipped samples")
            log.warning("step %d: every sample of the batch was unreadable; skipping the update", step)
            continue
        inputs = batch["inputs"].to(device, non_blocking=True)  # images, waveforms or token ids
        masks = batch["mask"].to(device, non_blocking=True)
        padding = batch.get("padding_mask")
        padding = padding.to(device, non_blocking=True) if padding is not None else None
        chunks = micro_batches(inputs.shape[0], cfg)
        pieces = list(zip(inputs.chunk(chunks), masks.chunk(chunks),
                          padding.chunk(chunks) if padding is not None else [None] * chunks))
        chunks = len(pieces)
        for i, (micro_inputs, micro_masks, micro_padding) in enumerate(pieces):
            # gradients are all-reduced once per update, on the last micro-batch
            if hasattr(step_model, "set_requires_gradient_sync"):  # FSDP2
                step_model.set_requires_gradient_sync(i == chunks - 1)
            sync = contextlib.nullcontext() if i == chunks - 1 or not hasattr(step_model, "no_sync") \
                else step_model.no_sync()
            with sync:
                with autocast(device, tc.precision):
                    out = step_model(micro_inputs, micro_masks, micro_padding)
                share = micro_inputs.shape[0] / inputs.shape[0]  # exact for uneven splits too
                loss = out["loss"] * share
                (scaler.scale(loss) if scaler else loss).backward()
            window["loss"] += out["loss"].detach() * share
            window["target_var"] += out["target_var"] * share
            window["pred_var"] += out["pred_var"] * share
        if scaler:
            scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.clip_grad if tc.clip_grad > 0 else math.inf)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        decay = decay_at(step, obj.ema_start, obj.ema_end, obj.ema_anneal_steps)
        model.update_teacher(decay)
        window["samples"] += inputs.shape[0]
        window["steps"] += 1
        if logger is not None:
            logger.step()
        done = step + 1
        if done % tc.log_every == 0 or done == tc.max_steps:
            elapsed = time.perf_counter() - window["start"]
            n = max(window["steps"], 1)
            means = all_reduce_mean(torch.stack([window["loss"], window["target_var"], window["pred_var"]]), info)
            counts = all_reduce_sum(torch.tensor([window["samples"], window["skipped"]], device=device), info)
            loss_v, target_var, pred_var = (means / n).tolist()
            record = {"step": done, "loss": loss_v, "lr": lr, "ema_decay": decay,
                      "samples_per_s": counts[0].item() / max(elapsed, 1e-9), "grad_norm": float(getattr(grad_norm, "full_tensor", lambda: grad_norm)()),
                      "target_var": target_var, "pred_var": pred_var, "skipped": int(counts[1].item())}
            if logger is not None:
                logger.log(record)
            if info.is_main and record["target_var"] < tc.collapse_var:
                log.warning("step %d: target variance %.3g is below train.collapse_var=%.3g; the representation "
                            "may be collapsing (lower train.lr or raise the EMA decay)", done, record["target_var"],
                            tc.collapse_var)
            window.update(loss=torch.zeros((), device=device), target_var=torch.zeros((), device=device),
                          pred_var=torch.zeros((), device=device), samples=0, skipped=0, steps=0,
                          start=time.perf_counter())
        if done % tc.save_every == 0 or done == tc.max_steps:
            save(done)
