"""The step mechanics pretraining and fine-tuning share (train/step.py): the same behaviour in both loops."""

import logging

import pytest
import torch

from data2vec.config import build_config
from data2vec.errors import Data2VecError
from data2vec.finetuning.classifier import Classifier, new_head
from data2vec.finetuning.loop import finetune_loop
from data2vec.model import Data2VecEncoder
from data2vec.train.distributed import DistInfo
from data2vec.train.step import Faults, LogWindow, skip_empty, split, to_device

TINY_FT = ["model.dim=16", "model.depth=1", "model.heads=2", "image.image_size=8", "image.patch_size=4",
           "train.batch_size=4", "train.warmup_steps=1", "train.log_every=1", "data.num_workers=0",
           "finetune.mixup=0", "finetune.cutmix=0", "finetune.eval_every=0"]


def _classifier(cfg):
    torch.manual_seed(0)
    return Classifier(Data2VecEncoder(cfg), new_head("linear", cfg.model.dim, ["a", "b"], 0.0))


def _batches(bad_steps, n=10):
    generator = torch.Generator().manual_seed(0)
    for step in range(n):
        inputs = torch.randn(4, 3, 8, 8, generator=generator)
        if step in bad_steps:
            inputs[0, 0, 0, 0] = float("nan")
        yield {"inputs": inputs, "label": torch.tensor([0, 1, 0, 1]), "skipped": 0}


def test_fine_tuning_stops_a_nonfinite_streak_with_a_checkpoint_of_the_last_good_state(tmp_path):
    # The same as pretraining (test_reliability.py): the streak's updates are skipped, the last good weights
    # are saved numbered after the bad batches, and the run stops with the one-line error.
    cfg = build_config("image-tiny-ft", [*TINY_FT, "train.max_steps=8", "train.max_bad_steps=3", f"out={tmp_path}"])
    model = _classifier(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    saved, weights = [], []

    def save(step):
        saved.append(step)
        weights.append({k: v.clone() for k, v in model.state_dict().items()})

    before_streak = {}

    def remember(step):  # validate() runs after update 2, the last good one
        before_streak.update({k: v.clone() for k, v in model.state_dict().items()})

    cfg.finetune.eval_every = 2
    with pytest.raises(Data2VecError, match="3 updates in a row.*last good state as step 5"):
        finetune_loop(model, optimizer, _batches({2, 3, 4, 5}), cfg, torch.device("cpu"), 0, save, remember, None)
    assert saved == [5]
    assert all(torch.equal(weights[0][k], before_streak[k]) for k in before_streak)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_nonfinite_batch_is_skipped_and_fine_tuning_goes_on(caplog):
    cfg = build_config("image-tiny-ft", [*TINY_FT, "train.max_steps=5"])
    model = _classifier(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    records = []

    class Logger:
        def step(self):
            pass

        def log(self, record, group=None):
            records.append(record)

    with caplog.at_level(logging.WARNING, logger="data2vec"):
        finetune_loop(model, optimizer, _batches({2}), cfg, torch.device("cpu"), 0, lambda s: None,
                      lambda s: None, Logger())
    assert "step 3: non-finite loss or gradient, update skipped (1 in a row, 1 in total)" in caplog.text
    assert [r["step"] for r in records] == [1, 2, 4, 5] and records[-1]["nonfinite_skipped"] == 1


def test_empty_batches_are_skipped_until_the_streak_limit():
    cfg = build_config("image-tiny-ft", [*TINY_FT, "train.max_bad_steps=2"])
    faults, info, cpu = Faults(), DistInfo(), torch.device("cpu")
    assert not skip_empty({"inputs": torch.zeros(2, 3), "skipped": 0}, 0, faults, cfg, info, cpu)
    assert skip_empty({"skipped": 4}, 1, faults, cfg, info, cpu) and faults.empty_in_a_row == 1
    with pytest.raises(Data2VecError, match="2 batches in a row had no readable sample"):
        skip_empty({"skipped": 4}, 2, faults, cfg, info, cpu)
    with pytest.raises(RuntimeError, match="empty batch without skipped samples"):  # a loader bug, not the data
        skip_empty({"inputs": torch.zeros(0, 3)}, 3, Faults(), cfg, info, cpu)


def test_split_keeps_the_rows_of_every_tensor_together():
    batch = to_device({"inputs": torch.arange(5.0), "label": torch.arange(5) * 10, "skipped": 1}, torch.device("cpu"))
    assert set(batch) == {"inputs", "label"}  # counts stay behind
    pieces = split(batch, 2)
    assert [p["inputs"].tolist() for p in pieces] == [[0.0, 1.0, 2.0], [3.0, 4.0]]
    assert all(torch.equal(p["label"], p["inputs"].long() * 10) for p in pieces)
    assert len(split(batch, 8)) == 5  # never an empty micro-batch


def test_log_window_gives_means_per_update_and_starts_again():
    window = LogWindow(("loss", "other"), torch.device("cpu"))
    window.add(torch.tensor([1.0, 10.0]), 4)
    window.add(torch.tensor([3.0, 30.0]), 4)
    window.skipped += 2
    record = window.reduce(DistInfo())
    assert (record["loss"], record["other"], record["skipped"]) == (2.0, 20.0, 2) and record["samples_per_s"] > 0
    assert window.steps == 0 and window.samples == 0 and window.skipped == 0 and window.sums.sum() == 0
