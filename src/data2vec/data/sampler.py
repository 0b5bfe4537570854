"""Which samples each optimisation step sees, as a pure function of (seed, step, rank, world size)."""

from __future__ import annotations

from typing import Iterator

import torch

from data2vec.data.seeding import keyed_generator
from data2vec.errors import Data2VecError


class _Steps:
    """What both samplers share: batches are a pure function of the step (`batch_at`), so a run resumed at
    `start_step` sees exactly the batches an uninterrupted run would; `max_steps=None` never ends."""

    start_step: int
    max_steps: int | None
    steps_per_epoch: int  # steps that see every sample once (the loop counts skipped batches per epoch)

    def batch_at(self, step: int) -> list[tuple[int, int]]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while self.max_steps is None or step < self.max_steps:
            yield self.batch_at(step)
            step += 1

    def __len__(self) -> int:
        if self.max_steps is None:
            raise TypeError(f"an endless {type(self).__name__} (max_steps=None) has no length")
        return max(self.max_steps - self.start_step, 0)


class StepBatchSampler(_Steps):
    """Yields, per step from `start_step`, this rank's share of the step's global batch as (index, epoch) pairs.

    Epoch e is a permutation of all samples seeded by (seed, e); step s takes the slice
    ``[(s % steps_per_epoch) * B, +B)`` of epoch ``s // steps_per_epoch`` (the last incomplete batch of an
    epoch is dropped), and rank r takes every world_size-th element of it. So resuming at any step, at any
    world size, reproduces the batches of an uninterrupted run. Use it as ``DataLoader(batch_sampler=...)``;
    endless when `max_steps` is None.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, start_step: int = 0,
                 max_steps: int | None = None, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise Data2VecError(f"train.batch_size={batch_size} must be at least 1")
        if num_samples < batch_size:
            raise Data2VecError(f"the data set has {num_samples} samples, fewer than train.batch_size={batch_size}; "
                                "lower train.batch_size or add data")
        if world_size < 1 or batch_size % world_size:
            raise Data2VecError(f"train.batch_size={batch_size} must be divisible by the number of processes "
                                f"({world_size}); change train.batch_size or the process count")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        if start_step < 0:
            raise ValueError(f"start_step must be non-negative, got {start_step}")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.start_step, self.max_steps = start_step, max_steps
        self.rank, self.world_size = rank, world_size
        self.steps_per_epoch = num_samples // batch_size
        self._perm_epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def permutation(self, epoch: int) -> torch.Tensor:
        """The sample order of `epoch`, `[num_samples]` int64 (the latest one is cached)."""
        if epoch != self._perm_epoch:
            self._perm = torch.randperm(self.num_samples, generator=keyed_generator(self.seed, epoch))
            self._perm_epoch = epoch
        return self._perm

    def batch_at(self, step: int) -> list[tuple[int, int]]:
        """This rank's `batch_size // world_size` (index, epoch) pairs of `step`."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        batch = self.permutation(epoch)[pos * self.batch_size:(pos + 1) * self.batch_size]
        return [(i, epoch) for i in batch[self.rank::self.world_size].tolist()]


class LengthBucketSampler(_Steps):
    """Like StepBatchSampler, but each step's global batch holds samples of similar length (speech), so
    little of it is padding: at most `batch_size` samples and at most `max_samples` padded samples
    (``count x longest``; 0: no such limit).

    Epoch e sorts the samples by length, breaking ties with a permutation seeded by (seed, e), packs them
    longest first into batches, and shuffles the batch order with a generator seeded by (seed, e, 1). The
    packing depends only on the sorted lengths, so every epoch has the same number of batches and step s is
    batch ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``: resuming reproduces the run. A last
    batch with fewer samples than processes joins the one before it. Rank r takes every world_size-th sample.

    With `crop_to_shortest`, each pair gets a third element, the length of the step's shortest sample (of the
    whole global batch, so the crops do not depend on the process count): the dataset crops every sample to it.
    """

    def __init__(self, lengths: list[int], batch_size: int, max_samples: int, seed: int, start_step: int = 0,
                 max_steps: int | None = None, rank: int = 0, world_size: int = 1,
                 crop_to_shortest: bool = False) -> None:
        if batch_size < 1:
            raise Data2VecError(f"train.batch_size={batch_size} must be at least 1")
        if len(lengths) < world_size:
            raise Data2VecError(f"the data set has {len(lengths)} samples, fewer than the {world_size} processes")
        if max_samples and max(lengths) > max_samples:
            raise Data2VecError(f"a sample of {max(lengths)} samples does not fit max_samples={max_samples} "
                                "(audio.max_batch_samples); raise it above audio.max_sample_size")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        self.lengths = torch.as_tensor(lengths, dtype=torch.long)
        self.batch_size, self.max_samples, self.seed = batch_size, max_samples, seed
        self.start_step, self.max_steps = start_step, max_steps
        self.rank, self.world_size = rank, world_size
        self.crop_to_shortest = crop_to_shortest
        self._plan_epoch, self._plan = -1, []
        self.steps_per_epoch = len(self.plan(0))

    def plan(self, epoch: int) -> list[list[int]]:
        """The batches of `epoch` in step order, each a list of sample indices (the latest epoch is cached)."""
        if epoch == self._plan_epoch:
            return self._plan
        ties = torch.randperm(len(self.lengths), generator=keyed_generator(self.seed, epoch))
        order = ties[torch.argsort(self.lengths[ties], descending=True, stable=True)].tolist()
        batches: list[list[int]] = []
        while order:
            longest = int(self.lengths[order[0]])
            room = self.batch_size if not self.max_samples else min(self.batch_size, self.max_samples // longest)
            batches.append(order[:room])
            order = order[room:]
        if len(batches) > 1 and len(batches[-1]) < self.world_size:
            batches[-2] += batches.pop()
        shuffle = torch.randperm(len(batches), generator=keyed_generator(self.seed, epoch, 1)).tolist()
        self._plan_epoch, self._plan = epoch, [batches[i] for i in shuffle]
        return self._plan

    def batch_at(self, step: int) -> list[tuple[int, ...]]:
        """This rank's share of `step`'s batch as (index, epoch) pairs, or (index, epoch, crop) triples."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        batch = self.plan(epoch)[pos]
        if self.crop_to_shortest:
            shortest = int(self.lengths[batch].min())
            return [(i, epoch, shortest) for i in batch[self.rank::self.world_size]]
        return [(i, epoch) for i in batch[self.rank::self.world_size]]

