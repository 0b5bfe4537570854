"""`--to-hf` exports run in `transformers.pipeline` and give our outputs: text classification (the default
recipe's linear head on the token mean, and RoBERTa's sentence head), image classification, speech
recognition and audio classification. "Ours" is what data2vec's own evaluation code computes on the same input:
its tokenisation, image transform, waveform normalisation, classifier and greedy CTC decoding."""

import json
import logging

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

import data2vec  # noqa: E402
from data2vec.config import build_config  # noqa: E402
from data2vec.ctc import decode, greedy_decode  # noqa: E402
from data2vec.data.audio import normalize_wave  # noqa: E402
from data2vec.data.image import ImageTransform  # noqa: E402
from data2vec.data.labelled_text import TextRow  # noqa: E402
from data2vec.data.text import TextClassificationSet, checked_tokenizer  # noqa: E402
from data2vec.finetuning.classifier import Classifier  # noqa: E402
from data2vec.interop.hf import from_hf, to_hf  # noqa: E402
from data2vec.model import Data2Vec  # noqa: E402
from data2vec.nn.heads import HEAD_FILE, CTCHead, LinearClassifier, head_file, load_head  # noqa: E402
from data2vec.tasks.finetune import finetune  # noqa: E402
from data2vec.tasks.pretrain import pretrain  # noqa: E402
from data2vec.train.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint  # noqa: E402
from conftest import binarised_corpus, randomise  # noqa: E402

TOL = 1e-5
CORPUS = ("Arrays hold numbers of one type in a grid.\nThe shape gives the size of each axis.\n\n"
          "A tensor is an array that can live on a device.\nGradients flow back through tensor operations.\n\n")
TEXTS = ["A tensor is an array.", "Gradients flow back.", "x", " leading and  double  spaces ", "Ünïcode ∑ <mask>",
         ("The shape gives the size of each axis, and arrays hold numbers of one type in a grid: long enough to be "
          "cut to the block size.")]
PAIRS = [("A tensor is an array.", "A grid of numbers."), ("Gradients flow back through tensor operations again.",
                                                          "The shape gives the size of each axis, twice over.")]


# ---------------------------------------------------------------------------------------------------- text

@pytest.fixture(scope="module")
def text_runs(tmp_path_factory):
    """A tiny text model pretrained for 2 steps and fine-tuned for 2 with the `text-tiny-ft` recipe as it is
    (finetune.head=linear), and for 1 with finetune.head=sentence (its head then given random weights); both
    exported, and the pretrained model too."""
    root = binarised_corpus(tmp_path_factory.mktemp("text"), CORPUS * 30, 300)
    pre = pretrain(build_config("text-tiny", [
        "model.dim=32", "model.depth=2", "model.heads=2", "objective.top_k=2", "text.vocab_size=300",
        "text.block_size=24", "text.max_positions=26", f"data.path={root / 'bin'}", "train.batch_size=8",
        "train.max_steps=2", f"out={root / 'pre'}"]), progress=False)
    labelled = root / "labelled"
    labelled.mkdir()
    rows = [("A tensor is an array.", "array"), ("Arrays hold numbers.", "array"), ("Gradients flow back.", "grad"),
            ("The shape gives the size.", "shape")] * 4
    for split in ("train", "dev"):
        (labelled / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in rows))
    runs = {}
    for head, steps in (("linear", 2), ("sentence", 1)):
        extra = [] if head == "linear" else ["finetune.head=sentence"]  # linear: the recipe's default
        run = finetune(build_config("text-tiny-ft", [f"finetune.checkpoint={pre}", f"out={root / head}",
                                                     f"data.path={labelled}", f"train.max_steps={steps}",
                                                     "train.batch_size=8", "finetune.eval_every=100", *extra]),
                       progress=False)
        if head == "sentence":  # one update leaves RoBERTa's head near its init, blind to the input: make it see
            ckpt = resolve_checkpoint(run)
            weights, _, cfg = load_checkpoint(ckpt, with_state=False)
            sentence = load_head(ckpt)
            randomise(sentence, seed=5)
            run = save_checkpoint(root / "sentence-random", 1, weights, {"step": 1}, cfg, extra_files={
                HEAD_FILE: head_file(sentence), "tokenizer.json": (ckpt / "tokenizer.json").read_bytes()})
        runs[head] = (run, to_hf(run, root / f"hf-{head}"))
    runs["pre"] = (pre, to_hf(pre, root / "hf-pre"))
    return runs


