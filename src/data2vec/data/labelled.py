"""Labelled sets for fine-tuning and evaluation: image classes, text sentences or sentence pairs, and speech
(utterance classes, or transcripts for CTC).

Images come from `builtin:digits` or a folder with one sub-folder per class (`train/` and `val/` or `test/`
sub-folders give the splits). Text comes from a built-in labelled set (`builtin:pydocs`), or from GLUE-style
files: TSV (GLUE's own files, read without quoting), CSV or JSON lines, with a header row naming the columns
(`sentence`, `sentence1` / `sentence2`, `question` / `sentence`, `label`, ...), or a header-less TSV of
``label<TAB>text[<TAB>text2]``. Speech comes from the sources of :mod:`data2vec.data.audio`; its classes are
class sub-folders or a manifest's label column, and its transcripts (CTC) a manifest's ``.wrd`` / ``.ltr``
file or third column, or the word sub-folders of `builtin:spoken-words`. Labels are names: the sorted labels
of the training split are the classes, so every split (and a later evaluation) numbers them alike.

Items are keyed by (index, epoch) like the pretraining sets, so augmentation is a function of the sample,
and the step sampler gives exact resumes.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from data2vec.config import Config
from data2vec.data.builtin import resolve_image_source
from data2vec.data.image import ImageDataset, ImageSource, ImageTransform
from data2vec.data.subset import balanced_subset
from data2vec.data.text import checked_tokenizer, make_collate
from data2vec.errors import Data2VecError
from data2vec.finetune.ctc import char_vocabulary

log = logging.getLogger("data2vec")
SPLITS = ("train", "valid")
TEXT_SUFFIXES = (".tsv", ".csv", ".jsonl")
VALID_NAMES = ("dev", "valid", "validation", "val", "test")  # GLUE calls its validation split "dev"
# Header names tried in order when finetune.*_column is empty (GLUE's SST-2, CoLA with a header, MRPC, QQP,
# QNLI, RTE, MNLI and common JSON-lines layouts).
LABEL_COLUMNS = ("label", "gold_label", "is_duplicate", "quality")
TEXT_COLUMNS = ("text", "sentence1", "question1", "question", "premise", "#1 string", "text_a", "sentence")
PAIR_COLUMNS = ("text_pair", "sentence2", "question2", "hypothesis", "#2 string", "text_b", "sentence")


@dataclass
class TextRow:
    text: str
    pair: str | None
    label: str
    line: int  # 1-based line of the file, for error messages


def sort_labels(labels: set[str]) -> list[str]:
    """Class names in order: numerically when every label is an integer ("2" before "10"), else by name."""
    try:
        return sorted(labels, key=int)
    except ValueError:
        return sorted(labels)


# ----------------------------------------------------------------------------------------------- text files

def _pick(names: list[str], wanted: str, guesses: tuple[str, ...], role: str, path: Path, exclude: str | None = None,
          required: bool = True) -> str | None:
    """The column for `role`: the configured name (case-insensitive), else the first guess present."""
    lower = {n.lower(): n for n in names}
    if wanted:
        if wanted.lower() not in lower:
            raise Data2VecError(f"'{path}' has no column '{wanted}' (finetune.{role}_column); its columns are: "
                                f"{', '.join(names)}")
        return lower[wanted.lower()]
    for guess in guesses:
        if guess in lower and lower[guess] != exclude:
            return lower[guess]
    if required:
        raise Data2VecError(f"cannot tell which column of '{path}' holds the {role}; its columns are: "
                            f"{', '.join(names)}. Set finetune.{role}_column=NAME")
    return None


def _read_table(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of the non-empty rows of a TSV (no quoting, as GLUE's files) or CSV file."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    if path.suffix.lower() == ".csv":
        reader = csv.reader(text.splitlines())
        rows = []
        for fields in reader:
            if any(f.strip() for f in fields):
                rows.append((reader.line_num, fields))
        return rows
    return [(n, raw.split("\t")) for n, raw in enumerate(text.splitlines(), start=1) if raw.strip()]


def read_text_rows(path: str | Path, text_column: str = "", pair_column: str = "", label_column: str = ""
                   ) -> list[TextRow]:
    """Rows of a labelled text file (see the module docstring); errors name the file, line and fix."""
    path = Path(path)
    if not path.is_file():
        raise Data2VecError(f"labelled text file '{path}' does not exist; give a .tsv, .csv or .jsonl file of "
                            "sentences and labels (data.path=... for training, data.eval_path=... for validation)")
    if path.suffix.lower() == ".jsonl":
        return _read_jsonl(path, text_column, pair_column, label_column)
    table = _read_table(path)
    if not table:
        raise Data2VecError(f"labelled text file '{path}' has no rows")
    first = [f.strip() for f in table[0][1]]
    named = (c for c in (text_column, label_column) if c and not c.isdigit())  # numbers are positions
    known = {c.lower() for c in (*LABEL_COLUMNS, *TEXT_COLUMNS, *PAIR_COLUMNS, *named)}
    if any(f.lower() in known for f in first):  # a header row
        label = first.index(_pick(first, label_column, LABEL_COLUMNS, "label", path))
        text_name = _pick(first, text_column, TEXT_COLUMNS, "text", path)
        text = first.index(text_name)
        pair_name = _pick(first, pair_column, PAIR_COLUMNS, "pair", path, exclude=text_name, required=False)
        pair = first.index(pair_name) if pair_name is not None else None
        table = table[1:]
    else:
        label, text, pair = _positions(len(first), text_column, pair_column, label_column, path)
    rows = []
    need = max(i for i in (label, text, pair) if i is not None) + 1
    for n, fields in table:
        if len(fields) < need:
            raise Data2VecError(f"{path}:{n}: expected at least {need} {'comma' if path.suffix == '.csv' else 'tab'}-"
                                f"separated fields, got {len(fields)}; fix the line or remove it")
        value = fields[label].strip()
        if not value:
            raise Data2VecError(f"{path}:{n}: the label is empty; every row needs a label")
        rows.append(TextRow(fields[text], fields[pair] if pair is not None else None, value, n))
    if not rows:
        raise Data2VecError(f"labelled text file '{path}' has a header but no rows")
    return rows


def _positions(count: int, text_column: str, pair_column: str, label_column: str, path: Path
               ) -> tuple[int, int, int | None]:
    """Column positions of a file without a header: configured 0-based numbers, else label, text[, pair]."""
    def number(value: str, role: str) -> int:
        if not value.isdigit():
            raise Data2VecError(f"'{path}' has no header row, so finetune.{role}_column must be a 0-based column "
                                f"number, not '{value}'; or add a header row naming the columns")
        return int(value)

    if text_column or label_column:
        if not (text_column and label_column):
            raise Data2VecError(f"'{path}' has no header row: set both finetune.text_column and "
                                "finetune.label_column (0-based column numbers)")
        return (number(label_column, "label"), number(text_column, "text"),
                number(pair_column, "pair") if pair_column else None)
    if count == 2:
        return 0, 1, None
    if count == 3:
        return 0, 1, 2
    if count < 2:
        raise Data2VecError(f"'{path}' has one column and no header row; give label<TAB>text lines, or a header "
                            "naming the text and label columns")
    raise Data2VecError(f"'{path}' has {count} columns and no header row; add a header naming the text and label "
                        "columns, or set finetune.text_column and finetune.label_column to 0-based column numbers")


def _read_jsonl(path: Path, text_column: str, pair_column: str, label_column: str) -> list[TextRow]:
    rows = []
    keys: tuple[str, str, str | None] | None = None
    for n, raw in enumerate(path.read_bytes().decode("utf-8", errors="replace").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as err:
            raise Data2VecError(f"{path}:{n}: not valid JSON ({err.msg}); each line must be one JSON object") from None
        if not isinstance(obj, dict):
            raise Data2VecError(f"{path}:{n}: expected a JSON object such as {{\"text\": ..., \"label\": ...}}")
        if keys is None:
            names = list(obj)
            text = _pick(names, text_column, TEXT_COLUMNS, "text", path)
            keys = (_pick(names, label_column, LABEL_COLUMNS, "label", path), text,
                    _pick(names, pair_column, PAIR_COLUMNS, "pair", path, exclude=text, required=False))
        label, text, pair = keys
        missing = [k for k in (label, text, pair) if k is not None and k not in obj]
        if missing:
            raise Data2VecError(f"{path}:{n}: the object has no '{missing[0]}' key, which the first line has")
        if obj[label] is None or str(obj[label]).strip() == "":
            raise Data2VecError(f"{path}:{n}: the label is empty; every row needs a label")
        rows.append(TextRow(str(obj[text]), str(obj[pair]) if pair is not None else None, str(obj[label]).strip(), n))
    if not rows:
        raise Data2VecError(f"labelled text file '{path}' has no rows")
    return rows


class TextClassificationSet:
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


def text_tokenizer(cfg: Config):
    """(tokenizer, special ids) of `cfg.text.tokenizer`, checked against the model's vocabulary and ids."""
    if not cfg.text.tokenizer:
        raise Data2VecError("text.tokenizer is empty; give the tokenizer.json the model was pretrained with")
    return checked_tokenizer(cfg.text.tokenizer, cfg.text)


