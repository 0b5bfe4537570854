"""Text data: tokenizer training, binarised token shards, document blocks with BERT masking, labelled lines.

On disk a binarised corpus is a folder with ``shard_00000.bin, ...`` (raw token ids, uint16 when the
vocabulary fits, else uint32; a document may cross a shard boundary), ``docs.npy`` (int64 ``[N + 1]``
cumulative token offsets of the N documents over the concatenated shards), ``meta.json`` (dtype, shard
sizes, counts) and a copy of the ``tokenizer.json`` that produced it.

Documents are separated by empty lines, and each file ends one. Training samples follow RoBERTa's
DOC-SENTENCES setting: contiguous blocks of up to ``block_size - 2`` tokens that never cross a document
boundary, wrapped in ``<s> ... </s>``.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import Tensor

from data2vec.data.dataset import StepDataset
from data2vec.data.labelled_text import TextRow
from data2vec.data.seeding import sample_generator
from data2vec.errors import Data2VecError
from data2vec.masking import token_choice, token_mask

log = logging.getLogger("data2vec")
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's order: ids 0..4 in a new tokenizer


def train_tokenizer(inputs: list[str | Path], vocab_size: int, out: str | Path, min_frequency: int = 2) -> dict:
    """Train a byte-level BPE tokenizer (GPT-2 / RoBERTa style) on text files or folders; writes
    ``out/tokenizer.json``. The lines are read as `binarize` reads them (:func:`_documents`: invalid UTF-8
    replaced and counted, line ends and empty lines left out), so a file that binarises also trains.
    Returns the counts and ``tokenizer``, the path written."""
    from tokenizers import ByteLevelBPETokenizer

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise Data2VecError(f"--vocab-size {vocab_size} is too small; byte-level BPE needs at least "
                            f"{256 + len(SPECIAL_TOKENS)}")
    files = _text_files(inputs)
    counts = {"files": len(files), "lines": 0, "bad_utf8_lines": 0, "empty_lines": 0, "empty_files": 0}

    def lines() -> Iterator[str]:
        for doc in _documents(files, counts):
            counts["lines"] += len(doc)
            yield from doc

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(lines(), vocab_size=vocab_size, min_frequency=min_frequency,
                            special_tokens=SPECIAL_TOKENS, show_progress=False)
    if counts["lines"] == 0:
        raise Data2VecError(f"tokenizer training input {', '.join(map(str, inputs))} holds no text (only empty "
                            "lines or empty files); give UTF-8 text files")
    _warn_counts("tokenizer train", counts)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    return {**counts, "tokenizer": out / "tokenizer.json"}


def load_tokenizer(path: str | Path):
    """A `tokenizers.Tokenizer` from a ``tokenizer.json`` or a folder holding one."""
    from tokenizers import Tokenizer

    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise Data2VecError(f"tokenizer '{path}' does not exist; train one with `data2vec tokenizer train` or give "
                            "a tokenizer.json (e.g. RoBERTa's)")
    return Tokenizer.from_file(str(path))


def special_ids(tokenizer) -> dict[str, int]:
    """bos / pad / eos / mask ids of a RoBERTa-style tokenizer; an error names the missing token."""
    ids = {}
    for name, token in (("bos_id", "<s>"), ("pad_id", "<pad>"), ("eos_id", "</s>"), ("mask_id", "<mask>")):
        i = tokenizer.token_to_id(token)
        if i is None:
            raise Data2VecError(f"tokenizer has no '{token}' token; data2vec text needs RoBERTa's specials "
                                f"{', '.join(SPECIAL_TOKENS)}")
        ids[name] = i
    return ids


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def _documents(files: Iterable[Path], counts: dict[str, int]) -> Iterator[list[str]]:
    """Stream documents (lists of non-empty lines) from files, counting bad UTF-8, empty lines and files."""
    for path in files:
        doc: list[str] = []
        n_lines = 0
        with open(path, "rb") as fh:
            for raw in fh:
                n_lines += 1
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    counts["bad_utf8_lines"] += 1
                    line = raw.decode("utf-8", errors="replace")
                line = line.rstrip("\r\n")
                if not line.strip():
                    counts["empty_lines"] += 1
                    if doc:
                        yield doc
                        doc = []
                    continue
                doc.append(line)
        if n_lines == 0:
            counts["empty_files"] += 1
        if doc:
            yield doc


def _text_files(inputs: list[str | Path]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ""))
        elif path.is_file():
            files.append(path)
        else:
            raise Data2VecError(f"text input '{item}' does not exist; give text files or folders of .txt files")
    if not files:
        raise Data2VecError(f"no text files found in {', '.join(map(str, inputs))}")
    return files


def binarize(inputs: list[str | Path], tokenizer_path: str | Path, out: str | Path, shard_tokens: int = 2**26,
             progress: bool = True) -> dict:
    """Tokenise text files into memory-mapped shards (see the module docstring); streamed, never the whole
    corpus in memory. Returns the counts also written to ``meta.json``. Input without a token is an error
    before `out` is touched, rather than an empty corpus that only pretraining would reject."""
    from tqdm import tqdm

    tokenizer = load_tokenizer(tokenizer_path)
    files = _text_files(inputs)
    vocab = tokenizer.get_vocab_size()
    dtype = token_dtype(vocab)
    counts = {"files": len(files), "documents": 0, "lines": 0, "tokens": 0, "bad_utf8_lines": 0, "empty_lines": 0,
              "empty_files": 0}
    bar = tqdm(total=sum(f.stat().st_size for f in files), unit="B", unit_scale=True, desc="binarize",
               disable=not progress)

    def encoded() -> Iterator[np.ndarray]:
        """The token ids of each document that has any."""
        for doc in _documents(files, counts):
            ids = np.fromiter((i for enc in tokenizer.encode_batch(doc, add_special_tokens=False) for i in enc.ids),
                              dtype=np.int64)
            counts["lines"] += len(doc)
            bar.update(sum(len(line.encode("utf-8", errors="replace")) + 1 for line in doc))
            if len(ids):
                yield ids

    documents = encoded()
    first = next(documents, None)
    if first is None:
        bar.close()
        raise Data2VecError(f"binarize input {', '.join(map(str, inputs))} holds no text (only empty lines or empty "
                            "files); give UTF-8 text files, documents separated by empty lines")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("shard_*.bin"):
        old.unlink()
    shard_sizes: list[int] = []
    offsets = [0]
    buffer: list[np.ndarray] = []
    buffered = 0

    def flush(final: bool = False) -> None:
        nonlocal buffer, buffered
        data = np.concatenate(buffer) if buffer else np.zeros(0, dtype)
        while len(data) >= shard_tokens or (final and len(data)):
            piece, data = data[:shard_tokens], data[shard_tokens:]
            piece.tofile(out / f"shard_{len(shard_sizes):05d}.bin")
            shard_sizes.append(len(piece))
        buffer, buffered = [data] if len(data) else [], len(data)

    for ids in itertools.chain([first], documents):
        buffer.append(ids.astype(dtype))
        buffered += len(ids)
        offsets.append(offsets[-1] + len(ids))
        counts["documents"] += 1
        counts["tokens"] += len(ids)
        if buffered >= shard_tokens:
            flush()
    flush(final=True)
    bar.close()
    np.save(out / "docs.npy", np.asarray(offsets, dtype=np.int64))
    (out / "tokenizer.json").write_text(tokenizer.to_str())
    meta = {"dtype": dtype.name, "vocab_size": vocab, "shard_sizes": shard_sizes, **counts}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    _warn_counts("binarize", counts)
    return meta


def _warn_counts(task: str, counts: dict[str, int]) -> None:
    """Log what :func:`_documents` counted and worked around: lines with bad UTF-8, empty files."""
    for key in ("bad_utf8_lines", "empty_files"):
        if counts[key]:
            log.warning("%s: %d %s (%s)", task, counts[key], key.replace("_", " "),
                        "decoded with replacement characters" if key == "bad_utf8_lines" else "skipped")


class TokenShards:
    """Read-only view of a binarised folder: `tokens(start, end)` over the concatenated, memory-mapped shards."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        if not meta_path.is_file():
            raise Data2VecError(f"'{folder}' is not a binarised text folder (no meta.json); make one with "
                                "`data2vec text binarize`")
        self.meta = json.loads(meta_path.read_text())
        self.docs = np.load(self.folder / "docs.npy")  # [N + 1]
        self.starts = np.concatenate([[0], np.cumsum(self.meta["shard_sizes"])]).astype(np.int64)
        self._maps: list[np.ndarray] | None = None  # opened lazily, so the object pickles into workers cheaply

    def _shards(self) -> list[np.ndarray]:
        if self._maps is None:
            self._maps = [np.memmap(self.folder / f"shard_{i:05d}.bin", dtype=self.meta["dtype"], mode="r",
                                    shape=(n,)) for i, n in enumerate(self.meta["shard_sizes"])]
        return self._maps

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": None}

    @property
    def num_docs(self) -> int:
        return len(self.docs) - 1

    def tokens(self, start: int, end: int) -> np.ndarray:
        """Token ids int64 ``[end - start]`` at global offsets, across shard boundaries."""
        maps, parts = self._shards(), []
        shard = int(np.searchsorted(self.starts, start, side="right") - 1)
        while start < end:
            lo = start - self.starts[shard]
            hi = min(end, self.starts[shard + 1]) - self.starts[shard]
            parts.append(np.asarray(maps[shard][lo:hi], dtype=np.int64))
            start = self.starts[shard] + hi
            shard += 1
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def document_blocks(doc_offsets: np.ndarray, max_tokens: int) -> np.ndarray:
    """DOC-SENTENCES blocks: ``[K, 2]`` (start, end) global offsets, each at most `max_tokens` long and inside
    one document; a document's last block holds the remainder."""
    blocks = []
    for start, end in zip(doc_offsets[:-1].tolist(), doc_offsets[1:].tolist()):
        for s in range(start, end, max_tokens):
            blocks.append((s, min(s + max_tokens, end)))
    return np.asarray(blocks, dtype=np.int64).reshape(-1, 2)


