"""Spinning against sleeping OpenMP threads: seconds per image-tiny pretraining step under each policy.

`import data2vec` sets OMP_WAIT_POLICY=PASSIVE unless the user chose; this measures why. Each policy runs in
its own process (the setting is read when torch loads OpenMP), alternating, so both see the same load.

    python benchmarks/omp_wait_policy.py --repeats 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

STEP = r"""
import time, torch
from data2vec.config import build_config
from data2vec.masking import block_mask
from data2vec.model import Data2Vec
cfg = build_config("image-tiny", [])
model = Data2Vec(cfg).train()
opt = torch.optim.AdamW([p for _, p in model.trainable_parameters()], lr=1e-4)
images = torch.randn(64, 3, 32, 32)
mask = block_mask(64, (8, 8), 0.6, generator=torch.Generator().manual_seed(0), min_block=4)
for i in range(STEPS + 3):
    if i == 3:
        start = time.perf_counter()
    loss = model(images, mask)["loss"]
    opt.zero_grad()
    loss.backward()
    opt.step()
    model.update_teacher(0.999)
print((time.perf_counter() - start) / STEPS)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {"ACTIVE": [], "PASSIVE": []}
    for _ in range(args.repeats):
        for policy in seconds:
            out = subprocess.run([sys.executable, "-c", STEP.replace("STEPS", str(args.steps))], check=True,
                                 env={**os.environ, "OMP_WAIT_POLICY": policy}, capture_output=True, text=True)
            seconds[policy].append(float(out.stdout.split()[-1]))
    for policy, values in seconds.items():
        print(f"{policy:<8} {statistics.median(values):.3f} s/step  (runs: {', '.join(f'{v:.3f}' for v in values)})")
    ratio = statistics.median(seconds["ACTIVE"]) / statistics.median(seconds["PASSIVE"])
    print(f"spinning / sleeping step time: {ratio:.2f}")


if __name__ == "__main__":
    main()
