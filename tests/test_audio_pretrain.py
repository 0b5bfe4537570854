"""data2vec on speech end to end: padding-independent targets and loss, a short run, probe and embed."""

import numpy as np
import pytest
import soundfile as sf
import torch

from data2vec.config import build_config
from data2vec.model import Data2Vec

TINY = ["audio.conv_dim=[16,16,16,16,16,16,16]", "model.dim=32", "model.heads=4", "model.depth=2",
        "objective.top_k=2", "audio.pos_conv_groups=4", "audio.pos_conv_kernel=5", "data.num_workers=0"]

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def model(*extra):
    torch.manual_seed(0)
    return Data2Vec(build_config("audio-tiny", [*TINY, *extra])).eval()


def padded(waves, total):
    """Right-pad 1-D waves to `total` samples with noise (which must not matter): (inputs, padding_mask)."""
    inputs = torch.randn(len(waves), total) * 3
    padding = torch.ones(len(waves), total, dtype=torch.bool)
    for b, w in enumerate(waves):
        inputs[b, : len(w)] = w
        padding[b, : len(w)] = False
    return inputs, padding


def test_padding_never_enters_targets_or_loss():
    m = model()
    torch.manual_seed(1)
    waves = [torch.randn(6000), torch.randn(9000)]
    frames = [m.student.frontend.num_frames(len(w)) for w in waves]
    g = torch.Generator().manual_seed(0)
    real_masks = [torch.rand(n, generator=g) < 0.5 for n in frames]
    results = []
    for total in (9000, 13000):  # the same utterances, padded two different ways
        inputs, padding = padded(waves, total)
        n = m.student.frontend.num_frames(total)
        mask = torch.zeros(2, n, dtype=torch.bool)
        for b, rm in enumerate(real_masks):
            mask[b, : len(rm)] = rm
        targets = m.targets(inputs, padding)
        results.append(([targets[b, :f] for b, f in enumerate(frames)], m(inputs, mask, padding)["loss"]))
    (t1, loss1), (t2, loss2) = results
    for a, b in zip(t1, t2):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(loss1, loss2, atol=1e-5, rtol=1e-5)
    alone = m.targets(waves[0][None])[0]  # no padding at all: instance-norm statistics over real frames only
    torch.testing.assert_close(t1[0], alone, atol=1e-4, rtol=1e-4)
    assert abs(float(alone.mean())) < 1e-4  # each layer normalised over time, so the average has mean 0


def test_recipe_objective_is_the_papers():
    cfg = build_config("audio-base")
    o = cfg.objective
    assert (o.top_k, o.tap, o.per_layer_norm, o.final_norm) == (8, "ffn", "instance", "none")
    assert (o.loss_beta, o.loss_scale, o.ema_scope) == (0.0, "inv_sqrt_dim", "layers")  # fairseq ema_layers_only
    assert (o.ema_start, o.ema_end, o.ema_anneal_steps) == (0.999, 0.9999, 30000)
    assert (cfg.masking.span_prob, cfg.masking.span_length) == (0.65, 10)
    assert cfg.audio.conv_dim == [512] * 7 and (cfg.audio.pos_conv_layers, cfg.audio.pos_conv_kernel) == (5, 19)
    assert build_config("audio-large").model.dim == 1024


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    """A labelled split folder of short tones with harmonics: three classes by pitch, lengths vary."""
    root = tmp_path_factory.mktemp("tones")
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 4)):
        for label, freq in (("low", 200.0), ("mid", 500.0), ("high", 1200.0)):
            (root / split / label).mkdir(parents=True)
            for i in range(count):
                n = int(rng.integers(3000, 7000))
                t = np.arange(n) / 16000
                wave = sum(np.sin(2 * np.pi * freq * k * t * rng.uniform(0.97, 1.03)) / k for k in (1, 2, 3))
                wave = wave * rng.uniform(0.1, 0.5) + rng.normal(0, 0.01, n)
                sf.write(root / split / label / f"{i}.wav", wave.astype(np.float32), 16000)
    return root


