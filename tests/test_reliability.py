"""Fault injection: pre-emption, kill -9 at random points, NaN batches, bad data, bad checkpoints."""

import json
import logging
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import data2vec
from data2vec.config import build_config
from data2vec.errors import Data2VecError
from data2vec.model import Data2Vec
from data2vec.tasks.pretrain import pretrain
from data2vec.train.checkpoint import load_checkpoint, save_checkpoint
from data2vec.train.loop import train
from data2vec.train.optim import build_optimizer

TINY = ["model.dim=32", "model.depth=2", "model.heads=2", "image.image_size=16", "image.patch_size=4",
        "objective.top_k=2", "masking.min_block=2", "train.batch_size=16", "train.warmup_steps=2",
        "train.log_every=1", "data.num_workers=0"]
STEPS = 40


def launch(out, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "data2vec", "pretrain", "image-tiny", *TINY, f"train.max_steps={STEPS}",
           f"out={out}", "--no-progress", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def final_weights(run):
    return load_file(str(run / "checkpoints" / f"step_{STEPS:08d}" / "model.safetensors"))


def assert_identical(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = launch(out, "train.save_every=1000")
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    return final_weights(out)


def test_sigterm_writes_a_checkpoint_and_exits_75(reference, tmp_path):
    out = tmp_path / "run"
    proc = launch(out, "train.save_every=1000")
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 75
    checkpoints = sorted((out / "checkpoints").glob("step_*"))
    assert len(checkpoints) == 1 and int(checkpoints[0].name[5:]) < STEPS
    resumed = launch(out, "train.save_every=1000")  # the same command again continues the run
    assert resumed.wait(timeout=300) == 0
    assert_identical(final_weights(out), reference)


def test_kill_9_at_random_points_always_resumes_to_the_same_run(reference, tmp_path):
    out = tmp_path / "run"
    rng = random.Random(1234)
    kills = 0
    for attempt in range(12):
        # The same command each time: a killed run left its lock behind, which the next launch recovers.
        proc = launch(out, "train.save_every=1", "train.keep_last=2")
        try:
            code = proc.wait(timeout=rng.uniform(1.0, 4.0))
        except subprocess.TimeoutExpired:
            proc.kill()  # SIGKILL: no handler, no cleanup, possibly mid-checkpoint
            proc.wait()
            kills += 1
            continue
        assert code == 0, proc.stderr.read()[-2000:]
        break
    else:
        proc = launch(out, "train.save_every=1", "train.keep_last=2")
        assert proc.wait(timeout=300) == 0
    assert kills >= 2, "the test never interrupted training; widen the kill window"
    assert_identical(final_weights(out), reference)


def _nan_batches(cfg, bad_steps):
    from data2vec.data.build import pretrain_loader

    for step, batch in enumerate(pretrain_loader(cfg)):
        if step in bad_steps:
            batch["inputs"] = batch["inputs"].clone()
            batch["inputs"][0, 0, 0, 0] = float("nan")
        yield batch


def test_nan_batch_is_skipped_and_counted(tmp_path, caplog):
    cfg = build_config("image-tiny", TINY + ["train.max_steps=6", f"out={tmp_path}"])
    torch.manual_seed(0)
    model = Data2Vec(cfg)
    optimizer = build_optimizer(model.trainable_parameters(), cfg.train)
    saved = []
    weights = {}  # the loop asks for batch k after update k - 1 (optimiser and EMA) is done

    def watched(batches):
        for step, batch in enumerate(batches):
            if step in (2, 4):  # before the NaN batches 2 and 3, and after their skipped updates
                weights[step] = {k: v.clone() for k, v in model.state_dict().items()}
            yield batch

    class Logger:
        records = []

        def step(self):
            pass

        def log(self, record):
            self.records.append(record)

    logger = Logger()
    with caplog.at_level(logging.WARNING, logger="data2vec"):
        train(model, optimizer, watched(_nan_batches(cfg, {2, 3})), cfg, torch.device("cpu"), 0, saved.append,
              logger)
    assert "non-finite" in caplog.text
    assert logger.records[-1]["nonfinite_skipped"] == 2
    assert any(k.startswith("teacher.") for k in weights[2])  # no optimiser step and no EMA step was taken:
    assert all(torch.equal(v, weights[4][k]) for k, v in weights[2].items())
    assert {int(s["step"]) for s in optimizer.state.values()} == {4}  # 6 updates, 2 skipped
    assert all(np.isfinite(r["loss"]) for r in logger.records)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_too_many_nonfinite_updates_stop_with_a_checkpoint(tmp_path):
    cfg = build_config("image-tiny", TINY + ["train.max_steps=8", "train.max_bad_steps=3", f"out={tmp_path}"])
    model = Data2Vec(cfg)
    optimizer = build_optimizer(model.trainable_parameters(), cfg.train)
    saved = []
    with pytest.raises(Data2VecError, match="3 updates in a row.*last good state as step 5"):
        train(model, optimizer, _nan_batches(cfg, {2, 3, 4, 5}), cfg, torch.device("cpu"), 0, saved.append, None)
    assert saved == [5]


def _salted_folder(root):
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(20):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / f"good{i}.png")
    (root / "corrupt.png").write_bytes(rng.bytes(200))
    (root / "empty.jpg").write_bytes(b"")
    good = (root / "good0.png").read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 3])
    return root


