"""Data sets that need no download: scikit-learn's handwritten digits (1,797 real 8x8 scans)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from data2vec.data.image import ArraySource, ImageFolderSource, ImageSource
from data2vec.errors import Data2VecError

SPLITS = ("train", "test", "all")


@lru_cache(maxsize=None)
def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.clip(digits.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)  # [1797, 8, 8]
    train_idx, test_idx = train_test_split(np.arange(len(images)), test_size=0.25, random_state=0,
                                           stratify=digits.target)
    return images, digits.target.astype(np.int64), train_idx, test_idx


def digits_source(split: str) -> ArraySource:
    """The digits as grey 8x8 uint8 images; fixed stratified split: 1,347 train, 450 test."""
    if split not in SPLITS:
        raise Data2VecError(f"unknown split '{split}' of builtin:digits; choose one of {', '.join(SPLITS)}")
    images, labels, train_idx, test_idx = _digits()
    idx = {"train": train_idx, "test": test_idx, "all": np.arange(len(images))}[split]
    return ArraySource(images[idx], labels[idx], [str(d) for d in range(10)], name=f"digits-{split}")


BUILTIN = {"digits": digits_source}


def resolve_image_source(path: str, split: str, strict: bool = False, option: str | None = None) -> ImageSource:
    """`builtin:NAME` (see BUILTIN) or a folder of images.

    A folder with a `train/` sub-folder is a split layout: split "train" reads `train/`, split "test" reads
    `test/` (or else `val/`). Any other folder is read whole for every split. `option` is how the user gave
    `path` (``--data PATH``), named in an error's fix; None: the config keys.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if path.startswith("builtin:"):
        name = path.split(":", 1)[1]
        if name not in BUILTIN:
            raise Data2VecError(f"unknown built-in data set '{path}'; choose one of "
                                f"{', '.join('builtin:' + n for n in BUILTIN)}")
        return BUILTIN[name](split)
    root = Path(path)
    if not (root / "train").is_dir():
        return ImageFolderSource(root, strict, option)
    if split == "all":
        raise Data2VecError(f"data path '{root}' is split into train/ and test/ sub-folders; read split 'train' or "
                            f"'test', or set {option or 'data.path=...'} to one of them")
    for sub in ["train"] if split == "train" else ["test", "val"]:
        if (root / sub).is_dir():
            return ImageFolderSource(root / sub, strict, option)
    raise Data2VecError(f"data path '{root}' has a train/ sub-folder but no test/ or val/ for split 'test'; add one "
                        f"or set {option or 'data.eval_path=...'} to a folder of labelled test images")
