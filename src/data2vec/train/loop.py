"""The pretraining loop: data, forward, loss, backward, step, EMA, log, save. Nothing hidden.

Everything the loop needs (model on its device, optimiser, loader positioned at `start_step`) is built
before it is called, so the loop reads top to bottom. Host syncs (`.item()`) happen only at log steps.
"""

from __future__ import annotations

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
) -> None:
    """Run updates `start_step .. train.max_steps - 1`; one item of `batches` per update."""
    tc, obj = cfg.train, cfg.objective
    params = [p for _, p in model.trainable_parameters()]
    model.train()
    window = {"loss": torch.zeros((), device=device), "target_var": torch.zeros((), device=device),
              "pred_var": torch.zeros((), device=device), "samples": 0, "skipped": 0, "steps": 0,
              "start": time.perf_counter()}
    step = start_step
    for step, batch in zip(range(start_step, tc.max_steps), batches):
        lr = lr_at(step, tc)
        set_lr(optimizer, lr)
        window["skipped"] += batch.get("skipped", 0)
        if "images" not in batch or batch["images"].shape[0] == 0:
            log.warning("step %d: every sample of the batch was unreadable; skipping the update", step)
            continue
        images = batch["images"].to(device, non_blocking=True)
        masks = batch["mask"].to(device, non_blocking=True)
        chunks = min(tc.accum_steps, images.shape[0])
        for micro_images, micro_masks in zip(images.chunk(chunks), masks.chunk(chunks)):
            with autocast(device, tc.precision):
                out = model(micro_images, micro_masks)
            loss = out["loss"] / chunks
            (scaler.scale(loss) if scaler else loss).backward()
            window["loss"] += out["loss"].detach() / chunks
            window["target_var"] += out["target_var"] / chunks
            window["pred_var"] += out["pred_var"] / chunks
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
        window["samples"] += images.shape[0]
        window["steps"] += 1
        if logger is not None:
            logger.step()
        done = step + 1
        if logger is not None and (done % tc.log_every == 0 or done == tc.max_steps):
            elapsed = time.perf_counter() - window["start"]
            n = window["steps"]
            record = {"step": done, "loss": window["loss"].item() / n, "lr": lr, "ema_decay": decay,
                      "samples_per_s": window["samples"] / max(elapsed, 1e-9), "grad_norm": float(grad_norm),
                      "target_var": window["target_var"].item() / n, "pred_var": window["pred_var"].item() / n,
                      "skipped": window["skipped"]}
            logger.log(record)
            if record["target_var"] < tc.collapse_var:
                log.warning("step %d: target variance %.3g is below train.collapse_var=%.3g; the representation "
                            "may be collapsing (lower train.lr or raise the EMA decay)", done, record["target_var"],
                            tc.collapse_var)
            window.update(loss=torch.zeros((), device=device), target_var=torch.zeros((), device=device),
                          pred_var=torch.zeros((), device=device), samples=0, skipped=0, steps=0,
                          start=time.perf_counter())
        if done % tc.save_every == 0 or done == tc.max_steps:
            save(done)
