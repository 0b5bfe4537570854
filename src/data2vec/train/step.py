"""The mechanics of one update that pretraining and fine-tuning share, written once.

Each loop (`train.loop.train`, `finetuning.loop.finetune_loop`) reads top to bottom and keeps only what is its
own (the objective, EMA, mixing, freezing, validation); around it, the same steps in the same order:

    lr = schedule(optimizer, step, cfg)               # the learning rate of this update
    if skip_empty(batch, step, faults, ...): continue # a batch with no readable sample, on any process
    pieces = split(to_device(batch, device), chunks)  # micro-batches (`micro_batches`)
    ... forward / backward per piece ...
    grad_norm = clip_or_skip(...)                     # None: a non-finite gradient, update skipped
    step_optimizer(optimizer, scaler)
    window.add(...); if log step: window.reduce(...)  # the log window, reduced over processes
    save_or_stop(done, cfg, save, should_stop)        # checkpoint cadence and pre-emption

Host syncs: one per update for the finiteness check of the gradient norm (what lets a NaN batch be skipped
instead of poisoning the weights), one small all-reduce for the empty-batch check under torchrun, and the log
step's reductions.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from data2vec.config import Config
from data2vec.errors import Data2VecError, Preempted
from data2vec.train.distributed import DistInfo, all_reduce_mean, all_reduce_sum, any_process
from data2vec.train.optim import lr_at, set_lr

log = logging.getLogger("data2vec")


@dataclass
class Faults:
    """What went wrong so far, for the log and for the decision to stop."""

    nonfinite_in_a_row: int = 0
    nonfinite_total: int = 0
    empty_in_a_row: int = 0
    skipped_this_epoch: int = 0


def schedule(optimizer: torch.optim.Optimizer, step: int, cfg: Config) -> float:
    """Set and return the learning rate of update `step` (`train.schedule`: cosine or tri_stage)."""
    lr = lr_at(step, cfg.train)
    set_lr(optimizer, lr)
    return lr


def skip_empty(batch: dict[str, Any], step: int, faults: Faults, cfg: Config, info: DistInfo,
               device: torch.device) -> bool:
    """Whether update `step` is skipped because a batch had no readable sample (the collate function dropped
    them all and counted them in ``skipped``). All processes skip together: one that went on would wait
    forever in the gradient all-reduce. A streak of `train.max_bad_steps` stops the run."""
    empty = "inputs" not in batch or batch["inputs"].shape[0] == 0
    if empty and not batch.get("skipped"):
        raise RuntimeError(f"step {step}: the loader returned an empty batch without skipped samples")
    if not any_process(empty, info, device):
        faults.empty_in_a_row = 0
        return False
    faults.empty_in_a_row += 1
    log.warning("step %d: every sample of %s batch was unreadable; skipping the update", step + 1,
                "this process's" if empty else "another process's")
    if faults.empty_in_a_row >= cfg.train.max_bad_steps:
        raise Data2VecError(f"{faults.empty_in_a_row} batches in a row had no readable sample; check "
                            f"data.path={cfg.data.path} (see the warnings above for the files)")
    return True


def micro_batches(per_rank_batch: int, cfg: Config) -> int:
    """How many forward/backward passes one rank splits its share of the global batch into: at least
    `train.accum_steps`, and enough that none exceeds `train.device_batch_size` (0: no limit). This is how a
    recipe written for 16 GPUs trains the same on 4: each of the 4 accumulates 4 micro-batches."""
    chunks = max(cfg.train.accum_steps, 1)
    if cfg.train.device_batch_size > 0:
        chunks = max(chunks, math.ceil(per_rank_batch / cfg.train.device_batch_size))
    return min(chunks, max(per_rank_batch, 1))


def to_device(batch: dict[str, Any], device: torch.device, keys: tuple[str, ...] | None = None
              ) -> dict[str, torch.Tensor]:
    """The batch's tensors (those named in `keys`, else all) on `device`; counts and other values stay behind."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()
            if isinstance(v, torch.Tensor) and (keys is None or k in keys)}


