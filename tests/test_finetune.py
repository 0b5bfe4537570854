"""Fine-tuning end to end on built-in digits and a tiny text set: learns, resumes exactly, freezes, evaluates."""

import json

import pytest
import torch
from safetensors.torch import load_file

import data2vec
from data2vec.checkpoint import resolve_checkpoint
from data2vec.cli import main
from data2vec.config import build_config
from data2vec.nn.heads import load_head
from data2vec.tasks.evaluate import evaluate
from data2vec.tasks.finetune import finetune
from data2vec.tasks.pretrain import pretrain
from conftest import binarised_corpus

# 16 px digits in 8 px patches: four tokens, so a tiny ViT learns the digits in a few dozen steps.
PRE = ["model.dim=32", "model.depth=2", "model.heads=2", "image.image_size=16", "image.patch_size=8",
       "objective.top_k=2", "masking.min_block=1", "train.batch_size=16", "train.warmup_steps=5",
       "train.max_steps=20", "train.log_every=10", "data.num_workers=0"]
FT = ["train.batch_size=32", "train.warmup_steps=3", "train.log_every=1", "data.num_workers=0"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    return pretrain(build_config("image-tiny", [*PRE, f"out={tmp_path_factory.mktemp('pre') / 'run'}"]),
                    progress=False)


def ft(pretrained, out, *extra):
    return build_config("image-tiny-ft", [f"finetune.checkpoint={pretrained}", f"out={out}", *FT, *extra])


def rows(run, split=None):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("split") == split]


