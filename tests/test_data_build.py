"""The loaders of data/build.py: never more worker processes than the CPUs this process may use.

A run converted from Hugging Face inherits a Base recipe's `data.num_workers=8`; on a 2-core machine eight
workers only fight the training process for the cores. The CPU count is faked through the affinity mask.
"""

import logging
import os

from data2vec.cli import main
from data2vec.config import build_config
from data2vec.data import build
from data2vec.data.build import loader_workers, pretrain_loader
from data2vec.tasks.finetune import finetune
from data2vec.tasks.pretrain import pretrain

TINY = ["model.dim=32", "model.depth=2", "model.heads=2", "image.image_size=16", "image.patch_size=8",
        "objective.top_k=2", "masking.min_block=1", "train.batch_size=8"]


def cpus(monkeypatch, n: int) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)
    monkeypatch.setattr(build, "_CAPPED", set())  # a fresh process: nothing warned about yet


def capped_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "loader worker" in r.getMessage()]


def test_workers_are_capped_at_the_usable_cpus_with_one_warning(monkeypatch, caplog):
    cpus(monkeypatch, 2)
    with caplog.at_level(logging.WARNING, logger="data2vec"):
        assert [loader_workers(n) for n in (8, 8, 3, 2, 1, 0)] == [2, 2, 2, 2, 1, 0]
    assert capped_warnings(caplog) == [
        "data.num_workers=8 but this process may use 2 CPU(s): starting 2 loader worker(s); set data.num_workers=2 "
        "to silence this",
        "data.num_workers=3 but this process may use 2 CPU(s): starting 2 loader worker(s); set data.num_workers=2 "
        "to silence this"]


def test_without_an_affinity_mask_every_cpu_of_the_machine_counts(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert build.usable_cpus() == 3


def test_pretrain_loader_and_bench_start_no_more_workers_than_cpus(monkeypatch, caplog, capsys):
    cpus(monkeypatch, 1)
    with caplog.at_level(logging.WARNING, logger="data2vec"):
        assert pretrain_loader(build_config("image-tiny", [*TINY, "data.num_workers=8"])).num_workers == 1
        assert main(["bench", "data", "image-tiny", *TINY, "data.num_workers=8", "--steps", "2"]) == 0
    assert "1 workers" in capsys.readouterr().out
    assert len(capped_warnings(caplog)) == 1  # once per process, not once per loader


def test_finetune_caps_its_workers_too(monkeypatch, caplog, tmp_path):
    pre = pretrain(build_config("image-tiny", [*TINY, "train.max_steps=1", "data.num_workers=0",
                                               f"out={tmp_path / 'pre'}"]), progress=False)
    cpus(monkeypatch, 1)
    with caplog.at_level(logging.WARNING, logger="data2vec"):
        finetune(build_config("image-tiny-ft", [f"finetune.checkpoint={pre}", f"out={tmp_path / 'ft'}",
                                                "train.batch_size=8", "train.max_steps=1", "data.num_workers=8"]),
                 progress=False)
    assert capped_warnings(caplog) == ["data.num_workers=8 but this process may use 1 CPU(s): starting 1 loader "
                                       "worker(s); set data.num_workers=1 to silence this"]


def test_an_evaluation_loader_leaves_the_global_random_stream_alone():
    # Validation during fine-tuning and the probe start evaluation loaders; if starting one drew its seed from
    # the global RNG, the dropout draws after it (and so a resumed run) would differ.
    import torch

    from data2vec.data.build import eval_dataset, eval_loader

    cfg = build_config("image-tiny", TINY)
    loader = eval_loader(eval_dataset(cfg, "valid", "builtin:digits"), batch_size=64)
    before = torch.get_rng_state()
    next(iter(loader))
    assert torch.equal(torch.get_rng_state(), before)
