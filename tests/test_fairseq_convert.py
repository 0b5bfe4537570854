"""fairseq data2vec v1 checkpoints -> data2vec run folders (`data2vec convert --from-fairseq`).

The fixtures in tests/fixtures/fairseq_ckpt/ are tiny models written by fairseq's own code and
`checkpoint_utils.torch_persistent_save` (the released files' layout: omegaconf classes in the pickle), with
fairseq's outputs on a fixed input (`benchmarks/fairseq_parity/make_checkpoints.py`). Here data2vec converts the
files without fairseq or omegaconf and must compute the same outputs within 1e-5.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from data2vec.errors import Data2VecError
from data2vec.interop.fairseq import from_fairseq
from data2vec.interop.fairseq.reader import read_checkpoint

FIXTURES = Path(__file__).parent / "fixtures" / "fairseq_ckpt"
ATOL = 1e-5

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, Path]:
    """Each v1 fixture converted once: kind -> run folder."""
    root = tmp_path_factory.mktemp("fairseq")
    runs = {"v1_audio": None, "v1_audio_ctc": None, "v1_text": FIXTURES / "v1_text_dict"}
    for name, dictionary in runs.items():
        from_fairseq(FIXTURES / f"{name}.pt", root / name, dictionary)
    return {name: root / name for name in runs}


def outputs(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / f"{name}.safetensors"))


def _close(ours: torch.Tensor, theirs: torch.Tensor, keep: torch.Tensor) -> None:
    """Equal within ATOL where `keep` (real frames / tokens) is true."""
    torch.testing.assert_close(ours[keep], theirs[keep], rtol=0, atol=ATOL)


@pytest.mark.parametrize("which", ["student", "teacher"])
def test_v1_speech_matches_fairseq(converted, which):
    import data2vec

    t = outputs("v1_audio")
    encoder = data2vec.load(converted["v1_audio"], which=which)
    with torch.no_grad():
        out = encoder(t["in.source"], padding_mask=t["in.padding_mask"])
    real = ~t["out.frame_padding"]
    assert torch.equal(out.padding_mask, t["out.frame_padding"])
    _close(out.last_hidden_state, t[f"out.{which}"], real)


def test_v1_speech_teacher_is_the_files_ema(converted):
    """The teacher is fairseq's `_ema`, not a copy of the student (the fixture's EMA differs)."""
    import data2vec

    t = outputs("v1_audio")
    assert (t["out.student"] - t["out.teacher"]).abs().max() > 0.01
    student, teacher = data2vec.load(converted["v1_audio"]), data2vec.load(converted["v1_audio"], "teacher")
    assert not torch.equal(student.encoder.blocks[0].attn.qkv.weight, teacher.encoder.blocks[0].attn.qkv.weight)


def test_v1_speech_ctc_logits_match_fairseq(converted):
    import data2vec
    from data2vec.nn.heads import load_head

    t = outputs("v1_audio_ctc")
    encoder, head = data2vec.load(converted["v1_audio_ctc"]), load_head(converted["v1_audio_ctc"])
    with torch.no_grad():
        out = encoder(t["in.source"], padding_mask=t["in.padding_mask"])
        logits = head(out.last_hidden_state, None)
    _close(logits, t["out.logits"], ~t["out.frame_padding"])
    assert head.labels[:5] == ["<blank>", "<pad>", "</s>", "<unk>", "|"] and len(head.labels) == 32
    record = json.loads((converted["v1_audio_ctc"] / "checkpoints" / "step_00000000" / "fairseq.json").read_text())
    # the fine-tuning-only settings are listed, not dropped silently
    assert any(item.startswith("model.mask_channel_prob=0.5") for item in record["not_carried"])
    assert record["cfg"]["model"]["w2v_args"]["model"]["_name"] == "data2vec_audio"


def test_v1_text_tokenizer_and_features_match_fairseq(converted):
    import data2vec
    from data2vec.checkpoint import load_checkpoint
    from data2vec.data.text import batch_tokens, checked_tokenizer

    t, meta = outputs("v1_text"), json.loads((FIXTURES / "v1_text.json").read_text())
    _, _, cfg = load_checkpoint(converted["v1_text"], with_state=False)
    tokenizer, ids = checked_tokenizer(cfg.text.tokenizer, cfg.text)
    tokens, padding = batch_tokens(meta["texts"], tokenizer, cfg.text.block_size, ids)
    assert torch.equal(tokens, t["in.tokens"])  # fairseq's BPE, then dict.txt's ids
    for which in ("student", "teacher"):
        with torch.no_grad():
            out = data2vec.load(converted["v1_text"], which=which)(tokens, padding_mask=padding)
        _close(out.last_hidden_state, t[f"out.{which}"], ~padding)


def test_converted_text_embeds_from_the_cli(converted, tmp_path):
    """The run folder carries its tokenizer: `data2vec embed` works on it as on a run of ours."""
    from data2vec.cli import main

    (tmp_path / "lines.txt").write_text("The quick brown fox\nZebras?\n")
    assert main(["embed", str(converted["v1_text"]), str(tmp_path / "lines.txt"), "--out", str(tmp_path / "e.npy")]) == 0
    assert np.load(tmp_path / "e.npy").shape == (2, 8)


def test_converted_config_is_the_files(converted):
    from data2vec.checkpoint import load_checkpoint

    _, _, audio = load_checkpoint(converted["v1_audio"], with_state=False)
    assert (audio.model.dim, audio.model.depth, audio.model.layer_drop) == (8, 3, 0.05)
    assert (audio.objective.top_k, audio.objective.per_layer_norm, audio.objective.ema_scope) == (2, "instance",
                                                                                                  "layers")
    assert (audio.objective.ema_anneal_steps, audio.train.max_steps, audio.train.lr) == (1000, 1000, 5e-4)
    _, _, text = load_checkpoint(converted["v1_text"], with_state=False)
    assert (text.objective.head_layers, text.objective.loss_beta, text.objective.loss_scale) == (2, 4.0, "none")
    assert (text.masking.token_prob, text.masking.token_span, text.train.warmup_steps) == (0.35, 4, 100)


def test_converted_speech_keeps_the_files_tri_stage_schedule(converted):
    """The fixtures hold fairseq's whole TriStageLRScheduleConfig, as hydra writes it into a released file:
    pretraining base_librispeech.yaml's phases (0.03, 0.9, 0.07); the CTC fine-tune's wav2vec 2.0 ones."""
    from data2vec.checkpoint import load_checkpoint
    from data2vec.train.optim import tri_stage_steps

    sched = read_checkpoint(FIXTURES / "v1_audio.pt")["cfg"]["lr_scheduler"]
    assert sched["_name"] == "tri_stage" and sched["phase_ratio"] == [0.03, 0.9, 0.07]
    tc = load_checkpoint(converted["v1_audio"], with_state=False)[2].train
    assert (tc.schedule, tc.phase_ratio, tc.init_lr_scale, tc.final_lr_scale) == ("tri_stage", [0.03, 0.9, 0.07],
                                                                                  0.01, 0.01)
    assert tri_stage_steps(tc) == (30, 900, 70)  # fairseq's int(1000 x ratio)
    record = json.loads(next(converted["v1_audio"].rglob("fairseq.json")).read_text())
    assert not any("lr_scheduler" in item for item in record["not_carried"])
    assert load_checkpoint(converted["v1_text"], with_state=False)[2].train.schedule == "cosine"  # fairseq's cosine


@pytest.mark.parametrize("sched,want", [
    ({"_name": "tri_stage", "phase_ratio": [0.1, 0.4, 0.5], "final_lr_scale": 0.05},
     ["train.schedule=tri_stage", "train.phase_ratio=[0.1, 0.4, 0.5]", "train.init_lr_scale=0.01",
      "train.final_lr_scale=0.05"]),
    ({"_name": "tri_stage", "phase_ratio": "(0.1, 0.4, 0.5)"},  # an argparse-era file
     ["train.schedule=tri_stage", "train.phase_ratio=[0.1, 0.4, 0.5]", "train.init_lr_scale=0.01",
      "train.final_lr_scale=0.01"]),
    ({"_name": "tri_stage", "phase_ratio": None, "warmup_steps": 250, "hold_steps": 250, "decay_steps": 500},
     ["train.schedule=tri_stage", "train.phase_ratio=[0.25, 0.25, 0.5]", "train.init_lr_scale=0.01",
      "train.final_lr_scale=0.01"]),
    ({"_name": "tri_stage", "phase_ratio": None, "warmup_steps": 100, "hold_steps": 0, "decay_steps": 50},
     ["train.schedule=cosine"]),  # phases that do not fill max_update: not carried, listed
    ({"_name": "cosine", "warmup_updates": 40}, ["train.schedule=cosine", "train.warmup_steps=40"]),
])
def test_fairseq_schedulers_map_onto_train_schedule(sched, want):
    from data2vec.config import build_config
    from data2vec.interop.fairseq.common import train_overrides

    dropped: list[str] = []
    out = train_overrides({"optimization": {"max_update": 1000}, "lr_scheduler": sched}, dropped)
    assert out[1:] == want and out[0] == "train.max_steps=1000"
    assert bool(dropped) == (want == ["train.schedule=cosine"] and sched["_name"] == "tri_stage")
    tc = build_config("audio-base", out).train  # the overrides build a valid config
    if tc.schedule == "tri_stage":
        assert sum(tc.phase_ratio) == pytest.approx(1.0)


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp/data2vec-fairseq-pickle-ran")


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    MARKER.unlink(missing_ok=True)
    torch.save({"model": {"w": torch.zeros(1)}, "cfg": {"model": {"_name": "data2vec_audio"}}, "x": RunsCode()},
               tmp_path / "evil.pt")
    with pytest.raises(Data2VecError, match=r"global '(posix|os)\.system'"):
        from_fairseq(tmp_path / "evil.pt", tmp_path / "run")
    assert not MARKER.exists()


class ObjectArray:
    def __reduce__(self):  # an object array over the file's bytes: numpy would dereference 0x4141414141414141
        return (np.ndarray, ((1,), np.dtype(object), b"A" * 8))


def test_a_pickle_that_would_forge_numpy_objects_is_refused(tmp_path):
    torch.save({"model": {"w": torch.zeros(1)}, "x": ObjectArray()}, tmp_path / "evil.pt", pickle_protocol=4)
    with pytest.raises(Data2VecError, match=r"global 'numpy\.ndarray'"):
        read_checkpoint(tmp_path / "evil.pt")


def test_a_pickle_that_would_set_attributes_of_torchs_functions_is_refused(tmp_path):
    """BUILD on an allowed function would set its attributes (`__defaults__`, `_get_layout.cache`) for the whole
    process; written in torch's legacy (not zip) layout: magic, protocol, system info, the object, storage keys."""
    import pickle

    with open(tmp_path / "evil.pt", "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                                                      "type_sizes": {"short": 2, "int": 4, "long": 4}}):
            pickle.dump(header, f, protocol=2)
        name = b"data2vec_was_here"  # the state (None, {name: 1}), BUILD on the global
        f.write(b"\x80\x02ctorch.serialization\n_get_layout\nN}X" + len(name).to_bytes(4, "little") + name + b"K\x01s\x86b.")
        pickle.dump([], f, protocol=2)
    with pytest.raises(Data2VecError, match=r"attributes of the function 'torch\.serialization\._get_layout'"):
        read_checkpoint(tmp_path / "evil.pt")
    assert not hasattr(torch.serialization._get_layout, "data2vec_was_here")


def test_torchs_tar_layout_is_refused_before_its_links_are_followed(tmp_path):
    import pickle
    import tarfile

    (tmp_path / "elsewhere.pkl").write_bytes(pickle.dumps(1, protocol=2))  # torch would read it as the storages
    with tarfile.open(tmp_path / "evil.pt", "w", format=tarfile.PAX_FORMAT) as tar:
        link = tarfile.TarInfo("storages")
        link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path / "elsewhere.pkl")
        tar.addfile(link)
    with pytest.raises(Data2VecError, match="tar layout"):
        read_checkpoint(tmp_path / "evil.pt")


