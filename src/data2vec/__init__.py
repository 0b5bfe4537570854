"""data2vec: self-supervised pretraining of speech, vision and text Transformers with one objective.

Public API: :func:`load` (a trained encoder from a checkpoint), :func:`build_config`, :func:`pretrain`.
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


__all__ = ["load", "build_config", "pretrain", "Config", "Data2VecError", "version", "__version__"]
