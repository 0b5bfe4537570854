"""The checkpoint folder format lives in :mod:`data2vec.checkpoint`, below ``nn/`` (whose heads are read from
checkpoints) and everything that loads a model. This old name stays importable for code written against it:
it is the same module object, so reads and patches of either name see one module."""

import sys

from data2vec import checkpoint

sys.modules[__name__] = checkpoint
