"""The probes of frozen features (evaluation/probe.py): data that is not split is read whole for both splits,
and the probe says that its accuracies are then on the samples it was fitted to."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from data2vec.config import build_config
from data2vec.evaluation.probe import probe_encoder
from data2vec.model import Data2VecEncoder

TINY = ["model.dim=32", "model.depth=1", "model.heads=2", "image.image_size=16", "image.patch_size=8",
        "data.num_workers=0"]


def _images(root, per_class=4):
    rng = np.random.default_rng(0)
    for c, level in (("dark", 40), ("light", 200)):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(level + rng.normal(0, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")


@pytest.mark.parametrize("split", [False, True])
def test_probe_on_data_that_is_not_split_warns_that_it_scores_its_training_samples(tmp_path, caplog, split):
    if split:
        _images(tmp_path / "data" / "train")
        _images(tmp_path / "data" / "test", per_class=2)
    else:
        _images(tmp_path / "data")
    cfg = build_config("image-tiny", TINY)
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="data2vec"):
        result = probe_encoder(Data2VecEncoder(cfg), cfg, str(tmp_path / "data"), option="--data PATH")
    assert 0.0 <= result["linear"] <= 1.0
    warned = "train and test splits are the same 8 samples" in caplog.text
    assert warned is not split, caplog.text
