"""Loading a trained encoder for inference: `data2vec.load(path)`."""

from __future__ import annotations

from pathlib import Path

from data2vec.checkpoint import load_checkpoint
from data2vec.model import Data2VecEncoder


def load(checkpoint: str | Path, which: str = "student") -> Data2VecEncoder:
    """The encoder of a checkpoint (or of a run folder's newest checkpoint), in eval mode.

    Needs nothing but the checkpoint: its config travels inside it. `which="teacher"` returns the EMA
    teacher instead of the student.
    Local paths only: the tasks read checkpoints with it, and they do not reach into interop/ (`data2vec.load`
    also opens released models by name).
    """
    weights, _, cfg = load_checkpoint(checkpoint, with_state=False)
    encoder = Data2VecEncoder(cfg)
    prefix = f"{which}."
    encoder.load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})
    return encoder.eval()
