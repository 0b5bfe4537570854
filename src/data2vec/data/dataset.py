"""What every data set gives the loaders: items keyed by (index, epoch), a collate function, and its batches.

The loaders of :mod:`data2vec.data.build` call these and nothing else, for pretraining, probing, fine-tuning
and evaluation in every modality. Fixed-size batches are the default; speech overrides both batch methods
to group utterances of similar length (`AudioDataset`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from data2vec.data.sampler import StepBatchSampler


class StepDataset(torch.utils.data.Dataset):
    """A data set the step loaders can serve. Subclasses implement ``__len__``, ``__getitem__`` (an index or an
    (index, epoch) pair; None for an unreadable sample) and ``collate`` (items -> one batch dict, counting the
    Nones as ``skipped``); labelled sets also set ``classes``, the names of their label ids."""

    classes: list[str]

    def collate(self, items: list[dict | None]) -> dict:
        raise NotImplementedError

    def batch_sampler(self, batch_size: int, seed: int, start_step: int, max_steps: int | None, rank: int,
                      world_size: int) -> Iterable[list]:
        """Training batches: this rank's share of each step's global batch of `batch_size`, from `start_step`
        (a pure function of the step, for exact resumes: :class:`StepBatchSampler`)."""
        return StepBatchSampler(len(self), batch_size, seed, start_step=start_step, max_steps=max_steps, rank=rank,
                                world_size=world_size)

    def eval_batches(self, batch_size: int) -> list[list[int]]:
        """Evaluation batches: every sample once, in order, at most `batch_size` a batch."""
        return [list(range(i, min(i + batch_size, len(self)))) for i in range(0, len(self), batch_size)]
