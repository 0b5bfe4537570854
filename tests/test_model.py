import torch

from data2vec.config import build_config
from data2vec.model import Data2Vec, Data2VecEncoder, regression_head

TINY = ["model.dim=32", "model.depth=3", "model.heads=2", "image.image_size=16", "image.patch_size=4",
        "objective.top_k=2", "masking.min_block=2"]


def tiny_cfg(*extra):
    return build_config("image-tiny", TINY + list(extra))


def test_encoder_output_layout():
    cfg = tiny_cfg()
    enc = Data2VecEncoder(cfg).eval()
    out = enc(torch.randn(2, 3, 16, 16))
    assert out.last_hidden_state.shape == (2, 17, 32)  # CLS + 4x4 patches
    assert len(out.hidden_states) == 4 and len(out.layer_results) == 3
    assert enc.embed(torch.randn(2, 3, 16, 16)).shape == (2, 32)


def test_mask_token_replaces_masked_patches_only():
    cfg = tiny_cfg("model.depth=1")
    enc = Data2VecEncoder(cfg).eval()
    images = torch.randn(1, 3, 16, 16)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, 5] = True
    x_plain, _, _ = enc.frontend(images)
    x_masked, _, _ = enc.frontend(images, mask)
    changed = (x_plain != x_masked).any(-1)[0]
    assert changed.tolist() == [i == 6 for i in range(17)]  # patch 5 sits after the CLS token


def test_step_trains_student_not_teacher():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = Data2Vec(cfg).train()
    assert not model.teacher.training
    images = torch.randn(4, 3, 16, 16)
    mask = torch.rand(4, 16) < 0.5
    out = model(images, mask)
    out["loss"].backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert model.head.weight.grad is not None and model.student.frontend.mask_token.grad is not None
    assert torch.isfinite(out["loss"]) and out["target_var"] > 0


def test_targets_ignore_the_mask():
    cfg = tiny_cfg()
    model = Data2Vec(cfg)
    images = torch.randn(2, 3, 16, 16)
    t1 = model.targets(images)
    assert t1.shape == (2, 16, 32)
    # final layer norm: each target vector has zero mean and unit variance
    torch.testing.assert_close(t1.mean(-1), torch.zeros(2, 16), atol=1e-5, rtol=0)


def test_ema_scope_encoder_copies_frontend_and_averages_blocks():
    cfg = tiny_cfg("objective.ema_scope=encoder")
    model = Data2Vec(cfg)
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1.0)
    before = {n: p.clone() for n, p in model.teacher.named_parameters()}
    model.update_teacher(0.75)
    for n, p in model.teacher.named_parameters():
        s = dict(model.student.named_parameters())[n]
        want = s if n.startswith("frontend.") else 0.75 * before[n] + 0.25 * s
        torch.testing.assert_close(p, want)


def test_ema_scope_all_averages_frontend_too():
    cfg = tiny_cfg("objective.ema_scope=all")
    model = Data2Vec(cfg)
    with torch.no_grad():
        model.student.frontend.patch_embed.weight.add_(1.0)
    before = model.teacher.frontend.patch_embed.weight.clone()
    model.update_teacher(0.5)
    torch.testing.assert_close(model.teacher.frontend.patch_embed.weight,
                               0.5 * before + 0.5 * model.student.frontend.patch_embed.weight)


def test_two_layer_regression_head_matches_its_formula():
    """objective.head_layers=2 (the text reference): Linear(D, 2D) -> GELU -> Linear(2D, D) on the student's
    output, checked against the same maps written out in float64."""
    import pytest

    torch.manual_seed(0)
    cfg = tiny_cfg("objective.head_layers=2")
    model = Data2Vec(cfg)
    first, last = model.head[0], model.head[2]
    assert first.weight.shape == (64, 32) and last.weight.shape == (32, 64)
    x = torch.randn(5, 32)
    w1, b1, w2, b2 = (t.double() for t in (first.weight, first.bias, last.weight, last.bias))
    h = x.double() @ w1.T + b1
    expected = (0.5 * h * (1 + torch.erf(h / 2 ** 0.5))) @ w2.T + b2
    torch.testing.assert_close(model.head(x).double(), expected, rtol=1e-5, atol=1e-6)
    model(torch.randn(2, 3, 16, 16), torch.rand(2, 16) < 0.5)["loss"].backward()
    assert first.weight.grad is not None
    with pytest.raises(ValueError, match="head_layers"):  # build_config refuses it first (test_config.py)
        regression_head(32, 0)