class TextBlockDataset(StepDataset):
    """Pretraining samples: ``<s> block </s>`` with BERT masking drawn from the sample's own generator.

    v1 items carry the corrupted ids the student sees and ``mask``, the positions the loss regresses: those
    whose input is ``<mask>`` (with 80/10/10 masking, not the chosen tokens kept or replaced at random)."""

    def __init__(self, shards: TokenShards, block_size: int, seed: int, mask_prob: float, random_prob: float,
                 keep_prob: float, ids: dict[str, int], vocab_size: int, clones: int = 0, span: int = 1) -> None:
        if block_size < 3:
            raise Data2VecError(f"text.block_size must be at least 3 (<s>, a token, </s>), got {block_size}")
        self.shards, self.seed, self.ids, self.vocab_size = shards, seed, ids, vocab_size
        self.mask_prob, self.random_prob, self.keep_prob = mask_prob, random_prob, keep_prob
        self.clones = clones  # > 0: data2vec 2.0, `clones` independent masks per sample and no corruption
        self.span = span  # chosen tokens come in spans of this many (1: BERT)
        self.blocks = document_blocks(shards.docs, block_size - 2)
        self.collate = make_collate(ids["pad_id"])
        if len(self.blocks) == 0:
            raise Data2VecError(f"binarised folder '{shards.folder}' holds no tokens; binarise non-empty text")

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, epoch = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), 0)
        g = sample_generator(self.seed, epoch, index)
        start, end = self.blocks[index]
        body = torch.from_numpy(self.shards.tokens(int(start), int(end)))
        ids = torch.cat([torch.tensor([self.ids["bos_id"]]), body, torch.tensor([self.ids["eos_id"]])])
        specials = [self.ids[k] for k in ("bos_id", "pad_id", "eos_id", "mask_id")]
        if self.clones:  # v2: the student drops the chosen tokens, so the ids stay clean
            chosen = token_choice(ids[None].expand(self.clones, -1), self.mask_prob, generator=g,
                                  special_ids=specials, span=self.span)
            return {"ids": ids, "mask": chosen, "index": index, "label": -1}  # mask [M, T]
        corrupted, _ = token_mask(ids[None], self.mask_prob, generator=g, mask_id=self.ids["mask_id"],
                                  vocab_size=self.vocab_size, special_ids=specials,
                                  random_prob=self.random_prob, keep_prob=self.keep_prob, span=self.span)
        # Regressed: the positions whose input is <mask>, as fairseq's data2vec_text.py (src_tokens.eq(mask_idx));
        # chosen tokens left unchanged or replaced at random are part of the input, not of the loss.
        regressed = corrupted[0] == self.ids["mask_id"]
        return {"ids": ids, "student_ids": corrupted[0], "mask": regressed, "index": index, "label": -1}


