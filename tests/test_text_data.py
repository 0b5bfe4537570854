"""Text data (data/text.py): tokenizer, binarised shards, document blocks, masked samples, collation.

Token-masking statistics (15% chosen, 80/10/10, specials never chosen) are tested on `token_mask` itself in
tests/test_masking.py; here we check the pipeline around it.
"""

import json
import logging

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from data2vec.cli import main
from data2vec.data.labelled_text import read_text_rows, sort_labels
from data2vec.data.text import (SPECIAL_TOKENS, TextBlockDataset, TextClassificationSet, TokenShards, binarize,
                                document_blocks, load_tokenizer, make_collate, special_ids, token_dtype,
                                train_tokenizer)
from data2vec.errors import Data2VecError

TEXT = ("The quick brown fox jumps over the lazy dog.\nA second sentence of the first document.\n\n"
        "Another document starts here, with words the tokenizer has seen.\n\n\n"
        "Third document: arrays, tensors and matrices.\nIt has two lines.\n")


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    corpus = folder / "corpus.txt"
    corpus.write_text(TEXT * 20)
    train_tokenizer([corpus], 300, folder)
    return folder


def _expected_docs(tokenizer, text):
    docs = [d for d in text.split("\n\n") if d.strip()]
    return [[i for line in d.splitlines() if line.strip() for i in tokenizer.encode(line, add_special_tokens=False).ids]
            for d in docs]


def test_trained_tokenizer_has_roberta_specials_first(tok_dir):
    tok = load_tokenizer(tok_dir)
    assert special_ids(tok) == {"bos_id": 0, "pad_id": 1, "eos_id": 2, "mask_id": 4}
    assert tok.get_vocab_size() <= 300


def test_tokenizer_trains_on_invalid_utf8_like_binarize_and_counts_it(tmp_path, caplog):
    # the file-based trainer of `tokenizers` stops at the first invalid byte; ours replaces it, as binarize does
    bad = b"good line\n\xff\xfe broken \xc3 bytes\n\n\n   \nlast doc\n"
    (tmp_path / "bad.txt").write_bytes(bad * 10)
    (tmp_path / "empty.txt").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="data2vec"):
        r = train_tokenizer([tmp_path / "bad.txt", tmp_path / "empty.txt"], 300, tmp_path / "tok")
    assert (r["bad_utf8_lines"], r["empty_lines"], r["empty_files"], r["lines"]) == (10, 30, 1, 30)
    assert "tokenizer train: 10 bad utf8 lines" in caplog.text
    tok = load_tokenizer(r["tokenizer"])
    assert "Ġbroken" in tok.get_vocab()  # learnt from the lines that held bad bytes: replaced, not dropped
    meta = binarize([tmp_path / "bad.txt", tmp_path / "empty.txt"], r["tokenizer"], tmp_path / "bin", progress=False)
    assert {k: meta[k] for k in ("bad_utf8_lines", "empty_lines", "empty_files", "lines")} == \
        {k: r[k] for k in ("bad_utf8_lines", "empty_lines", "empty_files", "lines")}


def test_tokenizer_on_valid_utf8_is_the_one_file_training_gives(tok_dir, tmp_path):
    # reading lines ourselves must not change the tokenizer a clean corpus gets (the built-in demo's, say)
    from tokenizers import ByteLevelBPETokenizer

    reference = ByteLevelBPETokenizer()
    reference.train([str(tok_dir / "corpus.txt")], vocab_size=300, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                    show_progress=False)
    assert load_tokenizer(tok_dir).to_str() == reference._tokenizer.to_str()


def test_tokenizer_on_empty_input_is_a_user_error(tmp_path):
    (tmp_path / "blank.txt").write_text("\n   \n\n")
    with pytest.raises(Data2VecError, match="holds no text") as err:
        train_tokenizer([tmp_path / "blank.txt"], 300, tmp_path / "tok")
    assert "blank.txt" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "tok").exists()


def test_binarize_reads_back_original_ids_across_shards(tok_dir, tmp_path):
    (tmp_path / "a.txt").write_text(TEXT)
    meta = binarize([tmp_path / "a.txt"], tok_dir, tmp_path / "bin", shard_tokens=7, progress=False)
    assert len(meta["shard_sizes"]) > 2 and meta["dtype"] == "uint16"
    shards = TokenShards(tmp_path / "bin")
    expected = _expected_docs(load_tokenizer(tok_dir), TEXT)
    assert shards.num_docs == len(expected) == 3
    for d, ids in enumerate(expected):
        got = shards.tokens(int(shards.docs[d]), int(shards.docs[d + 1]))
        assert got.tolist() == ids
    assert shards.tokens(0, int(shards.docs[-1])).tolist() == sum(expected, [])


