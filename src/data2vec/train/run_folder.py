"""A run folder belongs to one run and one owner: continue it, refuse, or move it aside; never write over it.

Re-running a command into a folder that holds a run continues that run when the saved config matches (a
finished run then has nothing left to do), and stops with a one-line error naming the choices when it does
not: ``resume=auto`` (continue it with the new settings), another ``out=``, or ``overwrite=true``, which
renames the old folder to ``OUT.old-YYYYmmdd-HHMMSS`` and starts afresh. Nothing written is ever deleted.

While a run is alive its folder holds ``run.lock`` (the owner's pid, host and process start time). A second
launch into the folder is refused; a lock whose process has died (on this host) is recovered with a warning.
The processes of one `torchrun` job share the lock: only the main one writes it, the others recognise it
by the job's rendezvous id. Everything here that decides only reads, so a start that fails validation
creates nothing: :func:`claim` (the first write) comes after the data, model and optimiser are built.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Callable, Iterator

import yaml

from data2vec.checkpoint import latest_checkpoint, list_checkpoints
from data2vec.config import Config, config_from_yaml_text, flatten, to_dict
from data2vec.errors import Data2VecError

log = logging.getLogger("data2vec")
LOCK = "run.lock"
# Keys that change how a run is launched or bookkept, not what it computes: continuing with other values is
# the same run. (Results do not depend on the number of data workers; device and compile change rounding only.)
LAUNCH_KEYS = frozenset({"name", "out", "resume", "overwrite", "device", "data.num_workers", "train.log_every",
                         "train.save_every", "train.keep_last", "train.compile", "finetune.eval_batch_size"})


def holds_run(out: Path) -> bool:
    """Whether `out` holds results of a run that a fresh start would mix with or write over."""
    metrics = out / "metrics.jsonl"
    return bool(list_checkpoints(out)) or (metrics.is_file() and metrics.stat().st_size > 0) or \
        (out / "best").exists() or (out / "results.json").exists()


def config_differences(saved: Config, new: Config) -> list[str]:
    """`key: saved -> new` for each setting (outside LAUNCH_KEYS) in which two configs differ."""
    old, now = flatten(to_dict(saved)), flatten(to_dict(new))
    return [f"{key}: {old.get(key)!r} -> {now.get(key)!r}" for key in sorted(old.keys() | now.keys())
            if key not in LAUNCH_KEYS and old.get(key) != now.get(key)]


def run_config(out: Path) -> Config | None:
    """The run's resolved config: `config.yaml` in the run folder, else the newest checkpoint's (None if
    neither can be read)."""
    for path in [out / "config.yaml", *sorted((out / "checkpoints").glob("step_*/config.yaml"), reverse=True)]:
        try:
            return config_from_yaml_text(path.read_text(), source=str(path))
        except (OSError, yaml.YAMLError, Data2VecError):
            continue
    return None


def start_point(cfg: Config, fresh_config: Callable[[], Config] | None = None) -> Path | None:
    """The checkpoint a run in `cfg.out` starts from (None: from scratch), decided without writing anything.

    When the folder already holds a run and no `resume` was asked for, the saved config is compared with the
    one a fresh start would save: `fresh_config()` (fine-tuning resolves its recipe against the pretrained
    checkpoint), else `cfg` itself."""
    out = Path(cfg.out)
    check_unlocked(out)
    if cfg.resume is not None:
        if cfg.overwrite:
            raise Data2VecError(f"overwrite=true starts a new run but resume={cfg.resume} continues one; drop one")
        if cfg.resume == "auto":
            return latest_checkpoint(out)  # nothing yet: a fresh start
        path = Path(cfg.resume)
        if not path.exists():
            raise Data2VecError(f"resume='{cfg.resume}' does not exist; use resume=auto or a checkpoint folder")
        return path
    if cfg.overwrite or not holds_run(out):
        return None
    saved = run_config(out)
    new = fresh_config() if fresh_config else cfg
    differences = config_differences(saved, new) if saved is not None else ["no readable config.yaml"]
    if differences:
        shown = "; ".join(differences[:3]) + (f"; and {len(differences) - 3} more" if len(differences) > 3 else "")
        raise Data2VecError(f"run folder '{out}' holds another run ({shown}); continue it with these settings "
                            "with resume=auto, choose another out= (data2vec demo: --out), or give overwrite=true "
                            f"to move it aside to '{out}.old-<time>' and start afresh")
    found = latest_checkpoint(out)
    if found is not None:
        log.info("run folder %s holds this run (same config): continuing from %s", out, found.name)
    return found


@dataclasses.dataclass
class _Owner:
    pid: int
    host: str
    started: float  # the process's start, in clock ticks since boot (tells a reused pid from the owner)
    job: str | None  # torchrun's rendezvous: every process of one job shares the lock
    since: str

    @classmethod
    def me(cls) -> "_Owner":
        return cls(os.getpid(), socket.gethostname(), _start_ticks(os.getpid()), _job(),
                   time.strftime("%Y-%m-%d %H:%M:%S"))


def _start_ticks(pid: int) -> float:
    try:  # field 22 of /proc/PID/stat, after the command name (which may hold spaces and parentheses)
        return float(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return -1.0


def _job() -> str | None:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return f"{os.environ.get('TORCHELASTIC_RUN_ID', '')}@{os.environ.get('MASTER_ADDR', '')}:" \
           f"{os.environ.get('MASTER_PORT', '')}"


def _read_owner(path: Path) -> _Owner | None:
    try:
        return _Owner(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):  # not written by us (ours appear whole): recovered as a dead owner's
        return _Owner(pid=-1, host=socket.gethostname(), started=-1.0, job=None, since="?")


def _alive(owner: _Owner) -> bool:
    """Whether the owner still runs. On another host we cannot tell, so it is taken to be alive."""
    if owner.host != socket.gethostname():
        return True
    if owner.pid <= 0:
        return False
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return owner.started < 0 or _start_ticks(owner.pid) == owner.started


def check_unlocked(out: Path) -> None:
    """Refuse a folder that another live process (not of this job) owns; a dead owner's lock stays for
    :func:`claim` to recover."""
    owner = _read_owner(out / LOCK)
    if owner is None or (owner.job is not None and owner.job == _job()) or not _alive(owner):
        return
    gone = "" if owner.host == socket.gethostname() else f"; if that process is gone, delete '{out / LOCK}'"
    raise Data2VecError(f"run folder '{out}' is in use by process {owner.pid} on {owner.host} (since "
                        f"{owner.since}); wait for it to finish or choose another out={gone}")


def _move_aside(out: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = out.with_name(f"{out.name}.old-{stamp}"), 1
    while target.exists():
        n += 1
        target = out.with_name(f"{out.name}.old-{stamp}-{n}")
    os.replace(out, target)
    log.warning("overwrite=true: moved the earlier run in %s to %s", out, target)
    return target


def _create_whole(path: Path, text: str) -> bool:
    """Create `path` holding `text` unless it exists (False then). The text is written to a draft that is then
    hard-linked into place, so no reader ever sees a half-written lock; where the file system has no hard
    links, an exclusive create is the fallback."""
    draft = path.with_name(f".{path.name}.{os.getpid()}")
    draft.write_text(text)
    try:
        os.link(draft, path)
        return True
    except FileExistsError:
        return False
    except OSError:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return True
    finally:
        draft.unlink()


@contextlib.contextmanager
def claim(cfg: Config, is_main: bool = True) -> Iterator[Path]:
    """Create (or take over) the run folder and hold its lock for the life of the block: the first write of
    a run. With `overwrite=true` an earlier run there is moved aside first. Only the main process writes."""
    out = Path(cfg.out)
    if not is_main:
        yield out
        return
    if cfg.overwrite and cfg.resume is None and holds_run(out):
        _move_aside(out)
    out.mkdir(parents=True, exist_ok=True)
    path, me = out / LOCK, _Owner.me()
    for _ in range(3):  # a stale lock is removed, then taken again (another launch may win that race)
        if _create_whole(path, json.dumps(dataclasses.asdict(me))):
            break
        check_unlocked(out)
        owner = _read_owner(path)
        if owner is not None and owner.job is not None and owner.job == me.job:
            break  # this job's lock (a restarted main process of the same torchrun job)
        log.warning("run folder %s: removing the lock of process %s on %s, which has ended", out,
                    owner.pid if owner else "?", owner.host if owner else "?")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    else:
        raise Data2VecError(f"could not take the lock '{path}' (another launch keeps taking it); retry")
    try:
        yield out
    finally:
        owner = _read_owner(path)
        if owner is not None and owner.pid == me.pid and owner.host == me.host:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
