"""Released models by name: a local path, a Hugging Face model id, or a fairseq checkpoint URL (or its short name
in :data:`RELEASED`) becomes a local data2vec run folder.

Why a cache: released checkpoints are hundreds of MB to GBs, so each is fetched once and converted once. Hugging
Face ids go through `huggingface_hub`'s own cache (shared with `transformers`, honouring `HF_HUB_CACHE` and
`HF_HUB_OFFLINE`); URLs are downloaded into the data2vec cache (:func:`cache_dir`) with a resumable `.part` file,
and their SHA-256 is recorded beside them and checked whenever the file is used again. Converted run folders live
in the same cache, keyed by what they were made from (the Hub commit, the file's SHA-256), so they are reused.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import http.client
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO, Iterator

from data2vec.data.cache import cache_dir
from data2vec.errors import Data2VecError

_FAIR = "https://dl.fbaipublicfiles.com/fairseq"
RELEASED: dict[str, str] = {  # short name -> Meta's fairseq file (fairseq's examples/data2vec/README.md)
    "data2vec1-audio-base": f"{_FAIR}/data2vec/audio_base_ls.pt",
    "data2vec1-audio-base-10m": f"{_FAIR}/data2vec/audio_base_ls_10m.pt",
    "data2vec1-audio-base-100h": f"{_FAIR}/data2vec/audio_base_ls_100h.pt",
    "data2vec1-audio-base-960h": f"{_FAIR}/data2vec/audio_base_ls_960h.pt",
    "data2vec1-audio-large": f"{_FAIR}/data2vec/vox_pretrained.pt",
    "data2vec1-audio-large-10m": f"{_FAIR}/data2vec/vox_10m.pt",
    "data2vec1-audio-large-100h": f"{_FAIR}/data2vec/vox_100h.pt",
    "data2vec1-audio-large-960h": f"{_FAIR}/data2vec/vox_960h.pt",
    "data2vec1-text-base": f"{_FAIR}/data2vec/nlp_base.pt",
    "data2vec2-image-base": f"{_FAIR}/data2vec2/base_imagenet.pt",
    "data2vec2-image-base-ft1k": f"{_FAIR}/data2vec2/base_imagenet_ft.pt",
    "data2vec2-image-large": f"{_FAIR}/data2vec2/large_imagenet.pt",
    "data2vec2-image-large-ft1k": f"{_FAIR}/data2vec2/large_imagenet_ft.pt",
    "data2vec2-image-huge": f"{_FAIR}/data2vec2/huge_imagenet.pt",
    "data2vec2-image-huge-ft1k": f"{_FAIR}/data2vec2/huge_imagenet_ft.pt",
    "data2vec2-audio-base": f"{_FAIR}/data2vec2/base_libri.pt",
    "data2vec2-audio-base-960h": f"{_FAIR}/data2vec2/base_libri_960h.pt",
    "data2vec2-audio-large": f"{_FAIR}/data2vec2/large_vox.pt",
    "data2vec2-audio-large-960h": f"{_FAIR}/data2vec2/large_vox_960h.pt",
    "data2vec2-text-base": f"{_FAIR}/data2vec2/nlp_base.pt",
}
DICTIONARIES: dict[str, list[str]] = {  # what a released file does not hold: from_fairseq's `dictionary` folder
    RELEASED["data2vec1-text-base"]: [f"{_FAIR}/gpt2_bpe/{f}" for f in ("dict.txt", "encoder.json", "vocab.bpe")],
    RELEASED["data2vec2-text-base"]: [f"{_FAIR}/data2vec2/{f}" for f in ("dict.txt", "encoder.json", "vocab.bpe")],
}
HF_RELEASED: tuple[str, ...] = tuple(  # Hugging Face's conversions of the v1 models (docs/checkpoints.md)
    [f"facebook/data2vec-vision-{s}" for s in ("base", "base-ft1k", "large", "large-ft1k")]
    + [f"facebook/data2vec-audio-{s}{f}" for s in ("base", "large") for f in ("", "-10m", "-100h", "-960h")]
    + ["facebook/data2vec-text-base"])
HF_IGNORE = ["*.h5", "*.msgpack", "*.onnx", "*.ot", "*.tflite", "tf_*", "flax_*", "rust_*"]  # other frameworks' weights
_HF_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
CHUNK = 1 << 20


def resolve(name: str | Path) -> Path:
    """A local data2vec checkpoint or run folder for `name`: an existing path as it is; a Hugging Face model id,
    a fairseq checkpoint URL (https, file) or a :data:`RELEASED` short name fetched and converted once into
    :func:`cache_dir`. A path that does not exist is returned as it is (the caller says it is missing)."""
    kind, value = _classify(name)
    if kind == "path":
        return Path(value)
    if kind == "hf":
        folder = hf_folder(value)
        out = cache_dir() / "converted" / f"hf--{value.replace('/', '--')}--{folder.name[:12]}"
        return _convert_once(out, lambda: _from_hf(folder, out))
    path, dictionary = download(value), fairseq_dictionary(value)
    out = cache_dir() / "converted" / f"{Path(path.name).stem}-{_recorded_sha(path)[:12]}"
    return _convert_once(out, lambda: _from_fairseq(path, out, dictionary))


def hf_folder(name: str | Path) -> Path:
    """A local Hugging Face model folder: an existing path as it is, a model id fetched into the Hub cache
    (only the PyTorch weights and their config and tokenizer files, not other frameworks' weights)."""
    kind, value = _classify(name)
    if kind == "path":
        return Path(value)
    if kind != "hf":
        raise Data2VecError(f"'{name}' is a fairseq checkpoint, not a Hugging Face model; use it with "
                            "--from-fairseq, or give a Hugging Face model id or folder")
    try:
        import huggingface_hub
        from huggingface_hub import errors
    except ImportError:
        raise Data2VecError(f"opening '{value}' from the Hugging Face Hub needs huggingface_hub: "
                            "pip install 'data2vec[hf]', or pass a local model folder") from None
    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    try:
        return Path(huggingface_hub.snapshot_download(
            value, cache_dir=os.environ.get("HF_HUB_CACHE") or None, local_files_only=offline,
            ignore_patterns=HF_IGNORE))
    except errors.LocalEntryNotFoundError:
        how = "HF_HUB_OFFLINE is set" if offline else "the Hub cannot be reached"
        raise Data2VecError(
            f"'{value}' is no local path, and Hugging Face model '{value}' is not in the Hub cache and {how}: run "
            f"where there is internet (or unset HF_HUB_OFFLINE), or fetch it by hand with "
            f"`hf download {value} --local-dir DIR` and pass DIR"
        ) from None
    except (errors.RepositoryNotFoundError, errors.GatedRepoError, errors.RevisionNotFoundError) as e:
        raise Data2VecError(f"'{value}' is neither a local path nor a Hugging Face model we may read "
                            f"({type(e).__name__}); check the id, log in with `hf auth login` for a gated model, "
                            "or give a local path") from None


def download(url: str) -> Path:
    """The local copy of `url` (https, http or file) in :func:`cache_dir`, downloaded once: resumed from its
    `.part` file after an interruption, and its SHA-256 written to `FILE.sha256` beside it. A copy made
    before is checked against that SHA-256 first; a mismatch is an error naming the file to delete."""
    if url in RELEASED:
        url = RELEASED[url]
    target = _download_path(url)
    if target.is_file():
        _check_sha(target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    with _locked(target.with_name(target.name + ".lock")):
        if target.is_file():  # another process finished it while we waited
            return target
        sha = _fetch(url, part)
        target.with_name(target.name + ".sha256").write_text(f"{sha}  {target.name}\n")
        os.replace(part, target)
    return target


def fairseq_file(name: str | Path) -> Path:
    """A local fairseq checkpoint file: an existing path as it is, a URL or :data:`RELEASED` short name
    downloaded (:func:`download`)."""
    kind, value = _classify(name)
    if kind == "hf":
        raise Data2VecError(f"'{name}' is a Hugging Face model id, not a fairseq checkpoint; use it with --from-hf")
    return Path(value) if kind == "path" else download(value)


def fairseq_dictionary(name: str | Path) -> Path | None:
    """The folder of the files a released fairseq checkpoint needs beside it (:data:`DICTIONARIES`: the text
    models' dict.txt and GPT-2 BPE), downloaded; None for other names, paths and URLs."""
    kind, value = _classify(name)
    if kind != "url" or value not in DICTIONARIES:
        return None
    return [download(url) for url in DICTIONARIES[value]][0].parent  # each list's URLs share one folder


def resolve_overrides(overrides: list[str] | tuple[str, ...]) -> list[str]:
    """`key=value` overrides with the value of `checkpoint=` / `finetune.checkpoint=` resolved (:func:`resolve`),
    so that fine-tuning from a released model needs no step before it."""
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key in ("checkpoint", "finetune.checkpoint") and value:
            item = f"{key}={resolve(value)}"
        out.append(item)
    return out


# --- what a name is ----------------------------------------------------------------------------------------

def _classify(name: str | Path) -> tuple[str, str]:
    """("path" | "hf" | "url", value). An existing path always wins; `org/name` whose `org` is no local folder is
    a Hub id; a bare word that is no short name is unknown (one line, with the closest names)."""
    text = str(name)
    if isinstance(name, Path) or Path(text).expanduser().exists():
        return "path", str(Path(text).expanduser())
    if text in RELEASED:
        return "url", RELEASED[text]
    if re.match(r"(https?|file)://", text):
        return "url", text
    if "://" in text:
        raise Data2VecError(f"'{text}': only https, http and file URLs are downloaded; fetch it by hand and "
                            "pass its local path")
    if _HF_ID.fullmatch(text) and not Path(text.split("/")[0]).exists():
        return "hf", text
    if "/" in text or os.sep in text or text.startswith((".", "~")) or Path(text).suffix:
        return "path", text  # a path that does not exist: the caller's own message says so
    close = difflib.get_close_matches(text, [*RELEASED, *(h.split("/")[1] for h in HF_RELEASED)], n=3)
    hint = f" (closest: {', '.join(close)})" if close else ""
    raise Data2VecError(f"'{text}' is no local path and no released model name{hint}; give a checkpoint or run "
                        "folder, a Hugging Face id (facebook/data2vec-vision-base), a URL, or a name from "
                        "docs/checkpoints.md")


# --- downloads ---------------------------------------------------------------------------------------------

def _download_path(url: str) -> Path:
    """The cache path mirrors the URL (host and path), so two files of the same name do not collide and a
    user can put a file downloaded by hand where it belongs."""
    parts = urllib.parse.urlsplit(url)
    pieces = [p for p in urllib.parse.unquote(parts.path).split("/") if p]
    if not pieces or any(p in (".", "..") for p in pieces):
        raise Data2VecError(f"'{url}' names no file to download; give the URL of a checkpoint file")
    return cache_dir() / "downloads" / (parts.netloc or "local") / Path(*pieces)


def _open(url: str, offset: int) -> tuple[BinaryIO, int | None, int]:
    """(stream, total size or None, the offset it starts at: `offset`, or 0 where the server ignores Range)."""
    if url.startswith("file://"):
        path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
        try:
            f = path.open("rb")
        except OSError as e:
            raise Data2VecError(f"cannot read '{url}': {e.strerror}; check the path") from None
        size = path.stat().st_size
        start = offset if offset <= size else 0  # a part longer than the file: the file changed, start over
        f.seek(start)
        return f, size, start
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # Range past the end: the part is the whole file, or the file changed
            total = (e.headers.get("Content-Range") or "").rpartition("/")[2]
            if total.isdigit() and int(total) == offset:
                return _Empty(), offset, offset
            if total.isdigit():  # a part longer than the file: the file changed, start over
                return _open(url, 0)
        raise Data2VecError(f"downloading '{url}' failed: HTTP {e.code} {e.reason}; check the URL") from None
    except (urllib.error.URLError, OSError) as e:
        raise _offline_error(url, getattr(e, "reason", e)) from None
    start = offset if response.status == 206 else 0
    length = response.headers.get("Content-Length")
    return response, (start + int(length)) if length and length.isdigit() else None, start


class _Empty:
    def read(self, n: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


def _fetch(url: str, part: Path) -> str:
    """Append `url`'s bytes to `part` from where it stops; returns the whole file's SHA-256."""
    from tqdm import tqdm

    offset = part.stat().st_size if part.is_file() else 0
    stream, total, start = _open(url, offset)
    sha = hashlib.sha256()
    if start:
        with part.open("rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                sha.update(chunk)
    done = start
    try:
        with part.open("ab" if start else "wb") as f, \
                tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                     desc=part.name[:-5], disable=None) as bar:
            while chunk := stream.read(CHUNK):
                f.write(chunk)
                sha.update(chunk)
                done += len(chunk)
                bar.update(len(chunk))
    except (OSError, http.client.HTTPException) as e:  # a dropped connection (Ctrl-C propagates); the part stays
        raise Data2VecError(f"downloading '{url}' stopped after {done} bytes ({e}); run again to resume from "
                            f"'{part}'") from None
    finally:
        stream.close()
    if total is not None and done != total:
        raise Data2VecError(f"downloading '{url}' stopped after {done} of {total} bytes; run again to resume from "
                            f"'{part}'")
    return sha.hexdigest()


def _offline_error(url: str, reason: object) -> Data2VecError:
    target = _download_path(url)
    return Data2VecError(f"cannot download '{url}' ({reason}) and it is not in the cache: connect to the internet, "
                         f"or download it by hand to '{target}' (or pass the file's local path)")


def _recorded_sha(path: Path) -> str:
    from data2vec.checkpoint import file_sha256

    record = path.with_name(path.name + ".sha256")
    if not record.is_file():  # put there by hand: record it now, as the first download would have
        record.write_text(f"{file_sha256(path)}  {path.name}\n")
    return record.read_text().split()[0]


def _check_sha(path: Path) -> None:
    from data2vec.checkpoint import file_sha256

    actual, recorded = file_sha256(path), _recorded_sha(path)
    if actual != recorded:
        raise Data2VecError(f"'{path}' does not match its recorded SHA-256 (damaged since it was downloaded); "
                            "delete it and its .sha256 and run again to download it anew")


# --- converting once ---------------------------------------------------------------------------------------

def _convert_once(out: Path, convert) -> Path:
    """Run `convert` into `out` unless a complete conversion is there. A converted run folder records its own
    absolute path (config `out`, a text tokenizer), so it is written in place, under a lock, and an incomplete
    one (a conversion that was stopped) is removed first."""
    from data2vec.checkpoint import latest_checkpoint

    if out.is_dir() and latest_checkpoint(out) is not None:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with _locked(out.with_name(out.name + ".lock")):
        if out.is_dir() and latest_checkpoint(out) is not None:
            return out
        shutil.rmtree(out, ignore_errors=True)
        try:
            convert()
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
    return out


def _from_hf(folder: Path, out: Path) -> None:
    from data2vec.interop.hf import from_hf

    from_hf(folder, out)


def _from_fairseq(path: Path, out: Path, dictionary: Path | None) -> None:
    from data2vec.interop.fairseq import from_fairseq

    from_fairseq(path, out, dictionary)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (POSIX), so that processes started together (torchrun) download and convert
    once; where fcntl does not exist the lock is skipped."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