def test_salted_folder_trains_to_the_end_with_skip_counts(tmp_path):
    data = _salted_folder(tmp_path / "data")
    cfg = build_config("image-tiny", TINY + ["train.batch_size=23", "train.max_steps=3", f"data.path={data}",
                                             f"out={tmp_path / 'run'}"])
    run = pretrain(cfg, progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and sum(r["skipped"] for r in rows) == 3 * 3  # every step sees all 23 files


def test_folder_of_only_unreadable_files_stops_with_a_reason(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        (data / f"bad{i}.png").write_bytes(b"not a png")
    cfg = build_config("image-tiny", TINY + ["train.batch_size=4", "train.max_steps=20", "train.max_bad_steps=3",
                                             f"data.path={data}", f"out={tmp_path / 'run'}"])
    with pytest.raises(Data2VecError, match="no readable sample"):
        pretrain(cfg, progress=False)


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp/data2vec-pickle-ran")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_crafted_pickle_is_refused(tmp_path):
    MARKER.unlink(missing_ok=True)
    cfg = build_config("image-tiny", TINY)
    ckpt = save_checkpoint(tmp_path, 1, {"w": torch.zeros(2)}, {"step": 1}, cfg)
    (ckpt / "state.pt").write_bytes(pickle.dumps({"step": RunsCode()}))
    manifest = json.loads((ckpt / "manifest.json").read_text())  # make it look complete and untouched
    import hashlib
    manifest["files"]["state.pt"] = {"bytes": (ckpt / "state.pt").stat().st_size,
                                     "sha256": hashlib.sha256((ckpt / "state.pt").read_bytes()).hexdigest()}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Data2VecError, match="refusing to load"):
        load_checkpoint(ckpt)
    assert not MARKER.exists()


def test_old_checkpoint_config_migrates_with_warnings(tmp_path, monkeypatch, caplog):
    run = pretrain(build_config("image-tiny", TINY + ["train.max_steps=1", f"out={tmp_path / 'run'}"]),
                   progress=False)
    ckpt = next((run / "checkpoints").glob("step_*"))
    import yaml
    saved = yaml.safe_load((ckpt / "config.yaml").read_text())
    saved["train"]["old_lr_name"] = saved["train"].pop("lr")  # an older version called it so
    saved["train"]["retired_option"] = 1
    del saved["train"]["collapse_var"]  # added after that version
    text = yaml.safe_dump(saved)
    (ckpt / "config.yaml").write_text(text)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    import hashlib
    manifest["files"]["config.yaml"] = {"bytes": len(text.encode()), "sha256": hashlib.sha256(text.encode()).hexdigest()}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr("data2vec.config.RENAMED", {"train.old_lr_name": "train.lr"})
    with caplog.at_level(logging.WARNING, logger="data2vec"):
        encoder = data2vec.load(ckpt)
    assert encoder.cfg.train.lr == build_config("image-tiny").train.lr
    assert "now 'train.lr'" in caplog.text and "retired_option" in caplog.text and "collapse_var" in caplog.text


def test_newer_checkpoint_format_is_refused(tmp_path):
    ckpt = save_checkpoint(tmp_path, 1, {"w": torch.zeros(2)}, {"step": 1}, build_config("image-tiny"))
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["format_version"] = 99
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Data2VecError, match="newer"):
        load_checkpoint(ckpt)
