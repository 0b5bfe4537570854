"""Device and numeric precision, decided once before the loop starts."""

from __future__ import annotations

import contextlib

import torch

from data2vec.errors import Data2VecError


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present, else CPU; anything else must be a device torch knows."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise Data2VecError(f"device='{name}' is not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise Data2VecError(f"device='{name}' asked for CUDA but none is available; use device=cpu or device=auto")
    return device


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 / fp16 autocast for the forward pass; fp32 runs unchanged."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise Data2VecError("train.precision=fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
