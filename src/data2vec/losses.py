"""The regression loss between the student's predictions and the teacher's targets at masked positions."""

from __future__ import annotations

import math
from typing import Literal

import torch.nn.functional as F
from torch import Tensor

Scale = Literal["inv_sqrt_dim", "mean", "none"]


def regression_loss(pred: Tensor, target: Tensor, beta: float, scale: Scale, weight: Tensor | None = None) -> Tensor:
    """Loss per masked position, averaged: pred and target `[M, D]` (the masked positions) -> scalar; or
    pred and target `[..., N, D]` for every position with `weight` `[..., N]` (1 = masked, 0 = not), which
    averages over the masked ones without gathering them: a boolean gather needs the number of masked positions
    on the host, a GPU sync, while a weighted sum does not.

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
    per_position = per_elem.sum(dim=-1)
    if weight is not None:
        weight = weight.to(per_position.dtype)
        return (per_position * weight).sum() / weight.sum().clamp(min=1) * factor
    if pred.shape[0] == 0:
        return per_elem.sum()  # no masked position: zero loss that still has a gradient path
    return per_position.mean() * factor
