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


def test_v2_teacher_starts_from_the_students_local_features_with_its_own_positions():
    """fairseq v2 (`ema_local_encoder: false`): the teacher takes the student's conv features and adds its own
    (averaged) positional convs and norm. The step's targets are the teacher's own full pass on the clean input
    (its local encoder is the student's copy), and differ from what the student's positions would give."""
    cfg = build_config("audio-tiny-v2", V2)
    assert cfg.objective.ema_scope == "context"
    torch.manual_seed(0)
    model = Data2Vec(cfg).train()
    with torch.no_grad():  # as after some EMA updates: the teacher's positions and norm lag the student's
        for name, p in model.teacher.frontend.named_parameters():
            if name.startswith(("pos_conv_embed.", "layer_norm.")):
                p.add_(0.1 * torch.randn_like(p))
    waves, padding = torch.randn(2, 4000), torch.zeros(2, 4000, dtype=torch.bool)
    padding[1, 3000:] = True
    n = model.student.frontend.num_frames(4000)
    mask = torch.rand(2, 3, n, generator=torch.Generator().manual_seed(1)) < 0.5
    calls, captured = [], {}
    model.teacher.frontend.feature_extractor.register_forward_pre_hook(lambda m, a: calls.append(1))
    real_targets = model.targets
    model.targets = lambda *a: captured.setdefault("t", real_targets(*a))
    assert model.shares_local_features()
    model(waves, mask, padding)["loss"].backward()
    assert calls == []  # the teacher's own conv feature encoder never ran
    own = real_targets(waves, padding)  # the teacher's full front-end on the clean input
    assert calls == [1]
    torch.testing.assert_close(captured["t"], own, rtol=1e-6, atol=1e-6)
    clean = model.student.frontend(waves, None, padding)  # the student's positions instead
    assert (real_targets(waves, padding, clean) - own).abs().max() > 1e-3
    model.cfg.objective.ema_scope = "all"  # averaged conv features: the teacher embeds the input itself
    assert not model.shares_local_features()


def test_v2_student_positions_never_see_masked_frames():
    """The information leak of issue 19: the student's positional convs (95 frames wide in data2vec) must see
    masked frames as zeros, as fairseq's `compute_mask(..., apply=True)` before its relative positional
    encoder. Changing what the masked frames hold leaves the student's outputs at visible frames unchanged;
    its input there is fairseq's `x_unmasked + pos_conv(x * (1 - mask))`, then the norm, recomputed in float64."""
    import torch.nn.functional as F

    cfg = build_config("audio-tiny-v2", V2 + ["objective.clones=1", "objective.decoder_noise=0"])
    torch.manual_seed(0)
    model = Data2Vec(cfg).eval()
    frontend = model.student.frontend
    waves = torch.randn(2, 4000)
    n = frontend.num_frames(4000)
    mask = torch.zeros(2, 1, n, dtype=torch.bool)
    assert n == 12
    mask[0, 0, 3:7], mask[1, 0, 7:10] = True, True
    real_local = frontend.local_features
    seen = {}
    model.student.encoder.register_forward_pre_hook(lambda m, a, k: seen.update(tokens=a[0]), with_kwargs=True)
    model.student.encoder.register_forward_hook(lambda m, a, k, out: seen.update(out=out[0]), with_kwargs=True)
    outputs = []
    for scale in (0.0, 100.0):
        def local(wave, padding_mask, scale=scale):
            x, padding = real_local(wave, padding_mask)
            noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
            return x + scale * noise * mask[:, 0, :, None], padding  # only masked frames change
        frontend.local_features = local
        model(waves, mask)
        outputs.append((seen["tokens"], seen["out"]))
        if scale == 0.0:
            x = local(waves, None)[0].double()
    (tokens_a, out_a), (tokens_b, out_b) = outputs
    for b in range(2):  # the visible frames (a row with fewer is padded with filler the encoder ignores)
        k = int((~mask[b, 0]).sum())
        torch.testing.assert_close(tokens_a[b, :k], tokens_b[b, :k], rtol=0, atol=0)
        torch.testing.assert_close(out_a[b, :k], out_b[b, :k], rtol=0, atol=0)

    h = (x * (~mask[:, 0, :, None])).transpose(1, 2)  # fairseq: masked frames zeroed, [B, D, N]
    for layer in frontend.pos_conv_embed.layers:
        conv = layer.conv
        h = F.conv1d(h, conv.weight.double(), conv.bias.double(), padding=conv.padding[0], groups=conv.groups)
        h = h[:, :, :-1] if conv.kernel_size[0] % 2 == 0 else h  # SamePad
        h = F.gelu(F.layer_norm(h.transpose(1, 2), h.shape[1:2]).transpose(1, 2))
    norm = frontend.layer_norm
    want = F.layer_norm(x + h.transpose(1, 2), x.shape[-1:], norm.weight.double(), norm.bias.double(), norm.eps)
    for b in range(2):
        visible = want[b][~mask[b, 0]]  # fairseq gathers the visible frames, in order
        torch.testing.assert_close(tokens_a[b, : len(visible)].double(), visible, rtol=1e-5, atol=1e-5)


def test_report_draws_one_mask_per_utterance_for_v2(tmp_path):
    from data2vec.tasks.report import audio_examples

    rng = np.random.default_rng(1)
    for i, n in enumerate((3000, 5000)):
        sf.write(tmp_path / f"{i}.wav", rng.normal(0, 0.1, n).astype(np.float32), 16000)
    cfg = build_config("audio-tiny", [*V2, f"data.path={tmp_path}"])
    caption = audio_examples(cfg, tmp_path / "examples.png")
    assert "2 training inputs" in caption and (tmp_path / "examples.png").stat().st_size > 1000


def test_v2_speech_alibi_sees_the_visible_frames_true_positions():
    cfg = build_config("audio-tiny", [*V2, "model.alibi=true", "model.norm_first=false"])
    torch.manual_seed(0)
    model = Data2Vec(cfg)
    seen = {}
    model.student.encoder.register_forward_pre_hook(lambda m, a, k: seen.update(k), with_kwargs=True)
    wave = torch.randn(2, 6400)
    N = model.student.frontend.num_frames(6400)
    mask = torch.zeros(2, 3, N, dtype=torch.bool)
    mask[:, :, 2:8] = True  # every clone hides frames 2..7: the student sees 0, 1, 8, 9, ...
    out = model(wave, mask)
    out["loss"].backward()
    want = torch.cat([torch.arange(2), torch.arange(8, N)])
    assert torch.equal(seen["positions"], want.expand(6, -1))  # not 0..N-7: distances across the gap stay true
    assert model.student.encoder.alibi.scale.grad is not None and torch.isfinite(out["loss"])
