"""Layer-wise learning-rate decay: each parameter's rate against the formula lr x decay^(depth + 1 - layer); the
learning-rate schedules against Meta's (data2vec_vision's cosine, fairseq's tri-stage) re-written in float64."""

import pytest
import torch

from data2vec.config import build_config
from data2vec.finetuning.classifier import Classifier, new_head
from data2vec.model import Data2VecEncoder
from data2vec.train.optim import layer_decay_groups, layer_id, set_lr


def tiny_classifier(*extra):
    cfg = build_config("image-tiny", ["model.dim=16", "model.depth=3", "model.heads=2", "image.image_size=8",
                                      "image.patch_size=4", "image.pool_norm=true", *extra])
    return Classifier(Data2VecEncoder(cfg), new_head("linear", 16, ["a", "b"], 0.0)), cfg


def test_layer_ids_follow_beit_numbering():
    depth = 12
    assert layer_id("frontend.patch_embed.weight", depth) == 0
    assert layer_id("frontend.cls_token", depth) == 0
    assert layer_id("frontend.word_embeddings.weight", depth) == 0
    assert layer_id("encoder.blocks.0.attn.qkv.weight", depth) == 1
    assert layer_id("encoder.blocks.11.mlp.fc2.bias", depth) == 12
    assert layer_id("encoder.norm.weight", depth) == 13
    assert layer_id("frontend.pool_norm.weight", depth) == 13  # the pooler norm sits above the blocks
    assert layer_id("head.fc.weight", depth) == 13
    assert layer_id("frontend.rel_pos.0.table", depth) == 13  # shared bias: BEiT puts it at the top
    assert layer_id("frontend.rel_pos.4.table", depth, per_layer_rel_pos=True) == 5


def test_each_parameter_gets_lr_times_decay_to_its_distance_from_the_head():
    model, cfg = tiny_classifier()
    lr, decay, depth = 1e-3, 0.5, cfg.model.depth
    optimizer = torch.optim.AdamW(layer_decay_groups(model.named_for_decay(), 0.05, depth, decay), lr=lr)
    set_lr(optimizer, lr)
    rate = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    expected = {  # written out by hand for depth 3: embeddings 0.5^4, block i 0.5^(3 - i), above the blocks 1
        "encoder.frontend.patch_embed.weight": lr * 0.0625, "encoder.frontend.cls_token": lr * 0.0625,
        "encoder.encoder.blocks.0.attn.qkv.weight": lr * 0.125, "encoder.encoder.blocks.1.norm1.weight": lr * 0.25,
        "encoder.encoder.blocks.2.mlp.fc1.weight": lr * 0.5, "encoder.frontend.pool_norm.weight": lr,
        "head.fc.weight": lr, "head.fc.bias": lr}
    params = dict(model.named_parameters())
    for name, want in expected.items():
        assert rate[id(params[name])] == pytest.approx(want), name
    trained = [n for n, p in params.items() if n != "encoder.frontend.mask_token"]  # classifying never masks
    assert sorted(trained) == sorted(n for n, p in params.items() if id(p) in rate)


def test_weight_decay_only_on_matrices_and_one_decay_keeps_every_rate():
    model, cfg = tiny_classifier()
    groups = layer_decay_groups(model.named_for_decay(), 0.05, cfg.model.depth, 1.0)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert all(g["lr_scale"] == 1.0 for g in groups)
    for name, p in model.named_parameters():
        matrix = p.ndim > 1 and not name.endswith(("cls_token", "mask_token"))
        assert (id(p) in decayed) == matrix, name


def test_set_lr_without_scale_is_unchanged_for_pretraining_groups():
    p = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([{"params": [p]}], lr=1.0)
    set_lr(optimizer, 3e-4)
    assert optimizer.param_groups[0]["lr"] == 3e-4


