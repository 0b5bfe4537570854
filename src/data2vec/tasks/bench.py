"""`data2vec bench data RECIPE`: how fast the input pipeline alone delivers batches.

If this is not well above the training step's samples per second, the loader is the bottleneck: raise
`data.num_workers` (or store the data on faster disks).
"""

from __future__ import annotations

import time

from data2vec.config import Config
from data2vec.data.build import pretrain_loader


def bench_data(cfg: Config, steps: int = 50, warmup: int = 5) -> dict[str, float]:
    """Samples per second of `steps` batches after `warmup` (worker start-up excluded)."""
    loader = pretrain_loader(cfg, 0)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    start, samples, skipped = time.perf_counter(), 0, 0
    for _ in range(steps):
        batch = next(it)
        samples += batch["inputs"].shape[0] if "inputs" in batch else 0
        skipped += batch["skipped"]
    elapsed = time.perf_counter() - start
    return {"samples_per_s": samples / elapsed, "batches_per_s": steps / elapsed, "skipped": skipped,
            "num_workers": loader.num_workers, "batch_size": cfg.train.batch_size}