def _our_text(run, texts: list[str], pairs: list[str] | None = None):
    """(ids of each input, class probabilities [N, C]) as data2vec's fine-tuning and evaluation compute them."""
    ckpt = resolve_checkpoint(run)
    encoder, head = data2vec.load(ckpt), load_head(ckpt)
    tokenizer, ids = checked_tokenizer(encoder.cfg.text.tokenizer, encoder.cfg.text)
    rows = [TextRow(t, p, head.labels[0], i) for i, (t, p) in enumerate(zip(texts, pairs or [None] * len(texts)))]
    data = TextClassificationSet(rows, head.labels, tokenizer, encoder.cfg.text.block_size, ids, "test")
    batch = data.collate([data[i] for i in range(len(rows))])
    with torch.no_grad():
        probs = Classifier(encoder, head).eval()(batch["inputs"], batch["padding_mask"]).softmax(-1)
    return [item.tolist() for item in data.ids], probs, head.labels


def _assert_same_scores(results, probs, labels):
    for result, row in zip(results, probs, strict=True):
        got = {r["label"]: r["score"] for r in result}
        assert set(got) == set(labels)
        assert max(abs(got[label] - row[i].item()) for i, label in enumerate(labels)) < TOL
        assert max(result, key=lambda r: r["score"])["label"] == labels[int(row.argmax())]


@pytest.mark.parametrize("head", ["linear", "sentence"])
def test_text_classifier_export_gives_our_scores_in_the_pipeline(text_runs, head, one_thread):
    run, out = text_runs[head]
    pipe = transformers.pipeline("text-classification", model=str(out), trust_remote_code=head == "linear",
                                 top_k=None, batch_size=3)  # batches of 3: padded inputs
    _, probs, labels = _our_text(run, TEXTS)
    _assert_same_scores(pipe(TEXTS, truncation=True), probs, labels)
    _, probs, labels = _our_text(run, [a for a, _ in PAIRS], [b for _, b in PAIRS])
    _assert_same_scores(pipe([{"text": a, "text_pair": b} for a, b in PAIRS], truncation=True), probs, labels)


def test_default_text_head_exports_as_model_code_that_needs_trusting(text_runs):
    """finetune.head=linear (the mean of the real tokens) is no transformers class: the folder carries the model
    code under its own model type, so loading without trust_remote_code fails instead of building RoBERTa's
    head with fresh weights; the sentence head is transformers' own class and ships no code."""
    _, out = text_runs["linear"]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "data2vec-text-mean" and (out / "modeling_data2vec_text_mean.py").is_file()
    with pytest.raises(ValueError, match="trust_remote_code"):
        transformers.AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=False)
    _, sentence = text_runs["sentence"]
    assert json.loads((sentence / "config.json").read_text())["architectures"] == [
        "Data2VecTextForSequenceClassification"]
    assert not list(sentence.glob("*.py"))


def test_mean_pooled_export_converts_back_with_its_head(text_runs, tmp_path):
    run, out = text_runs["linear"]
    from_hf(out, tmp_path / "back")
    ours, back = load_head(run), load_head(tmp_path / "back")
    assert back.kind == "linear" and back.labels == ours.labels
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), back.state_dict().values()))
    _, probs, _ = _our_text(run, TEXTS)
    _, again, _ = _our_text(tmp_path / "back", TEXTS)  # the tokenizer came back with the folder
    assert (probs - again).abs().max() < TOL


