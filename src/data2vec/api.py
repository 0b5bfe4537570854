"""Loading a trained encoder for inference: `data2vec.load(path)`."""

from __future__ import annotations

from pathlib import Path

from data2vec.interop.hub import resolve
from data2vec.model import Data2VecEncoder
from data2vec.train.checkpoint import load_checkpoint


def load(checkpoint: str | Path, which: str = "student") -> Data2VecEncoder:
    """The encoder of a checkpoint (or of a run folder's newest checkpoint), in eval mode.

    `checkpoint` may also name a released model: a Hugging Face id, a fairseq checkpoint URL or a short name
    (docs/checkpoints.md), fetched and converted once into a cache (:func:`data2vec.interop.hub.resolve`).
    Needs nothing but the checkpoint: its config travels inside it. `which="teacher"` returns the EMA
    teacher instead of the student.
    """
    weights, _, cfg = load_checkpoint(resolve(checkpoint), with_state=False)
    encoder = Data2VecEncoder(cfg)
    prefix = f"{which}."
    encoder.load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})
    return encoder.eval()
