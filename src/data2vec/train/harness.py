"""The run harness: what every training command (pretrain, finetune) does around its loop, written once.

    run = open_run(cfg)                          # device, process group, start point, checkpoint resumed from
    loader = run.loader(dataset)                 # the task's data, positioned at the start step
    model, optimizer = ...                       # the task's model, then its resumed state
    continue_randomness(run)                     # RNG of the checkpoint, then each process its own stream
    with started(run) as todo:                   # claim the run folder (first write), logging, config.yaml
        if todo:
            save = checkpoint_saver(run, model, optimizer, ...)
            with running(run, progress) as (logger, stop):   # metrics, SIGTERM / SIGINT -> checkpoint
                loop(..., save, logger, should_stop=stop)

Everything before :func:`started` only reads: a start that fails (a bad data path, a run folder that holds
another run) leaves nothing behind. A checkpoint resumed from may be weights-only (model weights and config,
no ``state.pt``, as a conversion from Hugging Face writes): the run then starts at step 0 with a fresh
optimiser and fresh random streams.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader

from data2vec.checkpoint import load_checkpoint, save_checkpoint
from data2vec.config import Config, save_config
from data2vec.data.build import step_loader
from data2vec.data.dataset import StepDataset
from data2vec.nn.linear import decided_cpu_matmul, restore_cpu_matmul
from data2vec.train.device import resolve_device
from data2vec.train.distributed import DistInfo, barrier, full_state, init_distributed, local_device
from data2vec.train.logging import MetricsLogger, setup_logging
from data2vec.train.run_folder import claim, start_point
from data2vec.train.signals import StopSignal, stoppable

log = logging.getLogger("data2vec")


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


@dataclass
class Run:
    """A run being started: where it writes, on which device and processes, and the checkpoint it continues
    (`weights` None and `state` empty for a fresh start; `state` empty for a weights-only checkpoint)."""

    cfg: Config
    device: torch.device
    info: DistInfo
    resume_from: Path | None = None
    weights: dict[str, torch.Tensor] | None = None
    state: dict[str, Any] = field(default_factory=dict)
    source: Config | None = None  # the config saved with the checkpoint resumed from

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def start_step(self) -> int:
        return self.state.get("step", 0)

    def loader(self, dataset: StepDataset, pin_memory: bool = False) -> DataLoader:
        """This process's share of each step's batch of `dataset`, from the start step on: a resumed run sees
        the batches the uninterrupted one would have (:func:`data2vec.data.build.step_loader`)."""
        return step_loader(dataset, self.cfg, self.start_step, self.info.rank, self.info.world_size, pin_memory)

    @property
    def same_world(self) -> bool:
        """Whether the checkpoint's random streams can continue: it has them, saved by as many processes."""
        return "rng" in self.state and self.state.get("world_size", 1) == self.info.world_size


def open_run(cfg: Config, fresh_config: Callable[[], Config] | None = None) -> Run:
    """Device, process group (under torchrun) and the checkpoint the run in `cfg.out` continues, if any (see
    :func:`data2vec.train.run_folder.start_point`; `fresh_config` is what a new run would save). Writes
    nothing."""
    device = resolve_device(cfg.device)
    info = init_distributed(device)
    run = Run(cfg, local_device(device, info), info)
    run.resume_from = start_point(cfg, fresh_config)
    if run.resume_from is not None:
        run.weights, run.state, run.source = load_checkpoint(run.resume_from)
        if run.same_world:  # before the model is built: the fp32 CPU kernel it rounds with
            restore_cpu_matmul(run.state["rng"].get("cpu_matmul"))
    return run


def continue_randomness(run: Run) -> None:
    """After the model is built (from `train.seed`): the resumed checkpoint's random streams, so dropout and
    drop path continue exactly (same process count only); then, under torchrun, each process its own stream."""
    if run.same_world:
        set_rng_state(run.state["rng"])
    if run.info.enabled:
        torch.manual_seed(run.cfg.train.seed + 1_000_003 * run.info.rank + run.start_step)


@contextlib.contextmanager
def started(run: Run, files: dict[str, str] | None = None) -> Iterator[bool]:
    """Claim the run folder (the first write) for the block, set up logging and write ``config.yaml`` (and
    `files`, name -> text). Yields False when the run is already complete: nothing is left to do."""
    cfg, out, info = run.cfg, run.out, run.info
    with claim(cfg, info.is_main):
        setup_logging(out if info.is_main else None, level=logging.INFO if info.is_main else logging.WARNING)
        if run.start_step >= cfg.train.max_steps:
            log.info("run %s is complete (step %d of train.max_steps=%d): nothing to do", out, run.start_step,
                     cfg.train.max_steps)
            yield False
            return
        if run.resume_from is not None:
            log.info("resumed from %s at step %d", run.resume_from, run.start_step)
        if info.is_main:
            for name, text in (files or {}).items():
                (out / name).write_text(text)
            save_config(cfg, out / "config.yaml")
        yield True


def checkpoint_saver(run: Run, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     weights: Callable[[], dict[str, torch.Tensor]] | None = None,
                     extra_state: Callable[[], dict[str, Any]] = dict,
                     extra_files: Callable[[], dict[str, bytes]] = dict,
                     scaler: torch.amp.GradScaler | None = None) -> Callable[[int], None]:
    """`save(step)`, which every process calls: the checkpoint of the run at `step`, for exact resume. It holds
    `weights()` (default: the model's full state) and the training state (step, optimiser, random streams,
    process count, the loss scaler's and `extra_state()`), beside `extra_files()`. Gathering the state is a
    collective under FSDP; the main process alone writes."""

    def save(step: int) -> None:
        model_state, optim = full_state(model, optimizer)
        if run.info.is_main:
            state = {"step": step, "optimizer": optim, "rng": rng_state(), "world_size": run.info.world_size,
                     **extra_state()}
            if scaler is not None:
                state["scaler"] = scaler.state_dict()
            path = save_checkpoint(run.out, step, weights() if weights else model_state, state, run.cfg,
                                   run.cfg.train.keep_last, extra_files=extra_files())
            log.debug("saved %s", path)
        barrier(run.info)

    return save


@contextlib.contextmanager
def running(run: Run, progress: bool = True, desc: str = "pretrain"
            ) -> Iterator[tuple[MetricsLogger | None, StopSignal]]:
    """The block the loop runs in: the main process's metrics logger (None on the others) and the stop signal
    to poll after each update (SIGTERM / SIGINT; a pre-emption is reported, the logger closed however the
    block ends)."""
    logger = None
    if run.info.is_main:
        logger = MetricsLogger(run.out, run.cfg.train.max_steps, run.start_step, progress=progress, desc=desc)
    with stoppable(run.out, run.info, run.device, logger) as stop:
        yield logger, stop