def test_a_folder_or_safetensors_given_as_the_fairseq_file_is_named_as_one(tmp_path):
    with pytest.raises(Data2VecError, match="is a folder"):
        read_checkpoint(tmp_path)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(Data2VecError, match="is a safetensors file"):
        read_checkpoint(tmp_path / "model.safetensors")


def test_a_pickle_holding_a_cycle_is_one_line(tmp_path):
    cycle: dict = {}
    cycle["self"] = cycle
    torch.save({"model": {"w": torch.zeros(1)}, "x": cycle}, tmp_path / "cycle.pt")
    with pytest.raises(Data2VecError, match="RecursionError"):
        read_checkpoint(tmp_path / "cycle.pt")


class BadSize:
    def __reduce__(self):  # torch.Size of a string: the allowed callable raises TypeError
        return (torch.Size, ("not sizes",))


def test_a_pickle_whose_allowed_calls_fail_is_one_line(tmp_path):
    torch.save({"model": {"w": torch.zeros(1)}, "x": BadSize()}, tmp_path / "bad.pt")
    with pytest.raises(Data2VecError, match="not a readable torch checkpoint \\(TypeError"):
        read_checkpoint(tmp_path / "bad.pt")


def test_an_out_folder_holding_checkpoints_stops_before_the_file_is_read(converted, tmp_path):
    (tmp_path / "not_a_checkpoint.pt").write_text("x")
    with pytest.raises(Data2VecError, match="already holds checkpoints"):
        from_fairseq(tmp_path / "not_a_checkpoint.pt", converted["v1_audio"])


