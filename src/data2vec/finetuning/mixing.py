"""Soft targets, label smoothing, mixup and cutmix: pure functions of tensors and a `torch.Generator`.

A batch is mixed with itself reversed (sample i with sample B - 1 - i), as timm's batch mode does, so mixing
needs no second batch. The mixing weight is drawn from Beta(alpha, alpha) (numpy, seeded from the generator,
since torch's Beta sampler takes no generator), so a step's mix is a function of the generator alone and a
resumed run mixes exactly as an uninterrupted one.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def smooth_one_hot(labels: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """Targets `[B, C]` float32: 1 - smoothing + smoothing / C on the label, smoothing / C elsewhere."""
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return targets.scatter_(1, labels.long()[:, None], 1.0 - smoothing + off)


def cutmix_box(height: int, width: int, lam: float, generator: torch.Generator) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a box covering about 1 - lam of the image, centred uniformly at random
    and clipped to the image (so the real share can be smaller; :func:`mix_batch` corrects lam for it)."""
    cut = math.sqrt(1.0 - lam)
    h, w = int(height * cut), int(width * cut)
    cy = int(torch.randint(height, (1,), generator=generator))
    cx = int(torch.randint(width, (1,), generator=generator))
    top, bottom = max(cy - h // 2, 0), min(cy + h // 2, height)
    left, right = max(cx - w // 2, 0), min(cx + w // 2, width)
    return top, bottom, left, right


def mix_batch(images: Tensor, targets: Tensor, generator: torch.Generator, mixup: float = 0.0, cutmix: float = 0.0,
              prob: float = 1.0, switch_prob: float = 0.5) -> tuple[Tensor, Tensor, float]:
    """Mix images `[B, C, H, W]` and soft targets `[B, K]` with the reversed batch.

    With probability `prob` (and when `mixup` or `cutmix` alpha is positive) draw lam ~ Beta(alpha, alpha);
    mixup blends whole images, cutmix pastes a box of the partner image; with both on, cutmix is chosen with
    probability `switch_prob`. Returns (images, targets, lam), lam = 1.0 when the batch is left as it is.
    """
    draw = torch.rand(2, generator=generator).tolist()
    if (mixup <= 0 and cutmix <= 0) or draw[0] >= prob:
        return images, targets, 1.0
    use_cutmix = cutmix > 0 and (mixup <= 0 or draw[1] < switch_prob)
    alpha = cutmix if use_cutmix else mixup
    rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
    lam = float(rng.beta(alpha, alpha))
    partner = images.flip(0)
    if use_cutmix:
        top, bottom, left, right = cutmix_box(images.shape[-2], images.shape[-1], lam, generator)
        images = images.clone()
        images[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (images.shape[-2] * images.shape[-1])
    else:
        images = images * lam + partner * (1.0 - lam)
    return images, targets * lam + targets.flip(0) * (1.0 - lam), lam
