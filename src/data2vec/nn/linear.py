"""The matrix products of linear layers, routed to the fastest fp32 kernel the CPU has.

PyTorch's CPU builds run fp32 `F.linear` through MKL's sgemm, which on AMD CPUs takes a code path that uses
about half the machine: on the AMD EPYC (Zen 5) we develop on, MKL reaches ~100 GFLOP/s per core where
oneDNN, which PyTorch also ships (it already runs bf16 matmuls and convolutions), reaches ~220 on the same
products, at fp32 accuracy. :func:`linear` sends fp32 CPU products (forward and both backward products) to
oneDNN when a one-off timing of the two on this machine says oneDNN is clearly faster, and everything else
(GPUs, bf16 / fp16 autocast, compiled graphs, machines where MKL is as fast) to `F.linear` unchanged.
BENCHMARKS.md has the measurements; :func:`set_cpu_matmul` overrides the choice.

The model's layers are :class:`Linear` (an ``nn.Linear``, same parameters and state-dict keys), which make
that choice once, when they are built, and show it in ``print(model)`` (``cpu_kernel=onednn``); blocks call
them as modules (``self.fc1(x)``), so forward hooks and wrappers see the product that runs. Set the choice
(:func:`set_cpu_matmul`, DATA2VEC_CPU_MATMUL) before building a model; a resumed run restores the one its
checkpoint recorded (:func:`restore_cpu_matmul`) before it builds its model.

The oneDNN path takes every input `F.linear` takes: operands whose memory layout oneDNN cannot describe
(the overlapping windows of the speech feature encoder at one utterance per micro-batch, a strided bias) are
copied to a dense layout first, and products with nothing to sum over go to `F.linear`, decided from shapes
and strides on each product (see :func:`_onednn_mm`).
"""

from __future__ import annotations

import math
import os
import time
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data2vec.errors import Data2VecError

Choice = Literal["auto", "onednn", "default"]
CHOICES = ("auto", "onednn", "default")
_choice: Choice = "auto"
_onednn_faster: bool | None = None  # the "auto" timing, done once per process


def set_cpu_matmul(choice: Choice) -> None:
    """`auto` (time both kernels once, use oneDNN when it is at least 1.25x faster), `onednn` or `default`
    (always `F.linear`, i.e. MKL on CPU builds of PyTorch). The environment variable DATA2VEC_CPU_MATMUL sets
    it for a whole process (and its torchrun siblings), e.g. to make runs on a busy machine, where the timing
    can go either way, round identically."""
    global _choice
    if choice not in CHOICES:
        raise ValueError(f"cpu matmul choice must be auto, onednn or default, got {choice!r}")
    _choice = choice


_env_problem = ""  # a bad DATA2VEC_CPU_MATMUL, reported by check_environment, not as an import traceback
if os.environ.get("DATA2VEC_CPU_MATMUL"):
    try:
        set_cpu_matmul(os.environ["DATA2VEC_CPU_MATMUL"])  # type: ignore[arg-type]
    except ValueError as err:
        _env_problem = f"environment variable DATA2VEC_CPU_MATMUL: {err}; set it to one of those or unset it"


def check_environment() -> None:
    """Raise the one-line error of a bad DATA2VEC_CPU_MATMUL (the CLI calls this before any work)."""
    if _env_problem:
        raise Data2VecError(_env_problem)


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _onednn_takes(weight: Tensor) -> bool:
    """Whether oneDNN can read the `[N, K]` operand where it lies. It copies x to a dense layout itself, but
    describes the weight by its strides and refuses strides whose rows and columns overlap in memory: the
    unfolded windows of a strided convolution share samples, and in the backward product ``g^T @ x`` such a
    view of x (the speech feature encoder's, uncopied by the reshape when a micro-batch holds one utterance)
    is the weight. Dimensions of size one or stride zero (broadcast) it accepts, as it does any layout that
    does not overlap (transposed, sliced); a few integer comparisons, so the check runs on every product."""
    (n, k), (sn, sk) = weight.shape, weight.stride()
    return n <= 1 or k <= 1 or sn == 0 or sk == 0 or sn >= sk * k or sk >= sn * n