def _meta_no_decay(name: str, shape: tuple[int, ...]) -> bool:
    """Meta's data2vec_vision rule, written out from `optim_factory.get_parameter_groups` and
    `VisionTransformerForCyclicalTraining.no_weight_decay()`: 1-D, a ".bias" name, or a whole name in the set."""
    return len(shape) == 1 or name.endswith(".bias") or name in {"pos_embed", "cls_token"}


def test_beit_rule_decays_what_data2vec_visions_optimiser_decays():
    """Every trainable parameter of Meta's v1 image model (named as in the data2vec_vision fixture, whose
    gradients cover them all) is decayed under `train.no_decay=beit` exactly when Meta's optimiser decays it:
    the mask token and the relative position table are, the CLS token and 1-D tensors are not."""
    import json
    from pathlib import Path

    from data2vec.interop.fairseq import weights as fm
    from safetensors.torch import load_file

    from data2vec.model import Data2Vec
    from data2vec.train.optim import param_groups

    folder = Path(__file__).parent / "fixtures" / "fairseq"
    meta = json.loads((folder / "v1_image.json").read_text())
    grads = fm.sub(load_file(str(folder / "v1_image.safetensors")), "out.grad.")
    theirs = {n: not _meta_no_decay(n, tuple(g.shape)) for n, g in grads.items()}
    assert not theirs["cls_token"] and theirs["mask_token"] and theirs["rel_pos_bias.relative_position_bias_table"]
    index = {n: torch.tensor(float(i)) for i, n in enumerate(theirs)}  # carry each name through the mapping
    names = list(theirs)
    mapped = {f"student.{k}": theirs[names[int(v)]] for k, v in fm.beit_cyclical(index, 3).items()}
    mapped.update({"head.weight": theirs["lm_head.weight"], "head.bias": theirs["lm_head.bias"]})
    model = Data2Vec(build_config(meta["recipe"], [*meta["overrides"], "train.no_decay=beit"]))
    named = model.trainable_parameters()
    decayed = {id(p) for p in param_groups(named, 0.05, "beit")[0]["params"]}
    ours = {n: id(p) in decayed for n, p in named if p.requires_grad}
    assert ours == mapped
    tokens = {id(p) for p in param_groups(named, 0.05, "tokens")[0]["params"]}
    assert {n for n, p in named if id(p) in decayed and id(p) not in tokens} == {
        "student.frontend.mask_token", "student.frontend.rel_pos.0.table"}


def test_no_decay_rules_none_and_fairseq_v2():
    """`none` (fairseq's plain adam) decays every parameter, 1-D ones too; `fairseq_v2` spares 1-D tensors,
    biases and ALiBi scales only, so tokens and positions are decayed."""
    from data2vec.train.optim import _decayed

    vec, mat = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(1, 1, 4))
    assert _decayed("encoder.norm.weight", vec, "none") and _decayed("frontend.cls_token", mat, "none")
    assert not _decayed("encoder.norm.weight", vec, "fairseq_v2")
    assert _decayed("frontend.cls_token", mat, "fairseq_v2") and _decayed("frontend.mask_token", mat, "beit")
    assert not _decayed("encoder.blocks.0.attn.alibi_scale", mat, "fairseq_v2")
    assert not _decayed("frontend.cls_token", mat, "tokens") and not _decayed("frontend.cls_token", mat, "beit")


def test_build_optimizer_follows_train_no_decay():
    from data2vec.model import Data2Vec
    from data2vec.train.optim import build_optimizer

    cfg = build_config("image-tiny", ["model.dim=16", "model.depth=2", "model.heads=2", "image.image_size=8",
                                      "image.patch_size=4", "train.no_decay=beit"])
    model = Data2Vec(cfg)
    groups = build_optimizer(model.trainable_parameters(), cfg.train).param_groups
    assert any(p is model.student.frontend.mask_token for p in groups[0]["params"])
    assert groups[0]["weight_decay"] == cfg.train.weight_decay and groups[1]["weight_decay"] == 0.0


