"""data2vec 2.0 fairseq checkpoints converted into run folders compute what fairseq computed.

The fixtures (`tests/fixtures/fairseq_ckpt/v2_*`) are tiny models of each released kind saved by fairseq's own
trainer layout with `checkpoint_utils`, beside fairseq's outputs on a fixed input
(`benchmarks/fairseq_parity/make_checkpoints_v2.py`). Here they convert without fairseq, and the run folder's
student and EMA teacher features, its pretraining loss on fairseq's mask and decoder noise, and its fine-tuned
logits must match within 1e-5.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import data2vec
from data2vec.checkpoint import load_checkpoint
from data2vec.config import build_config
from data2vec.ctc import BLANK
from data2vec.errors import Data2VecError
from data2vec.finetuning.classifier import Classifier, load_pretrained
from data2vec.finetuning.setup import resolve_config
from data2vec.interop.fairseq import v2, v2_config
from data2vec.interop.fairseq.common import train_overrides
from data2vec.interop.fairseq.reader import read_checkpoint
from data2vec.model import Data2Vec, Data2VecEncoder
from data2vec.nn.heads import load_head

FIXTURES = Path(__file__).parent / "fixtures" / "fairseq_ckpt"
ATOL = 1e-5
PRETRAINED = ["v2_image", "v2_audio", "v2_text"]
FINETUNED = ["v2_image_ft", "v2_audio_ctc"]


def fixture(name: str) -> tuple[dict[str, torch.Tensor], dict]:
    return load_file(str(FIXTURES / f"{name}.safetensors")), json.loads((FIXTURES / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Callable[[str], Path]:
    """name -> its run folder, each fixture converted once per module by `data2vec.from_fairseq` (the conversion
    itself is what every test below checks)."""
    root = tmp_path_factory.mktemp("converted")
    done: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in done:
            done[name] = root / name
            data2vec.from_fairseq(str(FIXTURES / f"{name}.pt"), str(done[name]))
        return done[name]

    return get


@pytest.mark.parametrize("name", PRETRAINED + FINETUNED)
def test_fixture_is_a_v2_checkpoint(name):
    assert v2.matches(read_checkpoint(FIXTURES / f"{name}.pt")["cfg"])


@pytest.mark.parametrize("name", PRETRAINED)
@pytest.mark.parametrize("which", ["student", "teacher"])
def test_features_match_fairseq(runs, name, which):
    tensors, _ = fixture(name)
    encoder = data2vec.load(runs(name), which=which)
    key = "out.features" if which == "student" else "out.teacher_features"
    with torch.no_grad():
        ours = encoder(tensors["in.source"]).last_hidden_state
    assert ours.shape == tensors[key].shape
    torch.testing.assert_close(ours, tensors[key], atol=ATOL, rtol=0)
    if name in ("v2_text", "v2_audio"):  # a padded batch: fairseq's padding mask, compared where there is input
        padded = tensors["in.padded"]
        padding = padded.eq(1) if name == "v2_text" else tensors["in.padding_mask"]
        with torch.no_grad():
            out = encoder(padded, padding_mask=padding)
        keep = ~out.padding_mask
        assert keep.sum() < keep.numel()
        torch.testing.assert_close(out.last_hidden_state[keep], tensors[f"{key}_padded"][keep], atol=ATOL, rtol=0)


def test_teacher_differs_from_student(runs):
    """The fixtures' EMA teachers lag their students, so a conversion that copied the student passes nothing."""
    for name in PRETRAINED:
        tensors, _ = fixture(name)
        assert (tensors["out.features"] - tensors["out.teacher_features"]).abs().max() > 1e-2, name


@pytest.mark.parametrize("name", PRETRAINED)
def test_pretraining_loss_matches_fairseq(runs, name):
    """The run folder continues pretraining from Meta's weights: the config read from fairseq's settings
    (targets, clones, decoder, loss scale, CLS loss) gives fairseq's loss on its mask and decoder noise."""
    tensors, meta = fixture(name)
    weights, _, cfg = load_checkpoint(runs(name))
    model = Data2Vec(cfg).eval()
    model.load_state_dict(weights)
    torch.manual_seed(meta["noise_seed"])
    with torch.no_grad():
        loss = model(tensors["in.source"], tensors["in.mask"])["loss"]
    assert loss.item() == pytest.approx(tensors["out.loss"].item(), rel=1e-5, abs=0)