def test_reader_gives_plain_data_without_omegaconf():
    ckpt = read_checkpoint(FIXTURES / "v1_audio.pt")
    assert type(ckpt["cfg"]) is dict and type(ckpt["cfg"]["model"]) is dict
    assert ckpt["cfg"]["model"]["_name"] == "data2vec_audio" and isinstance(ckpt["model"]["_ema"], dict)
    assert isinstance(ckpt["optimizer_history"], list)


def test_reader_reads_namespace_args_and_torchs_legacy_format(tmp_path):
    """Pre-hydra files hold an argparse.Namespace; torch's pre-1.6 format is not a zip: both read as plain data,
    and conversion asks for a file with a hydra config."""
    import argparse

    args = argparse.Namespace(arch="roberta", lr=[1e-4], _name="roberta")
    torch.save({"model": {"w": torch.ones(2)}, "cfg": None, "args": args}, tmp_path / "old.pt",
               _use_new_zipfile_serialization=False)
    ckpt = read_checkpoint(tmp_path / "old.pt")
    assert ckpt["args"] == {"arch": "roberta", "lr": [1e-4], "_name": "roberta"}
    assert torch.equal(ckpt["model"]["w"], torch.ones(2))
    with pytest.raises(Data2VecError, match="no hydra config"):
        from_fairseq(tmp_path / "old.pt", tmp_path / "run")