@pytest.fixture(scope="module")
def finetuned(pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "run"
    return finetune(ft(pretrained, out, "train.max_steps=30", "train.lr=3e-3", "finetune.eval_every=15",
                       "train.save_every=15"), progress=False)


def test_finetuning_beats_chance_and_writes_a_run_folder(finetuned):
    result = json.loads((finetuned / "results.json").read_text())
    assert result["best"]["accuracy"] > 0.35, result  # chance is 0.1; measured 0.57
    assert [r["step"] for r in rows(finetuned, "valid")] == [15, 30]
    assert [r["step"] for r in rows(finetuned)] == list(range(1, 31))
    assert (finetuned / "config.yaml").is_file() and (finetuned / "best" / "checkpoints").is_dir()
    assert data2vec.load(finetuned).cfg.image.pool_norm  # mean pooling with BEiT's pooler norm
    assert load_head(finetuned).labels == [str(d) for d in range(10)]


def test_evaluate_reports_the_best_checkpoints_metrics(finetuned, tmp_path, capsys):
    best = json.loads((finetuned / "results.json").read_text())["best"]
    got = evaluate(finetuned / "best", out=tmp_path)
    for key in ("accuracy", "f1", "mcc", "top5"):
        assert got[key] == pytest.approx(best[key], abs=1e-6), key
    assert data2vec.evaluate(str(finetuned / "best"))["accuracy"] == got["accuracy"]  # the public API
    argv = ["evaluate", str(finetuned / "best"), "data=builtin:digits", "split=train", "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "top5" in out and json.loads((tmp_path / "eval.json").read_text())["samples"] == 1347


def test_evaluate_data_errors_name_the_option_the_user_gave(finetuned, tmp_path, capsys):
    missing = tmp_path / "nope"
    for given, fix in ((["--data", str(missing)], "set --data PATH to"), ([f"data={missing}"], "set data=PATH to")):
        assert main(["evaluate", str(finetuned / "best"), *given]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"'{missing}'" in err and fix in err, err
        assert "data.path" not in err and "data.eval_path" not in err, err  # keys the command cannot set
    assert main(["evaluate", str(finetuned / "best"), "--data", str(missing), f"data={missing}"]) == 2
    assert "give the data once" in capsys.readouterr().err


def test_hugging_face_round_trip_keeps_the_classifier(finetuned, tmp_path):
    from data2vec.interop.hf import from_hf, to_hf

    hf = to_hf(finetuned / "best", tmp_path / "hf")
    assert json.loads((hf / "config.json").read_text())["architectures"] == ["Data2VecVisionForImageClassification"]
    back = from_hf(hf, tmp_path / "back")
    assert evaluate(back)["accuracy"] == pytest.approx(evaluate(finetuned / "best")["accuracy"])


def test_resume_gives_identical_results(pretrained, tmp_path):
    extra = ["train.max_steps=6", "train.save_every=3", "train.keep_last=5", "finetune.eval_every=3",
             "finetune.mixup=0.8", "finetune.cutmix=1.0", "finetune.drop_path=0.2"]
    full = finetune(ft(pretrained, tmp_path / "full", *extra), progress=False)
    midway = full / "checkpoints" / "step_00000003"
    resumed = finetune(ft(pretrained, tmp_path / "resumed", *extra, f"resume={midway}"), progress=False)
    for name in ("model.safetensors", "head.safetensors"):
        a = load_file(str(full / "checkpoints" / "step_00000006" / name))
        b = load_file(str(resumed / "checkpoints" / "step_00000006" / name))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert [r["loss"] for r in rows(full)[3:]] == [r["loss"] for r in rows(resumed)]
    assert rows(full, "valid")[1] == rows(resumed, "valid")[0]
    more = finetune(build_config("image-tiny-ft", [*FT, f"out={full}", "resume=auto", "train.max_steps=7",
                                                   "finetune.eval_every=0"]), progress=False)  # no checkpoint=
    assert [r["step"] for r in rows(more)][-1] == 7
    assert data2vec.load(more).cfg.finetune.checkpoint == str(pretrained)  # where the run started is kept


def test_frozen_parts_receive_no_updates_while_frozen(pretrained, tmp_path):
    run = finetune(ft(pretrained, tmp_path / "run", "train.max_steps=5", "train.save_every=1", "train.keep_last=9",
                      "finetune.eval_every=0", "finetune.freeze_encoder_steps=2", "finetune.freeze_frontend_steps=4",
                      "train.weight_decay=0.5", "train.lr=1e-2"), progress=False)
    start = {k: v for k, v in load_file(str(resolve_checkpoint(pretrained)
                                            / "model.safetensors")).items() if k.startswith("student.")}

    def at(step):
        return load_file(str(run / "checkpoints" / f"step_{step:08d}" / "model.safetensors"))

    def moved(weights, prefix):
        return {k for k in start if k.startswith(prefix) and k in weights and not torch.equal(weights[k], start[k])}

    front = "student.frontend.patch_embed"
    for step in (1, 2):  # the whole encoder is frozen: only the head learns
        assert not moved(at(step), "student."), step
        assert torch.equal(at(step)["student.frontend.pool_norm.weight"], torch.ones(32))
    for step in (3, 4):  # the blocks learn, the front-end stays
        assert moved(at(step), "student.encoder.blocks") and not moved(at(step), front), step
    assert moved(at(5), front)
    heads = [load_file(str(run / "checkpoints" / f"step_{s:08d}" / "head.safetensors"))["fc.weight"] for s in (1, 2)]
    assert not torch.equal(heads[0], heads[1])


def test_random_init_baseline_keeps_the_architecture_not_the_weights(pretrained, tmp_path):
    run = finetune(ft(pretrained, tmp_path / "run", "train.max_steps=1", "finetune.random_init=true",
                      "finetune.eval_every=0"), progress=False)
    mine, theirs = data2vec.load(run).state_dict(), data2vec.load(pretrained).state_dict()
    assert not torch.equal(mine["encoder.blocks.0.attn.qkv.weight"], theirs["encoder.blocks.0.attn.qkv.weight"])
    assert mine["encoder.blocks.0.attn.qkv.weight"].shape == theirs["encoder.blocks.0.attn.qkv.weight"].shape


def test_user_errors_are_one_line_with_exit_2(pretrained, tmp_path, capsys):
    def error(argv):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    assert "checkpoint=PATH" in error(["finetune", "image-tiny-ft", f"out={tmp_path / 'a'}"])
    assert "no classifier" in error(["evaluate", str(pretrained)])
    assert "data=PATH" in error(["evaluate", str(pretrained), "foo=1"])
    assert "train.strategy=fsdp" in error(["finetune", "image-tiny-ft", f"checkpoint={pretrained}",
                                           f"out={tmp_path / 'c'}", "train.strategy=fsdp"])
    assert "top5 needs more than five classes" in error(
        ["finetune", "image-tiny-ft", f"checkpoint={pretrained}", f"out={tmp_path / 'b'}", "finetune.metric=top5",
         f"data.path={text_set(tmp_path)}", f"data.eval_path={text_set(tmp_path)}"])


def text_set(tmp_path):
    """A folder of labelled images with two classes (for the top-5 error)."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "two"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), 200 * (c == "a"), np.uint8)).save(root / c / "0.png")
    return root


# ---------------------------------------------------------------------------------------------------- text

CORPUS = ("Arrays hold numbers of one type in a grid.\nThe shape gives the size of each axis.\n\n"
          "A tensor is an array that can live on a device.\nGradients flow back through tensor operations.\n\n")


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    folder = binarised_corpus(tmp_path_factory.mktemp("text"), CORPUS * 30, 300)
    run = pretrain(build_config("text-tiny", [
        "model.dim=32", "model.depth=2", "model.heads=2", "objective.top_k=2", "text.vocab_size=300",
        "text.block_size=24", "text.max_positions=26", f"data.path={folder / 'bin'}", "train.batch_size=8",
        "train.max_steps=3", f"out={folder / 'run'}"]), progress=False)
    glue = folder / "glue"
    glue.mkdir()
    header = "index\tsentence1\tsentence2\tlabel\n"
    lines = [f"{i}\t{a}\t{b}\t{int(a == b)}\n" for i, (a, b) in enumerate(
        [("A tensor is an array.", "A tensor is an array."), ("Arrays hold numbers.", "The shape gives the size."),
         ("Gradients flow back.", "Gradients flow back."), ("A grid of numbers.", "A device.")] * 8)]
    (glue / "train.tsv").write_text(header + "".join(lines))
    (glue / "dev.tsv").write_text(header + "".join(lines[:8]))
    return run, glue


def test_text_pairs_fine_tune_and_evaluate_with_the_stored_tokenizer(text_run, tmp_path, capsys):
    pre, glue = text_run
    run = finetune(build_config("text-tiny-ft", [f"finetune.checkpoint={pre}", f"out={tmp_path / 'ft'}",
                                                 f"data.path={glue}", "train.max_steps=4", "train.batch_size=8",
                                                 "finetune.eval_every=2", "finetune.metric=mcc",
                                                 "finetune.head=sentence"]), progress=False)
    best = json.loads((run / "results.json").read_text())["best"]
    assert {"accuracy", "f1", "mcc"} <= set(best) and "top5" not in best
    ckpt = resolve_checkpoint(run / "best")
    assert (ckpt / "tokenizer.json").is_file() and load_head(ckpt).kind == "sentence"
    assert evaluate(run / "best", out=tmp_path)["mcc"] == pytest.approx(best["mcc"], abs=1e-6)
    assert main(["evaluate", str(run / "best"), f"data={glue / 'train.tsv'}", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["samples"] == 32
    assert main(["evaluate", str(run / "best"), "--data", str(glue), "--out", str(tmp_path)]) == 0  # dev.tsv
    assert json.loads((tmp_path / "eval.json").read_text())["samples"] == 8
    (tmp_path / "empty").mkdir()
    capsys.readouterr()
    assert main(["evaluate", str(run / "best"), "--data", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "has no dev.tsv" in err and "(--data FILE)" in err and "data.eval_path" not in err, err
    assert main(["evaluate", str(run / "best"), f"data={tmp_path / 'nope.tsv'}"]) == 2
    err = capsys.readouterr().err
    assert "'" + str(tmp_path / "nope.tsv") + "' does not exist; set data=PATH" in err and "data.path" not in err, err
    from data2vec.interop.hf import to_hf

    to_hf(run / "best", tmp_path / "hf")  # RoBERTa's head: Data2VecTextForSequenceClassification
    linear = finetune(build_config("text-tiny-ft", [f"finetune.checkpoint={pre}", f"out={tmp_path / 'lin'}",
                                                    f"data.path={glue}", "train.max_steps=1", "finetune.head=linear",
                                                    "train.batch_size=8"]), progress=False)
    exported = to_hf(linear, tmp_path / "hf2")  # the mean of the tokens: Data2VecTextModel + shipped head code
    assert json.loads((exported / "config.json").read_text())["model_type"] == "data2vec-text-mean"


def test_rerunning_a_fine_tuning_continues_or_stops_and_never_rewrites(text_run, tmp_path, capsys):
    pre, glue = text_run
    args = ["finetune", "text-tiny-ft", f"checkpoint={pre}", f"out={tmp_path / 'ft'}", f"data.path={glue}",
            "train.max_steps=2", "train.batch_size=8", "finetune.eval_every=2", "--no-progress"]
    assert main(args) == 0
    files = {p: p.read_bytes() for p in (tmp_path / "ft").rglob("*")
             if p.is_file() and p.name != "train.log" and "tensorboard" not in p.parts}
    assert main(args) == 0  # the same command: the finished run has nothing left to do
    assert main([*args, "train.lr=1e-2"]) == 2  # other settings: a one-line error naming the choices
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "train.lr" in err and "resume=auto" in err and "overwrite=true" in err
    assert {p: p.read_bytes() for p in files} == files


def test_text_checkpoint_with_an_image_recipe_or_bad_labels_is_a_one_line_error(text_run, tmp_path, capsys):
    pre, glue = text_run
    assert main(["finetune", "image-tiny-ft", f"checkpoint={pre}", f"out={tmp_path / 'a'}"]) == 2
    assert "use a text fine-tuning recipe" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.tsv").write_text((glue / "train.tsv").read_text())
    (bad / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    assert main(["finetune", "text-tiny-ft", f"checkpoint={pre}", f"out={tmp_path / 'b'}", f"data.path={bad}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dev.tsv:2: label 'maybe'" in err


# ---------------------------------------------------------------------------------------------------- speech

AUDIO = ["audio.conv_dim=[16,16,16,16,16,16,16]", "model.dim=32", "model.heads=4", "model.depth=2",
         "objective.top_k=2", "audio.pos_conv_groups=4", "audio.pos_conv_kernel=5", "data.num_workers=0"]


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """Two 'words' (a high and a low tone of varying length) in train/WORD and test/WORD, and a tiny
    pretrained speech model."""
    import numpy as np
    import soundfile as sf

    root = tmp_path_factory.mktemp("speech")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 4)):
        for word, hz in (("hi", 880.0), ("lo", 220.0)):
            (root / "words" / split / word).mkdir(parents=True)
            for i in range(n):
                t = np.arange(int(16000 * rng.uniform(0.4, 0.8))) / 16000
                wave = 0.5 * np.sin(2 * np.pi * hz * t) + 0.05 * rng.standard_normal(t.size)
                sf.write(root / "words" / split / word / f"{i}.wav", wave.astype(np.float32), 16000)
    pre = pretrain(build_config("audio-tiny", [*AUDIO, f"data.path={root / 'words'}", "train.batch_size=8",
                                               "train.max_steps=3", f"out={root / 'pre'}"]), progress=False)
    return pre, root / "words"


def test_ctc_fine_tuning_transcribes_with_a_frozen_feature_encoder(speech, tmp_path):
    pre, words = speech
    run = finetune(build_config("audio-tiny-ctc", [  # the head learns alone for 30 steps, then everything
        f"finetune.checkpoint={pre}", f"data.path={words}", f"out={tmp_path / 'ctc'}", "train.batch_size=8",
        "train.max_steps=34", "train.warmup_steps=3", "train.lr=3e-2", "train.log_every=1",
        "finetune.freeze_encoder_steps=30", "finetune.eval_every=15"]), progress=False)
    result = json.loads((run / "results.json").read_text())
    assert result["metric"] == "wer" and result["classes"] == ["<blank>", "|", "h", "i", "l", "o"]
    assert result["best"]["cer"] < 0.95, result  # greedy transcripts spell some letters right (measured 0.75)
    got = evaluate(run / "best", out=tmp_path)
    assert got["wer"] == pytest.approx(result["best"]["wer"]) and got["samples"] == 8
    start, end = data2vec.load(pre).state_dict(), data2vec.load(run).state_dict()
    convs = [k for k in start if k.startswith("frontend.feature_extractor.")]
    assert convs and all(torch.equal(start[k], end[k]) for k in convs)  # never trained (freeze_frontend_steps=-1)
    assert not torch.equal(start["encoder.blocks.0.attn.qkv.weight"], end["encoder.blocks.0.attn.qkv.weight"])


def test_spoken_word_classification_and_task_metric_mismatch(speech, tmp_path, capsys):
    pre, words = speech
    run = finetune(build_config("audio-tiny-cls", [
        f"finetune.checkpoint={pre}", f"data.path={words}", f"out={tmp_path / 'cls'}", "train.batch_size=8",
        "train.max_steps=4", "finetune.eval_every=2"]), progress=False)
    assert load_head(run).labels == ["hi", "lo"] and evaluate(run / "best")["samples"] == 8
    assert main(["finetune", "audio-tiny-ctc", f"checkpoint={pre}", f"data.path={words}", f"out={tmp_path / 'x'}",
                 "finetune.metric=accuracy"]) == 2
    assert "does not score finetune.task=ctc" in capsys.readouterr().err


def test_audio_data_keys_come_from_the_fine_tuning_run_even_at_their_defaults():
    from data2vec.config import AudioConfig, build_config
    from data2vec.finetuning.setup import resolve_config

    source = build_config("audio-base", [])  # pretrained on files of at least 2 s
    assert source.audio.min_sample_size == 32000
    cfg = build_config("audio-tiny-ctc", [f"audio.min_sample_size={AudioConfig().min_sample_size}"])
    out = resolve_config(cfg, source, "audio-base")
    assert out.audio.min_sample_size == AudioConfig().min_sample_size  # not silently the checkpoint's 32000
    assert out.audio.conv_dim == source.audio.conv_dim  # the architecture still comes from the checkpoint


def test_labelled_folder_of_only_unreadable_files_stops_with_a_reason(pretrained, tmp_path):
    from data2vec.errors import Data2VecError

    data = tmp_path / "bad"
    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
        for i in range(20):
            (data / c / f"{i}.png").write_bytes(b"not a png")
    cfg = ft(pretrained, tmp_path / "run", f"data.path={data}", f"data.eval_path={data}", "train.batch_size=8",
             "train.max_steps=50", "train.max_bad_steps=3", "finetune.eval_every=0")
    with pytest.raises(Data2VecError, match="3 batches in a row had no readable sample"):
        finetune(cfg, progress=False)


def test_finetune_layer_drop_overrides_the_checkpoints():
    from data2vec.config import build_config
    from data2vec.finetuning.setup import resolve_config

    source = build_config("audio-tiny", ["model.layer_drop=0.2"])
    assert resolve_config(build_config("audio-tiny-ctc", []), source, "x").model.layer_drop == 0.2
    out = resolve_config(build_config("audio-tiny-ctc", ["finetune.layer_drop=0.05"]), source, "x")
    assert out.model.layer_drop == 0.05
    ctc = resolve_config(build_config("audio-base-ctc", []), build_config("audio-base", []), "x").model
    assert (ctc.dropout, ctc.attn_dropout, ctc.activation_dropout, ctc.layer_drop) == (0.0, 0.0, 0.1, 0.05)
