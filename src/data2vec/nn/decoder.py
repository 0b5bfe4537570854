"""The data2vec 2.0 decoder: a few convolutions that fill in the masked positions.

The student encoder only sees visible tokens, so something must turn its outputs back into a prediction at
every masked position. A light convolutional decoder does it cheaply: masked positions enter as small
Gaussian noise, and each conv block mixes information from neighbouring positions (over the patch grid for
images, over time for speech and text).

Two layouts. Ours (``input_proj=True``, the default of earlier versions): Linear(D, C), then residual conv
blocks of width C. fairseq's (``input_proj=False``, ``Decoder1d`` / ``Decoder2d`` in
``examples/data2vec/models/modalities/modules.py``): the first conv takes the D encoder channels itself and
has a residual only when C == D, the others are residual. Both end in a projection back to D: one Linear, or
(fairseq's text decoder, ``projection_layers: 2``) Linear(C, 2C), GELU, ..., Linear(2C, D).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvBlock(nn.Module):
    """conv -> parameter-free layer norm over channels -> GELU, on `[B, C_in, *spatial]` -> `[B, C, *spatial]`."""

    def __init__(self, in_dim: int, dim: int, kernel: int, groups: int, spatial_dims: int) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv1d
        self.conv = conv(in_dim, dim, kernel, padding=kernel // 2, groups=groups)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        x = F.layer_norm(x.movedim(1, -1), x.shape[1:2]).movedim(-1, 1)
        return F.gelu(x)


def projection(width: int, dim: int, layers: int) -> nn.Module:
    """From decoder width C back to the model width D: one Linear, or `layers` Linears with GELUs between
    them, the first widening to 2C (fairseq's `projection_layers` with `projection_ratio: 2.0`)."""
    if layers == 1:
        return nn.Linear(width, dim)
    modules: list[nn.Module] = []
    for i in range(layers - 1):
        modules += [nn.Linear(width if i == 0 else 2 * width, 2 * width), nn.GELU()]
    return nn.Sequential(*modules, nn.Linear(2 * width, dim))


class ConvDecoder(nn.Module):
    """Tokens `[B, N, D]` -> predictions `[B, N, D]`; `grid_hw` makes it 2-D (images), else 1-D (time).

    `input_dropout` drops channels of the encoder outputs (not of the noise at masked positions) before the
    convs, as fairseq's `decoder.input_dropout`.
    """

    def __init__(self, dim: int, decoder_dim: int, layers: int, kernel: int, groups: int, spatial_dims: int,
                 input_proj: bool = True, residual: bool = True, proj_layers: int = 1,
                 input_dropout: float = 0.0) -> None:
        super().__init__()
        if decoder_dim % groups or (not input_proj and dim % groups):
            raise ValueError(f"objective.decoder_dim={decoder_dim} (and model.dim={dim} without the input "
                             f"projection) must be divisible by decoder_groups={groups}")
        self.spatial_dims = spatial_dims
        self.input_drop = nn.Dropout(input_dropout)
        self.proj_in = nn.Linear(dim, decoder_dim) if input_proj else None
        width_in = decoder_dim if input_proj else dim
        self.blocks = nn.ModuleList(ConvBlock(width_in if i == 0 else decoder_dim, decoder_dim, kernel, groups,
                                              spatial_dims) for i in range(layers))
        # fairseq adds a block's input back only where the widths match (its first block when C != D: never)
        self.residual = [residual and (width_in if i == 0 else decoder_dim) == decoder_dim for i in range(layers)]
        self.proj_out = projection(decoder_dim, dim, proj_layers)

    def forward(self, x: Tensor, grid_hw: tuple[int, int] | None = None, masked: Tensor | None = None) -> Tensor:
        """x `[B, N, D]`; masked bool `[B, N]` (True: noise, left out of the input dropout)."""
        B, N, _ = x.shape
        if self.input_drop.p > 0 and self.training:
            x = self.input_drop(x) if masked is None else torch.where(masked.unsqueeze(-1), x, self.input_drop(x))
        h = (x if self.proj_in is None else self.proj_in(x)).transpose(1, 2)  # [B, C, N]
        if self.spatial_dims == 2:
            h = h.reshape(B, -1, *grid_hw)  # [B, C, H, W]
        for block, residual in zip(self.blocks, self.residual):
            h = h + block(h) if residual else block(h)
        return self.proj_out(h.reshape(B, -1, N).transpose(1, 2))