class TextClassificationSet(StepDataset):
    """Tokenised sentences (``<s> A </s>``) or pairs (RoBERTa: ``<s> A </s></s> B </s>``), cut to
    `block_size` tokens by trimming the longer sentence first; each item ``{"ids", "label", "index"}``."""

    def __init__(self, rows: list[TextRow], classes: list[str], tokenizer, block_size: int, ids: dict[str, int],
                 source: str) -> None:
        lookup = {c: i for i, c in enumerate(classes)}
        for row in rows:
            if row.label not in lookup:
                raise Data2VecError(f"{source}:{row.line}: label '{row.label}' is not one of the classes of the "
                                    f"training data ({', '.join(classes)}); fix the label or the file")
        self.classes, self.source = classes, source
        self.labels = [lookup[row.label] for row in rows]
        first = [enc.ids for enc in tokenizer.encode_batch([r.text for r in rows], add_special_tokens=False)]
        pairs = [r.pair for r in rows]
        second = ([enc.ids for enc in tokenizer.encode_batch([p or "" for p in pairs], add_special_tokens=False)]
                  if any(p is not None for p in pairs) else [None] * len(rows))
        bos, eos = ids["bos_id"], ids["eos_id"]
        self.ids = []
        for a, b in zip(first, second):
            if b is None:
                tokens = [bos, *a[: block_size - 2], eos]
            else:
                a, b = _truncate_pair(a, b, block_size - 4)
                tokens = [bos, *a, eos, eos, *b, eos]
            self.ids.append(torch.tensor(tokens, dtype=torch.long))
        self.collate = make_collate(ids["pad_id"])

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index = int(key[0]) if isinstance(key, (tuple, list)) else int(key)
        return {"ids": self.ids[index], "label": self.labels[index], "index": index}


