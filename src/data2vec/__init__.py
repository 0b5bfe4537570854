"""data2vec: self-supervised pretraining of speech, vision and text Transformers with one objective.

Public API: :func:`load` (a trained encoder from a checkpoint), :func:`build_config`, :func:`pretrain`,
:func:`finetune` / :func:`evaluate` (classifiers and CTC speech recognition on top of a checkpoint),
:func:`from_hf` / :func:`to_hf` (Hugging Face `transformers` model folders), :func:`from_fairseq` (Meta's fairseq
checkpoints).
"""

import os as _os

# OpenMP threads that finish a parallel region spin while they wait for the next one (GNU OpenMP's default).
# On a machine shared with other jobs (a laptop, a CI runner, a busy node) the spinning threads take the cores
# the working threads need, and a CPU training step took 6x longer here (8.7 s against 1.4 s); on an idle
# machine sleeping costs about 15% of a tiny CPU step (BENCHMARKS.md). We take the bounded loss over the
# unbounded one. Only effective when torch is not imported yet; export OMP_WAIT_POLICY=ACTIVE on a dedicated
# CPU machine to keep the spinning.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from data2vec.api import load as _load  # noqa: E402 - after the OpenMP setting, which must precede importing torch
from data2vec.config import Config, build_config  # noqa: E402
from data2vec.errors import Data2VecError  # noqa: E402

__version__ = "0.1.0"
version = __version__


def load(checkpoint: str, which: str = "student"):
    """The encoder of a checkpoint or run folder (its newest checkpoint), in eval mode; `which="teacher"` for the
    EMA teacher. `checkpoint` may also name a released model: a Hugging Face id, a fairseq checkpoint URL or a
    short name (docs/checkpoints.md), fetched and converted once into a cache (:mod:`data2vec.interop.hub`)."""
    from data2vec.interop.hub import resolve

    return _load(resolve(checkpoint), which)


def pretrain(recipe: str, *overrides: str):
    """Pretrain from a recipe name or path with `key=value` overrides; returns the run folder."""
    from data2vec.tasks.pretrain import pretrain as run

    return run(build_config(recipe, list(overrides)))


def finetune(recipe: str, *overrides: str):
    """Fine-tune a pretrained checkpoint (override ``finetune.checkpoint=PATH``, or a released model's name) from
    a fine-tuning recipe (``image-tiny-ft``, ``text-tiny-ft``, ``audio-tiny-ctc``, ...); returns the run folder."""
    from data2vec.interop.hub import resolve_overrides
    from data2vec.tasks.finetune import finetune as run

    return run(build_config(recipe, resolve_overrides(overrides)))


def evaluate(checkpoint: str, data: str | None = None, split: str = "valid") -> dict:
    """Metrics of a fine-tuned checkpoint (or run folder; ``RUN/best`` for the best one) on labelled `data`
    (default: the run's validation set): accuracy, F1, MCC (top-5 above five classes), or WER and CER."""
    from data2vec.interop.hub import resolve
    from data2vec.tasks.evaluate import evaluate as run

    return run(resolve(checkpoint), data, split)


def from_hf(folder: str, out: str):
    """Convert a Hugging Face Data2VecVision / Data2VecText / Data2VecAudio folder (or model id, fetched into the
    Hub cache) into a data2vec run folder `out`; returns the checkpoint path. Needs no `transformers` (see
    :mod:`data2vec.interop.hf`)."""
    from data2vec.interop.hf import from_hf as convert
    from data2vec.interop.hub import hf_folder

    return convert(hf_folder(folder), out)


def from_fairseq(checkpoint: str, out: str, dictionary: str | None = None):
    """Convert a fairseq data2vec checkpoint (v1 speech, its CTC fine-tunes, v1 text, data2vec 2.0) into a data2vec
    run folder `out`; returns the checkpoint path. Needs no fairseq and runs no code from the file; `dictionary`:
    the folder with fairseq's dict.txt / GPT-2 BPE files (text), a dict.ltr.txt (CTC) or an image classifier's
    class names, one per line (see :mod:`data2vec.interop.fairseq`). `checkpoint` may be a URL or released name
    (docs/checkpoints.md), downloaded once with the dictionary it needs."""
    from data2vec.interop.fairseq import from_fairseq as convert
    from data2vec.interop.hub import fairseq_dictionary, fairseq_file

    return convert(fairseq_file(checkpoint), out, dictionary or fairseq_dictionary(checkpoint))


def to_hf(checkpoint: str, out: str, which: str = "student"):
    """Write a data2vec checkpoint (or run folder) as a Hugging Face model folder `out` that
    `transformers.AutoModel.from_pretrained(out)` loads; returns `out`."""
    from data2vec.interop.hf import to_hf as convert
    from data2vec.interop.hub import resolve

    return convert(resolve(checkpoint), out, which)


__all__ = ["load", "build_config", "pretrain", "finetune", "evaluate", "from_hf", "from_fairseq", "to_hf", "Config",
           "Data2VecError", "version", "__version__"]
