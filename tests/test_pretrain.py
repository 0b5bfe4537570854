"""End to end on the built-in digits: a tiny run learns, resumes exactly, and loads for inference."""

import json

import pytest
import torch
from safetensors.torch import load_file

import data2vec
from data2vec.config import build_config
from data2vec.tasks.pretrain import pretrain

TINY = ["model.dim=32", "model.depth=2", "model.heads=2", "image.image_size=16", "image.patch_size=4",
        "objective.top_k=2", "masking.min_block=2", "train.batch_size=16", "train.warmup_steps=5",
        "train.log_every=1", "data.num_workers=0"]


def tiny(out, *extra):
    return build_config("image-tiny", TINY + [f"out={out}", *extra])


def read_metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tiny_run_loss_falls_and_writes_run_folder(tmp_path):
    run = pretrain(tiny(tmp_path / "run", "train.max_steps=100", "train.lr=2e-3", "train.save_every=50"),
                   progress=False)
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == list(range(1, 101))
    assert {"step", "loss", "lr", "ema_decay", "samples_per_s"} <= set(rows[0])
    first = sum(r["loss"] for r in rows[:5]) / 5
    last = sum(r["loss"] for r in rows[-5:]) / 5
    assert last < 0.8 * first, (first, last)  # measured: 0.247 -> 0.165
    assert (run / "config.yaml").exists() and (run / "tensorboard").is_dir()
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step_00000050", "step_00000100"]


def test_resume_matches_uninterrupted_run(tmp_path):
    full = pretrain(tiny(tmp_path / "full", "train.max_steps=8", "train.save_every=4", "train.keep_last=5"),
                    progress=False)
    midway = full / "checkpoints" / "step_00000004"
    resumed = pretrain(tiny(tmp_path / "resumed", "train.max_steps=8", "train.save_every=4", f"resume={midway}"),
                       progress=False)
    a = load_file(str(full / "checkpoints" / "step_00000008" / "model.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "step_00000008" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert [r["loss"] for r in read_metrics(full)[4:]] == [r["loss"] for r in read_metrics(resumed)]


def test_tri_stage_schedule_sets_each_updates_lr_and_resumes_exactly(tmp_path):
    from data2vec.train.optim import lr_at

    extra = ["train.max_steps=8", "train.save_every=4", "train.keep_last=5", "train.schedule=tri_stage",
             "train.phase_ratio=[0.25,0.25,0.5]", "train.final_lr_scale=0.1"]
    full = pretrain(tiny(tmp_path / "full", *extra), progress=False)
    resumed = pretrain(tiny(tmp_path / "resumed", *extra, f"resume={full / 'checkpoints' / 'step_00000004'}"),
                       progress=False)
    tc = tiny(tmp_path / "x", *extra).train
    lrs = [r["lr"] for r in read_metrics(full)]
    assert lrs == pytest.approx([lr_at(s, tc) for s in range(8)], rel=1e-6)
    assert lrs[0] == pytest.approx(0.01 * tc.lr) and lrs[-1] < lrs[3] == pytest.approx(tc.lr)  # warm-up, hold, decay
    assert [r["lr"] for r in read_metrics(resumed)] == lrs[4:]
    a = load_file(str(full / "checkpoints" / "step_00000008" / "model.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "step_00000008" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_resume_is_exact_with_drop_path(tmp_path):
    # drop path draws from the global RNG, which the checkpoint restores; nothing else may draw from it
    extra = ["train.max_steps=6", "train.save_every=3", "train.keep_last=5", "model.drop_path=0.3"]
    full = pretrain(tiny(tmp_path / "full", *extra), progress=False)
    resumed = pretrain(tiny(tmp_path / "resumed", *extra, f"resume={full / 'checkpoints' / 'step_00000003'}"),
                       progress=False)
    a = load_file(str(full / "checkpoints" / "step_00000006" / "model.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "step_00000006" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_resume_auto_continues_from_newest_checkpoint(tmp_path):
    run = pretrain(tiny(tmp_path / "run", "train.max_steps=4", "train.save_every=2"), progress=False)
    pretrain(tiny(tmp_path / "run", "train.max_steps=6", "train.save_every=2", "resume=auto"), progress=False)
    steps = [r["step"] for r in read_metrics(run)]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_load_gives_eval_encoder_with_hidden_states(tmp_path):
    run = pretrain(tiny(tmp_path / "run", "train.max_steps=2"), progress=False)
    enc = data2vec.load(run)
    assert not enc.training
    out = enc(torch.randn(2, 3, 16, 16))
    assert len(out.hidden_states) == 3 and out.last_hidden_state.shape == (2, 17, 32)
    assert enc.embed(torch.randn(2, 3, 16, 16)).shape == (2, 32)


def test_missing_data_path_is_a_clear_error(tmp_path):
    with pytest.raises(data2vec.Data2VecError, match="does not exist"):
        pretrain(tiny(tmp_path / "run", f"data.path={tmp_path / 'nope'}"), progress=False)


def test_low_target_variance_warns_of_collapse(tmp_path, caplog):
    pretrain(tiny(tmp_path / "run", "train.max_steps=2", "train.collapse_var=100"), progress=False)
    assert any("collapsing" in r.getMessage() for r in caplog.records)


def test_v2_recipe_trains_through_the_data_pipeline(tmp_path):
    cfg = build_config("image-tiny-v2", TINY + ["objective.decoder_dim=16", "objective.decoder_groups=4",
                                                "train.max_steps=30", "train.lr=2e-3", f"out={tmp_path / 'run'}"])
    rows = read_metrics(pretrain(cfg, progress=False))
    assert len(rows) == 30
    assert sum(r["loss"] for r in rows[-5:]) < 0.9 * sum(r["loss"] for r in rows[:5])