def text_file(path: str, split: str, given: bool = False) -> Path:
    """The file of `split` ("train" or "valid") of a text set: `builtin:NAME`, a folder holding train.tsv and
    dev.tsv (or valid / val / test; .csv and .jsonl too), or a file: itself when `given` for this split (or
    for training), else the sibling whose name has dev / valid / test in place of train."""
    if path.startswith("builtin:"):
        from data2vec.data.builtin_text import builtin_labelled_file

        return builtin_labelled_file(path.split(":", 1)[1], "train" if split == "train" else "test")
    root = Path(path)
    names = ("train",) if split == "train" else VALID_NAMES
    if root.is_dir():
        for name in names:
            for suffix in TEXT_SUFFIXES:
                if (root / f"{name}{suffix}").is_file():
                    return root / f"{name}{suffix}"
        raise Data2VecError(f"folder '{root}' has no {names[0]}.tsv / .csv / .jsonl for the {split} split; add one "
                            f"or give the file itself ({'data.path' if split == 'train' else 'data.eval_path'}=...)")
    if split == "train" or given or not root.exists():
        return root  # read_text_rows names a missing file
    if "train" in root.name:
        for name in VALID_NAMES:
            sibling = root.with_name(root.name.replace("train", name))
            if sibling.is_file():
                return sibling
    raise Data2VecError(f"no validation file for '{root}'; set data.eval_path=... to a labelled file (or put "
                        "train.tsv and dev.tsv in one folder and give the folder)")


