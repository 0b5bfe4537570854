import json
import subprocess
import sys

import numpy as np
from PIL import Image

from data2vec.cli import main

TINY = ["model.dim=32", "model.depth=2", "model.heads=2", "image.image_size=16", "image.patch_size=4",
        "objective.top_k=2", "masking.min_block=2", "train.batch_size=16", "data.num_workers=0"]


def test_bad_config_key_exits_2_with_one_line(capsys):
    assert main(["pretrain", "image-tiny", "train.lrr=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.lrr" in err


def test_bad_value_exits_2_when_the_config_is_built_before_a_run_folder(tmp_path, capsys):
    assert main(["pretrain", "text-tiny", "objective.head_layers=0", f"out={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'objective.head_layers'" in err and "at least 1" in err, err
    assert not (tmp_path / "run").exists()


def test_missing_data_path_exits_2(tmp_path, capsys):
    missing = tmp_path / "no-such-folder"
    assert main(["pretrain", "image-tiny", f"data.path={missing}", f"out={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert str(missing) in err and "data.path=" in err and len(err.splitlines()) == 1


def test_module_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "data2vec", "recipes"], capture_output=True, text=True, check=True)
    assert "image-tiny" in proc.stdout.split()


def test_pretrain_probe_embed_from_the_command_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "image-tiny", *TINY, "train.max_steps=3", f"out={run}", "--no-progress"]) == 0
    assert main(["probe", str(run), "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "probe.json").read_text())
    assert 0.0 <= result["linear"] <= 1.0 and 0.0 <= result["knn"] <= 1.0
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 20, 3), 40 * i, dtype=np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "feats.npy"
    assert main(["embed", str(run), str(images), "--out", str(out)]) == 0
    feats = np.load(out)
    assert feats.shape == (3, 32) and np.isfinite(feats).all()
    assert len(out.with_suffix(".txt").read_text().splitlines()) == 3


def test_bench_data_reports_samples_per_second(capsys):
    assert main(["bench", "data", "image-tiny", *TINY, "--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "samples/s" in out and float(out.split("data pipeline:")[1].split()[0]) > 0


def test_importing_data2vec_makes_openmp_threads_sleep_unless_the_user_chose():
    import os
    import subprocess
    import sys

    def policy(env):
        probe = "import data2vec, os; print(os.environ['OMP_WAIT_POLICY'])"
        return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True).stdout.strip()

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert policy(env) == "PASSIVE"
    assert policy({**env, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"


def test_tokenizer_train_on_invalid_utf8_says_how_many_lines_it_replaced(tmp_path, capsys):
    (tmp_path / "c.txt").write_bytes(b"plain words here\nbad \xff byte\n\nmore plain words\n" * 5)
    assert main(["tokenizer", "train", str(tmp_path / "c.txt"), "--vocab-size", "300", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "from 15 lines of 1 file(s); 5 lines with bad UTF-8, 5 empty lines" in out
    (tmp_path / "e.txt").write_text("\n\n")
    assert main(["tokenizer", "train", str(tmp_path / "e.txt"), "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "e.txt" in err and "holds no text" in err


def test_probe_errors_name_the_data_option_not_a_config_key(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "image-tiny", *TINY, "train.max_steps=1", f"out={run}", "--no-progress"]) == 0
    capsys.readouterr()
    for data in (tmp_path / "missing", run / "config.yaml"):  # absent; not a folder
        assert main(["probe", str(run), "--data", str(data)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(data) in err and "--data" in err and "data.path" not in err


def test_probe_of_a_text_run_without_labels_says_what_to_pass(tmp_path, capsys):
    from conftest import binarised_corpus

    binarised_corpus(tmp_path, "the cat sat on the mat\nthe dog ran\n\n" * 30, 300)
    run = tmp_path / "run"
    assert main(["pretrain", "text-tiny", "model.dim=32", "model.depth=2", "model.heads=2", "objective.top_k=2",
                 "text.vocab_size=300", "text.block_size=16", "text.max_positions=18", f"data.path={tmp_path / 'bin'}",
                 "train.batch_size=4", "train.max_steps=1", "data.num_workers=0", f"out={run}", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["probe", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.tsv" in err and "--data" in err and "label<TAB>text" in err
    assert "data.eval_path" not in err and "is a binarised pretraining corpus" in err, err


def test_run_folder_is_printed_by_the_main_process_only(tmp_path, capsys, monkeypatch):
    # torchrun starts one process per rank with RANK set; WORLD_SIZE=1 keeps this one out of a process group
    monkeypatch.setenv("WORLD_SIZE", "1")
    for rank, printed in (("1", False), ("0", True)):
        monkeypatch.setenv("RANK", rank)
        run = tmp_path / f"run{rank}"
        assert main(["pretrain", "image-tiny", *TINY, "train.max_steps=1", f"out={run}", "--no-progress"]) == 0
        assert ("run folder:" in capsys.readouterr().out) is printed