def test_token_dtype_is_uint16_when_vocab_fits_else_uint32(tmp_path):
    assert token_dtype(2**16) == np.uint16 and token_dtype(2**16 + 1) == np.uint32
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    vocab.update({f"w{i}": i for i in range(5, 70000)})
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "t.txt").write_text("w5 w69999 w65536\nw70\n")
    meta = binarize([tmp_path / "t.txt"], tmp_path / "tokenizer.json", tmp_path / "bin", progress=False)
    assert meta["dtype"] == "uint32"
    assert TokenShards(tmp_path / "bin").tokens(0, 4).tolist() == [5, 69999, 65536, 70]


def test_bad_utf8_empty_files_and_empty_lines_are_counted(tok_dir, tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"good line\n\xff\xfe broken \xc3 bytes\n\n\n   \nlast doc\n")
    (tmp_path / "empty.txt").write_bytes(b"")
    meta = binarize([tmp_path / "bad.txt", tmp_path / "empty.txt"], tok_dir, tmp_path / "bin", progress=False)
    assert meta["bad_utf8_lines"] == 1 and meta["empty_files"] == 1 and meta["empty_lines"] == 3
    assert meta["documents"] == 2 and meta["lines"] == 3
    on_disk = json.loads((tmp_path / "bin" / "meta.json").read_text())
    assert on_disk["bad_utf8_lines"] == 1


def test_binarize_on_input_without_text_is_a_one_line_error_before_writing(tok_dir, tmp_path, capsys):
    (tmp_path / "blank.txt").write_text("\n   \n\n")
    (tmp_path / "empty.txt").write_bytes(b"")
    argv = ["text", "binarize", str(tmp_path / "blank.txt"), str(tmp_path / "empty.txt"), "--tokenizer",
            str(tok_dir), "--out", str(tmp_path / "bin"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "blank.txt" in err and "holds no text" in err, err
    assert not (tmp_path / "bin").exists()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "shard_00000.bin").write_bytes(b"kept")  # an earlier corpus is left as it was
    with pytest.raises(Data2VecError, match="holds no text"):
        binarize([tmp_path / "blank.txt"], tok_dir, tmp_path / "old", progress=False)
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["shard_00000.bin"]


def test_binarize_missing_input_is_a_user_error(tok_dir, tmp_path):
    with pytest.raises(Data2VecError, match="does not exist"):
        binarize([tmp_path / "nope.txt"], tok_dir, tmp_path / "bin", progress=False)


def test_document_blocks_never_cross_documents():
    blocks = document_blocks(np.array([0, 5, 12, 13]), 4)
    assert blocks.tolist() == [[0, 4], [4, 5], [5, 9], [9, 12], [12, 13]]


@pytest.fixture()
def dataset(tok_dir, tmp_path):
    (tmp_path / "a.txt").write_text(TEXT * 3)
    binarize([tmp_path / "a.txt"], tok_dir, tmp_path / "bin", shard_tokens=50, progress=False)
    ids = special_ids(load_tokenizer(tok_dir))
    return TextBlockDataset(TokenShards(tmp_path / "bin"), 8, seed=0, mask_prob=0.3, random_prob=0.1,
                            keep_prob=0.1, ids=ids, vocab_size=300)


def test_samples_are_wrapped_blocks_and_masks_skip_specials(dataset):
    for i in range(len(dataset)):
        item = dataset[(i, 0)]
        ids, mask = item["ids"], item["mask"]
        assert ids[0] == 0 and ids[-1] == 2 and len(ids) <= 8
        assert not mask[0] and not mask[-1]
        assert torch.equal(item["student_ids"][mask], torch.full((int(mask.sum()),), dataset.ids["mask_id"]))
        assert not (item["student_ids"][[0, -1]] != ids[[0, -1]]).any()


def test_v1_regresses_only_the_positions_whose_input_is_mask(dataset):
    """fairseq's data2vec_text.py regresses ``src_tokens.eq(mask_idx)``: of the chosen tokens, those kept or
    replaced at random are input only. The chosen tokens are redrawn here from the sample's generator."""
    from data2vec.data.seeding import sample_generator
    from data2vec.masking import token_mask

    dataset.random_prob, dataset.keep_prob = 0.3, 0.3  # many chosen tokens that do not become <mask>
    mask_id, unregressed = dataset.ids["mask_id"], 0
    for i in range(len(dataset)):
        item = dataset[(i, 0)]
        specials = [dataset.ids[k] for k in ("bos_id", "pad_id", "eos_id", "mask_id")]
        corrupted, chosen = token_mask(item["ids"][None], dataset.mask_prob, generator=sample_generator(0, 0, i),
                                       mask_id=mask_id, vocab_size=300, special_ids=specials, random_prob=0.3,
                                       keep_prob=0.3)
        assert torch.equal(item["student_ids"], corrupted[0])
        assert torch.equal(item["mask"], chosen[0] & (corrupted[0] == mask_id))
        unregressed += int((chosen[0] & ~item["mask"]).sum())
    assert unregressed > 0  # the case that differs: chosen, but kept or replaced at random
    batch = make_collate(pad_id=1)([dataset[(i, 0)] for i in range(len(dataset))])
    assert torch.equal(batch["mask"], batch["student_inputs"] == mask_id)


def test_samples_are_keyed_by_index_and_epoch(dataset):
    a, b, c = dataset[(3, 0)], dataset[(3, 0)], dataset[(3, 1)]
    assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["student_ids"], b["student_ids"])
    assert any(not torch.equal(dataset[(i, 0)]["mask"], dataset[(i, 1)]["mask"]) for i in range(len(dataset)))
    assert torch.equal(a["ids"], c["ids"])