def split(batch: dict[str, torch.Tensor], chunks: int) -> list[dict[str, torch.Tensor]]:
    """`batch` cut into at most `chunks` micro-batches along the batch dimension (fewer when it is smaller)."""
    return [dict(zip(batch, values)) for values in zip(*(v.chunk(chunks) for v in batch.values()))]


def clip_or_skip(params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, step: int, faults: Faults,
                 cfg: Config, save: Callable[[int], None], scaler: torch.amp.GradScaler | None = None
                 ) -> torch.Tensor | None:
    """Clip the gradients to `train.clip_grad` (0: no clipping) and return their norm before clipping, or None
    when the norm is not finite (`train.skip_nonfinite`): the gradients are dropped and the update skipped,
    so weights (and the teacher) stay good. After `train.max_bad_steps` such updates in a row the last good
    state is saved, numbered after the bad batches so that resume=auto does not replay them, and the run
    stops. With fp16's loss scaler the scaler skips non-finite updates itself."""
    tc = cfg.train
    if scaler:
        scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.clip_grad if tc.clip_grad > 0 else math.inf)
    if not tc.skip_nonfinite or scaler or torch.isfinite(grad_norm).item():
        faults.nonfinite_in_a_row = 0
        return grad_norm
    optimizer.zero_grad(set_to_none=True)
    faults.nonfinite_in_a_row += 1
    faults.nonfinite_total += 1
    log.warning("step %d: non-finite loss or gradient, update skipped (%d in a row, %d in total)", step + 1,
                faults.nonfinite_in_a_row, faults.nonfinite_total)
    if faults.nonfinite_in_a_row >= tc.max_bad_steps:
        save(step + 1)  # nothing was applied during the streak: these are the last good weights
        raise Data2VecError(f"{faults.nonfinite_in_a_row} updates in a row had a non-finite loss or gradient; "
                            f"stopped with a checkpoint of the last good state as step {step + 1}. Lower "
                            "train.lr, use train.precision=fp32, or check the data")
    return None


def step_optimizer(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None = None) -> None:
    """Apply the update (through fp16's loss scaler when there is one) and drop the gradients."""
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class LogWindow:
    """Sums over the updates since the last log step, kept on the device (no host sync) until
    :meth:`reduce`, which every process calls at a log step."""

    def __init__(self, names: tuple[str, ...], device: torch.device) -> None:
        self.names, self.device = names, device
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(len(self.names), device=self.device)
        self.samples = self.skipped = self.steps = 0
        self.start = time.perf_counter()

    def add(self, values: torch.Tensor, samples: int) -> None:
        """One applied update: `values` `[len(names)]` (detached), `samples` in this process's batch."""
        self.sums += values
        self.samples += samples
        self.steps += 1

    def reduce(self, info: DistInfo) -> dict[str, float]:
        """The window's means per update (averaged over processes), samples per second and unreadable samples
        skipped (summed over processes); then the window starts again."""
        means = (all_reduce_mean(self.sums, info) / max(self.steps, 1)).tolist()
        counts = all_reduce_sum(torch.tensor([self.samples, self.skipped], device=self.device), info)
        elapsed = time.perf_counter() - self.start
        record = {**dict(zip(self.names, means)), "samples_per_s": counts[0].item() / max(elapsed, 1e-9),
                  "skipped": int(counts[1].item())}
        self.reset()
        return record


def save_or_stop(done: int, cfg: Config, save: Callable[[int], None], should_stop: Callable[[], bool]) -> None:
    """After update `done`: save every `train.save_every` updates, at the end, and when a pre-emption signal
    arrived (`should_stop`, polled on every process), then raise :class:`Preempted` for the latter."""
    stop = should_stop()
    if done % cfg.train.save_every == 0 or done == cfg.train.max_steps or stop:
        save(done)
    if stop and done < cfg.train.max_steps:
        raise Preempted(done)