def _edited(tmp_path: Path, name: str, edit) -> Path:
    """The fixture with its (plain) config edited, saved again (fairseq's newer files hold plain dicts too)."""
    ckpt = read_checkpoint(FIXTURES / f"{name}.pt")
    edit(ckpt["cfg"])
    torch.save(ckpt, tmp_path / f"{name}.pt")
    return tmp_path / f"{name}.pt"


@pytest.mark.parametrize(("edit", "named"), [
    (lambda c: c["model"].update(layer_norm_first=True), "model.layer_norm_first=True"),
    (lambda c: c["model"].update(loss_scale=0.5), "model.loss_scale=0.5"),
    (lambda c: c["model"].update(new_option=3), "model.new_option=3"),
])
def test_a_setting_data2vec_cannot_express_stops_naming_it(tmp_path, edit, named):
    with pytest.raises(Data2VecError, match=named.replace(".", r"\.")):
        from_fairseq(_edited(tmp_path, "v1_audio", edit), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("extra", ["encoder.layers.0.adapter.fc.weight", "encoder.layers.3.fc1.weight"])
def test_a_tensor_data2vec_has_no_place_for_stops_naming_it(tmp_path, extra):
    ckpt = read_checkpoint(FIXTURES / "v1_audio.pt")
    ckpt["model"][extra] = torch.zeros(2)  # an adapter; a block beyond the config's depth of 3
    torch.save(ckpt, tmp_path / "extra.pt")
    with pytest.raises(Data2VecError, match=f"no place for \\({extra}\\)"):
        from_fairseq(tmp_path / "extra.pt", tmp_path / "run")


def test_text_settings_are_checked_in_nested_sections(tmp_path):
    edit = lambda c: c["model"]["transformer"]["encoder"].update(normalize_before=True)
    with pytest.raises(Data2VecError, match=r"model\.transformer\.encoder\.normalize_before=True"):
        from_fairseq(_edited(tmp_path, "v1_text", edit), tmp_path / "run")


def test_wrong_dictionaries_are_named(tmp_path):
    with pytest.raises(Data2VecError, match="dict.txt"):
        from_fairseq(FIXTURES / "v1_text.pt", tmp_path / "a", tmp_path)  # a folder without the files
    (tmp_path / "dict.ltr.txt").write_text("A 5\nB 3\n")
    with pytest.raises(Data2VecError, match="has 32"):
        from_fairseq(FIXTURES / "v1_audio_ctc.pt", tmp_path / "b", tmp_path / "dict.ltr.txt")


def test_cli_converts_and_the_run_resumes_one_step(tmp_path):
    """`data2vec convert --from-fairseq`, then pretraining continues from the converted step 0: one step."""
    import soundfile as sf

    from data2vec.checkpoint import load_checkpoint
    from data2vec.cli import main
    from data2vec.config import build_config
    from data2vec.tasks.pretrain import pretrain

    run = tmp_path / "run"
    assert main(["convert", "--from-fairseq", str(FIXTURES / "v1_audio.pt"), "--out", str(run)]) == 0
    assert main(["convert", "--from-fairseq", str(FIXTURES / "v1_audio.pt"), "--out", str(run)]) == 2  # not over it
    rng = np.random.default_rng(0)
    for i in range(4):
        (tmp_path / "wav" / "train").mkdir(parents=True, exist_ok=True)
        sf.write(tmp_path / "wav" / "train" / f"{i}.wav", rng.normal(0, 0.3, 3000).astype(np.float32), 16000)
    cfg = build_config(str(run / "config.yaml"), [f"data.path={tmp_path / 'wav'}", "data.num_workers=0",
                                                  "train.batch_size=4", "train.max_steps=1", "resume=auto",
                                                  "audio.min_sample_size=0", "audio.max_batch_samples=0",
                                                  "train.precision=fp32"])
    pretrain(cfg, progress=False)
    before, _, _ = load_checkpoint(run / "checkpoints" / "step_00000000", with_state=False)
    after, state, _ = load_checkpoint(run / "checkpoints" / "step_00000001")
    assert state["step"] == 1
    key = "student.encoder.blocks.0.mlp.fc1.weight"
    assert not torch.equal(before[key], after[key])
    assert torch.isfinite(after[key]).all()


def test_to_hf_of_converted_models_computes_fairseqs_outputs(converted, tmp_path):
    """fairseq -> data2vec -> `--to-hf`: transformers' Data2VecAudioForCTC and Data2VecTextModel give fairseq's
    outputs."""
    transformers = pytest.importorskip("transformers")
    from data2vec.interop.hf import to_hf

    t = outputs("v1_audio_ctc")
    ctc = transformers.Data2VecAudioForCTC.from_pretrained(to_hf(converted["v1_audio_ctc"], tmp_path / "ctc")).eval()
    with torch.no_grad():
        logits = ctc(t["in.source"], attention_mask=(~t["in.padding_mask"]).long()).logits
    _close(logits, t["out.logits"], ~t["out.frame_padding"])
    t = outputs("v1_text")
    text = transformers.Data2VecTextModel.from_pretrained(to_hf(converted["v1_text"], tmp_path / "text")).eval()
    real = t["in.tokens"].ne(1)
    with torch.no_grad():
        hidden = text(t["in.tokens"], attention_mask=real.long()).last_hidden_state
    _close(hidden, t["out.student"], real)


def test_interpolations_resolve_against_the_config_root():
    from data2vec.interop.fairseq.reader import resolve_interpolations

    cfg = {"optimization": {"max_update": 7}, "model": {"anneal": "${optimization.max_update}",
                                                        "steps": ["${optimization.max_update}"],
                                                        "missing": "${task.nope}", "loop": "${model.loop}"}}
    model = resolve_interpolations(cfg)["model"]
    assert model == {"anneal": 7, "steps": [7], "missing": "${task.nope}", "loop": "${model.loop}"}


def test_conv_feature_layers_spec_is_read_without_eval():
    from data2vec.interop.fairseq.common import conv_layers

    released = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]"  # wav2vec 2.0 / data2vec Base
    assert conv_layers(released, "k") == [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    with pytest.raises(Data2VecError, match=r"k=\"__import__"):
        conv_layers("__import__('os').system('true')", "k")


def test_converted_ctc_transcribes_in_transformers_pipeline_as_ours(converted, tmp_path):
    """fairseq's CTC blank (<s>, index 0) is the exported tokenizer's pad token, which transformers' CTC
    decoding drops; fairseq's other specials (never a fine-tuning target) print alike on both sides, so the
    `automatic-speech-recognition` pipeline's transcripts are our greedy ones."""
    transformers = pytest.importorskip("transformers")
    import data2vec
    from data2vec.ctc import decode, greedy_decode
    from data2vec.data.audio import normalize_wave
    from data2vec.interop.hf import to_hf
    from data2vec.nn.heads import load_head

    folder = to_hf(converted["v1_audio_ctc"], tmp_path / "hf")
    assert json.loads((folder / "tokenizer_config.json").read_text())["pad_token"] == "<blank>"
    asr = transformers.pipeline("automatic-speech-recognition", model=str(folder))
    encoder, head = data2vec.load(converted["v1_audio_ctc"]), load_head(converted["v1_audio_ctc"])
    t = outputs("v1_audio_ctc")
    for wave, n in zip(t["in.source"], (~t["in.padding_mask"]).sum(1).tolist()):
        wave = normalize_wave(wave[:n])  # what our data pipeline feeds; the pipeline's own norm keeps it
        with torch.no_grad():
            ours = decode(greedy_decode(head(encoder(wave[None]).last_hidden_state, None))[0], head.labels)
        assert asr(wave.numpy())["text"] == ours and len(ours) > 10


def test_numbered_fairseq_enums_read_as_their_names(tmp_path, monkeypatch):
    """A DictConfig holding data2vec 2.0's `Modality.IMAGE` pickles it as (class, 2); the reader gives "IMAGE",
    what fairseq's enum_to_str writes, and a string-valued enum its value."""
    import enum
    import sys
    import types

    module = types.ModuleType("examples.data2vec.data.modality")
    Modality = enum.Enum("Modality", ["AUDIO", "IMAGE", "TEXT"], module=module.__name__)
    Choice = enum.Enum("Choices", {"layer_norm": "layer_norm"}, module=module.__name__)
    module.Modality, module.Choices = Modality, Choice
    names = ["examples", "examples.data2vec", "examples.data2vec.data"]
    for name in names:  # pickle imports the module (and its parents) to check it holds the class
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    torch.save({"model": {}, "cfg": {"model": {"m": Modality.IMAGE, "c": Choice.layer_norm}}}, tmp_path / "e.pt")
    for name in [*names, module.__name__]:  # the reader never imports them
        monkeypatch.delitem(sys.modules, name)
    assert read_checkpoint(tmp_path / "e.pt")["cfg"]["model"] == {"m": "IMAGE", "c": "layer_norm"}
