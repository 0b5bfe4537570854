"""Stopping a run cleanly: SIGTERM / SIGINT become a checkpoint and exit status 75, for every loop."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from pathlib import Path
from typing import Iterator

import torch

from data2vec.errors import Preempted
from data2vec.train.distributed import DistInfo, any_process
from data2vec.train.logging import MetricsLogger

log = logging.getLogger("data2vec")


class StopSignal:
    """SIGTERM / SIGINT (what schedulers send before killing a job) ask the loop to stop after the current
    update and write a checkpoint. With several processes they agree on it, so all stop at the same step."""

    def __init__(self, info: DistInfo, device: torch.device) -> None:
        self.info, self.device = info, device
        self.received = False

    def _handler(self, signum: int, frame: object) -> None:
        if self.received:  # a second signal: the user insists
            raise KeyboardInterrupt
        self.received = True
        log.warning("received %s: stopping after this update and writing a checkpoint",
                    signal.Signals(signum).name)

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def __call__(self) -> bool:
        return any_process(self.received, self.info, self.device)


@contextlib.contextmanager
def stoppable(out: Path, info: DistInfo, device: torch.device, logger: MetricsLogger | None
              ) -> Iterator[StopSignal]:
    """The block a loop runs in (pretraining and fine-tuning alike): signals ask it to stop (poll the yielded
    StopSignal after each update), a pre-emption is reported with how to continue, and the metrics logger is
    closed however the block ends."""
    stop = StopSignal(info, device)
    try:
        with stop.installed():
            yield stop
    except Preempted as err:
        log.warning("%s in %s; run the same command again (or resume=auto) to continue", err, out)
        raise
    finally:
        if logger is not None:
            logger.close()