@pytest.mark.parametrize("name", FINETUNED)
def test_finetuned_logits_match_fairseq(runs, name):
    tensors, meta = fixture(name)
    head = load_head(runs(name))
    model = Classifier(data2vec.load(runs(name)), head).eval()
    with torch.no_grad():  # speech: a padded batch, compared at the frames fairseq counts as real
        ours, padding = model.run(tensors["in.source"], tensors.get("in.padding_mask"))
    assert ours.shape == tensors["out.logits"].shape
    keep = slice(None) if padding is None else ~padding
    if padding is not None:
        assert torch.equal(padding, tensors["out.padding_mask"]) and padding.any()
    torch.testing.assert_close(ours[keep], tensors["out.logits"][keep], atol=ATOL, rtol=0)
    if name == "v2_audio_ctc":  # fairseq's letter dictionary, its blank <s> as ours
        assert head.labels[0] == BLANK and head.labels[1:] == meta["labels"][1:]


@pytest.mark.parametrize("name,recipe", [("v2_image", "image-tiny-ft"), ("v2_image_ft", "image-tiny-ft"),
                                         ("v2_audio", "audio-tiny-ctc"), ("v2_audio_ctc", "audio-tiny-ctc"),
                                         ("v2_text", "text-tiny-ft")])
def test_finetune_takes_the_run_folder(runs, name, recipe):
    """What `data2vec finetune RECIPE checkpoint=RUN` does with the folder before training: the recipe on the
    checkpoint's architecture, the student loaded into a fresh encoder."""
    weights, _, source = load_checkpoint(runs(name), with_state=False)
    cfg = resolve_config(build_config(recipe, [f"finetune.checkpoint={runs(name)}"]), source, str(runs(name)))
    load_pretrained(Data2VecEncoder(cfg), weights, str(runs(name)))


def test_pretraining_resumes_from_the_run_folder(tmp_path):
    """`data2vec pretrain RUN/config.yaml resume=auto` continues from Meta's weights: one step from step 0,
    whose EMA moves the converted teacher a little towards the updated student (decay 0.999 from the file)."""
    run = tmp_path / "run"
    data2vec.from_fairseq(str(FIXTURES / "v2_image.pt"), str(run))
    data2vec.pretrain(str(run / "config.yaml"), "resume=auto", "train.max_steps=1", "train.batch_size=4",
                      "train.device_batch_size=0", "data.num_workers=0", "device=cpu")
    before, _, _ = load_checkpoint(run / "checkpoints" / "step_00000000", with_state=False)
    after, _, cfg = load_checkpoint(run / "checkpoints" / "step_00000001", with_state=False)
    assert cfg.objective.ema_start == 0.999
    key = "teacher.encoder.blocks.0.attn.qkv.weight"
    moved = (after[key] - before[key]).abs().max()
    assert 0 < moved < 1e-3


def test_classifier_labels(tmp_path):
    """fairseq's file has no class names: 1000 outputs are ImageNet-1k's sorted class folders (fairseq read
    ImageNet with torchvision's ImageFolder), a --dict file names them one per line, else LABEL_i."""
    assert load_head(_convert(tmp_path)).labels == [f"LABEL_{i}" for i in range(5)]
    names = tmp_path / "classes.txt"
    names.write_text("cat\ndog\nfox\nowl\nyak\n")
    assert load_head(_convert(tmp_path, dictionary=names)).labels == ["cat", "dog", "fox", "owl", "yak"]
    ckpt = read_checkpoint(FIXTURES / "v2_image_ft.pt")
    ckpt["model"]["head.weight"] = torch.zeros(1000, 8)
    ckpt["model"]["head.bias"] = torch.zeros(1000)
    labels = load_head(_convert(tmp_path, ckpt)).labels
    assert len(set(labels)) == 1000 and labels == sorted(labels) and labels[:2] == ["n01440764", "n01443537"]
    with pytest.raises(Data2VecError, match="names 3 classes"):
        names.write_text("a\nb\nc\n")
        _convert(tmp_path, dictionary=names)


@pytest.mark.parametrize("name", ["v2_image", "v2_image_ft"])
def test_converted_image_models_evaluate_with_fairseqs_crop(runs, name):
    """fairseq evaluates images up to 224 pixels (mae_finetuning_image_dataset.py build_transform) with the
    shorter side to int(size / (224 / 256)) and the centred square: the converted run's evaluation transform.
    Both of its image datasets normalise with ImageNet's statistics (timm's IMAGENET_DEFAULT_MEAN / _STD)."""
    _, _, cfg = load_checkpoint(runs(name), with_state=False)
    assert cfg.image.image_size <= 224 and cfg.data.eval_crop_pct == 224 / 256
    assert cfg.data.image_mean == [0.485, 0.456, 0.406] and cfg.data.image_std == [0.229, 0.224, 0.225]


