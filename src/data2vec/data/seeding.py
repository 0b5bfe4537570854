"""Random generators keyed by integers, so randomness never depends on worker count, process count or order."""

from __future__ import annotations

import numpy as np
import torch


def keyed_generator(*keys: int) -> torch.Generator:
    """A CPU generator determined by `keys` alone, seeded with 63 bits of their SeedSequence hash.

    Negative keys are taken modulo 2**64 (SeedSequence accepts only non-negative entropy).
    """
    entropy = [int(k) % 2**64 for k in keys]
    state = np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) >> 1)


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of one sample's crop, flip and mask: the same whichever worker or rank loads it, and a
    resumed run redraws exactly what an uninterrupted run would have drawn."""
    return keyed_generator(seed, epoch, index)