def test_dense_loss_without_a_gather_equals_the_gathered_one():
    """The sync-free v1 loss (head on every position, weighted by the mask; the default on CUDA) gives the
    loss, gradients and variances of the boolean-gather loss (the default on CPU)."""
    torch.manual_seed(0)
    model = Data2Vec(tiny_cfg("objective.head_layers=2")).train()
    images, mask = torch.randn(3, 3, 16, 16), torch.rand(3, 16) < 0.4
    results = []
    for dense in (False, True):
        model.zero_grad()
        model.dense_loss = dense
        out = model(images, mask)
        out["loss"].backward()
        results.append((out, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}))
    (gathered, g1), (dense, g2) = results
    for key in ("loss", "target_var", "pred_var"):
        torch.testing.assert_close(dense[key], gathered[key], rtol=1e-5, atol=1e-7)
    assert g1.keys() == g2.keys()
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], rtol=1e-4, atol=1e-8)
    none = torch.zeros(3, 16, dtype=torch.bool)  # nothing masked: a zero loss, no NaN
    assert float(model(images, none)["loss"].detach()) == 0.0


def test_layer_drop_spares_the_teacher_and_its_targets():
    cfg = build_config("audio-tiny", ["model.layer_drop=0.9", "model.depth=3", "objective.top_k=3"])
    torch.manual_seed(0)
    model = Data2Vec(cfg).train()
    runs = {"student": 0, "teacher": 0}
    for name in ("student", "teacher"):
        for block in getattr(model, name).encoder.blocks:
            block.register_forward_hook(lambda mod, args, out, name=name: runs.__setitem__(name, runs[name] + 1))
    wave = torch.randn(2, 4000)
    mask = torch.rand(2, 12) < 0.5
    for _ in range(5):
        model(wave, mask)["loss"].backward()
    assert runs["teacher"] == 5 * 3 and runs["student"] < 5 * 3  # top-3 targets of all 3 teacher blocks


SPEECH = ["audio.conv_dim=[16,16,16,16,16,16,16]", "model.dim=32", "model.heads=4", "model.depth=2",
          "objective.top_k=2", "audio.pos_conv_groups=4", "audio.pos_conv_kernel=5"]


def _fairseq_ema_rule(name: str, scope: str) -> str:
    """What fairseq's teacher does with each of our speech parameters, from its code: v1 (`data2vec_audio.py`,
    ema_transformer_only + ema_layers_only) averages the Transformer, whose `layer_norm` is our front-end's norm
    after the positional convs, copies `pos_conv` (skip_keys) and has no feature encoder (the student's
    features are used); v2 (`data2vec2.py`, ema_local_encoder: false) averages the positional encoder and the
    context encoder's norm too. "copy": the teacher holds the student's value."""
    if not name.startswith("frontend."):
        return "average"
    if name.startswith("frontend.layer_norm."):
        return "average"
    if name.startswith("frontend.pos_conv_embed."):
        return "average" if scope == "context" else "copy"
    return "copy"


def test_speech_ema_scopes_follow_fairseq():
    for scope in ("layers", "context"):
        model = Data2Vec(build_config("audio-tiny", SPEECH + [f"objective.ema_scope={scope}"]))
        with torch.no_grad():
            for p in model.student.parameters():
                p.add_(1.0)
        before = {n: p.clone() for n, p in model.teacher.named_parameters()}
        model.update_teacher(0.75)
        student = dict(model.student.named_parameters())
        rules = set()
        for n, p in model.teacher.named_parameters():
            rule = _fairseq_ema_rule(n, scope)
            rules.add((n.split(".")[1] if n.startswith("frontend.") else "encoder", rule))
            want = student[n] if rule == "copy" else 0.75 * before[n] + 0.25 * student[n]
            torch.testing.assert_close(p, want, msg=f"{scope}: {n}")
        assert ("layer_norm", "average") in rules and ("feature_extractor", "copy") in rules


def test_speech_v1_teacher_adds_its_own_positions_and_norm_to_the_students_features():
    """fairseq v1: the teacher's Transformer (its averaged norm after the positional conv included) runs on the
    student's features before dropout. With the teacher's norm away from the student's, the step's targets
    are the teacher's own pass on the clean input, not what the student's norm would give."""
    torch.manual_seed(0)
    model = Data2Vec(build_config("audio-tiny", SPEECH + ["objective.ema_scope=layers",
                                                         "audio.feature_dropout=0.5"])).train()
    with torch.no_grad():
        for p in model.teacher.frontend.layer_norm.parameters():
            p.add_(torch.randn_like(p))
    waves = torch.randn(2, 4000)
    mask = torch.rand(2, 12, generator=torch.Generator().manual_seed(1)) < 0.5
    captured, calls = {}, []
    real = model.targets
    model.targets = lambda *a: captured.setdefault("t", real(*a))
    model.teacher.frontend.feature_extractor.register_forward_pre_hook(lambda m, a: calls.append(1))
    model(waves, mask)["loss"].backward()
    assert calls == []  # one conv feature encoder pass: the student's, with dropout after the teacher's copy
    torch.testing.assert_close(captured["t"], real(waves), rtol=1e-6, atol=1e-6)
    assert (real(waves, None, model.student.frontend.eval()(waves)) - captured["t"]).abs().max() > 1e-3