def _onednn_mm(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias`` by oneDNN: x `[..., K]`, weight `[N, K]` (either may be a strided view).

    Layouts the kernel cannot take are made so first, decided from shapes and strides (no try/except): an
    overlapping weight is copied to a dense one, a strided bias too (oneDNN would read it as if dense and
    add the wrong numbers), and a product with nothing to sum over (K = 0, which oneDNN has no primitive
    for) goes to `F.linear`."""
    if x.shape[-1] == 0:
        return F.linear(x, weight, bias)
    if not _onednn_takes(weight):
        weight = weight.contiguous()
    if bias is not None and not bias.is_contiguous():
        bias = bias.contiguous()
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _time_kernels(n: int = 512, reps: int = 15) -> tuple[float, float]:
    """Fastest of `reps` interleaved timings of an n x n product by F.linear and by oneDNN: the minimum is what
    the kernel costs when nothing else on the machine interrupts it. The operands come from a generator of
    their own: the first product of a process must not move the global RNG (a seeded run would otherwise
    draw different dropout, noise or masks depending on whether this timing already ran)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    F.linear(a, b), _onednn_mm(a, b)  # first calls set up the kernels
    best = [math.inf, math.inf]
    for _ in range(reps):
        for i, mm in enumerate((F.linear, _onednn_mm)):
            start = time.perf_counter()
            mm(a, b)
            best[i] = min(best[i], time.perf_counter() - start)
    return best[0], best[1]


def use_onednn() -> bool:
    """Whether fp32 CPU products go to oneDNN (decided on first use under `auto`)."""
    global _onednn_faster
    if _choice == "default" or not onednn_available():
        return False
    if _choice == "onednn":
        return True
    if _onednn_faster is None:  # once per process: a bad DATA2VEC_CPU_MATMUL left the choice at "auto"
        check_environment()
        default, onednn = _time_kernels()
        _onednn_faster = default > 1.25 * onednn
    return _onednn_faster


def decided_cpu_matmul() -> Choice | None:
    """The kernel fp32 CPU products use in this process ("onednn" or "default"), or None while `auto` has not
    timed them yet. Checkpoints keep it: the two kernels round differently, so a resumed run that timed them
    anew and chose the other would no longer repeat the uninterrupted run bit for bit."""
    if _choice != "auto":
        return _choice
    if _onednn_faster is None:
        return None
    return "onednn" if _onednn_faster else "default"


def restore_cpu_matmul(choice: Choice | None) -> None:
    """Use the kernel a checkpoint recorded, unless this process was told which to use (`set_cpu_matmul`)."""
    global _onednn_faster
    check_environment()  # a resumed run never times the kernels, where use_onednn would report it
    if choice is not None and _choice == "auto":
        _onednn_faster = choice == "onednn"


class _OneDNNLinear(torch.autograd.Function):
    """F.linear with its forward and backward products computed by oneDNN."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_mm(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        rows = math.prod(x.shape[:-1])  # M, named so that an empty x (M or K = 0) reshapes too
        g = grad.reshape(rows, grad.shape[-1])  # [M, N]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _onednn_mm(grad, weight.t())  # [..., K] = g @ W
        if ctx.needs_input_grad[1]:
            grad_w = _onednn_mm(g.t(), x.reshape(rows, x.shape[-1]).t())  # [N, K] = g^T @ x
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, onednn: bool | None = None) -> Tensor:
    """`F.linear`, with fp32 CPU products done by oneDNN where that is faster (see the module docstring).
    `onednn`: the kernel a layer chose when it was built; None asks :func:`use_onednn` now."""
    if (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()
            and type(weight.data) is torch.Tensor and (use_onednn() if onednn is None else onednn)):
        return _OneDNNLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


def cpu_kernel() -> Choice:
    """The kernel a layer built now uses for fp32 CPU products: "onednn" or "default" (`F.linear`)."""
    return "onednn" if use_onednn() else "default"


class Linear(nn.Linear):
    """``nn.Linear`` whose fp32 CPU products use the kernel chosen when it is built (`cpu_kernel`, see the module
    docstring); GPUs, autocast and compiled graphs always take `F.linear`. The choice is an attribute, not a
    buffer: the state dict is nn.Linear's, so checkpoints load into either."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self.cpu_kernel = cpu_kernel()

    def forward(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        """x `[..., in]` -> `[..., out]`; `bias`, when given, is added in place of the layer's own (attention
        with BEiT's bias on queries and values only builds it from its own parameters)."""
        return linear(x, self.weight, self.bias if bias is None else bias, self.cpu_kernel == "onednn")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, cpu_kernel={self.cpu_kernel}"
