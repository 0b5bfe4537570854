"""A run folder is never written over: re-runs continue or stop, one owner at a time, failed starts leave nothing."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import data2vec
from data2vec.cli import main
from data2vec.config import build_config
from data2vec.tasks.pretrain import pretrain
from data2vec.train.loop import Preempted
from data2vec.train.run_folder import LOCK, _start_ticks, check_unlocked
from data2vec.train.signals import StopSignal

TINY = ["model.dim=32", "model.depth=2", "model.heads=2", "image.image_size=16", "image.patch_size=4",
        "objective.top_k=2", "masking.min_block=2", "train.batch_size=8", "train.warmup_steps=1",
        "train.log_every=1", "data.num_workers=0", "train.max_steps=4", "train.save_every=2"]


def tiny(out, *extra):
    return build_config("image-tiny", TINY + [f"out={out}", *extra])


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (but the log, which each launch appends to) with its content."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "train.log"}


def final_weights(run: Path, step: int = 4) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step_{step:08d}" / "model.safetensors"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return pretrain(tiny(tmp_path_factory.mktemp("finished") / "run"), progress=False)


def test_rerun_of_a_finished_run_continues_and_changes_nothing(finished):
    before = snapshot(finished)
    assert pretrain(tiny(finished), progress=False) == finished
    assert snapshot(finished) == before  # no step retrained, no record appended, no checkpoint rewritten
    assert not (finished / LOCK).exists()  # released at the end


def test_rerun_with_other_settings_stops_naming_the_choices_and_touches_nothing(finished, capsys):
    before = snapshot(finished)
    with pytest.raises(data2vec.Data2VecError) as err:
        pretrain(tiny(finished, "train.lr=0.01"), progress=False)
    message = str(err.value)
    assert "train.lr: 0.001 -> 0.01" in message
    assert "resume=auto" in message and "out=" in message and "overwrite=true" in message
    code = main(["pretrain", "image-tiny", *TINY, f"out={finished}", "train.lr=0.01", "--no-progress"])
    assert code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    assert snapshot(finished) == before


def test_overwrite_moves_the_old_run_aside_and_starts_afresh(tmp_path):
    out = tmp_path / "run"
    pretrain(tiny(out), progress=False)
    before = snapshot(out)
    pretrain(tiny(out, "train.lr=0.01", "overwrite=true"), progress=False)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and snapshot(aside[0]) == before  # nothing of the old run lost
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4] and all(r["lr"] <= 0.01 for r in records)
    assert (out / "train.log").read_text().count(" run ") == 1  # the new run's log, not appended to the old


def test_rerun_after_a_stop_signal_continues_to_the_uninterrupted_result(tmp_path, monkeypatch):
    reference = pretrain(tiny(tmp_path / "reference"), progress=False)
    out = tmp_path / "run"
    polls = iter(range(100))
    monkeypatch.setattr(StopSignal, "__call__", lambda self: next(polls) == 1)  # a signal during update 2
    with pytest.raises(Preempted):
        pretrain(tiny(out), progress=False)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002"]
    monkeypatch.undo()
    pretrain(tiny(out), progress=False)  # the same command again, no resume=auto
    for key, value in final_weights(reference).items():
        assert torch.equal(value, final_weights(out)[key]), key
    records = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records == [1, 2, 3, 4]


def test_failed_start_creates_no_run_folder(finished, tmp_path, capsys):
    with pytest.raises(data2vec.Data2VecError, match="does not exist"):
        pretrain(tiny(tmp_path / "bad-data", f"data.path={tmp_path / 'missing'}"), progress=False)
    assert main(["finetune", "image-tiny-ft", f"checkpoint={tmp_path / 'no-checkpoint'}",
                 f"out={tmp_path / 'bad-checkpoint'}"]) == 2
    assert main(["finetune", "image-tiny-ft", f"checkpoint={finished}", f"data.path={tmp_path / 'missing'}",
                 f"out={tmp_path / 'bad-ft-data'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def write_lock(out: Path, pid: int, host: str | None = None, job: str | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / LOCK).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                        "started": _start_ticks(pid), "job": job, "since": "earlier"}))


def test_a_live_owner_is_refused(tmp_path):
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(tmp_path / "run", owner.pid)
        with pytest.raises(data2vec.Data2VecError, match=f"in use by process {owner.pid}"):
            pretrain(tiny(tmp_path / "run"), progress=False)
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [LOCK]  # nothing written
    finally:
        owner.kill()
        owner.wait()


def test_a_second_launch_into_a_running_run_is_refused(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    first = subprocess.Popen([sys.executable, "-m", "data2vec", "pretrain", "image-tiny", *TINY, f"out={out}",
                              "train.max_steps=100000", "--no-progress"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / LOCK).exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.1)
        assert (out / LOCK).exists(), "the first launch never took the run folder"
        with pytest.raises(data2vec.Data2VecError, match=f"in use by process {first.pid}"):
            pretrain(tiny(out, "train.max_steps=100000"), progress=False)
    finally:
        first.kill()
        first.wait()


def test_a_dead_owners_lock_is_recovered(tmp_path, caplog):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    write_lock(tmp_path / "run", gone.pid)
    pretrain(tiny(tmp_path / "run"), progress=False)
    assert any("which has ended" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "run" / "checkpoints" / "step_00000004").is_dir() and not (tmp_path / "run" / LOCK).exists()


def test_lock_is_shared_by_one_torchrun_job_and_kept_from_other_hosts(tmp_path, monkeypatch):
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for key, value in {"WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "job1", "MASTER_ADDR": "node0",
                           "MASTER_PORT": "29500"}.items():
            monkeypatch.setenv(key, value)
        write_lock(tmp_path, owner.pid, job="job1@node0:29500")
        check_unlocked(tmp_path)  # rank 0 of this job holds it: the other ranks go on
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job2")
        with pytest.raises(data2vec.Data2VecError, match="in use"):
            check_unlocked(tmp_path)
    finally:
        owner.kill()
        owner.wait()
    write_lock(tmp_path, owner.pid, host="another-node")  # a dead pid, but on a host we cannot look at
    with pytest.raises(data2vec.Data2VecError, match="if that process is gone, delete"):
        check_unlocked(tmp_path)


def test_rerunning_the_demo_continues_its_pretraining(tmp_path):
    from data2vec.tasks.demo import demo

    tiny_demo = [o for o in TINY if not o.startswith("train.save_every")] + ["train.max_steps=2"]
    first = demo("image", tmp_path / "demo", tiny_demo, progress=False)
    pretraining = snapshot(tmp_path / "demo" / "pretrain" / "checkpoints")
    again = demo("image", tmp_path / "demo", tiny_demo, progress=False)  # the same command: nothing retrained
    assert snapshot(tmp_path / "demo" / "pretrain" / "checkpoints") == pretraining
    assert again["pretrained"] == first["pretrained"]
    with pytest.raises(data2vec.Data2VecError, match="--out"):
        demo("image", tmp_path / "demo", [*tiny_demo, "train.lr=0.01"], progress=False)
