"""Pretraining step throughput: samples/s, peak memory and model FLOP utilisation (MFU).

MFU = achieved model FLOP/s over the device's matmul rate measured in the same run (fp32 or bf16, matching
the step's precision). The step is the real one (student forward + backward, teacher forward, optimiser,
EMA), on random inputs so the data pipeline is not measured (see `data2vec bench data` for that).

    python benchmarks/step_throughput.py --recipe image-base --batch 64 --precision bf16   # a GPU
    python benchmarks/step_throughput.py --recipe image-tiny --batch 32 --steps 10         # CPU smoke run
"""

from __future__ import annotations

import argparse
import time

import torch

from data2vec.config import build_config
from data2vec.model import Data2Vec
from data2vec.train.device import autocast, resolve_device
from data2vec.train.optim import build_optimizer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int, reps: int = 10) -> float:
    """Measured FLOP/s of an n x n matmul; for fp32 on CPU the better of `a @ b` (MKL) and oneDNN, which our
    linear layers use where it is faster (data2vec.nn.linear)."""
    from data2vec.nn.linear import _onednn_mm, onednn_available

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    kernels = [lambda: a @ b]
    if device.type == "cpu" and dtype == torch.float32 and onednn_available():
        kernels.append(lambda: _onednn_mm(a, b))
    best = 0.0
    for mm in kernels:
        for _ in range(2):
            mm()
        sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            mm()
        sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start))
    return best


def step_flops(cfg, batch: int) -> float:
    """Model FLOPs of one v1 step: student forward + backward (3x) and teacher forward (1x)."""
    d, depth = cfg.model.dim, cfg.model.depth
    hidden = int(d * cfg.model.mlp_ratio)
    patches = (cfg.image.image_size // cfg.image.patch_size) ** 2
    tokens = patches + (1 if cfg.image.cls_token else 0)
    per_layer = 2 * tokens * (4 * d * d + 2 * d * hidden) + 4 * tokens * tokens * d
    embed = 2 * patches * cfg.image.in_chans * cfg.image.patch_size**2 * d
    encoder = depth * per_layer + embed
    head = 2 * patches * d * d * cfg.masking.ratio
    return batch * (4 * encoder + 3 * head)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="image-base")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    device = resolve_device(args.device)
    cfg = build_config(args.recipe, [f"train.precision={args.precision}", *args.overrides])
    torch.manual_seed(0)
    model = Data2Vec(cfg).to(device).train()
    optimizer = build_optimizer(model.trainable_parameters(), cfg.train)
    step_model = torch.compile(model) if args.compile else model
    images = torch.randn(args.batch, cfg.image.in_chans, cfg.image.image_size, cfg.image.image_size, device=device)
    g = torch.Generator().manual_seed(0)
    from data2vec.masking import block_mask

    side = cfg.image.image_size // cfg.image.patch_size
    masks = block_mask(args.batch, (side, side), cfg.masking.ratio, generator=g,
                       min_block=cfg.masking.min_block).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        with autocast(device, args.precision):
            out = step_model(images, masks)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update_teacher(0.9998)

    for _ in range(args.warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    elapsed = time.perf_counter() - start
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    rate = matmul_rate(device, dtype, 8192 if device.type == "cuda" else 2048)
    achieved = step_flops(cfg, args.batch) * args.steps / elapsed
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print("| device | recipe | batch | precision | samples/s | peak GiB | achieved TFLOP/s | matmul TFLOP/s | MFU |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {name} | {cfg.name} v1 | {args.batch} | {args.precision} | {args.batch * args.steps / elapsed:.1f} | "
          f"{peak:.2f} | {achieved / 1e12:.3f} | {rate / 1e12:.3f} | {achieved / rate:.1%} |")


if __name__ == "__main__":
    main()