def _convert(tmp_path: Path, ckpt: dict | None = None, dictionary: Path | None = None) -> Path:
    out = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
    v2.convert(ckpt or read_checkpoint(FIXTURES / "v2_image_ft.pt"), out, dictionary)
    return out


def test_cli_converts_and_records_what_it_did_not_carry(tmp_path, capsys):
    """`data2vec convert --from-fairseq` on a CTC fine-tune: fairseq's fine-tuning masks (SpecAugment) are
    training only, so they are listed in fairseq.json (and warned about), and the head's letters are
    LibriSpeech's when no --dict is given."""
    from data2vec.cli import main

    assert main(["convert", "--from-fairseq", str(FIXTURES / "v2_audio_ctc.pt"), "--out", str(tmp_path / "run")]) == 0
    record = json.loads(next((tmp_path / "run").rglob("fairseq.json")).read_text())
    assert record["kind"] == "v2 speech CTC"
    assert any(item.startswith("model.apply_mask=True") for item in record["not_carried"])
    assert any("mask_channel_prob=0.1" in item for item in record["not_carried"])
    assert record["cfg"]["model"]["w2v_args"]["model"]["_name"] == "data2vec_multi"
    # fairseq's frozen feature encoder (feature_grad_mult 0, written into w2v_args) is carried, not listed
    assert not any("local_grad_mult" in item for item in record["not_carried"])
    assert load_checkpoint(tmp_path / "run", with_state=False)[2].finetune.freeze_frontend_steps == -1


# fairseq's config/v2 files -> the recipes of ours that cite them (their keys must agree with what conversion reads)
RECIPE_OF = {"base_images_only_task": "image-base-v2", "large_images_only_task": "image-large-v2",
             "base_audio_only_task": "audio-base-v2", "large_audio_only_task": "audio-large-v2",
             "base_text_only_task": "text-base-v2", "large_text_only_task": "text-large-v2"}
RELEASED = json.loads((FIXTURES / "v2_released_configs.json").read_text())


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_pretraining_configs_convert(name):
    """The settings every released v2 model was pretrained with (fairseq's config/v2 files as their checkpoints
    hold them) pass the converter's judgement, and give the architecture, objective, masking and optimiser of
    our recipe that cites the same file: two independent readings of Meta's settings agree."""
    c = RELEASED[name]
    dropped: list[str] = []
    cfg = v2_config.build(c["model"], c["task"], {"vocab_size": 50265, "max_positions": 514}, dropped,
                          train_overrides(c))
    assert cfg.model.depth == c["model"]["depth"] + c["model"]["modalities"][cfg.modality]["prenet_depth"]
    assert dropped == (["model.decoder_group=True: is an optimizer group of the decoder"] if "pgrp" in name else [])
    if name not in RECIPE_OF:
        return
    recipe = build_config(RECIPE_OF[name])
    for section in ("model", "objective", "masking", cfg.modality, "train"):
        ours, theirs = dataclasses.asdict(getattr(cfg, section)), dataclasses.asdict(getattr(recipe, section))
        differ = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k] and (section, k) not in SAME_EFFECT}
        assert not differ, f"{section}: {differ}"


# keys whose values differ but act the same in these pretraining runs: the final norm (pre-LN only), an FFN
# activation dropout of None (= model.dropout, 0 in the image recipes), the padding rule of the positional convs
# (fairseq's speech pretraining crops every batch to its shortest clip, data.crop_to_shortest: nothing is padded)
SAME_EFFECT = {("model", "final_norm"), ("model", "activation_dropout"), ("audio", "pos_conv_zero_padding")}


def test_settings_we_cannot_express_stop_the_conversion(tmp_path):
    ckpt = read_checkpoint(FIXTURES / "v2_audio.pt")
    ckpt["cfg"]["model"]["modalities"]["audio"]["extractor_mode"] = "default"
    with pytest.raises(Data2VecError, match="extractor_mode='default'"):
        v2.convert(ckpt, tmp_path / "a")
    ckpt = read_checkpoint(FIXTURES / "v2_image.pt")
    ckpt["cfg"]["model"]["frobnicate"] = 3
    with pytest.raises(Data2VecError, match="model.frobnicate=3"):
        v2.convert(ckpt, tmp_path / "b")
    ckpt = read_checkpoint(FIXTURES / "v2_text.pt")
    ckpt["model"]["blocks.0.attn.extra"] = torch.zeros(3)
    with pytest.raises(Data2VecError, match="blocks.0.attn.extra"):
        v2.convert(ckpt, tmp_path / "c")
