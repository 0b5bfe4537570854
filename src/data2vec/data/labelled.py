"""The one labelled-data entry point: :func:`labelled_set` gives the labelled splits that probing,
fine-tuning and evaluation read, in every modality: image classes, text sentences or sentence pairs, and
speech (utterance classes, or transcripts for CTC).

Images come from `builtin:digits` or a folder with one sub-folder per class (`train/` and `val/` or `test/`
sub-folders give the splits). Text comes from a built-in labelled set (`builtin:pydocs`), or from the
files :mod:`data2vec.data.labelled_text` reads (GLUE-style TSV / CSV / JSON lines with a header, or
``label<TAB>text`` lines): one file, or a folder holding ``train.tsv`` and ``dev.tsv`` / ``test.tsv`` (GLUE's
layout; .csv and .jsonl too). Speech comes from the sources of :mod:`data2vec.data.audio`; its classes are
class sub-folders or a manifest's label column, and its transcripts (CTC) a manifest's ``.wrd`` / ``.ltr``
file or third column, or the word sub-folders of `builtin:spoken-words`. Labels are names: the sorted labels
of the training split are the classes, so every split (and a later evaluation) numbers them alike.

Items are keyed by (index, epoch) like the pretraining sets, so augmentation is a function of the sample,
and the step sampler gives exact resumes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from data2vec.config import Config
from data2vec.ctc import char_vocabulary, encode, letters_to_words, normalize_transcript
from data2vec.data.audio import AudioDataset, AudioFiles, min_audio_samples, resolve_audio_files
from data2vec.data.builtin import resolve_image_source
from data2vec.data.builtin_text import builtin_labelled_file
from data2vec.data.dataset import StepDataset
from data2vec.data.image import ImageDataset, ImageSource, eval_image_transform, train_image_transform
from data2vec.data.labelled_text import TextRow, read_text_rows, sort_labels
from data2vec.data.subset import balanced_subset
from data2vec.data.text import TextClassificationSet
from data2vec.data.text_source import text_tokenizer
from data2vec.errors import Data2VecError

__all__ = ["SPLITS", "TextClassificationSet", "TextRow", "TranscribedAudio", "audio_transcripts",
           "image_source_path", "labelled_set", "read_text_rows", "sort_labels", "text_file", "text_tokenizer"]

log = logging.getLogger("data2vec")
# "valid": fine-tuning's validation split (GLUE's dev files first); "test": the probe's held-out split (test
# files first). Image and speech folders and manifests have one held-out split (test/ or val/), used by both.
SPLITS = ("train", "valid", "test")
TEXT_SUFFIXES = (".tsv", ".csv", ".jsonl")
VALID_NAMES = ("dev", "valid", "validation", "val", "test")  # GLUE calls its validation split "dev"
TEST_NAMES = ("test", "dev", "valid", "validation", "val")


def text_file(path: str, split: str, given: bool = False, option: str | None = None) -> Path:
    """The file of `split` (see SPLITS) of a text set: `builtin:NAME`, a folder holding train.tsv and dev.tsv
    or test.tsv (or valid / val; .csv and .jsonl too), or a file: itself when `given` for this split (or for
    training), else the sibling whose name has dev / valid / test in place of train. `option` is how the user
    gives the data (``--data PATH``, ``data=PATH``), named in an error's fix; None: the config keys."""
    if path.startswith("builtin:"):
        return builtin_labelled_file(path.split(":", 1)[1], "train" if split == "train" else "test")
    root = Path(path)
    names = {"train": ("train",), "valid": VALID_NAMES, "test": TEST_NAMES}[split]
    if root.is_dir() and (root / "meta.json").is_file() and (root / "docs.npy").is_file():
        fix = f"set {option} to" if option else f"set {'data.path' if split == 'train' else 'data.eval_path'}=... to"
        raise Data2VecError(f"'{root}' is a binarised pretraining corpus, not labelled text; {fix} labelled "
                            "text: label<TAB>text lines (or TSV / CSV / JSON lines with a header) in a file, or a "
                            "folder holding train.tsv and test.tsv")
    if root.is_dir():
        for name in names:
            for suffix in TEXT_SUFFIXES:
                if (root / f"{name}{suffix}").is_file():
                    return root / f"{name}{suffix}"
        fix = (f"give the file itself ({option.replace('PATH', 'FILE')})" if option else
               f"give the file itself ({'data.path' if split == 'train' else 'data.eval_path'}=...)")
        raise Data2VecError(f"folder '{root}' has no {names[0]}.tsv / .csv / .jsonl for the {split} split; add one "
                            f"(label<TAB>text lines, or TSV / CSV / JSON lines with a header) or {fix}")
    if option and not root.exists():
        raise Data2VecError(f"labelled text file '{root}' does not exist; set {option} to a .tsv, .csv or .jsonl file "
                            "of sentences and labels, or a folder holding train.tsv and dev.tsv")
    if split == "train" or given or not root.exists():
        return root  # read_text_rows names a missing file
    if "train" in root.name:
        for name in names:
            sibling = root.with_name(root.name.replace("train", name))
            if sibling.is_file():
                return sibling
    raise Data2VecError(f"no validation file for '{root}'; set {option or 'data.eval_path=...'} to a labelled file "
                        "(or put train.tsv and dev.tsv in one folder and give the folder)")


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