def _truncate_pair(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Drop tokens from the end of the longer sentence until both fit `budget` (longest-first truncation)."""
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        (a if len(a) >= len(b) else b).pop()
    return a, b


def make_collate(pad_id: int):
    """A collate function padding to the longest sample: ``inputs`` (clean ids) and, when the items are
    masked for v1, ``student_inputs`` (corrupted ids) int64 ``[B, T]``, ``mask`` (``[B, T]``, or ``[B, M, T]`` for
    v2) and ``padding_mask`` bool ``[B, T]``,
    ``label``, ``index``, ``skipped``."""
    return _Collate(pad_id)


class _Collate:
    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[dict | None]) -> dict:
        kept = [it for it in items if it is not None]
        batch: dict = {"skipped": len(items) - len(kept)}
        if not kept:
            return batch
        T = max(len(it["ids"]) for it in kept)
        B = len(kept)
        inputs = torch.full((B, T), self.pad_id, dtype=torch.long)
        padding = torch.ones(B, T, dtype=torch.bool)
        for b, it in enumerate(kept):
            inputs[b, : len(it["ids"])] = it["ids"]
            padding[b, : len(it["ids"])] = False
        batch.update(inputs=inputs, padding_mask=padding,
                     label=torch.tensor([it["label"] for it in kept], dtype=torch.long),
                     index=torch.tensor([it["index"] for it in kept], dtype=torch.long))
        if "mask" in kept[0]:  # [T] (v1) or [M, T] (v2) per item; padding is never chosen
            mask = torch.zeros(B, *kept[0]["mask"].shape[:-1], T, dtype=torch.bool)
            for b, it in enumerate(kept):
                mask[b, ..., : len(it["ids"])] = it["mask"]
            batch["mask"] = mask
        if "student_ids" in kept[0]:
            student = inputs.clone()
            for b, it in enumerate(kept):
                student[b, : len(it["ids"])] = it["student_ids"]
            batch["student_inputs"] = student
        return batch


def batch_tokens(texts: list[str], tokenizer, block_size: int, ids: dict[str, int]) -> tuple[Tensor, Tensor]:
    """Tokenise strings for embedding: ``(inputs [B, T], padding_mask [B, T])``."""
    encoded = tokenizer.encode_batch(texts, add_special_tokens=False)
    items = [{"ids": torch.tensor([ids["bos_id"], *enc.ids[: block_size - 2], ids["eos_id"]]), "index": i,
              "label": -1} for i, enc in enumerate(encoded)]
    batch = make_collate(ids["pad_id"])(items)
    return batch["inputs"], batch["padding_mask"]


def checked_tokenizer(tok_path: str | Path, text_cfg, tokenizer=None) -> tuple[object, dict[str, int]]:
    """(tokenizer, special ids) of `tok_path`, checked against the model's `text` settings: the special ids
    must agree and the vocabulary must fit. A `tokenizer` already loaded is checked in its place (`tok_path`
    then only names it, e.g. where it is about to be written)."""
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(tok_path)
    ids = special_ids(tokenizer)
    for key, value in ids.items():
        if getattr(text_cfg, key) != value:
            raise Data2VecError(f"tokenizer '{tok_path}' has {key}={value} but the config says text.{key}="
                                f"{getattr(text_cfg, key)}; set text.{key}={value}")
    if tokenizer.get_vocab_size() > text_cfg.vocab_size:
        raise Data2VecError(f"tokenizer '{tok_path}' has {tokenizer.get_vocab_size()} tokens but text.vocab_size="
                            f"{text_cfg.vocab_size}; set text.vocab_size={tokenizer.get_vocab_size()}")
    return tokenizer, ids