def test_collate_pads_and_never_masks_padding(dataset):
    items = [dataset[(i, 0)] for i in range(len(dataset))]
    batch = make_collate(pad_id=1)(items)
    lengths = torch.tensor([len(it["ids"]) for it in items])
    assert (batch["padding_mask"].sum(1) == batch["inputs"].shape[1] - lengths).all()
    assert (batch["inputs"][batch["padding_mask"]] == 1).all()
    assert (batch["student_inputs"][batch["padding_mask"]] == 1).all()
    assert not (batch["mask"] & batch["padding_mask"]).any()
    assert batch["label"].tolist() == [-1] * len(items)


def _labelled_text(path, tok_dir) -> TextClassificationSet:
    """A labelled text file as the labelled-data entry point reads it: rows, the file's own labels sorted."""
    rows = read_text_rows(path)
    tokenizer = load_tokenizer(tok_dir)
    return TextClassificationSet(rows, sort_labels({r.label for r in rows}), tokenizer, 16, special_ids(tokenizer),
                                 str(path))


def test_labelled_lines_read_with_fixed_classes(tok_dir, tmp_path):
    (tmp_path / "train.tsv").write_text("b\tsecond document\na\tthe quick fox\n\n")
    data = _labelled_text(tmp_path / "train.tsv", tok_dir)
    assert data.classes == ["a", "b"] and data.labels == [1, 0]
    assert data[0]["ids"][0] == 0 and data[0]["ids"][-1] == 2
    (tmp_path / "bad.tsv").write_text("no tab here\n")
    with pytest.raises(Data2VecError, match="label<TAB>text"):
        _labelled_text(tmp_path / "bad.tsv", tok_dir)


def test_word_order_probe_swaps_one_adjacent_pair_and_keeps_the_words():
    from data2vec.data.builtin_text import word_order_rows

    paragraphs = [f"The model number {w} reads every sentence of the corpus before it predicts the next one."
                  for w in ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")] * 3
    paragraphs += ["Too short.", "this one starts in lower case and has enough words to qualify otherwise."]
    rows = word_order_rows(paragraphs, {"train": 100, "test": 100})
    assert rows == word_order_rows(paragraphs, {"train": 100, "test": 100})  # deterministic
    lines = rows["train"] + rows["test"]
    assert len(lines) == 10  # repeats, short and lower-case sentences dropped
    originals = {p.split()[3]: p.split() for p in paragraphs[:10]}
    for line in lines:
        label, text = line.rstrip("\n").split("\t")
        words = text.split()
        source = originals[next(w for w in originals if w in words)]
        assert sorted(words) == sorted(source)  # a bag of words cannot tell the labels apart
        diff = [i for i, (a, b) in enumerate(zip(words, source)) if a != b]
        if label == "original":
            assert diff == []
        else:
            assert label == "shifted" and len(diff) == 2 and diff[1] == diff[0] + 1
            assert 0 < diff[0] and diff[1] < len(words) - 1


def test_blocks_longer_than_the_models_positions_are_refused_before_any_data_is_read():
    from data2vec.config import build_config
    from data2vec.data.text_source import pretrain_text_dataset

    cfg = build_config("text-tiny", ["text.block_size=200", "data.path=/nonexistent"])  # 128 positions
    with pytest.raises(Data2VecError, match="text.block_size=200 .* raise text.max_positions to 202"):
        pretrain_text_dataset(cfg)
