"""From a config to data: the pretraining set, the probe's labelled splits, and the two loaders every task
uses (training steps, evaluation batches), which take any :class:`StepDataset`."""

from __future__ import annotations

import logging
import os
from functools import partial

import torch
from torch.utils.data import DataLoader

from data2vec.config import Config
from data2vec.data.audio import pretrain_audio_dataset
from data2vec.data.builtin import resolve_image_source
from data2vec.data.dataset import StepDataset
from data2vec.data.image import ImageDataset, train_image_transform
from data2vec.data.labelled import labelled_set
from data2vec.data.text_source import pretrain_text_dataset
from data2vec.masking import block_mask, inverse_block_mask

log = logging.getLogger("data2vec")
_CAPPED: set[tuple[int, int]] = set()  # (asked, allowed) pairs already warned about in this process


def _image_mask(generator: torch.Generator, cfg: Config) -> torch.Tensor:
    """One sample's mask: `[N]` for v1, `[M, N]` (one per clone) for v2."""
    side = cfg.image.image_size // cfg.image.patch_size
    m = cfg.masking
    clones = cfg.objective.clones if cfg.objective.version == 2 else 1
    if m.inverse:
        masks = inverse_block_mask(clones, (side, side), m.ratio, generator=generator, block_size=m.block_size,
                                   prob_adjust=m.prob_adjust)
    else:
        masks = block_mask(clones, (side, side), m.ratio, generator=generator, min_block=m.min_block,
                           min_aspect=m.min_aspect)
    return masks if cfg.objective.version == 2 else masks[0]


def pretrain_dataset(cfg: Config) -> StepDataset:
    if cfg.modality == "text":
        return pretrain_text_dataset(cfg)
    if cfg.modality == "audio":
        return pretrain_audio_dataset(cfg)
    source = resolve_image_source(cfg.data.path, "train", cfg.data.strict)
    transform = train_image_transform(cfg, jitter=cfg.data.color_jitter)
    return ImageDataset(source, transform, seed=cfg.train.seed, mask_fn=partial(_image_mask, cfg=cfg),
                        strict=cfg.data.strict)


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask (taskset, cgroups' cpusets, Slurm) where the platform
    has one, else every CPU of the machine."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def loader_workers(asked: int) -> int:
    """The loader processes to start for `data.num_workers=asked`: at most one per usable CPU. More only
    compete with the training process for the same cores (a Base recipe's 8 on a 2-core laptop, as a run
    converted from Hugging Face inherits), so they are capped, with one warning per process."""
    allowed = usable_cpus()
    if asked <= allowed:
        return asked
    if (asked, allowed) not in _CAPPED:
        _CAPPED.add((asked, allowed))
        log.warning("data.num_workers=%d but this process may use %d CPU(s): starting %d loader worker(s); set "
                    "data.num_workers=%d to silence this", asked, allowed, allowed, allowed)
    return allowed


def step_loader(dataset: StepDataset, cfg: Config, start_step: int = 0, rank: int = 0, world_size: int = 1,
                pin_memory: bool = False) -> DataLoader:
    """One rank's share of each step's global batch of `dataset`, from `start_step` to `train.max_steps`, in
    `loader_workers(data.num_workers)` processes: the training loader of pretraining and fine-tuning."""
    tc = cfg.train
    sampler = dataset.batch_sampler(tc.batch_size, tc.seed, start_step, tc.max_steps, rank, world_size)
    workers = loader_workers(cfg.data.num_workers)
    # Its own generator: starting the iterator draws a base seed, which must not come from the global RNG that
    # dropout and drop path use, or a resumed run (RNG restored, then a fresh iterator) drops other paths.
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=dataset.collate, num_workers=workers,
                      persistent_workers=workers > 0, pin_memory=pin_memory,
                      prefetch_factor=4 if workers > 0 else None,
                      generator=torch.Generator().manual_seed(cfg.train.seed))


def pretrain_loader(cfg: Config, start_step: int = 0, rank: int = 0, world_size: int = 1,
                    pin_memory: bool = False) -> DataLoader:
    """Yields one rank's share of each step's global batch, from `start_step` to `train.max_steps`."""
    return step_loader(pretrain_dataset(cfg), cfg, start_step, rank, world_size, pin_memory)


def eval_dataset(cfg: Config, split: str, path: str | None = None, option: str | None = None,
                 classes: list[str] | None = None) -> StepDataset:
    """The probe's labelled `split` ("train" or "test"), un-augmented and whole: :func:`labelled_set`
    (classification) of `path`, else ``data.eval_path``, else ``data.path`` for both splits, since a probe's
    config is its pretraining run's, whose ``data.path`` may be unlabelled. `option` is how the user gives `path`
    (``--data PATH`` for the probe command), named in the fix of an error; None names the config keys."""
    where = path or cfg.data.eval_path or cfg.data.path
    return labelled_set(cfg, split, classes=classes, path=where, option=option, task="classify", subset=False)


def eval_loader(dataset: StepDataset, batch_size: int = 256, num_workers: int = 0) -> DataLoader:
    """Every sample of `dataset` once, in its evaluation batches (speech: by length, under a budget of padded
    samples). The loader has its own generator, so starting it leaves the global RNG, which dropout draws
    from, untouched."""
    return DataLoader(dataset, batch_sampler=dataset.eval_batches(batch_size), collate_fn=dataset.collate,
                      num_workers=loader_workers(num_workers), generator=torch.Generator())