@pytest.mark.parametrize("which", ["linear", "pre"])
def test_exported_tokenizer_gives_our_ids(text_runs, which):
    """AutoTokenizer on the export: our token ids with <s> / </s> (pairs <s> A </s></s> B </s>), our block
    size and longest-first truncation, RoBERTa's special tokens and no token type ids."""
    run = text_runs["linear"][0]  # ours: the fine-tuned model's tokenizer, which the pretrained one shares
    tokenizer = transformers.AutoTokenizer.from_pretrained(text_runs[which][1], trust_remote_code=True)
    cfg = data2vec.load(run).cfg.text
    assert tokenizer.model_max_length == cfg.block_size == 24
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.mask_token_id) == (
        cfg.bos_id, cfg.eos_id, cfg.pad_id, cfg.mask_id)
    ids, _, _ = _our_text(run, TEXTS)
    encoded = tokenizer(TEXTS, truncation=True)
    assert encoded["input_ids"] == ids and "token_type_ids" not in encoded
    assert max(len(i) for i in ids) == 24  # the long text was cut
    rng = np.random.default_rng(0)
    words = CORPUS.split()
    firsts = [" ".join(rng.choice(words, rng.integers(0, 15))) for _ in range(40)]
    seconds = [" ".join(rng.choice(words, rng.integers(1, 15))) for _ in range(40)]
    ids, _, _ = _our_text(run, firsts, seconds)
    assert tokenizer(firsts, seconds, truncation=True)["input_ids"] == ids


def test_text_export_without_a_tokenizer_warns_and_writes_none(tmp_path, caplog):
    cfg = build_config("text-tiny", ["model.dim=32", "model.depth=2", "model.heads=2", "objective.top_k=2",
                                     "text.vocab_size=300", f"data.path={tmp_path / 'gone'}"])
    path = save_checkpoint(tmp_path / "ours", 0, Data2Vec(cfg).state_dict(), {"step": 0}, cfg)
    with caplog.at_level(logging.WARNING, logger="data2vec"):
        out = to_hf(path, tmp_path / "hf")
    assert "no tokenizer found" in caplog.text and not (out / "tokenizer.json").exists()


# ---------------------------------------------------------------------------------------------------- images

IMAGE = ["model.dim=32", "model.depth=2", "model.heads=4", "objective.top_k=2", "image.image_size=32",
         "image.patch_size=8", "image.pool=mean", "image.pool_norm=true", "model.final_norm=false"]  # as image fine-tuning's default


def _native(tmp_path, recipe: str, overrides: list[str], head):
    """A checkpoint of ours with random weights and `head` (None: an encoder), as fine-tuning writes it."""
    cfg = build_config(recipe, overrides)
    torch.manual_seed(0)
    model = Data2Vec(cfg)
    randomise(model.student, seed=3)
    return save_checkpoint(tmp_path / "ours", 0, model.state_dict(), {"step": 0}, cfg,
                           extra_files={HEAD_FILE: head_file(head)} if head is not None else {})


IMAGENET_NORM = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
INCEPTION_NORM = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])  # Meta's v1 fine-tuning (data2vec_vision without the ImageNet flag)


