"""finetune.train_examples: the low-resource setting draws N labelled examples, equal shares per class."""

from collections import Counter

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from data2vec.config import build_config
from data2vec.data.labelled import labelled_set
from data2vec.data.subset import balanced_subset
from data2vec.data.text import load_tokenizer, special_ids, train_tokenizer
from data2vec.errors import Data2VecError


def test_equal_shares_per_class_and_a_short_class_gives_all_it_has():
    labels = [0] * 10 + [1] * 10 + [2] * 2
    keep = balanced_subset(labels, len(labels), 10, seed=0, where="x")
    counts = Counter(labels[i] for i in keep)
    assert len(set(keep)) == 10 and keep == sorted(keep)
    assert counts[2] == 2 and sorted([counts[0], counts[1]]) == [4, 4]  # 10 = 2 + 4 + 4
    keep = balanced_subset(labels, len(labels), 7, seed=0, where="x")
    counts = Counter(labels[i] for i in keep)
    assert sorted(counts.values()) == [2, 2, 3]  # the remainder goes to one class


def test_the_draw_depends_on_the_seed_alone():
    labels = [i % 3 for i in range(300)]
    a = balanced_subset(labels, 300, 30, seed=1, where="x")
    assert a == balanced_subset(labels, 300, 30, seed=1, where="x")
    assert a != balanced_subset(labels, 300, 30, seed=2, where="x")
    unlabelled = balanced_subset(None, 300, 30, seed=1, where="x")
    assert len(set(unlabelled)) == 30 and unlabelled == balanced_subset(None, 300, 30, seed=1, where="x")


@pytest.mark.parametrize("count,message", [(23, "has 22 examples"), (2, "fewer than the 3 classes"),
                                           (-1, "is negative")])
def test_impossible_counts_are_one_line_errors(count, message):
    labels = [0] * 10 + [1] * 10 + [2] * 2
    with pytest.raises(Data2VecError, match=message) as err:
        balanced_subset(labels, len(labels), count, seed=0, where="data/train.tsv")
    assert "finetune.train_examples" in str(err.value) and "\n" not in str(err.value)


def test_text_training_split_is_cut_and_validation_is_not(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat and the dog ran\n" * 50)
    tok = load_tokenizer(train_tokenizer([corpus], 300, tmp_path / "tok")["tokenizer"])
    lines = "".join(f"{'cat' if i % 4 else 'dog'}\tsentence number {i}\n" for i in range(40))  # 30 cat, 10 dog
    (tmp_path / "train.tsv").write_text(lines)
    (tmp_path / "dev.tsv").write_text(lines)
    cfg = build_config("text-tiny-ft", [f"data.path={tmp_path}", "finetune.train_examples=8"])
    train = labelled_set(cfg, "train", tokenizer=(tok, special_ids(tok)))
    valid = labelled_set(cfg, "valid", classes=train.classes, tokenizer=(tok, special_ids(tok)))
    assert len(train) == 8 and Counter(train.labels) == {0: 4, 1: 4} and len(valid) == 40
    assert train.classes == ["cat", "dog"]
    full = labelled_set(build_config("text-tiny-ft", [f"data.path={tmp_path}"]), "train",
                        tokenizer=(tok, special_ids(tok)))
    kept = {tuple(item["ids"].tolist()) for item in train}
    assert kept <= {tuple(item["ids"].tolist()) for item in full}  # examples of the file, not new ones


def test_image_subset_keeps_each_image_with_its_own_label(tmp_path):
    for c, value in (("black", 0), ("white", 255)):
        (tmp_path / "train" / c).mkdir(parents=True)
        (tmp_path / "val" / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(tmp_path / "train" / c / f"{i}.png")
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(tmp_path / "val" / c / "0.png")
    cfg = build_config("image-tiny-ft", ["image.image_size=8", "image.patch_size=4", f"data.path={tmp_path}",
                                         "finetune.train_examples=4"])
    train = labelled_set(cfg, "train")
    assert len(train) == 4 and len(labelled_set(cfg, "valid", classes=train.classes)) == 2
    labels = [train[(i, 0)]["label"] for i in range(4)]
    assert sorted(labels) == [0, 0, 1, 1]
    for i, label in enumerate(labels):  # white images are brighter whatever the normalisation
        assert (train[(i, 0)]["image"].mean() > 0) == (train.classes[label] == "white")


def test_speech_subset_keeps_transcripts_and_labels_with_their_files(tmp_path):
    for word, hz in (("hi", 880.0), ("lo", 220.0)):
        for split in ("train", "test"):
            (tmp_path / split / word).mkdir(parents=True)
        for i in range(6):
            seconds = 0.3 + 0.05 * i + (0.01 if word == "lo" else 0.0)  # the length tells file from file
            wave = 0.5 * np.sin(2 * np.pi * hz * np.arange(int(16000 * seconds)) / 16000)
            sf.write(tmp_path / "train" / word / f"{i}.wav", wave.astype(np.float32), 16000)
        sf.write(tmp_path / "test" / word / "0.wav", wave.astype(np.float32), 16000)
    cls = labelled_set(build_config("audio-tiny-cls", [f"data.path={tmp_path}", "finetune.train_examples=4"]),
                       "train")
    assert len(cls) == 4
    assert sorted(cls.files.labels) == [0, 0, 1, 1]
    for path, label in zip(cls.files.paths, cls.files.labels):
        assert path.parent.name == cls.classes[label]
    ctc = labelled_set(build_config("audio-tiny-ctc", [f"data.path={tmp_path}", "finetune.train_examples=3"]),
                       "train")
    assert len(ctc) == 3 and ctc.classes[1:] == ["|", "h", "i", "l", "o"]
    for path, text in zip(ctc.dataset.files.paths, ctc.texts):
        assert text == path.parent.name