def _meta_cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs):
    """Meta's data2vec_vision `utils.cosine_scheduler` (start_warmup_value=0, warmup_steps=-1), re-written in
    float64 numpy: one value per update, warm-up in whole epochs of updates."""
    import math

    import numpy as np

    warmup_iters = warmup_epochs * niter_per_ep
    warmup = np.linspace(0.0, base_value, warmup_iters) if warmup_epochs > 0 else np.array([])
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    cosine = np.array([final_value + 0.5 * (base_value - final_value) * (1 + math.cos(math.pi * i / len(iters)))
                       for i in iters])
    return np.concatenate((warmup, cosine))


@pytest.mark.parametrize("recipe,epochs,per_epoch,warmup_epochs", [
    ("image-base", 800, 625, 10),  # README: --epochs 800 --warmup_epochs 10, 1,281,167 // 128 // 16 = 625 updates
    ("image-large", 800, 312, 80),  # ViT-L: --warmup_epochs 80, 1,281,167 // 64 // 64 = 312 updates
    (None, 6, 7, 2),  # a small case, every step
])
def test_beit_warmup_is_data2vec_visions_schedule(recipe, epochs, per_epoch, warmup_epochs):
    from data2vec.train.optim import lr_at

    if recipe:
        tc = build_config(recipe).train
        assert tc.warmup == "beit"
    else:
        tc = build_config("image-tiny", ["train.warmup=beit", "train.lr=2e-3", "train.min_lr=1e-5"]).train
        tc.max_steps, tc.warmup_steps = epochs * per_epoch, warmup_epochs * per_epoch
    want = _meta_cosine_scheduler(tc.lr, tc.min_lr, epochs, per_epoch, warmup_epochs)
    assert len(want) == tc.max_steps and tc.warmup_steps == warmup_epochs * per_epoch
    steps = range(tc.max_steps) if tc.max_steps < 1000 else sorted(
        {*range(12), *range(tc.warmup_steps - 3, tc.warmup_steps + 3), *range(0, tc.max_steps, 997),
         tc.max_steps - 1})
    ours = [lr_at(s, tc) for s in steps]
    assert ours[0] == 0.0
    assert max(abs(o - want[s]) for o, s in zip(ours, steps)) < 1e-15
    tc.warmup = "linear"  # this library's warm-up starts at lr / W: off by one step from Meta's
    assert lr_at(0, tc) == pytest.approx(tc.lr / tc.warmup_steps) and lr_at(0, tc) != want[0]


class _FairseqTriStage:
    """fairseq's `TriStageLRSchedule` (fairseq/optim/lr_scheduler/tri_stage_lr_scheduler.py) with `phase_ratio`,
    re-written here in float64 with its own stage logic: `step_update(n)` is the rate fairseq's trainer sets
    after n updates, i.e. the rate of the update with 0-based index n."""

    def __init__(self, lr, max_update, phase_ratio, init_lr_scale, final_lr_scale):
        import math

        self.peak, self.init, self.final = lr, init_lr_scale * lr, final_lr_scale * lr
        self.w, self.h, self.d = (int(max_update * r) for r in phase_ratio)
        self.rate = (self.peak - self.init) / self.w if self.w else 0.0
        self.factor = -math.log(final_lr_scale) / self.d

    def step_update(self, n):
        import math

        if n < self.w:
            return self.init + self.rate * n
        if n < self.w + self.h:
            return self.peak
        if n <= self.w + self.h + self.d:
            return self.peak * math.exp(-self.factor * (n - self.w - self.h))
        return self.final