def test_front_end_splitting_ema_scopes_are_for_speech_only():
    import pytest

    from data2vec.errors import Data2VecError

    with pytest.raises(Data2VecError, match="ema_scope=layers"):
        Data2Vec(tiny_cfg("objective.ema_scope=layers"))


def _teacher_dtypes(model, *args):
    """The dtypes of what each teacher block's FFN outputs during one step under a CPU bf16
    autocast (the residual stream stays float32 either way), and the loss."""
    seen = []
    hooks = [b.mlp.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
             for b in model.teacher.encoder.blocks]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(*args)["loss"]
    for h in hooks:
        h.remove()
    return seen, loss


def test_teacher_precision_fp32_runs_the_teacher_outside_the_steps_autocast():
    """Meta's data2vec_vision computes the targets in float32 before entering the autocast; with
    `objective.teacher_precision=fp32` our teacher does too (every block's output float32, the targets those of
    a plain float32 pass), while the student still runs in bf16. "step" (fairseq: teacher in the model's dtype)
    runs the teacher in bf16."""
    torch.manual_seed(0)
    images = torch.randn(2, 3, 16, 16)
    mask = torch.rand(2, 16, generator=torch.Generator().manual_seed(1)) < 0.5
    model = Data2Vec(tiny_cfg("objective.teacher_precision=fp32")).train()
    student = []
    model.student.encoder.blocks[0].mlp.register_forward_hook(lambda m, a, out: student.append(out.dtype))
    seen, _ = _teacher_dtypes(model, images, mask)
    assert seen == [torch.float32] * 3 and student == [torch.bfloat16]
    captured = {}
    real = model.targets
    model.targets = lambda *a: captured.setdefault("t", real(*a))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(images, mask)
    torch.testing.assert_close(captured["t"], real(images), rtol=0, atol=0)  # real(): no autocast at all
    model.cfg.objective.teacher_precision = "step"
    seen, _ = _teacher_dtypes(model, images, mask)
    assert seen == [torch.bfloat16] * 3


def test_teacher_precision_fp32_makes_the_teachers_own_pass_in_speech_and_v2():
    """Where the teacher would start from the student's (bf16) features, fp32 has it embed the input itself."""
    speech = Data2Vec(build_config("audio-tiny", SPEECH + ["objective.ema_scope=layers",
                                                          "objective.teacher_precision=fp32"]))
    assert not speech.shares_local_features()
    image = Data2Vec(build_config("image-tiny-v2", ["objective.ema_scope=encoder",
                                                    "objective.teacher_precision=fp32"]))
    assert not image.shares_frontend_output()


def test_teacher_window_limits_each_targets_context_to_depth_times_window():
    """A target at position i depends on the front-end output at j only when |i - j| <= depth x window."""
    torch.manual_seed(0)
    depth, window, T = 3, 1, 12
    cfg = build_config("text-tiny", [f"model.depth={depth}", "objective.top_k=1", f"objective.teacher_window={window}",
                                     "text.vocab_size=64", "text.mask_id=4"])
    model = Data2Vec(cfg).eval()
    tokens = torch.randint(5, 64, (1, T))
    x, bias, padding = model.teacher.frontend(tokens)
    bumped = x.clone()
    bumped[:, 0] += 1.0
    moved = (model.targets(tokens, None, (bumped, bias, padding)) - model.targets(tokens, None, (x, bias, padding)))
    moved = moved.abs().amax(-1)[0]  # [T]
    assert (moved[: depth * window + 1] > 0).all() and (moved[depth * window + 1:] == 0).all()
    cfg.objective.teacher_window = 0  # the whole input: every target moves
    assert ((model.targets(tokens, None, (bumped, bias, padding)) - model.targets(tokens, None, (x, bias, padding)))
            .abs().amax(-1) > 1e-4).all()


def test_teacher_window_wider_than_the_input_changes_nothing():
    torch.manual_seed(0)
    model = Data2Vec(build_config("text-tiny", ["model.depth=2", "objective.top_k=2", "text.vocab_size=64",
                                                "text.mask_id=4"])).eval()
    tokens = torch.randint(5, 64, (2, 10))
    full = model.targets(tokens)
    model.cfg.objective.teacher_window = 9  # every token within 9 positions of every other
    torch.testing.assert_close(model.targets(tokens), full)
    model.cfg.objective.teacher_window = 1
    assert not torch.allclose(model.targets(tokens), full)


def test_attention_tap_targets_average_the_attention_outputs():
    torch.manual_seed(0)
    model = Data2Vec(tiny_cfg("objective.tap=attn", "objective.per_layer_norm=none", "objective.final_norm=none"))
    images = torch.randn(2, 3, 16, 16)
    taps = []
    for block in model.teacher.encoder.blocks:
        block.ls1.register_forward_hook(lambda mod, args, out: taps.append(out))
    targets = model.targets(images)
    torch.testing.assert_close(targets, (taps[-1] + taps[-2])[:, 1:] / 2)  # top 2, CLS dropped
