"""The data2vec 2.0 decoder: a few convolutions that fill in the masked positions.

The student encoder only sees visible tokens, so something must turn its outputs back into a prediction at
every masked position. A light convolutional decoder does it cheaply: masked positions enter as small
Gaussian noise, and each residual conv block mixes information from neighbouring positions (over the patch
grid for images, over time for speech and text).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ConvBlock(nn.Module):
    """conv -> parameter-free layer norm over channels -> GELU, on `[B, C, *spatial]`."""

    def __init__(self, dim: int, kernel: int, groups: int, spatial_dims: int) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv1d
        self.conv = conv(dim, dim, kernel, padding=kernel // 2, groups=groups)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        x = F.layer_norm(x.movedim(1, -1), x.shape[1:2]).movedim(-1, 1)
        return F.gelu(x)


class ConvDecoder(nn.Module):
    """Tokens `[B, N, D]` -> predictions `[B, N, D]`; `grid_hw` makes it 2-D (images), else 1-D (time)."""

    def __init__(self, dim: int, decoder_dim: int, layers: int, kernel: int, groups: int, spatial_dims: int) -> None:
        super().__init__()
        if decoder_dim % groups:
            raise ValueError(f"objective.decoder_dim={decoder_dim} must be divisible by decoder_groups={groups}")
        self.spatial_dims = spatial_dims
        self.proj_in = nn.Linear(dim, decoder_dim)
        self.blocks = nn.ModuleList(ConvBlock(decoder_dim, kernel, groups, spatial_dims) for _ in range(layers))
        self.proj_out = nn.Linear(decoder_dim, dim)

    def forward(self, x: Tensor, grid_hw: tuple[int, int] | None = None) -> Tensor:
        B, N, _ = x.shape
        h = self.proj_in(x).transpose(1, 2)  # [B, C, N]
        if self.spatial_dims == 2:
            h = h.reshape(B, -1, *grid_hw)  # [B, C, H, W]
        for block in self.blocks:
            h = h + block(h)
        return self.proj_out(h.reshape(B, -1, N).transpose(1, 2))