@pytest.mark.parametrize("recipe,overrides", [
    ("audio-base", []),  # data2vec v1 speech pretraining: 400k updates, [0.03, 0.9, 0.07], scales 0.01
    ("audio-base-ctc", []),  # wav2vec 2.0 base_10h: 20k updates, [0.1, 0.4, 0.5], final scale 0.05
    ("audio-tiny", ["train.schedule=tri_stage", "train.max_steps=7", "train.phase_ratio=[0.1,0.4,0.5]"]),  # 0, 2, 3
    ("audio-tiny", ["train.schedule=tri_stage", "train.max_steps=50", "train.phase_ratio=[0.3,0.3,0.4]",
                    "train.init_lr_scale=0.0", "train.final_lr_scale=0.2", "train.lr=1e-3"]),
])
def test_tri_stage_is_fairseqs_schedule(recipe, overrides):
    from data2vec.train.optim import lr_at, tri_stage_steps

    tc = build_config(recipe, overrides).train
    assert tc.schedule == "tri_stage"
    ref = _FairseqTriStage(tc.lr, tc.max_steps, tc.phase_ratio, tc.init_lr_scale, tc.final_lr_scale)
    assert tri_stage_steps(tc) == (ref.w, ref.h, ref.d)
    edges = [0, ref.w, ref.w + ref.h, ref.w + ref.h + ref.d, tc.max_steps]
    steps = sorted({s + k for s in edges for k in (-2, -1, 0, 1, 2) if 0 <= s + k < tc.max_steps + 3}
                   | set(range(0, tc.max_steps, max(tc.max_steps // 400, 1))))
    for s in steps:
        assert lr_at(s, tc) == ref.step_update(s), s  # fairseq's order of operations: equal bit for bit
    # the shape itself, from the recipe's numbers: start, peak held, end of decay, then constant
    assert lr_at(0, tc) == pytest.approx(tc.init_lr_scale * tc.lr if ref.w else tc.lr, rel=1e-12)
    if ref.h:
        assert lr_at(ref.w + ref.h - 1, tc) == tc.lr
    assert lr_at(tc.max_steps + 5, tc) == pytest.approx(tc.final_lr_scale * tc.lr, rel=1e-12)


def test_tri_stage_recipes_follow_meta_and_tiny_recipes_keep_cosine():
    from data2vec.config import recipe_names

    want = {"audio-base": ([0.03, 0.9, 0.07], 0.01, 0.01), "audio-large": ([0.03, 0.9, 0.07], 0.01, 0.01),
            "audio-base-ctc": ([0.1, 0.4, 0.5], 0.01, 0.05)}
    for name in recipe_names():
        tc = build_config(name).train
        if name in want:
            assert (tc.schedule, (tc.phase_ratio, tc.init_lr_scale, tc.final_lr_scale)) == ("tri_stage", want[name])
        else:  # image / text recipes, data2vec 2.0 speech (fairseq's cosine) and the measured tiny recipes
            assert tc.schedule == "cosine", name


@pytest.mark.parametrize("overrides,key", [
    (["train.schedule=tri_stage"], "train.phase_ratio"),  # no phase ratio given
    (["train.schedule=tri_stage", "train.phase_ratio=[0.1,0.4,0.4]"], "train.phase_ratio"),  # sums to 0.9
    (["train.schedule=tri_stage", "train.phase_ratio=[0.5,0.5]"], "train.phase_ratio"),
    (["train.schedule=tri_stage", "train.phase_ratio=[1.2,0.3,-0.5]"], "train.phase_ratio"),
    (["train.schedule=tri_stage", "train.phase_ratio=[0.1,0.4,0.5]", "train.final_lr_scale=0"],
     "train.final_lr_scale"),
    (["train.schedule=tri_stage", "train.phase_ratio=[0.1,0.4,0.5]", "train.init_lr_scale=-1"],
     "train.init_lr_scale"),
    (["train.schedule=step"], "train.schedule"),
])
def test_bad_tri_stage_settings_are_one_line_config_errors(overrides, key):
    from data2vec.errors import Data2VecError

    with pytest.raises(Data2VecError, match=f"'{key}'") as err:
        build_config("audio-tiny", overrides)
    assert "\n" not in str(err.value)
    build_config("audio-tiny", ["train.phase_ratio=[0.5,0.5]"])  # unused by the cosine schedule: not checked
