"""`data2vec embed CHECKPOINT INPUT...`: pooled features of image files or folders, saved as `.npy`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from data2vec.data.image import ImageFolderSource, eval_image_transform
from data2vec.errors import Data2VecError


def _collect(inputs: list[str]) -> list[Path]:
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise Data2VecError(f"input '{item}' does not exist; give image files or folders of images")
        if path.is_dir():
            source = ImageFolderSource(path)
            paths += [Path(source.name(i)) for i in range(len(source))]
        else:
            paths.append(path)
    return paths


@torch.no_grad()
def embed(checkpoint: str | Path, inputs: list[str], out: str | Path = "embeddings.npy", batch_size: int = 64) -> Path:
    """Write features `[N, D]` (float32) to `out` and the input names, one a line, to `out` with `.txt`."""
    from data2vec.api import load

    encoder = load(checkpoint)
    if encoder.cfg.modality == "text":
        return _embed_text(encoder, inputs, Path(out), batch_size)
    if encoder.cfg.modality == "audio":
        return _embed_audio(encoder, inputs, Path(out), batch_size)
    transform = eval_image_transform(encoder.cfg)
    paths = _collect(inputs)
    generator = torch.Generator().manual_seed(0)
    feats = []
    for start in range(0, len(paths), batch_size):
        images = []
        for path in paths[start:start + batch_size]:
            try:
                with Image.open(path) as img:
                    images.append(transform(img.convert("RGB"), generator))
            except (UnidentifiedImageError, OSError) as err:
                raise Data2VecError(f"cannot read image '{path}' ({err.__class__.__name__}); remove it or "
                                    "convert it to PNG/JPEG") from None
        feats.append(encoder.embed(torch.stack(images)).float())
    return _save(feats, paths, Path(out))


@torch.no_grad()
def _embed_text(encoder, inputs: list[str], out: Path, batch_size: int) -> Path:
    """Text files: one embedding per non-empty line (mean over its tokens); `out.txt` lists `FILE:LINE`."""
    from data2vec.data.text import batch_tokens
    from data2vec.data.text_source import text_source

    cfg = encoder.cfg
    _, tokenizer, ids = text_source(cfg)
    lines, names = [], []
    for item in inputs:
        path = Path(item)
        if not path.is_file():
            raise Data2VecError(f"input '{item}' is not a file; give text files (one embedding per line)")
        for n, line in enumerate(path.read_bytes().decode("utf-8", errors="replace").splitlines(), start=1):
            if line.strip():
                lines.append(line)
                names.append(f"{path}:{n}")
    if not lines:
        raise Data2VecError(f"no non-empty lines in {', '.join(inputs)}")
    encoder.eval()
    feats = []
    for start in range(0, len(lines), batch_size):
        ids_batch, padding = batch_tokens(lines[start:start + batch_size], tokenizer, cfg.text.block_size, ids)
        feats.append(encoder.embed(ids_batch, padding).float())
    return _save(feats, names, out)


@torch.no_grad()
def _embed_audio(encoder, inputs: list[str], out: Path, batch_size: int) -> Path:
    """Audio files (or folders of them): one embedding per file, the mean over its non-padded frames of the
    whole file (16 kHz mono, normalised as in training); `out.txt` lists the files in order."""
    from data2vec.data.audio import AUDIO_EXTENSIONS, AudioCollate, find_audio_files, load_audio, normalize_wave

    cfg = encoder.cfg.audio
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise Data2VecError(f"input '{item}' does not exist; give audio files ({' '.join(AUDIO_EXTENSIONS)}) "
                                "or folders of them")
        paths += find_audio_files(path) if path.is_dir() else [path]
    if not paths:
        raise Data2VecError(f"no audio files ({' '.join(AUDIO_EXTENSIONS)}) in {', '.join(inputs)}")
    collate = AudioCollate(cfg.conv_kernel, cfg.conv_stride)
    encoder.eval()
    feats = []
    for start in range(0, len(paths), batch_size):
        items = []
        for path in paths[start:start + batch_size]:
            try:
                wave = torch.from_numpy(load_audio(path, cfg.sample_rate))
            except Exception as err:  # noqa: BLE001 - any decoder failure is the file's problem
                raise Data2VecError(f"cannot read audio file '{path}' ({err.__class__.__name__}); remove it or "
                                    "convert it to WAV/FLAC") from None
            if wave.numel() < encoder.frontend.receptive_field:
                raise Data2VecError(f"audio file '{path}' has {wave.numel()} samples at {cfg.sample_rate} Hz, fewer "
                                    f"than the {encoder.frontend.receptive_field} one frame needs; remove it")
            items.append({"audio": normalize_wave(wave) if cfg.normalize else wave, "index": 0, "label": -1})
        batch = collate(items)
        feats.append(encoder.embed(batch["inputs"], batch["padding_mask"]).float())
    return _save(feats, paths, out)


def _save(feats: list[torch.Tensor], names: list, out: Path) -> Path:
    """`out` (.npy, one row per input) and `out.txt` beside it naming the inputs in the same order."""
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, torch.cat(feats).numpy())
    out.with_suffix(".txt").write_text("".join(f"{name}\n" for name in names))
    return out
