"""Hugging Face interop for speech: tiny random `transformers` Data2VecAudio models (built from configs, never
downloaded) are converted, and every hidden state, the last hidden state and the head's logits must match
ours on a padded batch of two utterances of different lengths."""

import json
import logging

import pytest
import torch

transformers = pytest.importorskip("transformers")

import data2vec  # noqa: E402
from data2vec.cli import main  # noqa: E402
from data2vec.config import build_config  # noqa: E402
from data2vec.errors import Data2VecError  # noqa: E402
from data2vec.interop.hf import from_hf, to_hf  # noqa: E402
from data2vec.model import Data2Vec  # noqa: E402
from data2vec.nn.heads import (HEAD_FILE, CTCHead, LinearClassifier, SentenceClassifier, head_file,  # noqa: E402
                                load_head)
from data2vec.train.checkpoint import save_checkpoint  # noqa: E402
from conftest import assert_student_round_trip, randomise as _randomise, save_hf as _save_hf  # noqa: E402

TOL = 1e-5
# 3 convs (receptive field 30 samples, 20 per frame), 3 positional conv layers of kernel 5 (odd) or 4 (even)
AUDIO = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=(8, 8, 8),
             conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2), num_conv_pos_embeddings=3, conv_pos_kernel_size=5,
             num_conv_pos_embedding_groups=4, vocab_size=6, num_labels=3)
VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", "E"]  # HF's CTC vocabulary layout: blank = <pad> = 0
SMALL = ["model.dim=32", "model.depth=2", "model.heads=4", "model.mlp_ratio=2.0", "objective.top_k=2",
         "audio.conv_dim=[8,8,8]", "audio.conv_kernel=[10,3,3]", "audio.conv_stride=[5,2,2]",
         "audio.pos_conv_layers=2", "audio.pos_conv_kernel=5", "audio.pos_conv_groups=4"]
HF_CLASSES = {"model": "Data2VecAudioModel", "ctc": "Data2VecAudioForCTC",
              "cls": "Data2VecAudioForSequenceClassification", "frame": "Data2VecAudioForAudioFrameClassification"}


def _hf_audio(kind: str, **options):
    model = getattr(transformers, HF_CLASSES[kind])(transformers.Data2VecAudioConfig(**{**AUDIO, **options})).eval()
    _randomise(model)
    return model


def _batch():
    """Two utterances, 1200 and 700 samples (59 and 34 frames), right-padded with zeros as HF's feature
    extractor pads them; padding True where HF's attention_mask is 0."""
    g = torch.Generator().manual_seed(2)
    waves = torch.randn(2, 1200, generator=g)
    padding = torch.zeros(2, 1200, dtype=torch.bool)
    padding[1, 700:] = True
    return waves.masked_fill(padding, 0.0), padding


def _max_diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


CASES = [  # (HF class, config options, weights file)
    ("model", {}, "safetensors"),  # pretrained base: facebook/data2vec-audio-base
    ("model", dict(conv_bias=True, mask_time_prob=0.0, conv_pos_kernel_size=4), "bin"),  # no masked_spec_embed
    ("ctc", {}, "safetensors"),  # fine-tuned: facebook/data2vec-audio-base-960h
    ("cls", {}, "bin"),
]


