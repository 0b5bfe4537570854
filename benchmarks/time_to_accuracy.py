"""Time to accuracy, v1 against v2: run two demos back to back and compare probe accuracy and cost (issue 6).

Each demo pretrains its recipe on the built-in data and probes the frozen features. For each run this
prints and writes to JSON the linear and kNN probe accuracies, the wall-clock pretraining time and the CPU
time the process spent pretraining (user + system; on a shared machine the CPU time is the steadier
measure of cost, since wall time also counts what other processes took).

    python benchmarks/time_to_accuracy.py image --out runs/tta-image
    python benchmarks/time_to_accuracy.py image --v2-overrides train.max_steps=200 objective.ema_anneal_steps=200
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

RECIPES = {"image": ("image-tiny", "image-tiny-v2"), "text": ("text-tiny", "text-tiny-v2"),
           "audio": ("audio-tiny", "audio-tiny-v2")}


def run_demo(modality: str, recipe: str, out: Path, overrides: list[str]) -> dict:
    """One demo in a child process, so its CPU time is measured alone."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "data2vec", "demo", modality, "--recipe", recipe, "--out", str(out), "--no-progress",
           *overrides]
    out.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".log"), "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = json.loads((out / "demo.json").read_text())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"recipe": recipe, "overrides": overrides, "linear": result["pretrained"]["linear"],
            "knn": result["pretrained"]["knn"], "random_linear": result["random"]["linear"],
            "pretrain_wall_s": result["pretrain_seconds"], "demo_wall_s": round(wall, 1),
            "demo_cpu_s": round(cpu, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modality", choices=sorted(RECIPES))
    parser.add_argument("--out", default=None, help="folder for both runs and results.json")
    parser.add_argument("--v1-overrides", nargs="*", default=[])
    parser.add_argument("--v2-overrides", nargs="*", default=[])
    args = parser.parse_args()
    out = Path(args.out or f"runs/tta-{args.modality}")
    v1_recipe, v2_recipe = RECIPES[args.modality]
    rows = [run_demo(args.modality, v1_recipe, out / "v1", args.v1_overrides),
            run_demo(args.modality, v2_recipe, out / "v2", args.v2_overrides)]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    print(f"{'recipe':<16}{'linear':>8}{'kNN':>8}{'pretrain wall s':>17}{'demo CPU s':>12}  overrides")
    for r in rows:
        print(f"{r['recipe']:<16}{r['linear']:>8.3f}{r['knn']:>8.3f}{r['pretrain_wall_s']:>17.1f}"
              f"{r['demo_cpu_s']:>12.1f}  {' '.join(r['overrides'])}")
    print(f"v2 / v1 pretraining wall time: {rows[1]['pretrain_wall_s'] / rows[0]['pretrain_wall_s']:.2f}")


if __name__ == "__main__":
    main()
