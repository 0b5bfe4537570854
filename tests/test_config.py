import pytest

from data2vec.config import Config, build_config, recipe_names
from data2vec.errors import Data2VecError


def test_shipped_recipes_load():
    assert {"image-tiny", "image-base", "image-large"} <= set(recipe_names())
    for name in recipe_names():
        cfg = build_config(name)
        assert isinstance(cfg, Config) and cfg.name == name


def test_image_base_follows_the_paper():
    cfg = build_config("image-base")
    assert (cfg.model.dim, cfg.model.depth, cfg.objective.top_k) == (768, 12, 6)
    assert cfg.objective.loss_beta == 2.0 and cfg.objective.ema_end == 0.9998
    assert round(cfg.masking.ratio * 196) == 120  # Meta's data2vec_vision: --num_mask_patches 120


def test_recipes_mask_with_fairseqs_released_settings():
    """mask_prob_adjust of fairseq's v2 recipes (base_images_only_task.yaml 0.07, base_audio_only_task.yaml 0.05)
    and require_same_masks of its v1 speech recipe (base_librispeech.yaml)."""
    image, audio = build_config("image-base-v2").masking, build_config("audio-base-v2").masking
    assert (image.ratio, image.inverse, image.block_size, image.prob_adjust) == (0.8, True, 3, 0.07)
    assert (audio.span_prob, audio.span_length, audio.prob_adjust) == (0.5, 5, 0.05)
    assert build_config("audio-base").masking.same_count and build_config("image-base").masking.prob_adjust == 0.0
    with pytest.raises(Data2VecError, match="masking.prob_adjust"):
        build_config("image-base-v2", ["masking.prob_adjust=-0.1"])


def test_overrides_are_typed():
    cfg = build_config("image-tiny", ["train.lr=3e-4", "train.max_steps=7", "model.norm_first=false", "out=x/y"])
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)
    assert cfg.train.max_steps == 7 and cfg.model.norm_first is False and cfg.out == "x/y"


def test_unknown_key_names_key_and_choices():
    with pytest.raises(Data2VecError) as err:
        build_config("image-tiny", ["train.lrr=1"])
    assert "train.lrr" in str(err.value) and "lr" in str(err.value) and "\n" not in str(err.value)


def test_unknown_section():
    with pytest.raises(Data2VecError, match="unknown config key 'trian'"):
        build_config("image-tiny", ["trian.lr=1"])


def test_ill_typed_value_rejected():
    with pytest.raises(Data2VecError, match="train.max_steps.*integer"):
        build_config("image-tiny", ["train.max_steps=abc"])
    with pytest.raises(Data2VecError, match="must be one of"):
        build_config("image-tiny", ["objective.per_layer_norm=batch"])


def test_unknown_recipe_lists_choices():
    with pytest.raises(Data2VecError, match="image-tiny"):
        build_config("imgae-tiny")


def test_recipe_by_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  depth: 2\ntrain:\n  lr: 0.5\n")
    cfg = build_config(str(path))
    assert cfg.model.depth == 2 and cfg.train.lr == 0.5 and cfg.name == "mine"


def test_malformed_override():
    with pytest.raises(Data2VecError, match="key=value"):
        build_config("image-tiny", ["train.lr"])


@pytest.mark.parametrize("override,key", [("model.layer_drop=1.0", "model.layer_drop"),
                                          ("model.layer_drop=-0.1", "model.layer_drop"),
                                          ("objective.teacher_window=-1", "objective.teacher_window"),
                                          ("objective.head_layers=0", "objective.head_layers")])
def test_out_of_range_values_name_the_key(override, key):
    with pytest.raises(Data2VecError, match=key.replace(".", r"\.")) as err:
        build_config("audio-tiny", [override])
    assert "\n" not in str(err.value)


def test_finetune_layer_drop_is_checked():
    with pytest.raises(Data2VecError, match=r"finetune\.layer_drop"):
        build_config("audio-tiny-ctc", ["finetune.layer_drop=1.5"])


def test_alibi_is_for_sequences():
    with pytest.raises(Data2VecError, match=r"model\.alibi"):
        build_config("image-tiny-v2", ["model.alibi=true"])
    assert build_config("audio-tiny-v2", ["model.alibi=true"]).model.alibi


@pytest.mark.parametrize("recipe,overrides,key", [
    ("image-tiny", ["model.dim=30", "model.heads=4"], "model.heads"),
    ("image-tiny", ["image.image_size=30", "image.patch_size=4"], "image.image_size"),
    ("image-tiny", ["model.dim=18", "model.heads=2", "image.pos_embed=sincos"], "model.dim"),
    ("audio-tiny", ["audio.conv_dim=[8,8]"], "audio.conv_dim"),
    ("audio-tiny", ["model.dim=32", "model.heads=4", "audio.pos_conv_groups=5"], "audio.pos_conv_groups"),
])
def test_sizes_the_modules_need_are_checked_when_the_config_is_built(recipe, overrides, key):
    """Mistakes that used to surface as a ValueError at the first forward stop the build with one line."""
    with pytest.raises(Data2VecError) as err:
        build_config(recipe, overrides)
    assert f"'{key}'" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("recipe,overrides,key", [
    ("image-tiny", ["objective.top_k=9"], "objective.top_k"),
    ("image-tiny-v2", ["image.rel_pos_bias=shared"], "image.rel_pos_bias"),
    ("image-tiny-v2", ["objective.decoder_dim=30"], "objective.decoder_groups"),
    ("text-tiny", ["objective.ema_scope=context"], "objective.ema_scope"),
])
def test_what_the_objective_asks_of_the_model_is_checked_before_pretraining(recipe, overrides, key, tmp_path):
    from data2vec.cli import main
    from data2vec.config import check_pretraining

    cfg = build_config(recipe, overrides)  # a fine-tuning config may pair this objective with another model
    with pytest.raises(Data2VecError, match=key.replace(".", r"\.")):
        check_pretraining(cfg)
    assert main(["pretrain", recipe, *overrides, f"out={tmp_path / 'run'}", "--no-progress"]) == 2
    assert not (tmp_path / "run").exists()
