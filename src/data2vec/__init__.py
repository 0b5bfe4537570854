"""data2vec: self-supervised pretraining of speech, vision and text Transformers with one objective.

Public API: :func:`load` (a trained encoder from a checkpoint), :func:`build_config`, :func:`pretrain`,
:func:`from_hf` / :func:`to_hf` (Hugging Face `transformers` model folders).
"""

from data2vec.api import load
from data2vec.config import Config, build_config
from data2vec.errors import Data2VecError

__version__ = "0.1.0"
version = __version__


def pretrain(recipe: str, *overrides: str):
    """Pretrain from a recipe name or path with `key=value` overrides; returns the run folder."""
    from data2vec.tasks.pretrain import pretrain as run

    return run(build_config(recipe, list(overrides)))


def from_hf(folder: str, out: str):
    """Convert a local Hugging Face Data2VecVision / Data2VecText folder into a data2vec run folder `out`;
    returns the checkpoint path. Needs no `transformers` (see :mod:`data2vec.interop.hf`)."""
    from data2vec.interop.hf import from_hf as convert

    return convert(folder, out)


def to_hf(checkpoint: str, out: str, which: str = "student"):
    """Write a data2vec checkpoint (or run folder) as a Hugging Face model folder `out` that
    `transformers.AutoModel.from_pretrained(out)` loads; returns `out`."""
    from data2vec.interop.hf import to_hf as convert

    return convert(checkpoint, out, which)


__all__ = ["load", "build_config", "pretrain", "from_hf", "to_hf", "Config", "Data2VecError", "version", "__version__"]
