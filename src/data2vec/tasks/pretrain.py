"""`data2vec pretrain RECIPE [key=value ...]`: build model, optimiser and data, then run the loop."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from data2vec.config import Config, save_config
from data2vec.data.build import pretrain_loader
from data2vec.model import Data2Vec
from data2vec.train.checkpoint import load_checkpoint, save_checkpoint
from data2vec.train.device import resolve_device
from data2vec.train.distributed import (DistInfo, barrier, full_state, init_distributed,
                                        load_full_state, local_device, wrap_model)
from data2vec.train.logging import MetricsLogger, setup_logging
from data2vec.train.loop import rng_state, set_rng_state, train
from data2vec.train.optim import build_optimizer
from data2vec.train.run_folder import claim, start_point
from data2vec.train.signals import stoppable

log = logging.getLogger("data2vec")


def pretrain(cfg: Config, progress: bool = True) -> Path:
    """Pretrain per `cfg`; returns the run folder. Resumes exactly when `cfg.resume` points at a checkpoint."""
    out = Path(cfg.out)
    device = resolve_device(cfg.device)
    info = init_distributed(device)
    device = local_device(device, info)
    # Everything up to `claim` only reads: a start that fails (a bad data path, a run folder that holds
    # another run or is in use) leaves nothing behind.
    resume_from = start_point(cfg)
    weights, state = None, None
    if resume_from is not None:
        weights, state, _ = load_checkpoint(resume_from)
    start_step = state["step"] if state else 0
    # Data first: a bad data path fails in a second, before a large model is built.
    loader = pretrain_loader(cfg, start_step, rank=info.rank, world_size=info.world_size,
                             pin_memory=device.type == "cuda")
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every process
    model = Data2Vec(cfg).to(device)
    model.student.encoder.grad_checkpoint = cfg.train.grad_checkpoint
    step_model = wrap_model(model, cfg.train.strategy, info, device)  # FSDP shards `model` in place
    optimizer = build_optimizer(model.trainable_parameters(), cfg.train)
    scaler = torch.amp.GradScaler("cuda") if cfg.train.precision == "fp16" else None
    if state is not None:
        load_full_state(model, optimizer, weights, state["optimizer"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        if state.get("world_size", 1) == info.world_size:
            set_rng_state(state["rng"])  # dropout draws continue exactly (same world size only)
    if info.enabled:  # each process draws its own dropout / drop-path noise
        torch.manual_seed(cfg.train.seed + 1_000_003 * info.rank + start_step)
    with claim(cfg, info.is_main):
        setup_logging(out if info.is_main else None, level=logging.INFO if info.is_main else logging.WARNING)
        if start_step >= cfg.train.max_steps:
            log.info("run %s is complete (step %d of train.max_steps=%d): nothing to do", out, start_step,
                     cfg.train.max_steps)
            return out
        if info.is_main:
            save_config(cfg, out / "config.yaml")
        if resume_from is not None:
            log.info("resumed from %s at step %d", resume_from, start_step)
        return _run(cfg, model, step_model, optimizer, scaler, loader, info, device, start_step, progress)


def _run(cfg: Config, model: Data2Vec, step_model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         scaler: torch.amp.GradScaler | None, loader, info: DistInfo, device: torch.device, start_step: int,
         progress: bool) -> Path:
    """The loop with its bookkeeping (save, metrics, signals), in a run folder this process holds."""
    out = Path(cfg.out)
    n_params = sum(p.numel() for _, p in model.trainable_parameters())
    log.info("run %s: %s, %.2fM trainable parameters, %d process(es) on %s, %d steps, global batch %d",
             out, cfg.name, n_params / 1e6, info.world_size, device.type, cfg.train.max_steps, cfg.train.batch_size)
    if cfg.train.compile:
        step_model = torch.compile(step_model)

    def save(step: int) -> None:
        weights, optim = full_state(model, optimizer)  # every process: a collective under FSDP
        if info.is_main:
            state = {"step": step, "optimizer": optim, "rng": rng_state(), "world_size": info.world_size}
            if scaler is not None:
                state["scaler"] = scaler.state_dict()
            path = save_checkpoint(out, step, weights, state, cfg, cfg.train.keep_last)
            log.debug("saved %s", path)
        barrier(info)

    logger = MetricsLogger(out, cfg.train.max_steps, start_step, progress=progress) if info.is_main else None
    with stoppable(out, info, device, logger) as stop:
        train(model, optimizer, loader, cfg, device, start_step, save, logger, scaler, step_model, info,
              should_stop=stop, steps_per_epoch=getattr(loader.batch_sampler, "steps_per_epoch", None))
    return out