@pytest.mark.parametrize("crop_pct,norm", [(1.0, IMAGENET_NORM), (0.875, INCEPTION_NORM)])
def test_image_classifier_export_gives_our_pixels_and_scores_in_the_pipeline(tmp_path, crop_pct, norm, one_thread):
    """1.0: the shorter side to 32 (image-tiny's default); 0.875: Meta's evaluation crop, the shorter side to
    int(32 / 0.875) = 36 and the centred 32 x 32, with odd margins (64 x 40 -> 57 x 36, 33 x 100 -> 36 x 109). The
    processor normalises with the run's data.image_mean / data.image_std (ImageNet's; 0.5 / 0.5)."""
    from PIL import Image

    head = LinearClassifier(32, 4, 0.0, ["cat", "dog", "eel", "fox"])
    randomise(head, seed=4)
    mean, std = norm
    path = _native(tmp_path, "image-tiny", [*IMAGE, f"data.eval_crop_pct={crop_pct}", f"data.image_mean={mean}",
                                            f"data.image_std={std}"], head)
    out = to_hf(path, tmp_path / "hf")
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["size"] == {"shortest_edge": int(32 / crop_pct)}
    assert processor["crop_size"] == {"height": 32, "width": 32} and processor["do_center_crop"]
    assert (processor["image_mean"], processor["image_std"]) == (mean, std) and processor["do_normalize"]
    pipe = transformers.pipeline("image-classification", model=str(out), top_k=None)
    classifier = Classifier(data2vec.load(path), load_head(path)).eval()
    transform = ImageTransform(size=32, train=False, crop_pct=crop_pct, mean=tuple(mean), std=tuple(std))
    rng = np.random.default_rng(0)
    # at size, smaller (upscaled), landscape and portrait; 33 x 100: round() and int() of 32 * 100 / 33 differ
    for width, height, mode in [(32, 32, "RGB"), (20, 20, "RGB"), (50, 37, "RGB"), (37, 50, "L"), (64, 40, "RGBA"),
                                (33, 100, "RGB")]:
        pixels = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
        image = Image.fromarray(pixels[..., 0] if mode == "L" else pixels[..., : len(mode)], mode)
        ours = transform(image, torch.Generator())
        theirs = pipe.image_processor(image.convert("RGB"), return_tensors="pt")["pixel_values"][0]
        assert (ours - theirs).abs().max() < 1e-6, (width, height)
        with torch.no_grad():
            probs = classifier(ours[None]).softmax(-1)
        _assert_same_scores([pipe(image)], probs, head.labels)


def test_from_hf_reads_the_evaluation_crop_back(tmp_path):
    """Our export's crop comes back from the config it keeps (config.json's "data2vec" key), else from its image
    processor (the shorter side it resizes to); a folder whose processor does no shorter-side resize and centre
    crop (facebook/data2vec-vision-*-ft1k: a square resize, no crop), or that has none, gets Meta's 224 / 256."""
    head = LinearClassifier(32, 2, 0.0, ["cat", "dog"])
    for crop_pct in (0.875, 1.0):
        out = to_hf(_native(tmp_path / str(crop_pct), "image-tiny", [*IMAGE, f"data.eval_crop_pct={crop_pct}"], head),
                    tmp_path / f"hf-{crop_pct}")
        assert data2vec.load(from_hf(out, tmp_path / f"back-{crop_pct}")).cfg.data.eval_crop_pct == crop_pct
        config = json.loads((out / "config.json").read_text())
        del config["data2vec"]
        (out / "config.json").write_text(json.dumps(config))
        cfg = data2vec.load(from_hf(out, tmp_path / f"bare-{crop_pct}")).cfg
        assert ImageTransform(size=32, train=False, crop_pct=cfg.data.eval_crop_pct).eval_resize == int(32 / crop_pct)
    released = {"do_center_crop": False, "do_normalize": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5], "resample": 2, "size": 32, "crop_size": 32,
                "feature_extractor_type": "BeitFeatureExtractor"}
    (out / "preprocessor_config.json").write_text(json.dumps(released))
    assert data2vec.load(from_hf(out, tmp_path / "released")).cfg.data.eval_crop_pct == 224 / 256
    (out / "preprocessor_config.json").unlink()
    assert data2vec.load(from_hf(out, tmp_path / "none")).cfg.data.eval_crop_pct == 224 / 256


def _norm(folder) -> tuple[list[float], list[float]]:
    cfg = data2vec.load(folder).cfg
    return cfg.data.image_mean, cfg.data.image_std


