"""Labelled sets for fine-tuning: GLUE-style text files (TSV / CSV / JSON lines, pairs) and image classes."""

import json

import numpy as np
import pytest
from PIL import Image

from data2vec.config import build_config
from data2vec.data.labelled import TextClassificationSet, labelled_set, read_text_rows, sort_labels, text_file
from data2vec.data.text import special_ids, train_tokenizer
from data2vec.errors import Data2VecError


def test_glue_tsv_with_header_finds_sentence_pair_and_label(tmp_path):
    f = tmp_path / "dev.tsv"
    f.write_text('index\tsentence1\tsentence2\tlabel\n0\tA "quoted" cat.\tA dog.\tnot_entailment\n'
                 "1\tRain falls.\tIt rains.\tentailment\n")
    rows = read_text_rows(f)
    assert [(r.text, r.pair, r.label, r.line) for r in rows] == [
        ('A "quoted" cat.', "A dog.", "not_entailment", 2), ("Rain falls.", "It rains.", "entailment", 3)]


def test_qnli_layout_pairs_question_with_sentence_and_sst2_has_no_pair(tmp_path):
    (tmp_path / "qnli.tsv").write_text("index\tquestion\tsentence\tlabel\n0\tWho?\tHe did.\tentailment\n")
    row = read_text_rows(tmp_path / "qnli.tsv")[0]
    assert (row.text, row.pair) == ("Who?", "He did.")
    (tmp_path / "sst.tsv").write_text("sentence\tlabel\ngood film \t1\n")
    row = read_text_rows(tmp_path / "sst.tsv")[0]
    assert (row.text, row.pair, row.label) == ("good film ", None, "1")


def test_headerless_tsv_csv_and_jsonl(tmp_path):
    (tmp_path / "a.tsv").write_text("pos\tnice\nneg\tbad\n")
    assert [(r.label, r.text) for r in read_text_rows(tmp_path / "a.tsv")] == [("pos", "nice"), ("neg", "bad")]
    (tmp_path / "b.csv").write_text('text,label\n"hello, world",1\n')
    assert [(r.text, r.label) for r in read_text_rows(tmp_path / "b.csv")] == [("hello, world", "1")]
    (tmp_path / "c.jsonl").write_text(json.dumps({"premise": "p", "hypothesis": "h", "label": 2}) + "\n\n")
    row = read_text_rows(tmp_path / "c.jsonl")[0]
    assert (row.text, row.pair, row.label) == ("p", "h", "2")
    (tmp_path / "cola.tsv").write_text("gj04\t1\t\tOur friends won't buy this analysis.\n")  # CoLA: no header
    rows = read_text_rows(tmp_path / "cola.tsv", text_column="3", label_column="1")
    assert (rows[0].text, rows[0].label) == ("Our friends won't buy this analysis.", "1")


