"""The pretraining loop: data, forward, loss, backward, step, EMA, log, save. Nothing hidden.

Everything the loop needs (model on its device, optimiser, loader positioned at `start_step`) is built
before it is called, so the loop reads top to bottom. Host syncs happen at log steps, plus one per step for
the finiteness check of the gradient norm (`train.skip_nonfinite`), which is what lets a NaN batch be skipped
instead of poisoning the weights and the teacher.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from data2vec.config import Config
from data2vec.ema import decay_at
from data2vec.errors import Data2VecError
from data2vec.model import Data2Vec
from data2vec.nn.linear import decided_cpu_matmul, restore_cpu_matmul
from data2vec.train.device import autocast
from data2vec.train.distributed import DistInfo, all_reduce_mean, all_reduce_sum, any_process
from data2vec.train.logging import MetricsLogger
from data2vec.train.optim import lr_at, set_lr

log = logging.getLogger("data2vec")


class Preempted(Exception):
    """Raised after the checkpoint of a run stopped by SIGTERM / SIGINT has been written."""

    def __init__(self, step: int) -> None:
        super().__init__(f"stopped by a signal after step {step}; checkpoint written")
        self.step = step


@dataclass
class Faults:
    """What went wrong so far, for the log and for the decision to stop."""

    nonfinite_in_a_row: int = 0
    nonfinite_total: int = 0
    empty_in_a_row: int = 0
    skipped_this_epoch: int = 0


def rng_state() -> dict[str, Any]:
    """What a resumed run needs to draw and round as the uninterrupted one: the RNG states and the fp32 CPU
    matmul kernel this process chose (see :mod:`data2vec.nn.linear`)."""
    state = {"torch": torch.get_rng_state(), "cpu_matmul": decided_cpu_matmul()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    restore_cpu_matmul(state.get("cpu_matmul"))


def micro_batches(per_rank_batch: int, cfg: Config) -> int:
    """How many forward/backward passes one rank splits its share of the global batch into: at least
    `train.accum_steps`, and enough that none exceeds `train.device_batch_size` (0: no limit). This is how a
    recipe written for 16 GPUs trains the same on 4: each of the 4 accumulates 4 micro-batches."""
    chunks = max(cfg.train.accum_steps, 1)
    if cfg.train.device_batch_size > 0:
        chunks = max(chunks, math.ceil(per_rank_batch / cfg.train.device_batch_size))
    return min(chunks, max(per_rank_batch, 1))


def _split(batch: dict[str, Any], device: torch.device, chunks: int) -> list[dict[str, torch.Tensor | None]]:
    """Move the model's inputs to the device and cut them into `chunks` micro-batches along the batch."""
    keys = ("inputs", "mask", "padding_mask", "student_inputs")
    moved = {k: batch[k].to(device, non_blocking=True) for k in keys if batch.get(k) is not None}
    pieces = {k: v.chunk(chunks) for k, v in moved.items()}
    n = len(pieces["inputs"])
    return [{k: (pieces[k][i] if k in pieces else None) for k in keys} for i in range(n)]


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
    zero = lambda: torch.zeros((), device=device)  # noqa: E731
    window = {"loss": zero(), "target_var": zero(), "pred_var": zero(), "samples": 0, "skipped": 0, "steps": 0,
              "start": time.perf_counter()}
    for step, batch in zip(range(start_step, tc.max_steps), batches):
        lr = lr_at(step, tc)
        set_lr(optimizer, lr)
        decay = decay_at(step, obj.ema_start, obj.ema_end, obj.ema_anneal_steps)
        window["skipped"] += batch.get("skipped", 0)
        faults.skipped_this_epoch += batch.get("skipped", 0)
        empty = "inputs" not in batch or batch["inputs"].shape[0] == 0
        if empty and not batch.get("skipped"):
            raise RuntimeError(f"step {step}: the loader returned an empty batch without skipped samples")
        # All processes must skip together: one that went on would wait forever in the gradient all-reduce.
        skip = any_process(empty, info, device)
        if skip:
            faults.empty_in_a_row += 1
            log.warning("step %d: every sample of %s batch was unreadable; skipping the update", step,
                        "this process's" if empty else "another process's")
            if faults.empty_in_a_row >= tc.max_bad_steps:
                raise Data2VecError(f"{faults.empty_in_a_row} batches in a row had no readable sample; check "
                                    f"data.path={cfg.data.path} (see the warnings above for the files)")
            continue
        faults.empty_in_a_row = 0
        pieces = _split(batch, device, micro_batches(batch["inputs"].shape[0], cfg))
        total = batch["inputs"].shape[0]
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
                    out = step_model(piece["inputs"], piece["mask"], piece["padding_mask"],
                                     **({"student_inputs": piece["student_inputs"]}
                                        if piece["student_inputs"] is not None else {}))
                share = counts[i] * info.world_size / everywhere  # 1 for one piece in one process
                (scaler.scale(out["loss"] * share) if scaler else out["loss"] * share).backward()
            sums += torch.stack([out["loss"].detach().float(), out["target_var"], out["pred_var"]]) * share
        if scaler:
            scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.clip_grad if tc.clip_grad > 0 else math.inf)
        if tc.skip_nonfinite and not scaler and not torch.isfinite(grad_norm).item():
            # A NaN/inf loss or gradient: no optimiser step and no EMA step, so weights and teacher stay good.
            optimizer.zero_grad(set_to_none=True)
            faults.nonfinite_in_a_row += 1
            faults.nonfinite_total += 1
            log.warning("step %d: non-finite loss or gradient, update skipped (%d in a row, %d in total)",
                        step + 1, faults.nonfinite_in_a_row, faults.nonfinite_total)
            if faults.nonfinite_in_a_row >= tc.max_bad_steps:
                # Nothing was applied during the streak, so these are the last good weights; the checkpoint
                # is numbered after the bad batches so that resume=auto does not replay them.
                save(step + 1)
                raise Data2VecError(f"{faults.nonfinite_in_a_row} updates in a row had a non-finite loss or "
                                    f"gradient; stopped with a checkpoint of the last good state as step {step + 1}. "
                                    "Lower train.lr, use train.precision=fp32, or check the data")
            continue
        faults.nonfinite_in_a_row = 0
        window["loss"] += sums[0]
        window["target_var"] += sums[1]
        window["pred_var"] += sums[2]
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update_teacher(decay)
        window["samples"] += total
        window["steps"] += 1
        if logger is not None:
            logger.step()
        done = step + 1
        if done % tc.log_every == 0 or done == tc.max_steps:
            _log(window, faults, info, device, logger, cfg, done, lr, decay, grad_norm)
            window.update(loss=zero(), target_var=zero(), pred_var=zero(), samples=0, skipped=0, steps=0,
                          start=time.perf_counter())
        if steps_per_epoch and done % steps_per_epoch == 0:
            if faults.skipped_this_epoch and info.is_main:
                log.warning("epoch %d: %d unreadable samples skipped (named in the warnings above)",
                            done // steps_per_epoch - 1, faults.skipped_this_epoch)
            faults.skipped_this_epoch = 0
        stop = should_stop()
        if done % tc.save_every == 0 or done == tc.max_steps or stop:
            save(done)
        if stop and done < tc.max_steps:
            raise Preempted(done)


def _log(window: dict, faults: Faults, info: DistInfo, device: torch.device, logger: MetricsLogger | None,
         cfg: Config, done: int, lr: float, decay: float, grad_norm: torch.Tensor) -> None:
    """Reduce the window's sums over processes (every process calls this) and write one metrics record."""
    n = max(window["steps"], 1)
    means = all_reduce_mean(torch.stack([window["loss"], window["target_var"], window["pred_var"]]), info)
    counts = all_reduce_sum(torch.tensor([window["samples"], window["skipped"]], device=device), info)
    loss, target_var, pred_var = (means / n).tolist()
    elapsed = time.perf_counter() - window["start"]
    grad_norm = getattr(grad_norm, "full_tensor", lambda: grad_norm)()  # a DTensor under FSDP
    record = {"step": done, "loss": loss, "lr": lr, "ema_decay": decay,
              "samples_per_s": counts[0].item() / max(elapsed, 1e-9), "grad_norm": float(grad_norm),
              "target_var": target_var, "pred_var": pred_var, "skipped": int(counts[1].item()),
              "nonfinite_skipped": faults.nonfinite_total}
    if logger is not None:
        logger.log(record)
    if info.is_main and target_var < cfg.train.collapse_var:
        log.warning("step %d: target variance %.3g is below train.collapse_var=%.3g; the representation may be "
                    "collapsing (lower train.lr or raise the EMA decay)", done, target_var, cfg.train.collapse_var)