@pytest.mark.parametrize("head", [True, False])
def test_from_hf_reads_the_normalisation_back(tmp_path, head, caplog):
    """Our export's data.image_mean / image_std come back from the config it keeps, else from its image processor;
    the released facebook/data2vec-vision-* processors' 0.5 / 0.5 (BeitFeatureExtractor's defaults, also when left
    out), a single number for all channels, do_normalize false (0 / 1); a processor that rescales other than /255,
    or none, gets Meta's: 0.5 / 0.5 for a classifier (v1 fine-tuning), ImageNet's for an encoder (v1 pretraining)."""
    classifier = LinearClassifier(32, 2, 0.0, ["cat", "dog"]) if head else None
    ours = ([0.4, 0.5, 0.6], [0.3, 0.2, 0.1])
    out = to_hf(_native(tmp_path, "image-tiny", [*IMAGE, f"data.image_mean={ours[0]}", f"data.image_std={ours[1]}"],
                        classifier), tmp_path / "hf")
    assert _norm(from_hf(out, tmp_path / "back")) == ours
    config = json.loads((out / "config.json").read_text())
    del config["data2vec"]
    (out / "config.json").write_text(json.dumps(config))
    assert _norm(from_hf(out, tmp_path / "bare")) == ours  # from the processor alone
    processor = out / "preprocessor_config.json"
    released = {"do_center_crop": False, "do_normalize": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5], "resample": 2, "size": 32, "crop_size": 32,
                "feature_extractor_type": "BeitFeatureExtractor"}
    cases = [(released, INCEPTION_NORM), ({"do_resize": True, "size": 32}, INCEPTION_NORM),
             ({"image_mean": 0.25, "image_std": 0.75}, ([0.25] * 3, [0.75] * 3)),
             ({**released, "do_normalize": False}, ([0.0] * 3, [1.0] * 3))]
    for i, (proc, want) in enumerate(cases):
        processor.write_text(json.dumps(proc))
        assert _norm(from_hf(out, tmp_path / f"case{i}")) == want, proc
    meta = INCEPTION_NORM if head else IMAGENET_NORM
    processor.write_text(json.dumps({**released, "rescale_factor": 1.0}))
    with caplog.at_level(logging.WARNING, logger="data2vec"):
        assert _norm(from_hf(out, tmp_path / "rescaled")) == meta
    assert "not 1/255" in caplog.text
    processor.unlink()
    assert _norm(from_hf(out, tmp_path / "none")) == meta


# ---------------------------------------------------------------------------------------------------- speech

AUDIO = ["audio.conv_dim=[16,16,16,16,16,16,16]", "model.dim=32", "model.heads=4", "model.depth=2",
         "audio.pos_conv_groups=4", "audio.pos_conv_kernel=5", "objective.top_k=2"]


def _waves(n: int = 2) -> list[np.ndarray]:
    """Chirps under a slow envelope, with noise: frames that differ, 1 s and 1.47 s at 16 kHz."""
    rng = np.random.default_rng(1)
    out = []
    for samples in (16000, 23456)[:n]:
        t = np.arange(samples) / 16000
        wave = 0.5 * np.sin(2 * np.pi * 440 * t * (1 + 3 * t)) * np.sin(2 * np.pi * 3 * t)
        out.append((wave + 0.05 * rng.standard_normal(samples)).astype(np.float32))
    return out


def _our_input(wave: np.ndarray, normalize: bool) -> torch.Tensor:
    x = torch.from_numpy(wave)
    return (normalize_wave(x) if normalize else x)[None]


