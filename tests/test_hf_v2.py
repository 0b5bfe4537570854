"""data2vec 2.0 models to `transformers`: tiny random v2 models of ours (the layout fairseq's v2 checkpoints
convert into) are exported with `to_hf`, loaded the way a user would (`AutoModel...from_pretrained`, with
`trust_remote_code=True` for the model code shipped in the folder: post-LN images, speech with ALiBi), and every
hidden state, the pooled output and the head's logits must equal ours within 1e-5; fairseq-written v2 fixtures
exported the same way give fairseq's outputs. (Options that stop an export are tested in tests/test_hf.py.)"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")

import data2vec  # noqa: E402
from data2vec.config import build_config  # noqa: E402
from data2vec.interop.hf import from_hf, to_hf  # noqa: E402
from data2vec.model import Data2Vec  # noqa: E402
from data2vec.nn.heads import HEAD_FILE, CTCHead, LinearClassifier, SentenceClassifier, head_file  # noqa: E402
from data2vec.train.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from conftest import randomise  # noqa: E402

TOL = 1e-5
DECODER = ["objective.top_k=2", "objective.decoder_dim=16", "objective.decoder_layers=2"]
TEXT = ["model.dim=32", "model.depth=2", "model.heads=4", "text.vocab_size=100", "text.max_positions=20",
        "text.block_size=18", *DECODER]
AUDIO = ["model.dim=32", "model.depth=2", "model.heads=4", "model.mlp_ratio=2.0", "audio.conv_dim=[8,8,8]",
         "audio.conv_kernel=[10,3,3]", "audio.conv_stride=[5,2,2]", "audio.pos_conv_layers=3",
         "audio.pos_conv_kernel=5", "audio.pos_conv_groups=4", "objective.decoder_groups=4", *DECODER]
# image-base-v2's encoder (post-LN, LayerNorm before the first block, sin-cos positions, mean pooling) made small
IMAGE = ["model.dim=32", "model.depth=2", "model.heads=4", "image.image_size=32", "image.patch_size=8", *DECODER]


def _checkpoint(tmp_path, recipe: str, overrides: list[str], head=None):
    """A v2 checkpoint of ours (student, teacher, decoder) with random weights, and a head if given."""
    cfg = build_config(recipe, overrides)
    assert cfg.objective.version == 2
    torch.manual_seed(0)
    model = Data2Vec(cfg)
    randomise(model.student, seed=3)
    extra = {}
    if head is not None:
        randomise(head, seed=4)
        extra[HEAD_FILE] = head_file(head)
    return save_checkpoint(tmp_path / "ours", 0, model.state_dict(), {"step": 0}, cfg, extra_files=extra)


def _max_diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


def _model_type(folder) -> str:
    return json.loads((folder / "config.json").read_text())["model_type"]


@pytest.mark.parametrize("head", [None, SentenceClassifier(32, 3, dropout=0.1)])
def test_v2_text_exports_as_data2vec_text_with_identical_outputs(tmp_path, head):
    path = _checkpoint(tmp_path, "text-tiny-v2", TEXT, head)
    to_hf(path, tmp_path / "hf")
    assert _model_type(tmp_path / "hf") == "data2vec-text"
    auto = transformers.AutoModel if head is None else transformers.AutoModelForSequenceClassification
    hf = auto.from_pretrained(tmp_path / "hf").eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 100, (3, 12), generator=g)
    ids[:, 0] = 0
    padding = torch.zeros(3, 12, dtype=torch.bool)
    padding[1, 8:] = padding[2, 3:] = True
    ids[padding] = 1
    ours = data2vec.load(path)
    with torch.no_grad():
        ref = hf(ids, attention_mask=(~padding).long(), output_hidden_states=True)
        out = ours(ids, padding_mask=padding)
        keep = ~padding[..., None]  # HF's states at padded positions are not defined to match
        assert max((((a - b) * keep).abs().max().item()) for a, b in zip(out.hidden_states, ref.hidden_states)) < TOL
        if head is not None:
            head.eval()
            assert (head(out.last_hidden_state, None) - ref.logits).abs().max() < TOL


@pytest.mark.parametrize("zero_padding", ["once", "every_layer"])
def test_v2_speech_exports_as_data2vec_audio_with_identical_outputs(tmp_path, zero_padding):
    path = _checkpoint(tmp_path, "audio-tiny-v2", AUDIO + [f"audio.pos_conv_zero_padding={zero_padding}"])
    to_hf(path, tmp_path / "hf")
    assert _model_type(tmp_path / "hf") == "data2vec-audio"
    hf = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
    ours = data2vec.load(path)
    waves = torch.randn(2, 1200, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(waves, output_hidden_states=True)
        out = ours(waves)
        assert _max_diff(out.hidden_states, ref.hidden_states) < TOL
        assert (out.last_hidden_state - ref.last_hidden_state).abs().max() < TOL
        if zero_padding == "once":  # as HF (and fairseq): a padded batch is identical too
            padding = torch.zeros(2, 1200, dtype=torch.bool)
            padding[1, 700:] = True
            waves = waves.masked_fill(padding, 0.0)
            ref = hf(waves, attention_mask=(~padding).long())
            out = ours(waves, padding_mask=padding)
            real = ~out.padding_mask[..., None]
            assert ((out.last_hidden_state - ref.last_hidden_state) * real).abs().max() < TOL


def test_v2_speech_ctc_fine_tune_exports_as_data2vec_audio_for_ctc(tmp_path):
    head = CTCHead(32, 4, 0.1, ["<blank>", "|", "a", "b"])
    path = _checkpoint(tmp_path, "audio-tiny-v2", AUDIO + ["audio.pos_conv_zero_padding=once"], head)
    to_hf(path, tmp_path / "hf")
    hf = transformers.AutoModelForCTC.from_pretrained(tmp_path / "hf").eval()
    ours = data2vec.load(path)
    waves = torch.randn(2, 1200, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = head.eval()(ours(waves).last_hidden_state, None)
        assert (logits - hf(waves).logits).abs().max() < TOL


@pytest.mark.parametrize("head", [None, CTCHead(32, 4, 0.1, ["<blank>", "|", "a", "b"])])
def test_v2_speech_with_alibi_exports_with_model_code_and_identical_outputs(tmp_path, head):
    """ALiBi (Meta's v2 speech models all use it) is Data2VecAudio plus a bias: model code in the folder."""
    path = _checkpoint(tmp_path, "audio-tiny-v2", AUDIO + ["model.alibi=true", "audio.pos_conv_zero_padding=once"],
                       head)
    to_hf(path, tmp_path / "hf")
    assert _model_type(tmp_path / "hf") == "data2vec2-audio"
    auto = transformers.AutoModel if head is None else transformers.AutoModelForCTC
    hf, info = auto.from_pretrained(tmp_path / "hf", trust_remote_code=True, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    hf.eval()
    ours = data2vec.load(path)
    assert ours.encoder.alibi.scale.abs().min() > 0.01  # random, so a bias that is ignored shows
    padding = torch.zeros(2, 1200, dtype=torch.bool)
    padding[1, 700:] = True
    waves = torch.randn(2, 1200, generator=torch.Generator().manual_seed(2)).masked_fill(padding, 0.0)
    with torch.no_grad():
        ref = hf(waves, output_hidden_states=True)
        out = ours(waves)
        assert _max_diff(out.hidden_states, ref.hidden_states) < TOL
        if head is not None:
            assert (head.eval()(out.last_hidden_state, None) - ref.logits).abs().max() < TOL
        ref = hf(waves, attention_mask=(~padding).long())
        out = ours(waves, padding_mask=padding)
        real = ~out.padding_mask[..., None]
        mine = out.last_hidden_state if head is None else head(out.last_hidden_state, None)
        theirs = ref.last_hidden_state if head is None else ref.logits
        assert ((mine - theirs) * real).abs().max() < TOL
    back = from_hf(tmp_path / "hf", tmp_path / "back")
    assert data2vec.load(back).cfg.model.alibi


@pytest.mark.parametrize("overrides,head", [
    ([], None),  # image-base-v2's encoder: post-LN with the LayerNorm before the first block
    (["image.pool_norm=true"], LinearClassifier(32, 3)),  # a fine-tuned v2 classifier: LayerNorm(mean), linear
    (["image.sincos_order=yx", "image.pool=cls"], LinearClassifier(32, 3, dropout=0.1)),
    (["image.cls_token=false", "image.embed_norm=false", "image.pos_embed=learned"], None),
])
def test_v2_image_exports_with_model_code_and_identical_outputs(tmp_path, overrides, head):
    path = _checkpoint(tmp_path, "image-base-v2", IMAGE + overrides, head)
    to_hf(path, tmp_path / "hf")
    assert _model_type(tmp_path / "hf") == "data2vec2-vision"
    assert (tmp_path / "hf" / "modeling_data2vec2_vision.py").is_file()
    auto = transformers.AutoModel if head is None else transformers.AutoModelForImageClassification
    hf, info = auto.from_pretrained(tmp_path / "hf", trust_remote_code=True, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    hf.eval()
    ours = data2vec.load(path)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(images, output_hidden_states=True)
        out = ours(images)
        pooled = ours.frontend.pool(out.last_hidden_state)
        assert _max_diff(out.hidden_states, ref.hidden_states) < TOL
        if head is None:
            assert (out.last_hidden_state - ref.last_hidden_state).abs().max() < TOL
            assert (pooled - ref.pooler_output).abs().max() < TOL
        else:
            assert (head.eval()(out.last_hidden_state, pooled) - ref.logits).abs().max() < TOL
    back = from_hf(tmp_path / "hf", tmp_path / "back")  # and the folder converts back to the same model
    (w1, _, c1), (w2, _, c2) = load_checkpoint(path, with_state=False), load_checkpoint(back, with_state=False)
    student = {k: v for k, v in w1.items() if k.startswith("student.")}
    assert student.keys() == {k for k in w2 if k.startswith("student.")}
    # all but the mask embedding, which v2 never uses (masked patches are dropped) and the model code lacks
    assert all(torch.equal(v, w2[k]) for k, v in student.items() if k != "student.frontend.mask_token")
    assert c1.image == c2.image
    assert {k: v for k, v in vars(c1.model).items() if k != "qkv_bias"} == \
        {k: v for k, v in vars(c2.model).items() if k != "qkv_bias"}


def test_v2_image_folder_normalisation_comes_from_its_processor_else_fairseqs(tmp_path):
    """A data2vec2-vision folder without our config key: data.image_mean / image_std from its image processor
    (here 0.5 / 0.5), and without one fairseq's ImageNet statistics (mae_image_dataset.py)."""
    to_hf(_checkpoint(tmp_path, "image-base-v2", [*IMAGE, "data.image_mean=[0.5,0.5,0.5]",
                                                  "data.image_std=[0.5,0.5,0.5]"]), tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    del config["data2vec"]
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    cfg = data2vec.load(from_hf(tmp_path / "hf", tmp_path / "back")).cfg
    assert (cfg.data.image_mean, cfg.data.image_std) == ([0.5] * 3, [0.5] * 3)
    (tmp_path / "hf" / "preprocessor_config.json").unlink()
    cfg = data2vec.load(from_hf(tmp_path / "hf", tmp_path / "bare")).cfg
    assert (cfg.data.image_mean, cfg.data.image_std) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def test_pre_ln_v2_image_still_exports_as_data2vec_vision(tmp_path):
    path = _checkpoint(tmp_path, "image-tiny-v2", ["model.dim=32", "model.depth=2", "model.heads=4", *DECODER])
    to_hf(path, tmp_path / "hf")
    assert _model_type(tmp_path / "hf") == "data2vec-vision"
    assert not (tmp_path / "hf" / "modeling_data2vec2_vision.py").exists()


FIXTURES = Path(__file__).parent / "fixtures" / "fairseq_ckpt"


@pytest.mark.parametrize("name", ["v2_text", "v2_image", "v2_image_ft", "v2_audio", "v2_audio_ctc"])
def test_meta_v2_checkpoint_exports_with_fairseqs_outputs(tmp_path, name):
    """fairseq-written v2 fixtures (tests/test_fairseq_convert_v2.py) -> run folder -> `transformers`: the
    exported model gives what fairseq computed on the fixture's input."""
    tensors = load_file(str(FIXTURES / f"{name}.safetensors"))
    data2vec.from_fairseq(FIXTURES / f"{name}.pt", tmp_path / "run")
    to_hf(tmp_path / "run", tmp_path / "hf")
    source = tensors["in.source"]
    auto = {"v2_image_ft": transformers.AutoModelForImageClassification,
            "v2_audio_ctc": transformers.AutoModelForCTC}.get(name, transformers.AutoModel)
    hf = auto.from_pretrained(tmp_path / "hf", trust_remote_code=name != "v2_text").eval()
    model_types = {"v2_text": "data2vec-text", "v2_image": "data2vec2-vision", "v2_image_ft": "data2vec2-vision"}
    assert _model_type(tmp_path / "hf") == model_types.get(name, "data2vec2-audio")  # speech: ALiBi
    with torch.no_grad():
        out = hf(source)
        if name == "v2_audio_ctc":  # a padded batch: fairseq's v2 speech does not zero padding before its convs
            out = hf(source, attention_mask=(~tensors["in.padding_mask"]).long())
            keep = ~tensors["out.padding_mask"]
            torch.testing.assert_close(out.logits[keep], tensors["out.logits"][keep], atol=TOL, rtol=0)
        elif name == "v2_image_ft":
            torch.testing.assert_close(out.logits, tensors["out.logits"], atol=TOL, rtol=0)
        else:
            torch.testing.assert_close(out.last_hidden_state, tensors["out.features"], atol=TOL, rtol=0)
        if name == "v2_text":
            padded = tensors["in.padded"]  # fairseq's pad id 1; compared where there are tokens
            out = hf(padded, attention_mask=padded.ne(1).long()).last_hidden_state
            keep = padded.ne(1)
            torch.testing.assert_close(out[keep], tensors["out.features_padded"][keep], atol=TOL, rtol=0)


@pytest.mark.parametrize("name", ["v2_image_ft", "v2_audio_ctc"])
def test_model_code_folders_convert_back_without_our_config_key(tmp_path, name):
    """A `data2vec2-vision` / `data2vec2-audio` folder whose config.json lost our `data2vec` key (edited, or
    re-saved by `save_pretrained`) still converts back, from its own keys alone, to the same model; the v2
    recipe's decoder is fitted to the model's width, so the run folder can continue pretraining."""
    data2vec.from_fairseq(FIXTURES / f"{name}.pt", tmp_path / "run")
    to_hf(tmp_path / "run", tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    del config["data2vec"]
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    back = from_hf(tmp_path / "hf", tmp_path / "back")
    original, converted = data2vec.load(tmp_path / "run"), data2vec.load(back)
    assert converted.cfg.objective.version == 2 and converted.cfg.model.dim == 8
    inputs = load_file(str(FIXTURES / f"{name}.safetensors"))["in.source"]
    with torch.no_grad():
        assert torch.equal(original(inputs).last_hidden_state, converted(inputs).last_hidden_state)
    if name == "v2_audio_ctc":  # Meta's padding rule (none) comes back from the model code's config key
        assert converted.cfg.audio.pos_conv_zero_padding == original.cfg.audio.pos_conv_zero_padding == "none"
    Data2Vec(converted.cfg)  # the decoder builds at this width
