"""Hugging Face interop: tiny random `transformers` Data2Vec models (built from configs, never downloaded) are
converted, and every hidden state, the pooled output and the classifier logits must match ours."""

import json
import logging
import os
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

import data2vec  # noqa: E402
from data2vec.cli import main  # noqa: E402
from data2vec.config import build_config  # noqa: E402
from data2vec.errors import Data2VecError  # noqa: E402
from data2vec.interop.hf import from_hf, to_hf  # noqa: E402
from data2vec.model import Data2Vec  # noqa: E402
from data2vec.nn.heads import HEAD_FILE, LinearClassifier, SentenceClassifier, head_file, load_head  # noqa: E402
from data2vec.train.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from conftest import assert_student_round_trip, randomise as _randomise, save_hf as _save_hf  # noqa: E402

TOL = 1e-5
VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
              patch_size=8, num_labels=5, hidden_dropout_prob=0.0, drop_path_rate=0.0)
TEXT = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=20, type_vocab_size=1, layer_norm_eps=1e-5, num_labels=3)


def _hf_vision(kind: str, **options):
    cfg = transformers.Data2VecVisionConfig(**VISION, **options)
    cls = {"model": transformers.Data2VecVisionModel, "cls": transformers.Data2VecVisionForImageClassification}[kind]
    model = cls(cfg).eval()
    _randomise(model)
    return model


def _hf_text(kind: str, **options):
    cfg = transformers.Data2VecTextConfig(**{**TEXT, **options})
    cls = {"model": transformers.Data2VecTextModel, "cls": transformers.Data2VecTextForSequenceClassification,
           "mlm": transformers.Data2VecTextForMaskedLM}[kind]
    model = cls(cfg).eval()
    _randomise(model)
    return model


def _max_diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


def _text_batch(vocab: int = 100):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (3, 12), generator=g)
    padding = torch.zeros(3, 12, dtype=torch.bool)
    padding[1, 8:] = True
    padding[2, 3:] = True
    ids[:, 0] = 0
    ids[padding] = 1  # <pad>
    return ids, padding


VISION_CASES = [  # (HF class, options, weights file): the options the released checkpoints use
    ("cls", dict(use_relative_position_bias=True, use_mean_pooling=True), "safetensors"),  # fine-tuned -ft1k
    ("cls", dict(use_shared_relative_position_bias=True, use_mean_pooling=False), "bin"),
    ("model", dict(use_shared_relative_position_bias=True, use_mask_token=True), "safetensors"),  # pretrained base
    ("model", dict(use_absolute_position_embeddings=True, layer_scale_init_value=0.0, use_mean_pooling=False), "bin"),
]


@pytest.mark.parametrize("kind,options,fmt", VISION_CASES)
def test_vision_states_pooled_and_logits_match_hf(tmp_path, kind, options, fmt):
    hf = _hf_vision(kind, **options)
    _save_hf(hf, tmp_path / "hf", fmt)
    from_hf(tmp_path / "hf", tmp_path / "run")
    ours = data2vec.load(tmp_path / "run")
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    base = hf.data2vec_vision if kind == "cls" else hf
    with torch.no_grad():
        ref = base(images, output_hidden_states=True)
        out = ours(images)
        assert len(out.hidden_states) == len(ref.hidden_states) == 3
        assert _max_diff(out.hidden_states, ref.hidden_states) < TOL
        assert (out.last_hidden_state - ref.last_hidden_state).abs().max() < TOL
        if kind == "cls":  # the pooler (LayerNorm of the patch mean, or CLS) and the classifier
            assert (ours.embed(images) - ref.pooler_output).abs().max() < TOL
            head = load_head(tmp_path / "run")
            logits = head(out.last_hidden_state, ours.frontend.pool(out.last_hidden_state))
            assert (logits - hf(images).logits).abs().max() < TOL
            assert head.labels == [hf.config.id2label[i] for i in range(5)]
        else:
            assert load_head(tmp_path / "run") is None


@pytest.mark.parametrize("kind,fmt", [("model", "bin"), ("cls", "safetensors"), ("mlm", "safetensors")])
def test_text_states_and_logits_match_hf_on_padded_batch(tmp_path, caplog, kind, fmt):
    hf = _hf_text(kind)
    _save_hf(hf, tmp_path / "hf", fmt)
    with caplog.at_level(logging.WARNING, logger="data2vec"):
        from_hf(tmp_path / "hf", tmp_path / "run")
    dropped = {"model": "pooler.dense", "cls": None, "mlm": "lm_head"}[kind]
    if dropped:
        assert dropped in caplog.text
    ours = data2vec.load(tmp_path / "run")
    ids, padding = _text_batch()
    base = getattr(hf, "data2vec_text", hf)
    with torch.no_grad():
        ref = base(ids, attention_mask=(~padding).long(), output_hidden_states=True)
        out = ours(ids, padding_mask=padding)
        assert len(out.hidden_states) == len(ref.hidden_states) == 3
        assert _max_diff(out.hidden_states, ref.hidden_states) < TOL  # padded positions included
        if kind == "cls":
            head = load_head(tmp_path / "run")
            logits = head(out.last_hidden_state, ours.frontend.pool(out.last_hidden_state, padding))
            assert (logits - hf(ids, attention_mask=(~padding).long()).logits).abs().max() < TOL