@pytest.mark.parametrize("normalize", [True, False])
def test_ctc_export_transcribes_like_our_greedy_decoding(tmp_path, normalize, one_thread):
    """A random encoder's frames barely differ, so the CTC head reads them along directions spread over the
    first utterance's frames: transcripts with blanks, repeats and word boundaries."""
    cfg = build_config("audio-tiny", [*AUDIO, f"audio.normalize={str(normalize).lower()}"])
    torch.manual_seed(0)
    model = Data2Vec(cfg)
    randomise(model.student, seed=3)
    vocab = ["<blank>", "|", "a", "b", "c", "d", "e"]
    waves = _waves()
    with torch.no_grad():
        frames = model.student(_our_input(waves[0], normalize)).last_hidden_state[0]  # [T, D]
        mean = frames.mean(0)
        directions = frames[torch.linspace(0, len(frames) - 1, len(vocab)).long()] - mean
        head = CTCHead(32, len(vocab), 0.0, vocab)
        head.fc.weight.copy_(directions / directions.norm(dim=1, keepdim=True) * 200)
        head.fc.bias.copy_(-(head.fc.weight @ mean))
    path = save_checkpoint(tmp_path / "ours", 0, model.state_dict(), {"step": 0}, cfg,
                           extra_files={HEAD_FILE: head_file(head)})
    out = to_hf(path, tmp_path / "hf")
    pipe = transformers.pipeline("automatic-speech-recognition", model=str(out))
    classifier = Classifier(data2vec.load(path), load_head(path)).eval()
    transcripts = []
    for wave in waves:
        with torch.no_grad():
            ours = decode(greedy_decode(classifier(_our_input(wave, normalize)))[0], vocab)
        assert pipe(wave)["text"] == ours
        transcripts.append(ours)
    assert all(" " in t and len(set(t)) > 3 for t in transcripts), transcripts  # not a trivial transcript


def test_audio_classifier_export_gives_our_scores_in_the_pipeline(tmp_path, one_thread):
    head = LinearClassifier(32, 3, 0.0, ["hi", "lo", "mid"])
    randomise(head, seed=4)
    with torch.no_grad():
        head.fc.weight.mul_(10)  # scores far from uniform
    path = _native(tmp_path, "audio-tiny", AUDIO, head)
    out = to_hf(path, tmp_path / "hf")
    pipe = transformers.pipeline("audio-classification", model=str(out))
    classifier = Classifier(data2vec.load(path), load_head(path)).eval()
    for wave in _waves():
        with torch.no_grad():
            probs = classifier(_our_input(wave, True)).softmax(-1)
        _assert_same_scores([pipe(wave, top_k=None)], probs, head.labels)


# ---------------------------------------------------------------------------------------------------- docs

def test_huggingface_doc_pipeline_snippet_runs(text_runs, tmp_path, monkeypatch, one_thread):
    """docs/huggingface.md's pipeline block, on the exports of this module in the folders it names."""
    import shutil

    from PIL import Image
    from test_docs import ROOT, code_blocks

    [(_, snippet)] = [b for b in code_blocks((ROOT / "docs" / "huggingface.md").read_text(), "python")
                      if b[0] == "In transformers pipelines"]
    monkeypatch.chdir(tmp_path)
    shutil.copytree(text_runs["linear"][1], "hf/my-text")
    shutil.copytree(text_runs["sentence"][1], "hf/my-text-sentence-head")
    image_head, audio_head = LinearClassifier(32, 2, 0.0, ["cat", "dog"]), LinearClassifier(32, 2, 0.0, ["hi", "lo"])
    to_hf(_native(tmp_path / "image", "image-tiny", IMAGE, image_head), "hf/my-image")
    to_hf(_native(tmp_path / "audio", "audio-tiny", AUDIO, audio_head), "hf/my-audio-cls")
    to_hf(_native(tmp_path / "ctc", "audio-tiny", AUDIO, CTCHead(32, 3, 0.0, ["<blank>", "|", "a"])), "hf/my-ctc")
    Image.fromarray(np.full((40, 48, 3), 120, np.uint8)).save("cat.jpg")
    exec(compile(snippet, "docs/huggingface.md", "exec"), {"waveform_16k": _waves(1)[0]})  # noqa: S102 - our docs
