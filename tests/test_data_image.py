import logging
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from data2vec.data.builtin import digits_source, resolve_image_source
from data2vec.data.image import (IMAGENET_MEAN, IMAGENET_STD, ArraySource, ImageDataset, ImageFolderSource,
                                 ImageTransform, collate_images, eval_image_transform, meta_eval_crop_pct,
                                 meta_normalization, random_resized_crop_box, train_image_transform)
from data2vec.data.sampler import StepBatchSampler
from data2vec.data.seeding import sample_generator
from data2vec.errors import Data2VecError


def _png(path, value=100, size=(24, 20)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)


def _truncated_png(path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _noise(side=48, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8))


def test_sample_generator_depends_only_on_its_keys():
    draw = lambda *keys: torch.rand(4, generator=sample_generator(*keys))  # noqa: E731
    assert torch.equal(draw(1, 2, 3), draw(1, 2, 3))
    for other in [(0, 2, 3), (1, 3, 3), (1, 2, 4), (-1, 2, 3)]:
        assert not torch.equal(draw(1, 2, 3), draw(*other))


def test_eval_transform_normalises_exactly():
    img = Image.fromarray(np.full((40, 30, 3), 51, dtype=np.uint8))
    x = ImageTransform(size=16, train=False)(img, torch.Generator())
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    for c in range(3):
        want = (51 / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        torch.testing.assert_close(x[c], torch.full((16, 16), want), atol=1e-6, rtol=0)


# (size, crop_pct, image width x height, resized width x height, crop's left and top), worked out by hand:
# the shorter side to int(size / crop_pct), the longer int(that * long / short), the offset floor((resized - size) / 2)
EVAL_CROPS = [
    (224, 0.875, (300, 300), (256, 256), (16, 16)),  # Meta's 224 / 256: a centred 87.5% of the shorter side
    (224, 0.875, (500, 375), (341, 256), (58, 16)),  # 256 * 500 / 375 = 341.33
    (224, 0.875, (375, 500), (256, 341), (16, 58)),
    (224, 0.875, (343, 256), (343, 256), (59, 16)),  # (343 - 224) / 2 = 59.5: floored as transformers does
    (224, 1.0, (500, 375), (298, 224), (37, 0)),     # 1: the whole shorter side (the default)
    (32, 0.875, (50, 37), (48, 36), (8, 2)),         # int(32 / 0.875) = 36; 36 * 50 / 37 = 48.6
    (32, 0.5, (20, 20), (64, 64), (16, 16)),         # upscaled, then half of each side kept
]


@pytest.mark.parametrize("size,crop_pct,shape,resized,corner", EVAL_CROPS)
def test_eval_transform_resizes_to_size_over_crop_pct_and_crops_the_centre(size, crop_pct, shape, resized, corner):
    """Against Pillow's bicubic resize and crop done by hand, normalised in float64."""
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (shape[1], shape[0], 3), dtype=np.uint8))
    transform = ImageTransform(size=size, train=False, crop_pct=crop_pct)
    assert transform.eval_resize == min(resized)
    left, top = corner
    pixels = np.asarray(img.resize(resized, Image.BICUBIC).crop((left, top, left + size, top + size)), np.float64)
    want = (pixels / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    got = transform(img, torch.Generator())
    assert got.shape == (3, size, size)
    np.testing.assert_allclose(got.permute(1, 2, 0).numpy(), want, atol=2e-6, rtol=0)


def test_eval_transform_follows_data_eval_crop_pct_and_recipes_follow_meta():
    """Base and large recipes evaluate as Meta does at 224 (the shorter side to 256); tiny ones keep the whole
    shorter side, as when their numbers were measured."""
    from data2vec.config import build_config

    for recipe in ("image-base", "image-large", "image-base-ft", "image-base-v2", "image-large-v2"):
        transform = eval_image_transform(build_config(recipe))
        assert (transform.size, transform.crop_pct, transform.eval_resize) == (224, 0.875, 256), recipe
    for recipe in ("image-tiny", "image-tiny-ft", "image-tiny-v2"):
        transform = eval_image_transform(build_config(recipe))
        assert transform.crop_pct == 1.0 and transform.eval_resize == transform.size, recipe
    cfg = build_config("image-tiny", ["data.eval_crop_pct=0.5"])
    assert eval_image_transform(cfg).eval_resize == 2 * cfg.image.image_size


@pytest.mark.parametrize("value", ["0", "-0.5", "1.01", "nan"])
def test_eval_crop_pct_must_be_in_zero_one(value):
    from data2vec.config import build_config

    with pytest.raises(Data2VecError, match=r"data.eval_crop_pct' must be in \(0, 1\]"):
        build_config("image-tiny", [f"data.eval_crop_pct={value}"])


def test_meta_eval_crop_pct_is_224_over_256_up_to_its_size_limit():
    """data2vec_vision (BEiT's build_transform): 224 / 256 below 384 pixels; fairseq's data2vec 2.0: up to 224."""
    assert [meta_eval_crop_pct(s, v2=False) for s in (224, 383, 384)] == [0.875, 0.875, 1.0]
    assert [meta_eval_crop_pct(s, v2=True) for s in (224, 225, 384)] == [0.875, 1.0, 1.0]


# (mean, std) written out here, independently of the library's constants: torchvision's ImageNet statistics
# (timm IMAGENET_DEFAULT_*) and timm's IMAGENET_INCEPTION_* (data2vec_vision without --imagenet_default_mean_and_std)
NORMS = {"imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]), "inception": ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])}


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_training_and_evaluation_transforms_normalise_with_data_image_mean_and_std(norm):
    """Pretraining's, fine-tuning's and the evaluation transform of a config all compute (pixel / 255 - mean) / std
    with `data.image_mean` / `data.image_std`, against Pillow's resize (and crop) normalised by hand in float64.
    The training views are made deterministic: the whole square image (scale 1, no flip), resized to size."""
    from data2vec.config import build_config
    from data2vec.data.build import pretrain_dataset

    mean, std = NORMS[norm]
    cfg = build_config("image-tiny", [f"data.image_mean={mean}", f"data.image_std={std}", "data.crop_scale_min=1.0",
                                      "data.hflip=0", "data.eval_crop_pct=0.8", "image.image_size=16",
                                      "image.patch_size=4"])
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    scale = lambda pixels: (np.asarray(pixels, np.float64) / 255 - np.array(mean)) / np.array(std)  # noqa: E731
    want_eval = scale(img.resize((20, 20), Image.BICUBIC).crop((2, 2, 18, 18)))  # int(16 / 0.8) = 20, centred 16
    want_train = scale(img.resize((16, 16), Image.BICUBIC))
    transforms = {"eval": (eval_image_transform(cfg), want_eval), "finetune": (train_image_transform(cfg), want_train),
                  "pretrain": (pretrain_dataset(cfg).transform, want_train)}
    for name, (transform, want) in transforms.items():
        assert (transform.mean, transform.std) == (tuple(mean), tuple(std)), name
        got = transform(img, torch.Generator().manual_seed(0)).permute(1, 2, 0).numpy()
        np.testing.assert_allclose(got, want, atol=2e-6, rtol=0, err_msg=name)


def test_recipes_normalise_as_meta_s_commands():
    """v1 pretraining (data2vec_vision's commands pass --imagenet_default_mean_and_std) and data2vec 2.0
    (fairseq's datasets): ImageNet's statistics; v1 fine-tuning (its command omits the flag): 0.5 / 0.5; the tiny
    recipes keep ImageNet's, with which their numbers were measured."""
    from data2vec.config import build_config

    for recipe in ("image-base", "image-large", "image-base-v2", "image-large-v2", "image-tiny", "image-tiny-ft",
                   "image-tiny-v2"):
        cfg = build_config(recipe)
        assert (cfg.data.image_mean, cfg.data.image_std) == NORMS["imagenet"], recipe
    cfg = build_config("image-base-ft")
    assert (cfg.data.image_mean, cfg.data.image_std) == NORMS["inception"]
    assert meta_normalization(v2=False, finetuned=True) == NORMS["inception"]
    assert meta_normalization(v2=False, finetuned=False) == NORMS["imagenet"]
    assert meta_normalization(v2=True, finetuned=True) == meta_normalization(v2=True, finetuned=False) == NORMS["imagenet"]


@pytest.mark.parametrize("override,key", [("data.image_mean=[0.5,0.5]", "image_mean"),
                                          ("data.image_mean=[nan,0.5,0.5]", "image_mean"),
                                          ("data.image_std=[0.5,0,0.5]", "image_std"),
                                          ("data.image_std=[0.5,0.5,-0.5]", "image_std"),
                                          ("data.image_std=[0.5,0.5,0.5,0.5]", "image_std")])
def test_image_mean_and_std_are_checked_when_the_config_is_built(override, key):
    from data2vec.config import build_config

    with pytest.raises(Data2VecError, match=rf"data.{key}' must be 3 finite numbers"):
        build_config("image-tiny", [override])
    with pytest.raises(Data2VecError, match=r"data.image_mean' must be a list"):
        build_config("image-tiny", ["data.image_mean=0.5"])


def test_train_transform_is_a_function_of_the_generator():
    img, t = _noise(), ImageTransform(size=16, train=True)
    a = t(img, torch.Generator().manual_seed(1))
    b = t(img, torch.Generator().manual_seed(1))
    c = t(img, torch.Generator().manual_seed(2))
    assert a.shape == (3, 16, 16) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("hflip", [0.0, 1.0])
def test_whole_image_crop_is_the_eval_view_flipped_with_probability_hflip(hflip):
    img = _noise(32)
    view = ImageTransform(size=16, train=True, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=hflip)(img, torch.Generator())
    eval_view = ImageTransform(size=16, train=False)(img, torch.Generator())
    assert torch.equal(view, eval_view.flip(-1) if hflip else eval_view)


def test_crop_boxes_stay_inside_the_image_and_within_the_area_range():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        left, top, right, bottom = random_resized_crop_box(64, 48, (0.2, 0.6), (3 / 4, 4 / 3), g)
        assert 0 <= left < right <= 64 and 0 <= top < bottom <= 48
        assert 0.15 <= (right - left) * (bottom - top) / (64 * 48) <= 0.65


def test_crop_box_falls_back_to_a_centred_box_of_clamped_aspect():
    # no box with >= 90% of a 100x10 image has an aspect ratio <= 4/3, so every draw fails
    box = random_resized_crop_box(100, 10, (0.9, 1.0), (3 / 4, 4 / 3), torch.Generator())
    assert box == (43, 0, 56, 10)


def test_folder_with_class_subfolders_gives_labels(tmp_path):
    _png(tmp_path / "cat" / "a.png")
    _png(tmp_path / "dog" / "b.JPG")
    _png(tmp_path / "dog" / "deep" / "c.png")
    src = ImageFolderSource(tmp_path)
    assert len(src) == 3 and src.classes == ["cat", "dog"] and src.labels == [0, 1, 1]
    assert src.name(0).endswith("a.png") and src.load(0).size == (24, 20)


def test_flat_folder_has_no_labels(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("not an image")
    src = ImageFolderSource(tmp_path)
    assert len(src) == 1 and src.labels is None


def test_images_beside_class_folders_disable_labels_with_a_warning(tmp_path, caplog):
    _png(tmp_path / "loose.png")
    _png(tmp_path / "cat" / "a.png")
    with caplog.at_level(logging.WARNING, logger="data2vec"):
        src = ImageFolderSource(tmp_path)
    assert src.labels is None and "sub-folder" in caplog.text


def test_hidden_files_and_folders_are_ignored(tmp_path):
    _png(tmp_path / "cat" / "a.png")
    (tmp_path / "cat" / "._a.png").write_bytes(b"AppleDouble junk")
    _png(tmp_path / ".thumbs" / "t.png")
    src = ImageFolderSource(tmp_path)
    assert len(src) == 1 and src.classes == ["cat"]


def test_linked_class_folders_are_followed(tmp_path):
    _png(tmp_path / "store" / "a.png")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cat").symlink_to(tmp_path / "store", target_is_directory=True)
    assert ImageFolderSource(tmp_path / "data").classes == ["cat"]


def test_missing_and_empty_folders_are_clear_errors(tmp_path):
    with pytest.raises(Data2VecError, match=re.escape(f"'{tmp_path / 'nope'}' does not exist")):
        ImageFolderSource(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(Data2VecError, match=re.escape(f"no images found in '{tmp_path / 'empty'}'") + ".*jpeg"):
        ImageFolderSource(tmp_path / "empty")


def test_unreadable_files_are_skipped_with_a_warning_and_counted(tmp_path, caplog):
    _png(tmp_path / "good.png")
    (tmp_path / "corrupt.png").write_bytes(np.random.default_rng(0).bytes(300))
    (tmp_path / "empty.jpg").write_bytes(b"")
    _truncated_png(tmp_path / "truncated.png")
    data = ImageDataset(ImageFolderSource(tmp_path), ImageTransform(size=8, train=False), seed=0)
    with caplog.at_level(logging.WARNING, logger="data2vec"):
        batch = collate_images([data[i] for i in range(len(data))])
    assert batch["skipped"] == 3 and batch["inputs"].shape == (1, 3, 8, 8)
    for name in ["corrupt.png", "empty.jpg", "truncated.png"]:
        assert name in caplog.text


def test_a_batch_of_only_unreadable_files_holds_only_the_count():
    assert collate_images([None, None]) == {"skipped": 2}


@pytest.mark.parametrize("name", ["corrupt.png", "empty.jpg", "truncated.png"])
def test_strict_mode_names_the_bad_file(tmp_path, name):
    if name == "truncated.png":
        _truncated_png(tmp_path / name)
    else:
        (tmp_path / name).write_bytes(b"\x89PNG not really" if name == "corrupt.png" else b"")
    data = ImageDataset(ImageFolderSource(tmp_path), ImageTransform(size=8, train=False), seed=0, strict=True)
    with pytest.raises(Data2VecError, match=re.escape(str(tmp_path / name)) + ".*data.strict=false"):
        data[0]


def test_array_source_rejects_arrays_that_are_not_uint8_images():
    with pytest.raises(Data2VecError, match="uint8"):
        ArraySource(np.zeros((2, 8, 8), dtype=np.float32))
    with pytest.raises(Data2VecError, match="uint8"):
        ArraySource(np.zeros((2, 8, 8, 4), dtype=np.uint8))
    with pytest.raises(Data2VecError, match="labels"):
        ArraySource(np.zeros((2, 8, 8), dtype=np.uint8), labels=[0])


def test_items_depend_only_on_index_and_epoch():
    data = ImageDataset(digits_source("train"), ImageTransform(size=16, train=True, scale=(0.3, 1.0)), seed=3,
                        mask_fn=lambda g: torch.rand(16, generator=g) < 0.5)
    first = data[(5, 1)]
    data[(7, 0)]
    again = data[(5, 1)]
    other_epoch = data[(5, 2)]
    torch.testing.assert_close(first["image"], again["image"])
    assert torch.equal(first["mask"], again["mask"]) and first["mask"].dtype == torch.bool
    assert not torch.allclose(first["image"], other_epoch["image"])
    assert torch.equal(data[5]["image"], data[(5, 0)]["image"])
    assert first["index"] == 5 and first["label"] == data.source.labels[5]


def test_unlabelled_items_have_label_minus_one(tmp_path):
    _png(tmp_path / "a.png")
    item = ImageDataset(ImageFolderSource(tmp_path), ImageTransform(size=8, train=False), seed=0)[0]
    assert item["label"] == -1 and "mask" not in item


def test_batches_do_not_depend_on_the_number_of_workers():
    data = ImageDataset(digits_source("train"), ImageTransform(size=16, train=True), seed=0,
                        mask_fn=lambda g: torch.rand(16, generator=g) < 0.5)

    def batches(workers):
        sampler = StepBatchSampler(len(data), 8, seed=0, max_steps=4)
        return list(DataLoader(data, batch_sampler=sampler, collate_fn=collate_images, num_workers=workers))

    for a, b in zip(batches(0), batches(2), strict=True):
        assert torch.equal(a["inputs"], b["inputs"]) and torch.equal(a["mask"], b["mask"])
        assert torch.equal(a["index"], b["index"]) and a["inputs"].shape == (8, 3, 16, 16)


def test_digits_split_is_fixed_and_stratified():
    train, test = digits_source("train"), digits_source("test")
    assert (len(train), len(test), len(digits_source("all"))) == (1347, 450, 1797)
    assert sorted(set(test.labels)) == sorted(set(train.labels)) == list(range(10))
    assert train.classes == [str(d) for d in range(10)]
    assert digits_source("train").labels == train.labels
    pixels = np.asarray(train.load(0))
    assert pixels.shape == (8, 8, 3) and pixels.dtype == np.uint8
    assert train.images.max() == 255 and train.images.min() == 0
    with pytest.raises(Data2VecError, match="train, test, all"):
        digits_source("validation")


def test_folder_with_split_subfolders(tmp_path):
    _png(tmp_path / "train" / "a" / "1.png")
    _png(tmp_path / "train" / "b" / "2.png")
    _png(tmp_path / "val" / "a" / "3.png")
    assert len(resolve_image_source(str(tmp_path), "train")) == 2
    assert len(resolve_image_source(str(tmp_path), "test")) == 1
    assert resolve_image_source(str(tmp_path), "train").classes == ["a", "b"]


def test_folder_with_only_a_train_split_has_no_test_split(tmp_path):
    _png(tmp_path / "train" / "a" / "1.png")
    with pytest.raises(Data2VecError, match=re.escape(str(tmp_path)) + ".*data.eval_path"):
        resolve_image_source(str(tmp_path), "test")
    with pytest.raises(Data2VecError, match=re.escape(str(tmp_path)) + ".*set --data PATH to a folder of labelled"):
        resolve_image_source(str(tmp_path), "test", option="--data PATH")  # how the probe command gives it


def test_builtin_names_resolve_and_unknown_ones_list_the_choices():
    assert len(resolve_image_source("builtin:digits", "test")) == 450
    with pytest.raises(Data2VecError, match="builtin:mnist.*builtin:digits"):
        resolve_image_source("builtin:mnist", "train")


def _photo(side=40, seed=0):
    """A smooth colourful image (noise has mean grey 127 and would hide contrast errors)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side
    base = np.stack([200 * x + 30, 180 * y + 40, 120 * (1 - x) * y + 90], -1) + rng.normal(0, 8, (side, side, 3))
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def _jitter_reference(rgb: np.ndarray, strength: float, generator: torch.Generator) -> np.ndarray:
    """torchvision's ColorJitter(s, s, s) written out in float64 numpy: its draws (a random order of the four
    adjustments, then one factor each for brightness, contrast, saturation in [max(0, 1 - s), 1 + s]) and
    Pillow's enhancers as blends: with black, with the image's mean grey (ITU-R 601 luma, rounded), with each
    pixel's grey; clipped to 0..255 and cut to integers after each (Pillow's `ImagingBlend` truncates)."""
    order = torch.randperm(4, generator=generator).tolist()
    lo, hi = max(0.0, 1 - strength), 1 + strength
    factors = (lo + (hi - lo) * torch.rand(3, generator=generator, dtype=torch.float64)).tolist()
    x = rgb.astype(np.float64)
    luma = lambda v: np.round(v @ np.array([0.299, 0.587, 0.114]))[..., None]
    for i in order:
        if i == 0:
            degenerate = np.zeros_like(x)
        elif i == 1:
            degenerate = np.full_like(x, np.floor(luma(x).mean() + 0.5))
        elif i == 2:
            degenerate = np.broadcast_to(luma(x), x.shape)
        else:
            continue
        x = np.floor(np.clip(degenerate + factors[i] * (x - degenerate), 0, 255))
    return x


def test_color_jitter_is_torchvisions_as_a_formula():
    from data2vec.data.image import color_jitter

    img = _photo()
    for seed in range(20):
        ours = np.asarray(color_jitter(img, 0.4, torch.Generator().manual_seed(seed)), dtype=np.float64)
        want = _jitter_reference(np.asarray(img), 0.4, torch.Generator().manual_seed(seed))
        # Pillow blends in float32 (and L in fixed point): a value a hair from an integer may land one level
        # off, which a later factor above 1 can make two
        assert np.abs(ours - want).max() <= 2 and np.abs(ours - want).mean() < 0.05, seed


def test_color_jitter_changes_the_view_reproducibly_within_range_and_zero_turns_it_off():
    img = _photo()
    plain = ImageTransform(size=16, train=True, mean=(0, 0, 0), std=(1, 1, 1))
    jittered = ImageTransform(size=16, train=True, jitter=0.4, mean=(0, 0, 0), std=(1, 1, 1))
    off = ImageTransform(size=16, train=True, jitter=0.0, mean=(0, 0, 0), std=(1, 1, 1))
    views = [jittered(img, torch.Generator().manual_seed(s)) for s in range(8)]
    for s, view in enumerate(views):
        g = torch.Generator().manual_seed(s)
        assert torch.equal(view, jittered(img, torch.Generator().manual_seed(s)))  # a function of the seed
        assert view.min() >= 0 and view.max() <= 1
        g_off = torch.Generator().manual_seed(s)
        assert torch.equal(off(img, g_off), plain(img, g))  # 0: the same view, the same draws
        assert torch.equal(g_off.get_state(), g.get_state())
        assert (view - plain(img, torch.Generator().manual_seed(s))).abs().max() > 0.02
    assert len({round(v.mean().item(), 4) for v in views}) == len(views)


def test_color_jitter_comes_before_the_crop_as_in_meta_s_pipeline():
    """data2vec_vision: ColorJitter on the whole image, then flip and crop. So the contrast blend uses the whole
    image's mean grey: the view is the crop of the jittered image."""
    from data2vec.data.image import color_jitter, random_resized_crop_box

    img, t = _photo(48), ImageTransform(size=16, train=True, jitter=0.4, hflip=0.0, mean=(0, 0, 0), std=(1, 1, 1))
    g = torch.Generator().manual_seed(3)
    whole = color_jitter(img, 0.4, g)
    box = random_resized_crop_box(*img.size, t.scale, t.ratio, g)
    want = np.asarray(whole.resize((16, 16), Image.BICUBIC, box=box), dtype=np.float32) / 255
    torch.testing.assert_close(t(img, torch.Generator().manual_seed(3)), torch.from_numpy(want).permute(2, 0, 1))


def test_color_jitter_must_not_be_negative():
    from data2vec.config import build_config

    with pytest.raises(Data2VecError, match="data.color_jitter"):
        build_config("image-tiny", ["data.color_jitter=-0.1"])


def test_brightness_and_contrast_tables_are_pillows_enhancers_bit_for_bit():
    """The jitter's brightness and contrast run as lookup tables; they must equal ImageEnhance's blends (what
    torchvision runs) exactly, for factors inside and outside [0, 1]."""
    from PIL import ImageEnhance, ImageStat

    from data2vec.data.image import _blend_lut

    img = _photo(64, seed=1)
    mean = int(ImageStat.Stat(img.convert("L")).mean[0] + 0.5)
    for factor in [0.0, 0.6, 0.61803, 0.999, 1.0, 1.0001, 1.25, 1.4, 2.7] + torch.rand(40).mul(0.8).add(0.6).tolist():
        b = np.asarray(img.point(_blend_lut(0, factor) * 3))
        c = np.asarray(img.point(_blend_lut(mean, factor) * 3))
        assert np.array_equal(b, np.asarray(ImageEnhance.Brightness(img).enhance(factor))), factor
        assert np.array_equal(c, np.asarray(ImageEnhance.Contrast(img).enhance(factor))), factor


@pytest.mark.parametrize("side", [8, 40, 64])  # Pillow's enhancers below 2,048 pixels, lookup tables above
def test_color_jitter_is_torchvisions_pil_path_bit_for_bit(side):
    """torchvision's ColorJitter on a PIL image: its draws, then ImageEnhance's Brightness, Contrast and Color
    in the drawn order. Ours gives the same bytes on small images and photos alike."""
    from PIL import ImageEnhance

    from data2vec.data.image import color_jitter

    for seed in range(30):
        img, g = _photo(side, seed % 5), torch.Generator().manual_seed(seed)
        order = torch.randperm(4, generator=g).tolist()
        factors = (0.6 + 0.8 * torch.rand(3, generator=g, dtype=torch.float64)).tolist()
        want = img
        for i in order:
            if i < 3:
                want = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)[i](want).enhance(factors[i])
        ours = color_jitter(img, 0.4, torch.Generator().manual_seed(seed))
        assert np.array_equal(np.asarray(ours), np.asarray(want)), seed
