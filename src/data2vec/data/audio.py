"""Speech data: audio files from a folder or a fairseq manifest, decoded to 16 kHz mono, cropped, masked and
batched by length.

Sources:

- a **folder** of ``.wav`` / ``.flac`` / ``.ogg`` files, searched recursively (hidden files left out). When
  every file sits in a first-level sub-folder, the sorted sub-folder names are class labels (for probing).
  A folder with a ``train/`` sub-folder is split: ``train/`` for training, ``test/`` (or ``valid/``) for testing;
- a **fairseq manifest** (``.tsv``): the root folder on the first line, then ``relative/path<TAB>num_samples``
  per file (an optional third column is a label). A folder holding ``train.tsv`` is split like a folder:
  ``train.tsv`` and ``test.tsv`` (or ``valid.tsv``);
- ``builtin:spoken-words``, generated once (see :mod:`data2vec.data.builtin_audio`).

Files that cannot be decoded, are empty, or are shorter than the front-end's receptive field (400 samples)
or ``audio.min_sample_size`` are skipped and counted, each named in the log, or stop the run with
``data.strict=true``. Lengths come from file headers (folders) or the manifest, so scanning decodes nothing.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from data2vec.config import Config
from data2vec.data.builtin_audio import builtin_audio_folder
from data2vec.data.dataset import StepDataset
from data2vec.data.sampler import LengthBucketSampler
from data2vec.data.seeding import sample_generator
from data2vec.errors import Data2VecError
from data2vec.frames import conv_output_length, receptive_field
from data2vec.masking import centred_span_mask, equal_counts, span_mask

log = logging.getLogger("data2vec")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
MAX_NAMED = 20  # skipped files named one by one in the log; the rest only counted
EVAL_BATCH_SAMPLES = 1_600_000  # padded samples per evaluation batch (100 s at 16 kHz), whatever the recipe
_NOTIFIED_RATES: set[int] = set()


@dataclass
class AudioFiles:
    """Usable audio files: paths, lengths in samples at the target rate (from headers or the manifest; used
    for bucketing), labels (None when the source has none) and class names."""

    paths: list[Path]
    lengths: list[int]
    labels: list[int] | None
    classes: list[str]
    where: str  # the folder or manifest, for messages
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> names

    def __len__(self) -> int:
        return len(self.paths)


def resampled_length(frames: int, rate: int, target: int) -> int:
    """Samples that `frames` samples at `rate` Hz become at `target` Hz (``scipy.signal.resample_poly``)."""
    if rate == target:
        return frames
    g = math.gcd(rate, target)
    return -(-frames * (target // g) // (rate // g))


def _skip(skipped: dict[str, list[str]], reason: str, name: str, strict: bool, fix: str) -> None:
    if strict:
        raise Data2VecError(f"audio file '{name}' {reason}; {fix}, or set data.strict=false to skip such files")
    skipped.setdefault(reason, []).append(name)


def _report(files: AudioFiles, total: int) -> AudioFiles:
    n = sum(len(v) for v in files.skipped.values())
    detail = ", ".join(f"{len(v)} {k}" for k, v in files.skipped.items())
    if n:
        named = 0
        for reason, names in files.skipped.items():
            for name in names[: max(MAX_NAMED - named, 0)]:
                log.warning("skipping audio file %s: %s", name, reason)
            named += len(names)
        log.warning("skipped %d of %d audio files in %s (%s)", n, total, files.where, detail)
    if not files.paths:
        raise Data2VecError(f"none of the {total} audio files in '{files.where}' is usable ({detail}); check the "
                            "files or lower audio.min_sample_size")
    return files


def min_audio_samples(cfg: Config, train: bool) -> int:
    """The shortest usable file: the front-end's receptive field, and for training ``audio.min_sample_size``."""
    field_ = receptive_field(cfg.audio.conv_kernel, cfg.audio.conv_stride)
    return max(field_, cfg.audio.min_sample_size) if train else field_


def find_audio_files(root: Path) -> list[Path]:
    paths = []
    for folder, dirs, names in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        paths += [Path(folder, n) for n in names if not n.startswith(".") and n.lower().endswith(AUDIO_EXTENSIONS)]
    return sorted(paths)