# ----------------------------------------------------------------------------------------------- images

class _Relabelled:
    """An image source whose labels are renumbered to `classes` (matched by class name)."""

    def __init__(self, source: ImageSource, classes: list[str], name: str) -> None:
        if source.labels is None:
            raise Data2VecError(f"images in '{name}' have no labels; put each image in a sub-folder named for its "
                                "class (or in train/CLASS/ and val/CLASS/)")
        lookup = {c: i for i, c in enumerate(classes)}
        unknown = sorted(set(source.classes) - set(lookup))
        if unknown and set(source.classes) & set(lookup):
            raise Data2VecError(f"'{name}' has classes the training data lacks: {', '.join(unknown[:5])}; use the "
                                "same class sub-folders in every split")
        if unknown:  # no name in common (e.g. a Hugging Face head labelled LABEL_0...): keep the order
            if len(source.classes) != len(classes):
                raise Data2VecError(f"'{name}' has {len(source.classes)} classes but the classifier has "
                                    f"{len(classes)} ({', '.join(classes[:5])}, ...); give data with its classes")
            log.warning("class names of '%s' do not match the classifier's labels; matching them in sorted order",
                        name)
            lookup = {c: i for i, c in enumerate(source.classes)}
        self.source, self.classes = source, classes
        self.labels = [lookup[source.classes[label]] for label in source.labels]
        self.indices = list(range(len(source)))

    def keep_only(self, indices: list[int] | None) -> None:
        """Serve only these images of the source (None: all)."""
        if indices is not None:
            self.indices = [self.indices[i] for i in indices]
            self.labels = [self.labels[i] for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, i: int):
        return self.source.load(self.indices[i])

    def name(self, i: int) -> str:
        return self.source.name(self.indices[i])


def image_source_path(cfg: Config, split: str, path: str | None = None) -> tuple[str, str]:
    """(path, split of resolve_image_source) of a labelled image split."""
    if split == "train":
        return path or cfg.data.path, "train"
    path = path or cfg.data.eval_path
    if path is not None:
        return path, "test"
    root = cfg.data.path
    if not root.startswith("builtin:") and not (Path(root) / "train").is_dir():
        raise Data2VecError(f"data.path '{root}' has no train/ and val/ (or test/) sub-folders, so there is no "
                            "validation split; set data.eval_path=... to a folder of labelled validation images")
    return root, "test"


def _train_subset(cfg: Config, split: str, labels: list | None, total: int, where: str) -> list[int] | None:
    """Indices of the `finetune.train_examples` training examples to use (None: all of them)."""
    count = cfg.finetune.train_examples
    if split != "train" or count == 0:
        return None
    keep = balanced_subset(labels, total, count, cfg.train.seed, where)
    log.info("training on %d of the %d labelled examples of '%s' (finetune.train_examples, seed %d)", len(keep),
             total, where, cfg.train.seed)
    return keep


