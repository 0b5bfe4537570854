import logging

import numpy as np
import pytest
import torch
from PIL import Image

from data2vec.data.builtin import digits_source, resolve_image_source
from data2vec.data.image import (IMAGENET_MEAN, IMAGENET_STD, ImageDataset, ImageFolderSource, ImageTransform,
                                 collate_images)
from data2vec.errors import Data2VecError


def _png(path, value=100, size=(24, 20)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)


def test_eval_transform_normalises_exactly():
    img = Image.fromarray(np.full((40, 30, 3), 51, dtype=np.uint8))
    x = ImageTransform(size=16, train=False)(img, torch.Generator())
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    for c in range(3):
        want = (51 / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        torch.testing.assert_close(x[c], torch.full((16, 16), want), atol=1e-5, rtol=0)


def test_train_transform_is_a_function_of_the_generator():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
    t = ImageTransform(size=16, train=True)
    a = t(img, torch.Generator().manual_seed(1))
    b = t(img, torch.Generator().manual_seed(1))
    c = t(img, torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_folder_with_class_subfolders_gives_labels(tmp_path):
    _png(tmp_path / "cat" / "a.png")
    _png(tmp_path / "dog" / "b.JPG")
    _png(tmp_path / "dog" / "deep" / "c.png")
    src = ImageFolderSource(tmp_path)
    assert len(src) == 3 and src.classes == ["cat", "dog"] and src.labels == [0, 1, 1]


def test_flat_folder_has_no_labels(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("not an image")
    src = ImageFolderSource(tmp_path)
    assert len(src) == 1 and src.labels is None


def test_missing_and_empty_folders_are_clear_errors(tmp_path):
    with pytest.raises(Data2VecError, match=str(tmp_path / "nope")):
        ImageFolderSource(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(Data2VecError, match="no images found.*empty"):
        ImageFolderSource(tmp_path / "empty")


def test_corrupt_and_empty_files_are_skipped_and_counted(tmp_path, caplog):
    _png(tmp_path / "good.png")
    (tmp_path / "corrupt.png").write_bytes(np.random.default_rng(0).bytes(300))
    (tmp_path / "empty.jpg").write_bytes(b"")
    data = ImageDataset(ImageFolderSource(tmp_path), ImageTransform(size=8, train=False), seed=0)
    with caplog.at_level(logging.WARNING, logger="data2vec"):
        batch = collate_images([data[i] for i in range(len(data))])
    assert batch["skipped"] == 2 and batch["inputs"].shape[0] == 1
    assert "corrupt.png" in caplog.text and "empty.jpg" in caplog.text


def test_strict_mode_names_the_bad_file(tmp_path):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG not really")
    data = ImageDataset(ImageFolderSource(tmp_path), ImageTransform(size=8, train=False), seed=0, strict=True)
    with pytest.raises(Data2VecError, match="corrupt.png.*data.strict=false"):
        data[0]


def test_items_depend_only_on_index_and_epoch():
    src = digits_source("train")
    data = ImageDataset(src, ImageTransform(size=16, train=True, scale=(0.3, 1.0)), seed=3,
                        mask_fn=lambda g: torch.rand(16, generator=g) < 0.5)
    first = data[(5, 1)]
    data[(7, 0)]
    again = data[(5, 1)]
    other_epoch = data[(5, 2)]
    torch.testing.assert_close(first["image"], again["image"])
    assert torch.equal(first["mask"], again["mask"])
    assert not torch.allclose(first["image"], other_epoch["image"])


def test_digits_split_is_fixed_and_stratified():
    train, test = digits_source("train"), digits_source("test")
    assert (len(train), len(test)) == (1347, 450)
    assert sorted(set(test.labels)) == list(range(10))
    assert digits_source("train").labels == train.labels
    assert np.asarray(train.load(0)).shape == (8, 8, 3)


def test_folder_with_split_subfolders(tmp_path):
    _png(tmp_path / "train" / "a" / "1.png")
    _png(tmp_path / "train" / "b" / "2.png")
    _png(tmp_path / "val" / "a" / "3.png")
    assert len(resolve_image_source(str(tmp_path), "train")) == 2
    assert len(resolve_image_source(str(tmp_path), "test")) == 1
    with pytest.raises(Data2VecError, match="builtin:digits"):
        resolve_image_source("builtin:mnist", "train")
