"""The regression loss between the student's predictions and the teacher's targets at masked positions."""

from __future__ import annotations

import math
from typing import Literal

import torch.nn.functional as F
from torch import Tensor

Scale = Literal["inv_sqrt_dim", "mean", "none"]


def regression_loss(pred: Tensor, target: Tensor, beta: float, scale: Scale) -> Tensor:
    """Loss per masked position, averaged: pred and target `[M, D]` -> scalar.

    Smooth L1 with `beta` (0 means squared error), summed over channels, then scaled by 1/sqrt(D)
    ("inv_sqrt_dim", the reference's default), 1/D ("mean", a plain mean over all elements, as the image
    recipe uses) or 1 ("none").
    """
    pred, target = pred.float(), target.float()
    if beta == 0:
        per_elem = F.mse_loss(pred, target, reduction="none")
    else:
        per_elem = F.smooth_l1_loss(pred, target, reduction="none", beta=beta)
    dim = pred.shape[-1]
    factor = {"inv_sqrt_dim": 1.0 / math.sqrt(dim), "mean": 1.0 / dim, "none": 1.0}[scale]
    if pred.shape[0] == 0:
        return per_elem.sum()  # no masked position: zero loss that still has a gradient path
    return per_elem.sum(dim=-1).mean() * factor
