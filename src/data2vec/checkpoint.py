"""Checkpoints that survive crashes: written to a temporary folder, fsynced, then renamed into place.

A checkpoint is a folder ``OUT/checkpoints/step_00001000/`` holding
- ``model.safetensors``: every weight (student, teacher, head), safe to load from anyone;
- ``state.pt``: optimiser, step and RNG states, loaded with ``weights_only=True`` so it cannot run code;
  absent from a weights-only checkpoint (a conversion), which `resume` starts at step 0 with a fresh optimiser;
- ``config.yaml``: the resolved config, so the checkpoint loads with nothing else;
- ``manifest.json``: format version and the size and SHA-256 of each file; it is written last, so a folder
  without a matching manifest is an incomplete or damaged checkpoint and is passed over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from data2vec.config import Config, config_from_yaml_text, save_config
from data2vec.errors import Data2VecError

FORMAT_VERSION = 1
FILES = ("model.safetensors", "state.pt", "config.yaml")
log = logging.getLogger("data2vec")


def file_sha256(path: Path) -> str:
    """The SHA-256 of file `path` (hex), read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(out: str | Path, step: int, weights: dict[str, torch.Tensor], state: dict[str, Any] | None,
                    config: Config, keep_last: int = 2, extra_files: dict[str, bytes] | None = None) -> Path:
    """Write checkpoint `step` atomically under `out/checkpoints`, then prune all but the newest `keep_last`.
    `state` None writes a weights-only checkpoint (no ``state.pt``).

    `extra_files` (name -> content) are written beside the others and covered by the manifest, e.g. the
    `head.safetensors` of a classifier converted from Hugging Face."""
    root = Path(out) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".step_{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(tmp / "model.safetensors"))
    if state is not None:
        torch.save(state, tmp / "state.pt")
    save_config(config, tmp / "config.yaml")
    for name, content in (extra_files or {}).items():
        (tmp / name).write_bytes(content)
    names = (*(f for f in FILES if state is not None or f != "state.pt"), *(extra_files or {}))
    manifest = {"format_version": FORMAT_VERSION, "step": step,
                "files": {name: {"bytes": (tmp / name).stat().st_size, "sha256": file_sha256(tmp / name)}
                          for name in names}}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    for name in (*names, "manifest.json"):
        _fsync(tmp / name)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(root)
    _prune(root, keep_last)
    return final


def is_complete(path: Path, verify_hashes: bool = False) -> bool:
    """True when the manifest exists and every file has the recorded size (and hash, if asked)."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        for name, meta in manifest["files"].items():
            if (path / name).stat().st_size != meta["bytes"]:
                return False
            if verify_hashes and file_sha256(path / name) != meta["sha256"]:
                return False
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def list_checkpoints(out: str | Path) -> list[Path]:
    """Checkpoint folders under `out/checkpoints`, oldest first (incomplete ones included)."""
    root = Path(out) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))


def latest_checkpoint(out: str | Path) -> Path | None:
    """The newest complete, undamaged checkpoint in run folder `out`; damaged ones are skipped with a warning."""
    for path in reversed(list_checkpoints(out)):
        if is_complete(path, verify_hashes=True):
            return path
        log.warning("checkpoint %s is incomplete or damaged; falling back to an older one", path)
    return None


def _prune(root: Path, keep_last: int) -> None:
    complete = [p for p in sorted(root.iterdir()) if p.is_dir() and p.name.startswith("step_") and is_complete(p)]
    for old in complete[:-max(keep_last, 1)]:
        shutil.rmtree(old, ignore_errors=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint folder or a run folder (newest complete checkpoint inside it)."""
    path = Path(path)
    if not path.exists():
        raise Data2VecError(f"checkpoint '{path}' does not exist; give a checkpoint folder or a run folder")
    if path.is_file():
        raise Data2VecError(f"checkpoint '{path}' is a file; a data2vec checkpoint is a folder (give it or its run "
                            "folder; a fairseq .pt file converts with data2vec convert --from-fairseq)")
    if (path / "config.json").is_file() and not (path / "manifest.json").exists():
        raise Data2VecError(f"'{path}' is a Hugging Face model folder, not a data2vec checkpoint; convert it with "
                            f"data2vec convert --from-hf {path} --out RUN and give RUN")
    if (path / "manifest.json").exists() or (path / "model.safetensors").exists():
        try:
            version = json.loads((path / "manifest.json").read_text()).get("format_version", 0)
        except (OSError, ValueError):
            version = 0
        if version > FORMAT_VERSION:
            raise Data2VecError(f"checkpoint '{path}' has format version {version}, newer than this data2vec "
                                f"understands ({FORMAT_VERSION}); upgrade with pip install -U data2vec")
        if not is_complete(path, verify_hashes=True):
            raise Data2VecError(f"checkpoint '{path}' is incomplete or damaged (sizes or hashes do not match "
                                "its manifest); use an older checkpoint of the run")
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise Data2VecError(f"no complete checkpoint found in '{path}'; give a checkpoint folder such as "
                            f"'{path}/checkpoints/step_00001000'")
    return latest


def load_config(path: str | Path) -> Config:
    """The config of a checkpoint (or of a run folder's newest checkpoint), without reading its weights."""
    path = resolve_checkpoint(path)
    return config_from_yaml_text((path / "config.yaml").read_text(), source=str(path))


def load_checkpoint(path: str | Path, with_state: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any], Config]:
    """(weights, training state, config) of a checkpoint or run folder. Nothing in it can run code. The state
    is empty for a weights-only checkpoint."""
    path = resolve_checkpoint(path)
    weights = load_file(str(path / "model.safetensors"))
    state = {}
    if with_state and (path / "state.pt").is_file():
        try:  # weights_only: a pickle that would build arbitrary objects (run code) is refused
            state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise Data2VecError(f"refusing to load '{path / 'state.pt'}': it holds objects other than tensors and "
                                f"plain data ({str(err).splitlines()[0][:120]}); never load checkpoints from "
                                "untrusted sources without weights_only") from None
    return weights, state, load_config(path)
