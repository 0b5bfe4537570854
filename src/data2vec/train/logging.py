"""Where a run reports itself: a progress bar, `metrics.jsonl` and TensorBoard event files."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

log = logging.getLogger("data2vec")


def setup_logging(out: Path | None = None, level: int = logging.INFO) -> None:
    """Log to stderr and, when a run folder is given, to `out/train.log`."""
    logger = logging.getLogger("data2vec")
    logger.setLevel(level)
    if not any(isinstance(h, logging.StreamHandler) and getattr(h, "_d2v", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        handler._d2v = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    if out is not None:  # one run's log at a time: an earlier run of this process (or its moved folder) lets go
        for old in [h for h in logger.handlers if getattr(h, "_d2v_run", False)]:
            logger.removeHandler(old)
            old.close()
        file_handler = logging.FileHandler(str(Path(out) / "train.log"))
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        file_handler._d2v_run = True  # type: ignore[attr-defined]
        logger.addHandler(file_handler)
    logger.propagate = True  # our own handlers print; the root logger (empty unless a user set one up) may listen


class MetricsLogger:
    """Appends one JSON object per logged step to `metrics.jsonl` and mirrors scalars to TensorBoard."""

    def __init__(self, out: Path, total_steps: int, start_step: int, progress: bool = True,
                 tensorboard: bool = True, desc: str = "pretrain") -> None:
        self.path = out / "metrics.jsonl"
        torn = self.path.exists() and self.path.stat().st_size > 0 and not self.path.read_bytes().endswith(b"\n")
        self.file = open(self.path, "a")
        if torn:  # a crash cut the last record short: start the next one on its own line
            self.file.write("\n")
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out / "tensorboard"))
            except ImportError:  # tensorboard is a dependency, but keep training if a user removed it
                log.warning("tensorboard is not installed; writing metrics.jsonl only")
        self.bar = tqdm(total=total_steps, initial=start_step, desc=desc, unit="step",
                        disable=not progress, dynamic_ncols=True, file=sys.stderr)

    def step(self) -> None:
        self.bar.update(1)

    def log(self, record: dict[str, Any], group: str = "train") -> None:
        """Append `record` (it has a "step"); its numbers go to TensorBoard as `group/key` (e.g. valid/accuracy)."""
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{group}/{key}", value, record["step"])
        if group == "train":
            shown = {"loss": ("loss", ".4f"), "lr": ("lr", ".2e"), "ema": ("ema_decay", ".5f"),
                     "sps": ("samples_per_s", ".1f")}
            self.bar.set_postfix({name: f"{record[key]:{fmt}}" for name, (key, fmt) in shown.items() if key in record})

    def close(self) -> None:
        self.bar.close()
        self.file.close()
        if self.writer is not None:
            self.writer.close()