def labelled_set(cfg: Config, split: str, classes: list[str] | None = None, path: str | None = None,
                 augment: bool = False, tokenizer=None):
    """The labelled `split` ("train" or "valid") for `cfg`'s modality and `finetune.task`. `classes` (the
    training split's classes, or for CTC its character vocabulary) numbers the labels; None reads them from
    this split. `augment`: the training transform (image crops, speech crops and masks). Text needs the
    model's `tokenizer` and its ids, as returned by :func:`text_tokenizer`. The set has `classes` and
    `collate`; speech sets also `batch_sampler` and `eval_batches` (batches of similar length)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if cfg.finetune.task == "ctc" and cfg.modality != "audio":
        raise Data2VecError(f"finetune.task=ctc is speech recognition; this is a {cfg.modality} model, use "
                            "finetune.task=classify")
    if cfg.modality == "text":
        tok, ids = tokenizer if tokenizer is not None else text_tokenizer(cfg)
        where = path or (cfg.data.path if split == "train" else cfg.data.eval_path)
        file = text_file(where, split, given=True) if where else text_file(cfg.data.path, split)
        ft = cfg.finetune
        rows = read_text_rows(file, ft.text_column, ft.pair_column, ft.label_column)
        if classes and not {r.label for r in rows} & set(classes) and all(
                r.label.isdigit() and int(r.label) < len(classes) for r in rows):
            log.warning("labels of '%s' are numbers, the classifier's are names (%s, ...); reading label i as "
                        "class i", file, classes[0])  # e.g. a Hugging Face head labelled LABEL_0, LABEL_1
            rows = [TextRow(r.text, r.pair, classes[int(r.label)], r.line) for r in rows]
        classes = classes or sort_labels({r.label for r in rows})
        keep = _train_subset(cfg, split, [r.label for r in rows], len(rows), str(file))
        if keep is not None:
            rows = [rows[i] for i in keep]
        return TextClassificationSet(rows, classes, tok, cfg.text.block_size, ids, str(file))
    if cfg.modality == "audio":
        return _audio_set(cfg, split, classes, path, augment)
    where, which = image_source_path(cfg, split, path)
    source = resolve_image_source(where, which, cfg.data.strict)
    relabelled = _Relabelled(source, classes or list(source.classes), where)
    relabelled.keep_only(_train_subset(cfg, split, relabelled.labels, len(relabelled), where))
    if augment:
        transform = ImageTransform(size=cfg.image.image_size, train=True, scale=(cfg.data.crop_scale_min, 1.0),
                                   hflip=cfg.data.hflip)
    else:
        transform = ImageTransform(size=cfg.image.image_size, train=False)
    dataset = ImageDataset(relabelled, transform, seed=cfg.train.seed, strict=cfg.data.strict)
    dataset.classes = relabelled.classes
    return dataset


# ----------------------------------------------------------------------------------------------- speech

def _audio_set(cfg: Config, split: str, classes: list[str] | None, path: str | None, augment: bool):
    from data2vec.data.audio import AudioDataset, _min_samples, resolve_audio_files

    where = path or (cfg.data.path if split == "train" else cfg.data.eval_path)
    if where is None:
        where = cfg.data.path
        root = Path(where)
        if not where.startswith("builtin:") and not ((root / "train").is_dir() or (root / "train.tsv").is_file()):
            raise Data2VecError(f"data.path '{where}' has no train/ and test/ (or train.tsv and valid.tsv), so there "
                                "is no validation split; set data.eval_path=... to labelled validation audio")
    files = resolve_audio_files(where, "train" if split == "train" else "test", _min_samples(cfg, augment),
                                cfg.audio.sample_rate, cfg.data.strict)
    if cfg.finetune.task == "ctc":
        texts = audio_transcripts(files)
        vocab = classes or char_vocabulary(texts)  # of all transcripts, so a subset misses no character
        keep = _train_subset(cfg, split, None, len(files), files.where)
        if keep is not None:
            _keep_files(files, keep)
            texts = [texts[i] for i in keep]
        return TranscribedAudio(AudioDataset(files, cfg, train=augment), texts, vocab)
    if files.labels is None:
        raise Data2VecError(f"audio in '{files.where}' has no labels; put each file in a sub-folder named for its "
                            "class, or give a manifest with a label column")
    classes = classes or list(files.classes)
    lookup = {c: i for i, c in enumerate(classes)}
    names = [files.classes[y] if y >= 0 else None for y in files.labels]
    unknown = sorted({n for n in names if n not in lookup}, key=str)
    if unknown:
        raise Data2VecError(f"'{files.where}' has classes the training data lacks ({', '.join(map(str, unknown[:5]))})"
                            "; use the same classes in every split")
    files.labels, files.classes = [lookup[n] for n in names], classes
    keep = _train_subset(cfg, split, files.labels, len(files), files.where)
    if keep is not None:
        _keep_files(files, keep)
    dataset = AudioDataset(files, cfg, train=augment)
    dataset.classes = classes
    return dataset


def _keep_files(files, keep: list[int]) -> None:
    files.paths = [files.paths[i] for i in keep]
    files.lengths = [files.lengths[i] for i in keep]
    if files.labels is not None:
        files.labels = [files.labels[i] for i in keep]


def audio_transcripts(files) -> list[str]:
    """The transcript of each file: from a manifest's ``.wrd`` (or ``.ltr``) file of the same name, one line
    per manifest line (fairseq's layout), or its third column; for a folder with one sub-folder per word (such
    as `builtin:spoken-words`), the sub-folder name."""
    from data2vec.finetune.ctc import letters_to_words, normalize_transcript

    source = Path(files.where)
    if source.is_file():
        lines = source.read_text(encoding="utf-8", errors="replace").splitlines()
        root = Path(lines[0].strip())
        rows = [line.split("\t") for line in lines[1:] if line.strip()]
        texts = None
        for suffix, convert in ((".wrd", normalize_transcript), (".ltr", letters_to_words)):
            paired = source.with_suffix(suffix)
            if paired.is_file():
                given = paired.read_text(encoding="utf-8", errors="replace").splitlines()
                if len(given) != len(rows):
                    raise Data2VecError(f"'{paired}' has {len(given)} lines but '{source}' lists {len(rows)} files; "
                                        "it needs one transcript line per manifest line")
                texts = [convert(t) for t in given]
                break
        if texts is None:
            if not all(len(r) > 2 for r in rows):
                raise Data2VecError(f"no transcripts for '{source}': put {source.with_suffix('.wrd').name} (words) or "
                                    f"{source.with_suffix('.ltr').name} (letters) beside it, or add a third column")
            texts = [normalize_transcript(r[2]) for r in rows]
        by_path = {root / r[0]: t for r, t in zip(rows, texts)}
        return [by_path[p] for p in files.paths]
    parts = [p.relative_to(source).parts for p in files.paths]
    if not all(len(p) > 1 for p in parts):
        raise Data2VecError(f"no transcripts for the audio in '{source}': use a folder with one sub-folder per word "
                            "(the word is the transcript) or a fairseq manifest with a .wrd or .ltr file")
    return [normalize_transcript(p[0].replace("_", " ")) for p in parts]


class TranscribedAudio:
    """Speech with transcripts for CTC: each item of `dataset` gains ``target`` (token ids) and ``text``; a
    batch gains ``targets`` int `[B, L]` (padded with 0), ``target_lengths`` `[B]` and ``texts``."""

    def __init__(self, dataset, texts: list[str], vocab: list[str]) -> None:
        from data2vec.finetune.ctc import encode

        self.dataset, self.texts, self.classes = dataset, texts, vocab
        self.targets = [torch.tensor(encode(t, vocab), dtype=torch.long) for t in texts]
        self.collate = _TranscriptCollate(dataset.collate)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> dict | None:
        item = self.dataset[key]
        if item is not None:
            item["target"], item["text"] = self.targets[item["index"]], self.texts[item["index"]]
        return item

    def batch_sampler(self, *args, **kwargs):
        return self.dataset.batch_sampler(*args, **kwargs)

    def eval_batches(self, batch_size: int) -> list[list[int]]:
        return self.dataset.eval_batches(batch_size)


class _TranscriptCollate:
    def __init__(self, base) -> None:
        self.base = base

    def __call__(self, items: list[dict | None]) -> dict:
        batch = self.base(items)
        kept = [it for it in items if it is not None]
        if kept:
            lengths = [len(it["target"]) for it in kept]
            targets = torch.zeros(len(kept), max(max(lengths), 1), dtype=torch.long)
            for b, it in enumerate(kept):
                targets[b, : lengths[b]] = it["target"]
            batch.update(targets=targets, target_lengths=torch.tensor(lengths, dtype=torch.long),
                         texts=[it["text"] for it in kept])
        return batch