def test_short_run_loss_falls(tones):
    from data2vec.data.build import pretrain_loader

    cfg = build_config("audio-tiny", [*TINY, f"data.path={tones}", "train.batch_size=12", "train.max_steps=30",
                                      "audio.max_sample_size=4000", "masking.span_length=3"])
    torch.manual_seed(0)
    m = Data2Vec(cfg).train()
    opt = torch.optim.Adam([p for _, p in m.trainable_parameters()], lr=2e-3, betas=(0.9, 0.98))
    losses = []
    for batch in pretrain_loader(cfg):
        out = m(batch["inputs"], batch["mask"], batch["padding_mask"])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        m.update_teacher(0.999)
        losses.append(out["loss"].item())
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses


def test_pretrain_probe_and_embed_tasks(tones, tmp_path):
    from data2vec.api import load
    from data2vec.cli import main
    from data2vec.tasks.embed import embed
    from data2vec.tasks.pretrain import pretrain
    from data2vec.tasks.probe import probe_encoder

    cfg = build_config("audio-tiny", [*TINY, f"data.path={tones}", "train.batch_size=6", "train.max_steps=2",
                                      f"out={tmp_path / 'run'}"])
    run = pretrain(cfg, progress=False)
    result = probe_encoder(load(run), cfg)
    assert set(result) == {"linear", "knn"} and 0.0 <= result["linear"] <= 1.0
    out = embed(run, [str(tones / "test" / "low"), str(tones / "test" / "high" / "0.wav")], tmp_path / "e.npy")
    assert np.load(out).shape == (5, 32)
    assert out.with_suffix(".txt").read_text().splitlines()[-1].endswith("high/0.wav")
    from data2vec.tasks.report import audio_examples

    assert "spans of 5 frames of 20 ms" in audio_examples(cfg, tmp_path / "examples.png")
    assert (tmp_path / "examples.png").stat().st_size > 1000
    (tmp_path / "bad.wav").write_bytes(b"nope")
    assert main(["embed", str(run), str(tmp_path / "bad.wav"), "--out", str(tmp_path / "x.npy")]) == 2


def test_resume_is_bit_exact_across_epochs(tones, tmp_path):
    from safetensors.torch import load_file

    from data2vec.tasks.pretrain import pretrain

    def run(out, *extra):  # 36 training files in buckets of 12: 3 steps an epoch, so 7 steps cross two epochs
        cfg = build_config("audio-tiny", [*TINY, f"data.path={tones}", "train.batch_size=12", "train.max_steps=7",
                                          "train.save_every=4", "train.keep_last=5", "model.dropout=0.1",
                                          f"out={out}", *extra])
        return pretrain(cfg, progress=False)

    full = run(tmp_path / "full")
    resumed = run(tmp_path / "resumed", f"resume={full / 'checkpoints' / 'step_00000004'}")
    a = load_file(str(full / "checkpoints" / "step_00000007" / "model.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "step_00000007" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_v1_student_and_teacher_share_one_feature_encoder_pass():
    """With the local encoder shared (every ema_scope but all) the v1 step runs the conv feature encoder once:
    same loss and gradients as the plain path (teacher's own front-end pass), one call fewer."""
    m = model().train()
    assert m.shares_local_features()
    inputs, padding = padded([torch.randn(6000), torch.randn(9000)], 9000)
    n = m.student.frontend.num_frames(9000)
    mask = torch.rand(2, n, generator=torch.Generator().manual_seed(0)) < 0.5
    calls = []
    for enc in (m.student, m.teacher):
        enc.frontend.feature_extractor.register_forward_pre_hook(lambda mod, a: calls.append(1))
    shared = m(inputs, mask, padding)
    shared["loss"].backward()
    grads = {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}
    assert len(calls) == 1
    m.zero_grad()
    m.student.frontend.forward_pair = None  # the two-pass path: the teacher embeds the clean input itself
    plain = m(inputs, mask, padding)
    plain["loss"].backward()
    assert len(calls) == 3
    torch.testing.assert_close(shared["loss"], plain["loss"], rtol=0, atol=0)
    assert grads.keys() == {k for k, p in m.named_parameters() if p.grad is not None}
    for k, p in m.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[k], p.grad, rtol=1e-6, atol=1e-7)
    assert grads["student.frontend.feature_extractor.conv_layers.0.conv.weight"].abs().sum() > 0