@pytest.mark.parametrize("kind,options,fmt", CASES)
def test_audio_states_and_logits_match_hf_on_padded_batch(tmp_path, kind, options, fmt):
    hf = _hf_audio(kind, **options)
    _save_hf(hf, tmp_path / "hf", fmt)
    if kind == "ctc":  # the tokenizer's vocabulary, as a downloaded CTC folder has it
        (tmp_path / "hf" / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(VOCAB)}))
    from_hf(tmp_path / "hf", tmp_path / "run")
    ours = data2vec.load(tmp_path / "run")
    assert ours.cfg.audio.pos_conv_zero_padding == "once"
    waves, padding = _batch()
    base = getattr(hf, "data2vec_audio", hf)
    with torch.no_grad():
        ref = base(waves, attention_mask=(~padding).long(), output_hidden_states=True)
        out = ours(waves, padding_mask=padding)
        assert out.padding_mask.sum(1).tolist() == [0, 25]
        assert len(out.hidden_states) == len(ref.hidden_states) == 3
        # padded frames included: both zero them before the positional convs and attend to real frames only
        assert _max_diff(out.hidden_states, ref.hidden_states) < TOL
        assert (out.last_hidden_state - ref.last_hidden_state).abs().max() < TOL
        head = load_head(tmp_path / "run")
        if kind == "model":
            assert head is None
        else:
            logits = head(out.last_hidden_state, ours.frontend.pool(out.last_hidden_state, out.padding_mask))
            assert (logits - hf(waves, attention_mask=(~padding).long()).logits).abs().max() < TOL
            assert isinstance(head, CTCHead if kind == "ctc" else LinearClassifier)
            assert head.labels == (VOCAB if kind == "ctc" else [hf.config.id2label[i] for i in range(3)])
        # our own padding rule (zeroing before every positional conv) is why converted models use HF's:
        ours.frontend.pos_conv_embed.zero_every_layer = True
        alt = ours(waves, padding_mask=padding).last_hidden_state
        assert (alt[0] - ref.last_hidden_state[0]).abs().max() < TOL  # the longest utterance has no padding
        assert (alt[1, :34] - ref.last_hidden_state[1, :34]).abs().max() > 1e-3


def test_audio_heads_without_a_data2vec_place_are_dropped_with_a_warning(tmp_path, caplog):
    _save_hf(_hf_audio("frame"), tmp_path / "hf", "safetensors")
    with caplog.at_level(logging.WARNING, logger="data2vec"):
        from_hf(tmp_path / "hf", tmp_path / "run")
    assert "classifier (frame classification or x-vector head" in caplog.text
    assert load_head(tmp_path / "run") is None


def _native_checkpoint(tmp_path, overrides: list[str], head=None):
    """A speech checkpoint of our own with random weights (and optionally a head), as pretraining writes it."""
    cfg = build_config("audio-tiny", SMALL + overrides)
    torch.manual_seed(0)
    model = Data2Vec(cfg)
    _randomise(model.student, seed=3)
    extra = {HEAD_FILE: head_file(head)} if head is not None else {}
    return save_checkpoint(tmp_path / "ours", 0, model.state_dict(), {"step": 0}, cfg, extra_files=extra)


def _head(kind: str):
    head = CTCHead(32, 4, 0.1, ["<blank>", "|", "a", "b"]) if kind == "ctc" else LinearClassifier(32, 3, 0.2)
    _randomise(head, seed=4)
    if kind == "cls":
        head.labels = ["yes", "no", "up"]
    return head.eval()


@pytest.mark.parametrize("overrides,head", [
    ([], None),  # our padding rule (every_layer) comes back from config.json's data2vec key
    (["audio.conv_bias=true", "audio.pos_conv_zero_padding=once", "audio.normalize=false"], "ctc"),
    ([], "cls"),
])
def test_audio_round_trip_ours_hf_ours_is_identical(tmp_path, overrides, head):
    head = _head(head) if head else None
    path = _native_checkpoint(tmp_path, overrides, head)
    to_hf(path, tmp_path / "hf")
    back = from_hf(tmp_path / "hf", tmp_path / "back")
    c1, c2 = assert_student_round_trip(path, back)
    assert c1.model == c2.model and c1.audio == c2.audio and c1.objective == c2.objective and c1.name == c2.name
    assert c1.masking == c2.masking and c1.train == c2.train
    if head is not None:
        h2 = load_head(back)
        assert type(h2) is type(head) and h2.labels == head.labels and h2.dropout.p == head.dropout.p
        assert all(torch.equal(v, h2.state_dict()[k]) for k, v in head.state_dict().items())