def test_text_token_types_beyond_the_first_are_dropped_with_a_warning(tmp_path, caplog):
    hf = _hf_text("model", type_vocab_size=2)
    _save_hf(hf, tmp_path / "hf", "safetensors")
    with caplog.at_level(logging.WARNING, logger="data2vec"):
        from_hf(tmp_path / "hf", tmp_path / "run")
    assert "type_vocab_size=2" in caplog.text
    ids, padding = _text_batch()
    with torch.no_grad():  # HF's default (no token_type_ids) is type 0, which is what we keep
        ref = hf(ids, attention_mask=(~padding).long()).last_hidden_state
        assert (data2vec.load(tmp_path / "run")(ids, padding_mask=padding).last_hidden_state - ref).abs().max() < TOL


def _native_checkpoint(tmp_path, recipe: str, overrides: list[str], head=None):
    """A checkpoint of our own with random weights (and optionally a classifier), as pretraining writes it."""
    cfg = build_config(recipe, overrides)
    torch.manual_seed(0)
    model = Data2Vec(cfg)
    _randomise(model.student, seed=3)
    extra = {HEAD_FILE: head_file(head)} if head is not None else {}
    return save_checkpoint(tmp_path / "ours", 0, model.state_dict(), {"step": 0}, cfg, extra_files=extra)


IMAGE_SMALL = ["model.dim=32", "model.depth=2", "model.heads=4"]
TEXT_SMALL = ["model.dim=32", "model.depth=2", "model.heads=4", "text.vocab_size=100", "text.max_positions=20",
              "text.block_size=18", "objective.top_k=2"]


def _labelled(head):
    _randomise(head, seed=4)
    head.labels = ["cat", "dog", "fish"]
    return head


@pytest.mark.parametrize("recipe,overrides,head", [
    ("image-tiny", IMAGE_SMALL + ["image.pos_embed=learned", "image.rel_pos_bias=per_layer", "model.final_norm=false",
                                  "image.pool_norm=true"], LinearClassifier(32, 3)),
    ("image-tiny", IMAGE_SMALL + ["image.pos_embed=none", "image.rel_pos_bias=shared"], None),
    ("image-tiny", IMAGE_SMALL, None),  # sin-cos positions and mean pooling after the final norm: kept by config.json
    ("image-tiny", IMAGE_SMALL + ["image.sincos_order=yx"], None),  # the order of models saved before the key
    ("text-tiny", TEXT_SMALL, SentenceClassifier(32, 3, dropout=0.1)),
    ("text-tiny", TEXT_SMALL, None),
])
def test_round_trip_ours_hf_ours_is_identical(tmp_path, recipe, overrides, head):
    head = _labelled(head) if head is not None else None
    path = _native_checkpoint(tmp_path, recipe, overrides, head)
    to_hf(path, tmp_path / "hf")
    back = from_hf(tmp_path / "hf", tmp_path / "back")
    c1, c2 = assert_student_round_trip(path, back)
    assert c1.model == c2.model and c1.image == c2.image and c1.objective == c2.objective and c1.name == c2.name
    assert {k: v for k, v in vars(c1.text).items() if k != "mask_id"} == \
        {k: v for k, v in vars(c2.text).items() if k != "mask_id"}
    if head is not None:
        h2 = load_head(back)
        assert type(h2) is type(head) and h2.labels == head.labels and h2.dropout.p == head.dropout.p
        assert all(torch.equal(v, h2.state_dict()[k]) for k, v in head.state_dict().items())


@pytest.mark.parametrize("recipe,overrides,head", [
    ("image-tiny", IMAGE_SMALL, None),  # sin-cos positions, final norm, q/v biases
    ("image-tiny", IMAGE_SMALL + ["model.qkv_bias=all", "image.pool=cls"], LinearClassifier(32, 3)),
    ("text-tiny", TEXT_SMALL + ["model.qkv_bias=qv"], None),
    ("text-tiny", TEXT_SMALL, SentenceClassifier(32, 3)),
])
def test_to_hf_loads_in_transformers_without_missing_or_unexpected_weights(tmp_path, recipe, overrides, head):
    head = _labelled(head) if head is not None else None
    path = _native_checkpoint(tmp_path, recipe, overrides, head)
    to_hf(path, tmp_path / "hf")
    if head is None:
        auto = transformers.AutoModel
    elif recipe.startswith("image"):
        auto = transformers.AutoModelForImageClassification
    else:
        auto = transformers.AutoModelForSequenceClassification
    hf, info = auto.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    hf.eval()
    ours = data2vec.load(path)
    with torch.no_grad():
        if recipe.startswith("image"):
            inputs, padding = torch.randn(2, 3, 32, 32), None
            ref = hf(inputs, output_hidden_states=True)
        else:
            inputs, padding = _text_batch()
            ref = hf(inputs, attention_mask=(~padding).long(), output_hidden_states=True)
        out = ours(inputs, padding_mask=padding)
        assert _max_diff(out.hidden_states, ref.hidden_states) < TOL
        if head is None:
            assert (out.last_hidden_state - ref.last_hidden_state).abs().max() < TOL
        else:
            logits = head(out.last_hidden_state, ours.frontend.pool(out.last_hidden_state, padding))
            assert (logits - ref.logits).abs().max() < TOL
            assert hf.config.id2label == {0: "cat", 1: "dog", 2: "fish"}


