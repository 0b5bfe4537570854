"""The run harness (train/harness.py): a weights-only checkpoint resumes at step 0 with a fresh optimiser."""

import json

import torch
from safetensors.torch import load_file

from data2vec.config import build_config
from data2vec.tasks.pretrain import pretrain
from data2vec.train.checkpoint import load_checkpoint, save_checkpoint

TINY = ["model.dim=16", "model.depth=1", "model.heads=2", "image.image_size=8", "image.patch_size=4",
        "objective.top_k=1", "masking.min_block=1", "train.batch_size=8", "train.warmup_steps=1",
        "train.log_every=1", "data.num_workers=0"]


def test_pretraining_resumes_a_weights_only_checkpoint_from_step_0(tmp_path):
    first = pretrain(build_config("image-tiny", [*TINY, "train.max_steps=2", f"out={tmp_path / 'a'}"]), progress=False)
    weights, state, cfg = load_checkpoint(first)
    assert state["step"] == 2 and "optimizer" in state
    # what a conversion writes: the weights and the config, no training state
    ckpt = save_checkpoint(tmp_path / "converted", 0, weights, None, cfg)
    assert not (ckpt / "state.pt").exists() and load_checkpoint(ckpt)[1] == {}
    # lr 0: nothing moves, so the weights at the end are the loaded ones, not a fresh initialisation
    run = pretrain(build_config("image-tiny", [*TINY, "train.max_steps=3", "train.lr=0", "train.min_lr=0",
                                               f"resume={ckpt}", f"out={tmp_path / 'b'}"]), progress=False)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # from step 0, not from the checkpoint's number
    end = load_file(str(run / "checkpoints" / "step_00000003" / "model.safetensors"))
    assert all(torch.equal(end[k], weights[k]) for k in weights if k.startswith("student."))
    resumed_state = torch.load(run / "checkpoints" / "step_00000003" / "state.pt", weights_only=True)
    assert resumed_state["step"] == 3 and resumed_state["optimizer"]["state"]  # a fresh optimiser, now stepped
