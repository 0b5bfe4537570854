"""data2vec v1 against v2 steps at equal encoder size, in one run (issue 6).

Times the full pretraining step (teacher forward, student forward + backward, optimiser, EMA) on random
images for v1 and for v2 with one clone and with the recipe's clones, and reports samples (images) per
second, the ratio to v1, the cost per clone and, on CUDA, peak memory.

    python benchmarks/v1_vs_v2.py --size tiny --batch 64 --steps 10
    python benchmarks/v1_vs_v2.py --size base --batch 64 --steps 20 --precision bf16     # a GPU
"""

from __future__ import annotations

import argparse
import time

import torch

from data2vec.config import build_config
from data2vec.masking import block_mask, inverse_block_mask
from data2vec.model import Data2Vec
from data2vec.train.device import autocast, resolve_device
from data2vec.train.optim import build_optimizer


def time_steps(cfg, batch: int, steps: int, warmup: int, device: torch.device, precision: str) -> tuple[float, float]:
    torch.manual_seed(0)
    model = Data2Vec(cfg).to(device).train()
    optimizer = build_optimizer(model.trainable_parameters(), cfg.train)
    side = cfg.image.image_size // cfg.image.patch_size
    g = torch.Generator().manual_seed(0)
    clones = cfg.objective.clones if cfg.objective.version == 2 else 1
    if cfg.masking.inverse:
        masks = inverse_block_mask(batch * clones, (side, side), cfg.masking.ratio, generator=g,
                                   block_size=cfg.masking.block_size)
    else:
        masks = block_mask(batch * clones, (side, side), cfg.masking.ratio, generator=g, min_block=cfg.masking.min_block)
    masks = (masks.view(batch, clones, -1) if cfg.objective.version == 2 else masks).to(device)
    images = torch.randn(batch, 3, cfg.image.image_size, cfg.image.image_size, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        with autocast(device, precision):
            out = model(images, masks)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update_teacher(0.999)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    rate = batch * steps / (time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return rate, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", choices=["tiny", "base"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    v1 = build_config(f"image-{args.size}")
    v2_recipe = f"image-{args.size}-v2"
    encoder = [f"model.{k}={getattr(v1.model, k)}" for k in ("dim", "depth", "heads", "norm_first")]
    v2 = build_config(v2_recipe, encoder)  # the v1 encoder, so only the objective differs
    v2_one = build_config(v2_recipe, encoder + ["objective.clones=1"])
    rows = [("v1", v1, 1), ("v2, 1 clone", v2_one, 1), (f"v2, {v2.objective.clones} clones", v2, v2.objective.clones)]
    results = [(name, *time_steps(cfg, args.batch, args.steps, args.warmup, device, args.precision), clones)
               for name, cfg, clones in rows]
    base = results[0][1]
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"image-{args.size} encoder ({v1.model.dim} x {v1.model.depth}), batch {args.batch}, {args.precision}, {where}")
    print("| objective | images/s | vs v1 | student passes/s (images x clones) | peak GiB |")
    print("|---|---|---|---|---|")
    for name, rate, peak, clones in results:
        print(f"| {name} | {rate:.1f} | {rate / base:.2f}x | {rate * clones:.1f} | {peak:.2f} |")


if __name__ == "__main__":
    main()