def image_source_path(cfg: Config, split: str, path: str | None = None, option: str | None = None
                      ) -> tuple[str, str]:
    """(path, split of resolve_image_source) of a labelled image split; `option` as in :func:`text_file`."""
    if split == "train":
        return path or cfg.data.path, "train"
    path = path or cfg.data.eval_path
    if path is not None:
        return path, "test"
    root = cfg.data.path
    if not root.startswith("builtin:") and not (Path(root) / "train").is_dir():
        raise Data2VecError(f"data.path '{root}' has no train/ and val/ (or test/) sub-folders, so there is no "
                            f"validation split; set {option or 'data.eval_path=...'} to a folder of labelled "
                            "validation images")
    return root, "test"


def _subset(count: int, cfg: Config, labels: list | None, total: int, where: str) -> list[int] | None:
    """Indices of the `count` training examples to use (``finetune.train_examples``; 0: all of them)."""
    if not count:
        return None
    keep = balanced_subset(labels, total, count, cfg.train.seed, where)
    log.info("training on %d of the %d labelled examples of '%s' (finetune.train_examples, seed %d)", len(keep),
             total, where, cfg.train.seed)
    return keep


def labelled_set(cfg: Config, split: str, classes: list[str] | None = None, path: str | None = None,
                 augment: bool = False, tokenizer=None, option: str | None = None, task: str | None = None,
                 subset: bool = True) -> StepDataset:
    """The labelled `split` (see SPLITS) for `cfg`'s modality and `task` (default ``finetune.task``): what
    probing, fine-tuning and evaluation read. `path` defaults to ``data.path`` for training and to
    ``data.eval_path`` (else the held-out part of ``data.path``) otherwise. `classes` (the training split's
    classes, or for CTC its character vocabulary) numbers the labels; None reads them from this split.
    `augment`: the training transform (image crops, speech crops and masks). Text is read with `tokenizer`
    ((tokenizer, special ids)), default :func:`text_tokenizer`. `option` is how the user gave `path`
    (``--data PATH``), named in an error's fix. `subset`: train on ``finetune.train_examples`` of the
    training split (fine-tuning); the probe uses all of them. The set has `classes`, `collate` and its
    batches (:class:`StepDataset`)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    examples = cfg.finetune.train_examples if subset and split == "train" else 0
    task = task or cfg.finetune.task
    if task == "ctc" and cfg.modality != "audio":
        raise Data2VecError(f"finetune.task=ctc is speech recognition; this is a {cfg.modality} model, use "
                            "finetune.task=classify")
    if cfg.modality == "text":
        return _text_set(cfg, split, classes, path, tokenizer, option, examples)
    if cfg.modality == "audio":
        return _audio_set(cfg, split, classes, path, augment, task, option, examples)
    return _image_set(cfg, split, classes, path, augment, option, examples)


def _text_set(cfg: Config, split: str, classes: list[str] | None, path: str | None, tokenizer, option: str | None,
              examples: int) -> TextClassificationSet:
    where = path or (cfg.data.path if split == "train" else cfg.data.eval_path)
    file = text_file(where, split, given=True, option=option) if where else text_file(cfg.data.path, split,
                                                                                       option=option)
    ft = cfg.finetune
    rows = read_text_rows(file, ft.text_column, ft.pair_column, ft.label_column)
    if classes and not {r.label for r in rows} & set(classes) and all(
            r.label.isdigit() and int(r.label) < len(classes) for r in rows):
        log.warning("labels of '%s' are numbers, the classifier's are names (%s, ...); reading label i as "
                    "class i", file, classes[0])  # e.g. a Hugging Face head labelled LABEL_0, LABEL_1
        rows = [TextRow(r.text, r.pair, classes[int(r.label)], r.line) for r in rows]
    classes = classes or sort_labels({r.label for r in rows})
    keep = _subset(examples, cfg, [r.label for r in rows], len(rows), str(file))
    if keep is not None:
        rows = [rows[i] for i in keep]
    tok, ids = tokenizer if tokenizer is not None else text_tokenizer(cfg)
    return TextClassificationSet(rows, classes, tok, cfg.text.block_size, ids, str(file))


def _image_set(cfg: Config, split: str, classes: list[str] | None, path: str | None, augment: bool,
               option: str | None, examples: int) -> ImageDataset:
    where, which = image_source_path(cfg, split, path, option)
    source = resolve_image_source(where, which, cfg.data.strict, option)
    relabelled = _Relabelled(source, classes or list(source.classes), where)
    relabelled.keep_only(_subset(examples, cfg, relabelled.labels, len(relabelled), where))
    if augment:
        transform = train_image_transform(cfg)
    else:
        transform = eval_image_transform(cfg)
    dataset = ImageDataset(relabelled, transform, seed=cfg.train.seed, strict=cfg.data.strict)
    dataset.classes = relabelled.classes
    return dataset


# ----------------------------------------------------------------------------------------------- speech

def _audio_set(cfg: Config, split: str, classes: list[str] | None, path: str | None, augment: bool, task: str,
               option: str | None, examples: int) -> StepDataset:
    where = path or (cfg.data.path if split == "train" else cfg.data.eval_path)
    if where is None:
        where = cfg.data.path
        root = Path(where)
        if not where.startswith("builtin:") and not ((root / "train").is_dir() or (root / "train.tsv").is_file()):
            raise Data2VecError(f"data.path '{where}' has no train/ and test/ (or train.tsv and valid.tsv), so there "
                                f"is no validation split; set {option or 'data.eval_path=...'} to labelled "
                                "validation audio")
    files = resolve_audio_files(where, "train" if split == "train" else "test", min_audio_samples(cfg, augment),
                                cfg.audio.sample_rate, cfg.data.strict, option)
    if task == "ctc":
        texts = audio_transcripts(files)
        vocab = classes or char_vocabulary(texts)  # of all transcripts, so a subset misses no character
        keep = _subset(examples, cfg, None, len(files), files.where)
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
    keep = _subset(examples, cfg, files.labels, len(files), files.where)
    if keep is not None:
        _keep_files(files, keep)
    dataset = AudioDataset(files, cfg, train=augment)
    dataset.classes = classes
    return dataset


def _keep_files(files: AudioFiles, keep: list[int]) -> None:
    files.paths = [files.paths[i] for i in keep]
    files.lengths = [files.lengths[i] for i in keep]
    if files.labels is not None:
        files.labels = [files.labels[i] for i in keep]


def audio_transcripts(files: AudioFiles) -> list[str]:
    """The transcript of each file: from a manifest's ``.wrd`` (or ``.ltr``) file of the same name, one line
    per manifest line (fairseq's layout), or its third column; for a folder with one sub-folder per word (such
    as `builtin:spoken-words`), the sub-folder name."""
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


class TranscribedAudio(StepDataset):
    """Speech with transcripts for CTC: each item of `dataset` gains ``target`` (token ids) and ``text``; a
    batch gains ``targets`` int `[B, L]` (padded with 0), ``target_lengths`` `[B]` and ``texts``."""

    def __init__(self, dataset: AudioDataset, texts: list[str], vocab: list[str]) -> None:
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

    def batch_sampler(self, *args, **kwargs):  # the speech set's: by length
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
