"""Samples to frames of the speech feature encoder (wav2vec 2.0's unpadded convolutions): the arithmetic
both the model (`nn/audio.py`) and the data (`data/audio.py`: crops, masks and padding in frames) need, so
neither imports the other for it."""

from __future__ import annotations

from typing import Sequence, TypeVar

from torch import Tensor

Length = TypeVar("Length", int, Tensor)


def conv_output_length(length: Length, kernels: Sequence[int], strides: Sequence[int]) -> Length:
    """Frames that `length` samples give: ``floor((L - k) / s) + 1`` per unpadded convolution, 0 when shorter
    than the receptive field. Works on an int or an int tensor of lengths `[B]`."""
    for k, s in zip(kernels, strides):
        length = (length - k) // s + 1
    if isinstance(length, Tensor):
        return length.clamp(min=0)
    return max(length, 0)


def receptive_field(kernels: Sequence[int], strides: Sequence[int]) -> int:
    """Samples one frame sees, which is also the shortest input that gives a frame (400 for wav2vec 2.0)."""
    field, jump = 1, 1
    for k, s in zip(kernels, strides):
        field += (k - 1) * jump
        jump *= s
    return field
