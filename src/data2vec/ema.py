"""The EMA teacher's schedule and update.

The teacher's weights follow the student's: ``teacher = decay * teacher + (1 - decay) * student``, the decay
rising linearly from `start` to `end` over the first `anneal_steps` updates and then constant (data2vec
section 3.3). A slowly moving teacher gives stable targets early and ever better ones later.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def decay_at(step: int, start: float, end: float, anneal_steps: int) -> float:
    """EMA decay used at update `step` (0-based): linear from `start` to `end`, then `end`."""
    if anneal_steps <= 0 or step >= anneal_steps:
        return end
    return start + (end - start) * step / anneal_steps


@torch.no_grad()
def ema_update(teacher: Sequence[Tensor], student: Sequence[Tensor], decay: float) -> None:
    """In place: ``teacher += (1 - decay) * (student - teacher)`` for each pair, in one fused foreach op.

    `decay = 0` copies the student (how front-ends shared between student and teacher are kept in step).
    """
    if not teacher:
        return
    if decay == 0.0:
        torch._foreach_copy_(list(teacher), list(student))
    else:
        torch._foreach_lerp_(list(teacher), list(student), 1.0 - decay)
