"""Per-sample random generators, so randomness never depends on worker or process count."""

from __future__ import annotations

import numpy as np
import torch


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU generator determined by (seed, epoch, index) alone: the crops and masks of a sample are the same
    whichever worker or rank loads it, and a resumed run redraws exactly what it would have drawn."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed((int(state[0]) << 31) ^ int(state[1]))