@pytest.mark.parametrize("content,name,message", [
    ("sentence\tlabel\ngood\t1\nbad\n", "x.tsv", "x.tsv:3: expected at least 2"),
    ("sentence\tlabel\ngood\t\n", "x.tsv", "x.tsv:2: the label is empty"),
    ('{"text": "a", "label": 1}\n{"text": "b"\n', "x.jsonl", "x.jsonl:2: not valid JSON"),
    ('{"text": "a", "label": 1}\n{"text": "b"}\n', "x.jsonl", "x.jsonl:2: the object has no 'label'"),
    ("idx\tsentence\n0\tgood\n", "x.tsv", "holds the label"),
    ("a\tb\tc\td\n", "x.tsv", "has 4 columns and no header"),
    ("", "x.tsv", "has no rows"),
])
def test_bad_labelled_text_gives_one_line_naming_file_and_line(tmp_path, content, name, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(Data2VecError) as err:
        read_text_rows(tmp_path / name)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_file_and_unknown_column_name_the_fix(tmp_path):
    with pytest.raises(Data2VecError, match="does not exist"):
        read_text_rows(tmp_path / "nope.tsv")
    (tmp_path / "x.tsv").write_text("sentence\tlabel\na\t1\n")
    with pytest.raises(Data2VecError, match="no column 'text2'.*sentence, label"):
        read_text_rows(tmp_path / "x.tsv", text_column="text2")


def test_validation_file_is_found_beside_the_training_file(tmp_path):
    (tmp_path / "train.tsv").write_text("a\tb\n")
    (tmp_path / "dev.tsv").write_text("a\tb\n")
    assert text_file(str(tmp_path), "valid") == tmp_path / "dev.tsv"
    assert text_file(str(tmp_path / "train.tsv"), "valid") == tmp_path / "dev.tsv"
    (tmp_path / "other.tsv").write_text("a\tb\n")
    with pytest.raises(Data2VecError, match="data.eval_path"):
        text_file(str(tmp_path / "other.tsv"), "valid")


def test_labels_sort_numerically_when_they_are_numbers():
    assert sort_labels({"10", "2", "1"}) == ["1", "2", "10"]
    assert sort_labels({"neg", "pos"}) == ["neg", "pos"]


def test_pairs_are_encoded_roberta_style_and_truncated_longest_first(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat\n" * 50)
    tok_path = train_tokenizer([corpus], 300, tmp_path / "tok")["tokenizer"]
    from data2vec.data.text import load_tokenizer

    tok = load_tokenizer(tok_path)
    ids = special_ids(tok)
    (tmp_path / "p.tsv").write_text("sentence1\tsentence2\tlabel\n" + "the cat sat on the mat\tthe cat\tyes\n")
    rows = read_text_rows(tmp_path / "p.tsv")
    full = TextClassificationSet(rows, ["no", "yes"], tok, 64, ids, "p.tsv")[0]["ids"].tolist()
    a, b = tok.encode("the cat sat on the mat", add_special_tokens=False).ids, tok.encode("the cat",
                                                                                       add_special_tokens=False).ids
    assert full == [ids["bos_id"], *a, ids["eos_id"], ids["eos_id"], *b, ids["eos_id"]]
    short = TextClassificationSet(rows, ["no", "yes"], tok, len(b) + 5, ids, "p.tsv")[0]["ids"].tolist()
    assert len(short) == len(b) + 5 and short[-len(b) - 1:-1] == b  # the longer first sentence was cut
    with pytest.raises(Data2VecError, match="p.tsv:2: label 'yes' is not one of the classes"):
        TextClassificationSet(rows, ["a", "b"], tok, 64, ids, "p.tsv")


def test_image_folders_need_classes_and_validation_classes_follow_training(tmp_path):
    for split, classes in (("train", ("cat", "dog")), ("val", ("dog",))):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / split / c / "0.png")
    cfg = build_config("image-tiny-ft", ["image.image_size=8", "image.patch_size=4", f"data.path={tmp_path}"])
    train = labelled_set(cfg, "train")
    valid = labelled_set(cfg, "valid", classes=train.classes)
    assert train.classes == ["cat", "dog"] and valid[0]["label"] == 1  # "dog" keeps its training number
    loose = tmp_path / "loose"
    loose.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(loose / "0.png")
    with pytest.raises(Data2VecError, match="no labels"):
        labelled_set(build_config("image-tiny-ft", [f"data.path={loose}", f"data.eval_path={loose}"]), "train")
    with pytest.raises(Data2VecError, match="data.eval_path"):
        labelled_set(build_config("image-tiny-ft", [f"data.path={loose}"]), "valid")


def test_a_glue_folder_that_fine_tunes_also_probes_with_the_same_rows(tmp_path):
    """One entry point: the probe (eval_dataset) and fine-tuning (labelled_set) read a GLUE-style folder
    (header row, train.tsv and dev.tsv) alike; the probe's test split is numbered by the training classes."""
    from data2vec.data.build import eval_dataset

    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat\nthe dog ran far away\n" * 50)
    tok = train_tokenizer([corpus], 300, tmp_path / "tok")["tokenizer"]
    glue = tmp_path / "glue"
    glue.mkdir()
    (glue / "train.tsv").write_text("sentence\tlabel\nthe cat sat\t1\nthe dog ran\t0\nthe mat\t1\n")
    (glue / "dev.tsv").write_text("sentence\tlabel\nthe dog sat\t1\n")
    overrides = [f"data.path={glue}", f"text.tokenizer={tok}", "text.vocab_size=300", "text.mask_id=4",
                 "text.block_size=16"]
    probe_train = eval_dataset(build_config("text-tiny", overrides), "train")
    probe_test = eval_dataset(build_config("text-tiny", overrides), "test", classes=["0", "1"])
    tuned = labelled_set(build_config("text-tiny-ft", overrides), "train")
    assert probe_train.classes == tuned.classes == ["0", "1"] and probe_train.labels == tuned.labels == [1, 0, 1]
    assert [t.tolist() for t in probe_train.ids] == [t.tolist() for t in tuned.ids]
    assert probe_test.source.endswith("dev.tsv") and probe_test.labels == [1]


def test_the_probe_prefers_test_files_and_fine_tuning_dev_files(tmp_path):
    for name in ("train", "dev", "test"):
        (tmp_path / f"{name}.tsv").write_text("a\tb\n")
    assert text_file(str(tmp_path), "valid") == tmp_path / "dev.tsv"
    assert text_file(str(tmp_path), "test") == tmp_path / "test.tsv"
    (tmp_path / "test.tsv").unlink()
    assert text_file(str(tmp_path), "test") == tmp_path / "dev.tsv"


def test_the_probe_reads_every_training_example_fine_tuning_a_subset():
    from data2vec.data.build import eval_dataset

    cfg = build_config("image-tiny-ft", ["image.image_size=8", "image.patch_size=4", "finetune.train_examples=20"])
    assert len(labelled_set(cfg, "train")) == 20
    assert len(eval_dataset(cfg, "train")) == 1347 and len(eval_dataset(cfg, "test")) == 450


def test_image_validation_and_probe_sets_use_the_evaluation_crop(tmp_path):
    """Fine-tuning's validation split and the probe's splits go through `data.eval_crop_pct`'s transform, the
    training split through the random crop."""
    from data2vec.data.build import eval_dataset
    from data2vec.data.image import eval_image_transform

    for split, classes in (("train", ("cat", "dog")), ("val", ("cat", "dog"))):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            Image.fromarray(np.zeros((12, 8, 3), np.uint8)).save(tmp_path / split / c / "0.png")
    cfg = build_config("image-tiny-ft", ["image.image_size=8", "image.patch_size=4", f"data.path={tmp_path}",
                                         "data.eval_crop_pct=0.5"])
    train, valid = labelled_set(cfg, "train", augment=True), labelled_set(cfg, "valid")
    assert train.transform.train and valid.transform == eval_image_transform(cfg)
    assert valid.transform.eval_resize == 16 and valid[0]["image"].shape == (3, 8, 8)
    assert eval_dataset(cfg, "train").transform == eval_image_transform(cfg)  # the probe's
