"""Built-in English text, with no download: documentation that a plain `pip install data2vec` brings.

`builtin:pydocs` is the docstrings of numpy, scipy, scikit-learn and torch (all BSD-3-Clause licensed), read
from their installed source files with `ast` (nothing is imported or executed), plus the CPython reference
text that ships as `pydoc_data.topics` (PSF licence). Each docstring and each pydoc topic is one document.
The labelled set `pydocs-package` is the first paragraph of each docstring labelled by the package it comes
from (4 classes), split 75/25 by a hash of the text (so the split never changes) and balanced to 800 train and
200 test paragraphs per class.

Both are generated once into ``$DATA2VEC_CACHE/text/pydocs`` (default ``~/.cache/data2vec``): ``corpus.txt``
(documents separated by empty lines), ``train.tsv`` / ``test.tsv`` (``label<TAB>text``), and, after
`prepare_builtin`, ``tokenizer.json`` and the binarised shards in ``bin/``.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import re
from pathlib import Path

from data2vec.data.cache import cache_dir
from data2vec.data.text import binarize, load_tokenizer, train_tokenizer
from data2vec.errors import Data2VecError

PACKAGES = ("numpy", "scipy", "sklearn", "torch")
PER_CLASS = {"train": 800, "test": 200}
BUILTIN_TEXT = ("pydocs",)
# Labelled sets for probing: name -> (corpus, file prefix of its train/test TSVs).
LABELLED_TEXT = {"pydocs": ("pydocs", ""), "pydocs-wordorder": ("pydocs", "wordorder-")}
WORD_ORDER_SIZES = {"train": 2000, "test": 500}


def _docstrings(package: str) -> list[str]:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return []
    root = Path(list(spec.submodule_search_locations)[0])
    docs = []
    for path in sorted(root.rglob("*.py")):
        if "tests" in path.parts or "testing" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 80:
                    docs.append(doc)
    return list(dict.fromkeys(docs))  # drop repeats, keep order


def _clean(text: str) -> list[str]:
    """Non-empty, stripped lines (an empty line would end the document)."""
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def _first_paragraph(doc: str) -> str:
    para = re.split(r"\n\s*\n", doc.strip(), maxsplit=1)[0]
    return " ".join(para.split())


def _sentences(paragraph: str) -> list[str]:
    """Plain prose sentences of 8 to 30 words (no code, markup or parameter lists)."""
    out = []
    for sent in re.split(r"(?<=[.!?])\s+", paragraph):
        words = sent.split()
        if 8 <= len(words) <= 30 and sent[:1].isupper() and sent.endswith(".") \
                and all(re.fullmatch(r"[A-Za-z][A-Za-z'-]*[,;:.]?", w) for w in words):
            out.append(" ".join(words))
    return out


def word_order_rows(paragraphs: list[str], sizes: dict[str, int]) -> dict[str, list[str]]:
    """SentEval's bigram-shift probe (Conneau et al., 2018) on our own sentences: label ``shifted`` when two
    adjacent words were swapped, ``original`` otherwise. A bag of words cannot tell the two apart, so a
    random-weight encoder scores near chance and any gain comes from what pretraining learned about order.
    Split by a hash of the sentence; which sentences are shifted, and where, comes from the same hash."""
    rows: dict[str, list[str]] = {"train": [], "test": []}
    seen = set()
    for para in paragraphs:
        for sent in _sentences(para):
            if sent in seen:
                continue
            seen.add(sent)
            h = hashlib.sha1(sent.encode()).digest()
            split = "test" if h[0] < 52 else "train"
            if len(rows[split]) >= sizes[split]:
                continue
            words = sent.split()
            if h[1] % 2:
                i = 1 + h[2] % (len(words) - 3)  # never the first or the last word
                words[i], words[i + 1] = words[i + 1], words[i]
                rows[split].append(f"shifted\t{' '.join(words)}\n")
            else:
                rows[split].append(f"original\t{sent}\n")
    return rows


def build_pydocs(folder: Path) -> Path:
    """Write corpus.txt, train.tsv and test.tsv into `folder` (about a minute, once)."""
    from pydoc_data.topics import topics

    folder.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[str]] = {"train": [], "test": []}
    paragraphs = []
    with open(folder / "corpus.txt.tmp", "w", encoding="utf-8") as fh:
        for text in topics.values():
            fh.write("\n".join(_clean(text)) + "\n\n")
        for package in PACKAGES:
            for doc in _docstrings(package):
                fh.write("\n".join(_clean(doc)) + "\n\n")
                para = _first_paragraph(doc)
                paragraphs += [" ".join(p.split()) for p in re.split(r"\n\s*\n", doc)]
                if len(para) >= 40:
                    split = "test" if hashlib.sha1(para.encode()).digest()[0] < 64 else "train"
                    if sum(r.startswith(package + "\t") for r in rows[split]) < PER_CLASS[split]:
                        rows[split].append(f"{package}\t{para}\n")
    for split, lines in rows.items():
        (folder / f"{split}.tsv").write_text("".join(lines), encoding="utf-8")
    for split, lines in word_order_rows(paragraphs, WORD_ORDER_SIZES).items():
        (folder / f"wordorder-{split}.tsv").write_text("".join(lines), encoding="utf-8")
    os.replace(folder / "corpus.txt.tmp", folder / "corpus.txt")
    return folder


def builtin_text_folder(name: str) -> Path:
    """The cache folder of a built-in text set, generated on first use (or again when an older version of
    this library left it without a file this version adds)."""
    if name not in BUILTIN_TEXT:
        raise Data2VecError(f"unknown built-in text set 'builtin:{name}'; choose one of "
                            f"{', '.join('builtin:' + n for n in BUILTIN_TEXT)}")
    folder = cache_dir() / "text" / name
    if not all((folder / f).is_file() for f in ("corpus.txt", "test.tsv", "wordorder-test.tsv")):
        build_pydocs(folder)
    return folder


def builtin_labelled_file(name: str, split: str) -> Path:
    """The TSV of one split of a built-in labelled set (`builtin:pydocs`, `builtin:pydocs-wordorder`)."""
    if name not in LABELLED_TEXT:
        raise Data2VecError(f"unknown built-in labelled text 'builtin:{name}'; choose one of "
                            f"{', '.join('builtin:' + n for n in LABELLED_TEXT)}")
    corpus, prefix = LABELLED_TEXT[name]
    return builtin_text_folder(corpus) / f"{prefix}{split}.tsv"


def prepare_builtin(name: str, vocab_size: int, progress: bool = False) -> Path:
    """Tokenizer (trained once, `vocab_size`) and binarised corpus of a built-in set; returns its folder."""
    folder = builtin_text_folder(name)
    sub = folder / f"v{vocab_size}"
    if not (sub / "tokenizer.json").is_file() or load_tokenizer(sub).get_vocab_size() != vocab_size:
        train_tokenizer([folder / "corpus.txt"], vocab_size, sub)
    if not (sub / "bin" / "meta.json").is_file():
        binarize([folder / "corpus.txt"], sub / "tokenizer.json", sub / "bin", progress=progress)
    return sub
