"""`data2vec demo image`: the whole story on built-in data in a few minutes on a laptop CPU.

Pretrain the tiny recipe, probe it, probe the same architecture with random weights, and put both beside a
linear probe on raw pixels, so a user sees in numbers what pretraining bought.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from data2vec.config import build_config
from data2vec.data.build import eval_dataset
from data2vec.model import Data2VecEncoder
from data2vec.tasks.pretrain import pretrain
from data2vec.tasks.probe import linear_probe, probe_encoder

log = logging.getLogger("data2vec")
RECIPES = {"image": "image-tiny", "text": "text-tiny", "audio": "audio-tiny"}
# data2vec 2.0: the same encoders, the cheaper objective
RECIPES_V2 = {"image": "image-tiny-v2", "text": "text-tiny-v2", "audio": "audio-tiny-v2"}


def _raw_pixels(cfg, split: str) -> tuple[np.ndarray, np.ndarray]:
    dataset = eval_dataset(cfg, split)
    items = [dataset[i] for i in range(len(dataset))]
    x = torch.stack([it["image"] for it in items if it is not None]).flatten(1).numpy()
    y = np.array([it["label"] for it in items if it is not None])
    return x, y


def demo(modality: str = "image", out: str | Path = "runs/demo-image", overrides: list[str] | None = None,
         progress: bool = True, v2: bool = False, recipe: str | None = None) -> dict:
    """Run the demo and write `out/demo.json`; returns the accuracies. `v2` picks the data2vec 2.0 recipe."""
    from data2vec.api import load

    out = Path(out)
    recipe = recipe or (RECIPES_V2 if v2 else RECIPES)[modality]
    cfg = build_config(recipe, [f"out={out / 'pretrain'}", *(overrides or [])])
    start = time.perf_counter()
    pretrain(cfg, progress=progress)
    pretrain_s = time.perf_counter() - start
    pretrained = probe_encoder(load(cfg.out), cfg)
    torch.manual_seed(cfg.train.seed)
    random = probe_encoder(Data2VecEncoder(cfg).eval(), cfg)
    raw = linear_probe(*_raw_pixels(cfg, "train"), *_raw_pixels(cfg, "test")) if cfg.modality == "image" else None
    result = {"recipe": cfg.name, "pretrained": pretrained, "random": random, "raw_pixels": {"linear": raw},
              "pretrain_seconds": round(pretrain_s, 1), "total_seconds": round(time.perf_counter() - start, 1)}
    (out / "demo.json").write_text(json.dumps(result, indent=1))
    print(f"\ndata2vec demo {modality} ({cfg.name}, {cfg.train.max_steps} steps, "
          f"{pretrain_s / 60:.1f} min pretraining) - test accuracy on {cfg.data.path}")
    print(f"{'features':<22}{'linear probe':>14}{'kNN (k=20)':>12}")
    print(f"{'data2vec pretrained':<22}{pretrained['linear']:>14.3f}{pretrained['knn']:>12.3f}")
    print(f"{'random weights':<22}{random['linear']:>14.3f}{random['knn']:>12.3f}")
    if raw is not None:
        print(f"{'raw pixels':<22}{raw:>14.3f}{'':>12}")
    print(f"results: {out / 'demo.json'}")
    from data2vec.tasks.report import report

    print(f"report: {report(cfg.out, collapse_threshold=cfg.train.collapse_var)}")
    return result