def scan_folder(root: str | Path, min_samples: int, sample_rate: int = 16000, strict: bool = False) -> AudioFiles:
    """Audio files under `root` with their lengths from the file headers; labels from class sub-folders."""
    import soundfile as sf

    root = Path(root)
    if not root.is_dir():
        raise Data2VecError(f"audio folder '{root}' does not exist; give a folder of {'/'.join(AUDIO_EXTENSIONS)} "
                            "files, a fairseq manifest (.tsv) or builtin:spoken-words")
    candidates = find_audio_files(root)
    if not candidates:
        raise Data2VecError(f"no audio files ({' '.join(AUDIO_EXTENSIONS)}) found in '{root}'")
    files = AudioFiles([], [], None, [], str(root))
    for path in candidates:
        try:
            info = sf.info(str(path))
        except Exception as err:  # noqa: BLE001 - any header a decoder rejects is a data problem
            info, error = None, err.__class__.__name__
        if info is None:
            _skip(files.skipped, f"cannot be decoded ({error})", str(path), strict, "remove or re-encode it")
            continue
        length = resampled_length(int(info.frames), int(info.samplerate), sample_rate)
        if info.frames <= 0:
            _skip(files.skipped, "is empty", str(path), strict, "remove it")
        elif length < min_samples:
            _skip(files.skipped, f"is shorter than {min_samples} samples", str(path), strict, "remove it")
        else:
            files.paths.append(path)
            files.lengths.append(length)
    parts = [p.relative_to(root).parts for p in files.paths]
    if parts and all(len(p) > 1 for p in parts):
        files.classes = sorted({p[0] for p in parts})
        index = {c: i for i, c in enumerate(files.classes)}
        files.labels = [index[p[0]] for p in parts]
    return _report(files, len(candidates))


def read_manifest(path: str | Path, min_samples: int, strict: bool = False, classes: list[str] | None = None
                  ) -> AudioFiles:
    """A fairseq manifest: root folder, then ``relative/path<TAB>num_samples[<TAB>label]`` lines. Lengths are
    taken as given (in samples at the target rate); nothing is opened until a file is loaded."""
    path = Path(path)
    if not path.is_file():
        raise Data2VecError(f"manifest '{path}' does not exist; give a .tsv whose first line is the audio root")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    if not lines:
        raise Data2VecError(f"manifest '{path}' is empty; its first line must be the root folder of the audio")
    root = Path(lines[0].strip())
    if not root.is_dir():
        raise Data2VecError(f"manifest '{path}': the first line '{lines[0].strip()}' is not a folder; it must be the "
                            "root folder that the relative paths start from (edit it to where the audio lives)")
    files = AudioFiles([], [], None, [], str(path))
    rows, raw_labels = 0, []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cols = line.split("\t")
        try:
            length = int(cols[1])
        except (IndexError, ValueError):
            raise Data2VecError(f"{path}:{n}: expected relative/path<TAB>num_samples, got {line[:80]!r}") from None
        rows += 1
        if length <= 0:
            _skip(files.skipped, "is empty", str(root / cols[0]), strict, "remove its manifest line")
        elif length < min_samples:
            _skip(files.skipped, f"is shorter than {min_samples} samples", str(root / cols[0]), strict,
                  "remove its manifest line")
        else:
            files.paths.append(root / cols[0])
            files.lengths.append(length)
            raw_labels.append(cols[2].strip() if len(cols) > 2 else None)
    if rows == 0:
        raise Data2VecError(f"manifest '{path}' lists no files; add relative/path<TAB>num_samples lines")
    if raw_labels and all(label is not None for label in raw_labels):
        files.classes = classes or sorted(set(raw_labels))
        index = {c: i for i, c in enumerate(files.classes)}
        files.labels = [index.get(label, -1) for label in raw_labels]
    return _report(files, rows)


