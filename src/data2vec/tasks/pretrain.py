"""`data2vec pretrain RECIPE [key=value ...]`: build model, optimiser and data, then run the loop."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from data2vec.config import Config, check_pretraining
from data2vec.data.build import pretrain_dataset
from data2vec.model import Data2Vec
from data2vec.train.distributed import load_full_state, wrap_model
from data2vec.train.harness import checkpoint_saver, continue_randomness, open_run, running, started
from data2vec.train.loop import train
from data2vec.train.optim import build_optimizer

log = logging.getLogger("data2vec")


def pretrain(cfg: Config, progress: bool = True) -> Path:
    """Pretrain per `cfg`; returns the run folder. Resumes exactly when `cfg.resume` points at a checkpoint
    (from step 0 with a fresh optimiser when it holds weights only, as a conversion from Hugging Face)."""
    check_pretraining(cfg)  # what the objective asks of the model: one line, before anything is read or made
    run = open_run(cfg)
    info, device = run.info, run.device
    # Data first: a bad data path fails in a second, before a large model is built.
    loader = run.loader(pretrain_dataset(cfg), pin_memory=device.type == "cuda")
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every process
    model = Data2Vec(cfg).to(device)
    model.student.encoder.grad_checkpoint = cfg.train.grad_checkpoint
    step_model = wrap_model(model, cfg.train.strategy, info, device)  # FSDP shards `model` in place
    optimizer = build_optimizer(model.trainable_parameters(), cfg.train)
    scaler = torch.amp.GradScaler("cuda") if cfg.train.precision == "fp16" else None
    if run.weights is not None:
        load_full_state(model, optimizer, run.weights, run.state.get("optimizer"))
        if scaler is not None and "scaler" in run.state:
            scaler.load_state_dict(run.state["scaler"])
    continue_randomness(run)
    with started(run) as todo:
        if not todo:
            return run.out
        n_params = sum(p.numel() for _, p in model.trainable_parameters())
        log.info("run %s: %s, %.2fM trainable parameters, %d process(es) on %s, %d steps, global batch %d", run.out,
                 cfg.name, n_params / 1e6, info.world_size, device.type, cfg.train.max_steps, cfg.train.batch_size)
        if cfg.train.compile:
            step_model = torch.compile(step_model)
        save = checkpoint_saver(run, model, optimizer, scaler=scaler)
        with running(run, progress) as (logger, stop):
            train(model, optimizer, loader, cfg, device, run.start_step, save, logger, scaler, step_model, info,
                  should_stop=stop, steps_per_epoch=loader.batch_sampler.steps_per_epoch)
    return run.out
