"""A ``tokenizer.json`` that gives a fairseq text model the ids fairseq gave it.

fairseq's text models (RoBERTa, data2vec) read GPT-2 byte-level BPE (``encoder.json`` token -> GPT-2 id,
``vocab.bpe`` merges), then map each GPT-2 id through their ``dict.txt`` (one ``symbol count`` line per id, after
the four specials ``<s> <pad> </s> <unk>``; the task appends ``<mask>``). Neither file is inside the checkpoint:
the user passes the folder that holds them (``--dict``; fairseq's RoBERTa / data2vec downloads ship all three).
The same BPE with the vocabulary renumbered through ``dict.txt`` is an ordinary `tokenizers` BPE model, provided
``dict.txt`` lists every GPT-2 token (the released one does): fairseq reads a token it lacks as ``<unk>``, which
a ``tokenizer.json`` vocabulary cannot express, so such a dictionary is refused.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from data2vec.errors import Data2VecError

log = logging.getLogger("data2vec")
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


def read_dictionary(path: Path) -> list[str]:
    """The symbols of a fairseq dictionary (``dict.txt``, ``dict.ltr.txt``) in order (``symbol count
    [#fairseq:overwrite]`` lines, read as fairseq's ``Dictionary.add_from_file`` reads them)."""
    symbols = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.rstrip()
        if line.endswith("#fairseq:overwrite"):
            line = line[: -len("#fairseq:overwrite")].rstrip()
        if line:
            symbols.append(line.rsplit(" ", 1)[0])
    return symbols


def tokenizer_files(dictionary: Path | None, vocab_size: int) -> dict[str, bytes]:
    """A converted text model's ``tokenizer.json`` (stored in its checkpoint folder) from `dictionary` (``--dict``);
    {} with a warning where none was given."""
    if dictionary is None:
        log.warning("no --dict given: the converted text model has no tokenizer; embedding or fine-tuning text "
                    "needs one (convert again with --dict FOLDER holding fairseq's dict.txt, encoder.json and "
                    "vocab.bpe, or set text.tokenizer)")
        return {}
    return {"tokenizer.json": fairseq_tokenizer_json(dictionary, vocab_size)}


def fairseq_tokenizer_json(dictionary: Path, vocab_size: int) -> bytes:
    """``tokenizer.json`` content for a model of `vocab_size` embeddings from `dictionary`: a folder holding
    ``dict.txt``, ``encoder.json`` and ``vocab.bpe`` (or the ``dict.txt`` inside such a folder)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    folder = dictionary if dictionary.is_dir() else dictionary.parent
    dict_txt = dictionary if dictionary.is_file() else folder / "dict.txt"
    for path in (dict_txt, folder / "encoder.json", folder / "vocab.bpe"):
        if not path.is_file():
            raise Data2VecError(f"--dict '{dictionary}': '{path}' does not exist; a fairseq text model needs the "
                                "folder holding its dict.txt and GPT-2's encoder.json and vocab.bpe")
    symbols = read_dictionary(dict_txt)
    n = len(SPECIALS) + len(symbols) + 1  # + <mask>, which the task appends
    if n != vocab_size:
        raise Data2VecError(f"--dict '{dict_txt}' gives {n} tokens (4 specials, {len(symbols)} symbols, <mask>) but "
                            f"the model has {vocab_size} embeddings; give the dict.txt it was trained with")
    encoder = json.loads((folder / "encoder.json").read_text(encoding="utf-8"))
    by_gpt2 = {i: token for token, i in encoder.items()}
    vocab = {token: i for i, token in enumerate(SPECIALS)}
    for i, symbol in enumerate(symbols, start=len(SPECIALS)):
        token = by_gpt2.get(int(symbol)) if symbol.isdigit() else None
        vocab[token if token is not None else symbol] = i  # non-id symbols (madeupword0000) stay literal
    vocab["<mask>"] = n - 1
    missing = [token for token in encoder if token not in vocab]
    if missing:  # fairseq maps them to <unk>; a `tokenizers` vocabulary cannot map two tokens to one id
        raise Data2VecError(f"--dict '{dict_txt}' lacks {len(missing)} of encoder.json's tokens (e.g. "
                            f"{missing[0]!r}), which fairseq reads as <unk> and a tokenizer.json cannot; give a "
                            "dict.txt that lists every BPE id (as fairseq's released GPT-2 dict.txt does)")
    lines = (folder / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split()) for line in lines[1:] if line.strip()]  # the first line is a version header
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([*SPECIALS, "<mask>"])
    return tok.to_str().encode()
