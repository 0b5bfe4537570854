"""data2vec 2.0 on speech: M span masks per utterance over real frames only, visible-only student, one teacher."""

import numpy as np
import soundfile as sf
import torch

from data2vec.config import build_config
from data2vec.data.build import pretrain_loader
from data2vec.model import Data2Vec

V2 = ["audio.conv_dim=[16,16,16,16,16,16,16]", "model.dim=32", "model.heads=4", "model.depth=2",
      "objective.top_k=2", "audio.pos_conv_groups=4", "audio.pos_conv_kernel=5", "data.num_workers=0",
      "objective.version=2", "objective.clones=3", "objective.decoder_dim=16", "objective.decoder_layers=2",
      "objective.decoder_kernel=3", "objective.decoder_groups=4", "masking.span_prob=0.5",
      "masking.span_length=2", "train.batch_size=4", "train.max_steps=2"]


def test_v2_speech_masks_clones_over_real_frames_and_drops_them(tmp_path):
    rng = np.random.default_rng(0)
    for i, n in enumerate((3000, 4200, 5000, 6400)):  # different lengths: the batch is padded
        sf.write(tmp_path / f"{i}.wav", rng.normal(0, 0.1, n).astype(np.float32), 16000)
    cfg = build_config("audio-tiny", [*V2, f"data.path={tmp_path}", f"out={tmp_path / 'run'}"])
    batch = next(iter(pretrain_loader(cfg)))
    torch.manual_seed(0)
    model = Data2Vec(cfg)
    frames = model.student.frontend.num_frames
    B, M, N = batch["mask"].shape
    assert M == 3 and N == frames(batch["inputs"].shape[1])
    real = torch.tensor([frames(int(n)) for n in (~batch["padding_mask"]).sum(1)]) if batch["padding_mask"] \
        is not None else torch.full((B,), N)
    assert (real < N).any()  # some rows are padded
    for b in range(B):
        assert not batch["mask"][b, :, real[b]:].any()  # padding frames are never masked
        assert batch["mask"][b, :, : real[b]].any(-1).all()  # every clone masks something
    assert not torch.equal(batch["mask"][:, 0], batch["mask"][:, 1])  # clones differ

    lengths, teacher_calls = [], []
    model.student.encoder.register_forward_pre_hook(lambda m, a, k: lengths.append(a[0].shape[1]), with_kwargs=True)
    model.teacher.encoder.register_forward_pre_hook(lambda m, a: teacher_calls.append(1))  # the Transformer
    out = model(batch["inputs"], batch["mask"], batch["padding_mask"])
    out["loss"].backward()
    pad_frames = torch.arange(N)[None] >= real[:, None]  # [B, N]
    visible = (~(batch["mask"] | pad_frames[:, None])).sum(-1)  # [B, M]
    assert lengths == [int(visible.max())] and teacher_calls == [1]
    assert torch.isfinite(out["loss"]) and model.decoder.proj_in.weight.grad is not None
    assert model.student.frontend.masked_spec_embed.grad is None  # v2 drops masked frames: no mask embedding


def test_v2_teacher_reuses_the_shared_front_end_output_only_when_it_is_identical():
    cfg = build_config("audio-tiny", V2)
    torch.manual_seed(0)
    model = Data2Vec(cfg).train()
    waves, padding = torch.randn(2, 4000), torch.zeros(2, 4000, dtype=torch.bool)
    padding[1, 3000:] = True
    frontend_calls = []
    model.teacher.frontend.register_forward_pre_hook(lambda m, a: frontend_calls.append(1))
    assert model.shares_frontend_output()  # ema_scope encoder and no active dropout in the front-end
    shared = model.targets(waves, padding, model.student.frontend(waves, None, padding))
    assert frontend_calls == []
    full = model.targets(waves, padding)  # the teacher's own front-end: the same numbers
    assert frontend_calls == [1]
    torch.testing.assert_close(shared, full, rtol=0, atol=0)
    model.student.frontend.dropout.p = 0.1  # the student's front-end output now differs from the teacher's
    assert not model.shares_frontend_output()
    model.cfg.objective.ema_scope = "all"  # averaged front-end weights differ too
    model.student.frontend.dropout.p = 0.0
    assert not model.shares_frontend_output()


def test_report_draws_one_mask_per_utterance_for_v2(tmp_path):
    from data2vec.tasks.report import audio_examples

    rng = np.random.default_rng(1)
    for i, n in enumerate((3000, 5000)):
        sf.write(tmp_path / f"{i}.wav", rng.normal(0, 0.1, n).astype(np.float32), 16000)
    cfg = build_config("audio-tiny", [*V2, f"data.path={tmp_path}"])
    caption = audio_examples(cfg, tmp_path / "examples.png")
    assert "2 training inputs" in caption and (tmp_path / "examples.png").stat().st_size > 1000