def _edit_config(folder, **changes):
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("modality,changes,named", [
    ("vision", dict(hidden_act="relu"), "hidden_act"),
    ("vision", dict(use_relative_position_bias=True, use_shared_relative_position_bias=True),
     "use_relative_position_bias"),
    ("vision", dict(image_size=[32, 48]), "image_size"),
    ("text", dict(is_decoder=True), "is_decoder"),
    ("text", dict(position_embedding_type="relative_key"), "position_embedding_type"),
    ("text", dict(model_type="bert"), "bert"),
])
def test_unsupported_hf_option_is_an_error_naming_it(tmp_path, modality, changes, named):
    hf = _hf_vision("model") if modality == "vision" else _hf_text("model")
    _save_hf(hf, tmp_path / "hf", "safetensors")
    _edit_config(tmp_path / "hf", **changes)
    with pytest.raises(Data2VecError, match=named):
        from_hf(tmp_path / "hf", tmp_path / "run")


@pytest.mark.parametrize("recipe,overrides,named", [
    # what Data2VecVision cannot compute goes to the shipped model code (tests/test_hf_v2.py), which has no
    # relative position bias: the error names both
    ("image-tiny", IMAGE_SMALL + ["model.norm_first=false", "image.rel_pos_bias=shared"],
     "model.norm_first.*image.rel_pos_bias"),
    ("image-tiny", IMAGE_SMALL + ["image.cls_token=false", "image.rel_pos_bias=per_layer"], "image.cls_token"),
    ("image-tiny", IMAGE_SMALL + ["image.embed_norm=true", "image.rel_pos_bias=shared"], "image.embed_norm"),
    ("text-tiny", TEXT_SMALL + ["model.layer_scale=0.1"], "model.layer_scale"),
    ("text-tiny", TEXT_SMALL + ["text.embed_norm_eps=1e-6"], "text.embed_norm_eps"),
    ("text-tiny", TEXT_SMALL + ["model.alibi=true"], "model.alibi"),
])
def test_unexpressible_checkpoint_is_an_error_naming_the_key(tmp_path, recipe, overrides, named):
    path = _native_checkpoint(tmp_path, recipe, overrides)
    with pytest.raises(Data2VecError, match=named):
        to_hf(path, tmp_path / "hf")


def test_classifier_on_mean_without_pool_norm_cannot_be_exported_with_relative_positions(tmp_path):
    overrides = IMAGE_SMALL + ["model.final_norm=false", "image.rel_pos_bias=shared"]
    path = _native_checkpoint(tmp_path, "image-tiny", overrides, LinearClassifier(32, 2))
    with pytest.raises(Data2VecError, match="image.pool"):
        to_hf(path, tmp_path / "hf")


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp/data2vec-hf-pickle-ran")


def test_pickled_code_in_a_bin_file_is_refused(tmp_path):
    MARKER.unlink(missing_ok=True)
    _save_hf(_hf_vision("model"), tmp_path / "hf", "bin")
    torch.save({"w": torch.zeros(1), "evil": RunsCode()}, tmp_path / "hf" / "pytorch_model.bin")
    with pytest.raises(Data2VecError, match="refusing"):
        from_hf(tmp_path / "hf", tmp_path / "run")
    assert not MARKER.exists()


def test_converted_checkpoint_resumes_and_cli_converts_both_ways(tmp_path, capsys):
    _save_hf(_hf_vision("cls", use_shared_relative_position_bias=True), tmp_path / "hf", "safetensors")
    assert main(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 0
    weights, state, cfg = load_checkpoint(tmp_path / "run")
    # weights only (no optimiser or RNG state): `resume` starts it at step 0 with a fresh optimiser
    # (tests/test_harness.py); every weight of the full model is there
    Data2Vec(cfg).load_state_dict(weights, strict=True)
    assert state == {} and (tmp_path / "run" / "config.yaml").is_file()
    assert not (tmp_path / "run" / "checkpoints" / "step_00000000" / "state.pt").exists()
    assert main(["convert", "--to-hf", str(tmp_path / "run"), "--out", str(tmp_path / "back")]) == 0
    assert json.loads((tmp_path / "back" / "config.json").read_text())["architectures"] == \
        ["Data2VecVisionForImageClassification"]
    assert main(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 2  # not over a run
    assert main(["convert", "--from-hf", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "config.json" in capsys.readouterr().err
