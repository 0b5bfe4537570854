"""Contextualised targets: the average of the teacher's top-K layer outputs, each normalised.

Normalising each layer before averaging keeps one layer with a large scale from dominating the target and
stops the trivial solution of a constant representation (data2vec section 3.3).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

Norm = Literal["layer", "instance", "none"]
EPS = 1e-5


def instance_norm(x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
    """Normalise each channel of each sample over time: `[B, T, D]`; padded steps are left out of the
    statistics (and come out as zeros)."""
    if padding_mask is None:
        mean = x.mean(dim=1, keepdim=True)
        var = x.var(dim=1, unbiased=False, keepdim=True)
        return (x - mean) / torch.sqrt(var + EPS)
    keep = (~padding_mask).unsqueeze(-1).to(x.dtype)  # [B, T, 1]
    count = keep.sum(dim=1, keepdim=True).clamp(min=1)
    mean = (x * keep).sum(dim=1, keepdim=True) / count
    var = (((x - mean) * keep) ** 2).sum(dim=1, keepdim=True) / count
    return (x - mean) / torch.sqrt(var + EPS) * keep


def normalize(x: Tensor, kind: Norm, padding_mask: Tensor | None = None) -> Tensor:
    """Parameter-free normalisation of `[B, T, D]`: over channels ("layer") or over time ("instance")."""
    if kind == "layer":
        return F.layer_norm(x, x.shape[-1:], eps=EPS)
    if kind == "instance":
        return instance_norm(x, padding_mask)
    if kind == "none":
        return x
    raise ValueError(f"unknown normalisation {kind!r}; choose layer, instance or none")


def build_targets(
    layer_outputs: Sequence[Tensor],
    top_k: int,
    per_layer: Norm = "layer",
    final: Norm = "none",
    padding_mask: Tensor | None = None,
) -> Tensor:
    """Average of the top `top_k` of `layer_outputs` (each `[B, T, D]`, bottom to top) -> `[B, T, D]`.

    Computed in float32 whatever the autocast dtype, since the statistics are sensitive to rounding.
    """
    if not 1 <= top_k <= len(layer_outputs):
        raise ValueError(f"objective.top_k={top_k} must be between 1 and the number of layers ({len(layer_outputs)})")
    total = None
    for out in layer_outputs[-top_k:]:
        y = normalize(out.float(), per_layer, padding_mask)
        total = y if total is None else total + y
    return normalize(total / top_k, final, padding_mask)