def resolve_audio_files(path: str, split: str, min_samples: int, sample_rate: int = 16000,
                        strict: bool = False, option: str | None = None) -> AudioFiles:
    """`builtin:NAME`, a manifest file, a folder of manifests (``train.tsv``...) or a folder of audio, split
    into ``train/`` and ``test/`` (or ``valid/``) when it has a ``train/`` sub-folder (or ``train.tsv``).
    `option` is how the user gave `path` (``--data PATH``), named in an error's fix; None: the config keys."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be train, test or all, got {split!r}")
    if path.startswith("builtin:"):
        path = str(builtin_audio_folder(path.split(":", 1)[1]))
    root = Path(path)
    if not root.exists():
        raise Data2VecError(f"data path '{path}' does not exist; {f'set {option} to' if option else 'give'} a "
                            f"folder of {'/'.join(AUDIO_EXTENSIONS)} files, a fairseq manifest (.tsv) or "
                            "builtin:spoken-words")
    if root.is_file():
        return read_manifest(root, min_samples, strict)
    names = ["train"] if split in ("train", "all") else ["test", "valid"]
    if (root / "train.tsv").is_file():
        for name in names:
            if (root / f"{name}.tsv").is_file():
                classes = read_manifest(root / "train.tsv", 1).classes if name != "train" else None
                return read_manifest(root / f"{name}.tsv", min_samples, strict, classes)
        raise Data2VecError(f"manifest folder '{root}' has train.tsv but no test.tsv or valid.tsv for split "
                            f"'{split}'; add one or set {option or 'data.eval_path=...'} to a labelled manifest")
    if (root / "train").is_dir():
        for name in names:
            if (root / name).is_dir():
                files = scan_folder(root / name, min_samples, sample_rate, strict)
                if name != "train" and files.labels is not None:  # class ids follow the training folder's
                    train_classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
                    index = {c: i for i, c in enumerate(train_classes)}
                    files.labels = [index.get(files.classes[y], -1) for y in files.labels]
                    files.classes = train_classes
                return files
        raise Data2VecError(f"data path '{root}' has a train/ sub-folder but no test/ or valid/ for split "
                            f"'{split}'; add one or set {option or 'data.eval_path=...'} to a labelled folder")
    return scan_folder(root, min_samples, sample_rate, strict)


def load_audio(path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """Decode a file to float32 mono `[S]` at `sample_rate`: channels averaged, other rates resampled with a
    polyphase filter (``scipy.signal.resample_poly``) after a one-line notice per source rate."""
    import soundfile as sf

    wave, rate = sf.read(str(path), dtype="float32", always_2d=True)  # [S, C]
    wave = wave.mean(axis=1)
    if rate != sample_rate:
        from scipy.signal import resample_poly

        if rate not in _NOTIFIED_RATES:
            _NOTIFIED_RATES.add(rate)
            log.info("resampling %d Hz audio to %d Hz (first such file: %s)", rate, sample_rate, path)
        g = math.gcd(rate, sample_rate)
        wave = resample_poly(wave, sample_rate // g, rate // g).astype(np.float32)
    return wave


def normalize_wave(wave: Tensor) -> Tensor:
    """Zero mean, unit variance over the utterance (fairseq's ``normalize: true``; eps 1e-5)."""
    return (wave - wave.mean()) / torch.sqrt(wave.var(unbiased=False) + 1e-5)


class AudioDataset(StepDataset):
    """Items keyed by (index, epoch), randomness from a generator seeded by (seed, epoch, index).

    An item is ``{"audio": float32 [S], "mask": bool [N] (training; [M, N] for v2 with M clones), "label": int
    (-1 unlabelled), "index"}``, and for v1 with ``masking.same_count`` ``"mask_order"``: float [N], the random
    order in which the collator drops masked frames to give every row of a batch the same count.
    Training crops a random window of at most ``audio.max_sample_size`` samples and draws span masks over its
    frames; evaluation keeps the centred window. An unreadable file gives None with a warning (the collate
    function counts it), or raises Data2VecError under `strict`.
    """

    def __init__(self, files: AudioFiles, cfg: Config, train: bool, crop_to_shortest: bool = False) -> None:
        self.files, self.train, self.strict = files, train, cfg.data.strict
        self.audio, self.masking, self.seed = cfg.audio, cfg.masking, cfg.train.seed
        self.min_samples = receptive_field(cfg.audio.conv_kernel, cfg.audio.conv_stride)
        self.collate = AudioCollate(cfg.audio.conv_kernel, cfg.audio.conv_stride)
        self.eval_batch_samples = max(EVAL_BATCH_SAMPLES, cfg.audio.max_sample_size)
        self.clones = cfg.objective.clones if cfg.objective.version == 2 else 0  # v2: masks per utterance
        self.crop_to_shortest = crop_to_shortest and train  # batches cropped to their shortest sample

    def __len__(self) -> int:
        return len(self.files)

    def crop_lengths(self) -> list[int]:
        return [min(n, self.audio.max_sample_size) for n in self.files.lengths]

    def __getitem__(self, key: int | tuple[int, ...]) -> dict | None:
        """`key`: an index, (index, epoch), or (index, epoch, crop) to crop a training sample to at most `crop`
        samples (`data.crop_to_shortest`: the batch's shortest, see LengthBucketSampler)."""
        index, epoch = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), 0)
        limit = self.audio.max_sample_size
        if isinstance(key, (tuple, list)) and len(key) > 2 and self.train:
            limit = min(limit, int(key[2]))
        g = sample_generator(self.seed, epoch, index)
        path = self.files.paths[index]
        try:
            wave = torch.from_numpy(load_audio(path, self.audio.sample_rate))
            if wave.numel() < self.min_samples:
                raise ValueError(f"{wave.numel()} samples, fewer than the receptive field ({self.min_samples})")
        except Exception as err:  # noqa: BLE001 - any failure to decode a user's file is a data problem
            reason = f"{err.__class__.__name__}: {err}".replace("\n", " ")
            if self.strict:
                raise Data2VecError(f"cannot read audio file '{path}' ({reason}); remove the file or set "
                                    "data.strict=false to skip unreadable files") from None
            log.warning("skipping unreadable audio file %s (%s)", path, reason)
            return None
        if self.audio.normalize:
            wave = normalize_wave(wave)
        excess = wave.numel() - limit
        if excess > 0:
            start = int(torch.randint(excess + 1, (1,), generator=g)) if self.train else excess // 2
            wave = wave[start:start + limit]
        labels = self.files.labels
        item = {"audio": wave, "index": index, "label": labels[index] if labels is not None else -1}
        if self.train:
            frames = conv_output_length(wave.numel(), self.audio.conv_kernel, self.audio.conv_stride)
            m = self.masking
            if self.clones:  # v2: fairseq's compute_block_mask_1d, exactly int(span_prob * N) per mask
                item["mask"] = centred_span_mask(self.clones, frames, m.span_prob, m.span_length, generator=g,
                                                 prob_adjust=m.prob_adjust)  # [M, N]
            else:  # v1: fairseq's compute_mask_indices; the collator equalises the counts of a batch
                item["mask"] = span_mask(1, frames, m.span_prob, m.span_length, generator=g, same_count=False)[0]
                if m.same_count:
                    item["mask_order"] = torch.rand(frames, generator=g)  # [N]: which masked frames go first
        return item

    def batch_sampler(self, batch_size: int, seed: int, start_step: int, max_steps: int | None, rank: int,
                      world_size: int) -> LengthBucketSampler:
        """Training batches of similar length, at most `batch_size` files and ``audio.max_batch_samples``
        samples each (see LengthBucketSampler)."""
        return LengthBucketSampler(self.crop_lengths(), batch_size, self.audio.max_batch_samples, seed,
                                   start_step, max_steps, rank, world_size, crop_to_shortest=self.crop_to_shortest)

    def eval_batches(self, batch_size: int) -> list[list[int]]:
        """Evaluation batches in length order, at most `batch_size` files and `eval_batch_samples` padded
        samples each, so long files do not exhaust memory (the training budget is for many GPUs)."""
        lengths = self.crop_lengths()
        budget = self.eval_batch_samples
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches = []
        while order:
            room = max(1, min(batch_size, budget // max(lengths[order[0]], 1)))
            batches.append(order[:room])
            order = order[room:]
        return batches


class AudioCollate:
    """Pads a batch at the end: ``inputs`` float32 ``[B, S]``, ``padding_mask`` bool ``[B, S]`` (True =
    padding; None when no row is padded), ``mask`` bool ``[B, N]`` (v2: ``[B, M, N]``) over frames (False on
    padding frames; with items' ``mask_order`` every row trimmed to the batch's smallest masked count, as
    fairseq's v1 speech masking), ``label``, ``index`` int64 ``[B]`` and ``skipped`` (unreadable files dropped)."""

    def __init__(self, kernels: list[int], strides: list[int]) -> None:
        self.kernels, self.strides = list(kernels), list(strides)

    def __call__(self, items: list[dict | None]) -> dict:
        kept = [it for it in items if it is not None]
        batch: dict = {"skipped": len(items) - len(kept)}
        if not kept:
            return batch
        lengths = [it["audio"].numel() for it in kept]
        S, B = max(lengths), len(kept)
        inputs = torch.zeros(B, S)
        padding = torch.ones(B, S, dtype=torch.bool)
        for b, it in enumerate(kept):
            inputs[b, : lengths[b]] = it["audio"]
            padding[b, : lengths[b]] = False
        batch.update(inputs=inputs, padding_mask=padding if min(lengths) < S else None,
                     label=torch.tensor([it["label"] for it in kept], dtype=torch.long),
                     index=torch.tensor([it["index"] for it in kept], dtype=torch.long))
        if "mask" in kept[0]:
            frames = conv_output_length(S, self.kernels, self.strides)
            mask = torch.zeros(B, *kept[0]["mask"].shape[:-1], frames, dtype=torch.bool)  # [B, N] or [B, M, N]
            for b, it in enumerate(kept):
                mask[b, ..., : it["mask"].shape[-1]] = it["mask"]
            if "mask_order" in kept[0]:  # v1 with masking.same_count: every row keeps the smallest count
                order = torch.ones(B, frames)  # [B, N]; padding frames are never masked, so their order is moot
                for b, it in enumerate(kept):
                    order[b, : it["mask_order"].numel()] = it["mask_order"]
                mask = equal_counts(mask, order)
            batch["mask"] = mask
        return batch


def pretrain_audio_dataset(cfg: Config) -> AudioDataset:
    files = resolve_audio_files(cfg.data.path, "train", min_audio_samples(cfg, True), cfg.audio.sample_rate,
                                cfg.data.strict)
    return AudioDataset(files, cfg, train=True, crop_to_shortest=cfg.data.crop_to_shortest)  # not fine-tuning