@pytest.mark.parametrize("head,auto", [
    (None, "AutoModel"), ("ctc", "AutoModelForCTC"), ("cls", "AutoModelForAudioClassification")])
def test_audio_to_hf_loads_in_transformers_without_missing_or_unexpected_weights(tmp_path, caplog, head, auto):
    head = _head(head) if head else None
    path = _native_checkpoint(tmp_path, [], head)
    with caplog.at_level(logging.WARNING, logger="data2vec"):
        to_hf(path, tmp_path / "hf")
    assert "pos_conv_zero_padding=every_layer" in caplog.text  # HF's padding rule differs from the default
    hf, info = getattr(transformers, auto).from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    hf.eval()
    ours = data2vec.load(path)
    ours.frontend.pos_conv_embed.zero_every_layer = False  # HF's padding rule, to compare a padded batch
    waves, padding = _batch()
    with torch.no_grad():
        ref = hf(waves, attention_mask=(~padding).long(), output_hidden_states=True)
        out = ours(waves, padding_mask=padding)
        assert _max_diff(out.hidden_states, ref.hidden_states) < TOL
        if head is None:
            assert (out.last_hidden_state - ref.last_hidden_state).abs().max() < TOL
        else:
            logits = head(out.last_hidden_state, ours.frontend.pool(out.last_hidden_state, out.padding_mask))
            assert (logits - ref.logits).abs().max() < TOL
    if head is not None and head.kind == "ctc":  # the vocabulary travels as the tokenizer's
        tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
        assert tokenizer.decode([2, 2, 0, 3, 1, 2]) == "ab a"
    elif head is not None:
        assert hf.config.id2label == {0: "yes", 1: "no", 2: "up"}
    assert json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())["sampling_rate"] == 16000


def _edit_config(folder, **changes):
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("kind,changes,named", [
    ("model", dict(hidden_act="relu"), "hidden_act"),
    ("model", dict(feat_extract_activation="relu"), "feat_extract_activation"),
    ("model", dict(feat_extract_norm="group"), "feat_extract_norm"),
    ("model", dict(do_stable_layer_norm=True), "do_stable_layer_norm"),
    ("model", dict(add_adapter=True), "add_adapter"),
    ("model", dict(num_conv_pos_embeddings=0), "num_conv_pos_embeddings"),
    ("model", dict(num_conv_pos_embedding_groups=3), "num_conv_pos_embedding_groups"),
    ("cls", dict(use_weighted_layer_sum=True), "use_weighted_layer_sum"),
    ("ctc", dict(pad_token_id=4), "pad_token_id"),
])
def test_unsupported_hf_audio_option_is_an_error_naming_it(tmp_path, kind, changes, named):
    _save_hf(_hf_audio(kind), tmp_path / "hf", "safetensors")
    _edit_config(tmp_path / "hf", **changes)
    with pytest.raises(Data2VecError, match=named):
        from_hf(tmp_path / "hf", tmp_path / "run")


@pytest.mark.parametrize("overrides,head,named", [
    (["model.norm_first=true"], None, "model.norm_first"),
    (["audio.pos_conv_layers=0"], None, "audio.pos_conv_layers"),
    ([], SentenceClassifier(32, 2), "finetune.head"),
])
def test_unexpressible_audio_checkpoint_is_an_error_naming_the_key(tmp_path, overrides, head, named):
    path = _native_checkpoint(tmp_path, overrides, head)
    with pytest.raises(Data2VecError, match=named):
        to_hf(path, tmp_path / "hf")


def test_cli_converts_speech_both_ways(tmp_path):
    _save_hf(_hf_audio("ctc"), tmp_path / "hf", "safetensors")
    assert main(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 0
    assert main(["convert", "--to-hf", str(tmp_path / "run"), "--out", str(tmp_path / "back")]) == 0
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert config["architectures"] == ["Data2VecAudioForCTC"] and config["vocab_size"] == 6
