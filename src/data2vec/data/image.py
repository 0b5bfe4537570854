"""Images: where they come from (a folder or arrays), how they are augmented, and how they are batched."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np
import torch
from PIL import Image, ImageEnhance

from data2vec.config import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD
from data2vec.data.dataset import StepDataset
from data2vec.data.seeding import sample_generator
from data2vec.errors import Data2VecError

if TYPE_CHECKING:
    from data2vec.config import Config

log = logging.getLogger("data2vec")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Meta's evaluation crop at 224 x 224: the shorter side to int(224 / (224 / 256)) = 256, then the centred 224
# (data2vec_vision beit/datasets.py build_transform below 384 pixels; fairseq's data2vec 2.0
# mae_finetuning_image_dataset.py build_transform up to 224; timm's default crop_pct 0.875)
META_CROP_PCT = 224 / 256


class ImageSource(Protocol):
    """What ImageDataset needs of a source: a length, a decoded image per index, a name for messages."""

    labels: list[int] | None
    classes: list[str]

    def __len__(self) -> int: ...
    def load(self, i: int) -> Image.Image: ...
    def name(self, i: int) -> str: ...


def random_resized_crop_box(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float],
                            generator: torch.Generator) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) box of an Inception-style random resized crop of a `width` x `height` image.

    Up to 10 draws of an area fraction in `scale` and a log-uniform aspect ratio in `ratio`; if none fits,
    the largest centred box whose aspect ratio is clamped to `ratio` (the whole image when it already is).
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        u = torch.rand(4, generator=generator).tolist()
        target = area * (scale[0] + u[0] * (scale[1] - scale[0]))
        aspect = math.exp(log_lo + u[1] * (log_hi - log_lo))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(u[2] * (width - w + 1)), int(u[3] * (height - h + 1))
            return left, top, left + w, top + h
    w, h = width, height
    if width / height < min(ratio):
        h = round(width / min(ratio))
    elif width / height > max(ratio):
        w = round(height * max(ratio))
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def color_jitter(img: Image.Image, strength: float, generator: torch.Generator) -> Image.Image:
    """torchvision's ``ColorJitter(strength, strength, strength)``, which Meta's data2vec_vision pretraining
    applies first (`datasets.py`, ``--color_jitter 0.4``; hue 0), on an RGB image: brightness, contrast and
    saturation factors each uniform in [max(0, 1 - strength), 1 + strength], applied in a random order, each
    as the Pillow enhancer torchvision calls for PIL images (a blend with black, with the image's mean grey,
    with its grey version), so values stay in 0..255. Draws nothing when `strength` is 0."""
    if strength <= 0:
        return img
    order = torch.randperm(4, generator=generator).tolist()  # torchvision's order of the four (hue: 3, off)
    lo, hi = max(0.0, 1.0 - strength), 1.0 + strength
    factors = (lo + (hi - lo) * torch.rand(3, generator=generator, dtype=torch.float64)).tolist()
    # brightness and contrast blend with a constant: a lookup table gives the same bytes at ~half the cost on
    # photos; below ~2,000 pixels building the table costs more than the blend
    tables = img.width * img.height >= 2048
    for i in order:
        if i == 0 and tables:  # ImageEnhance.Brightness: a blend with black
            img = img.point(_blend_lut(0, factors[0]) * 3)
        elif i == 1 and tables:  # ImageEnhance.Contrast: a blend with the rounded mean of the grey version
            hist = np.asarray(img.convert("L").histogram(), dtype=np.float64)
            img = img.point(_blend_lut(int(hist @ np.arange(256) / hist.sum() + 0.5), factors[1]) * 3)
        elif i < 3:  # ImageEnhance.Color: a blend with each pixel's grey (and the others on small images)
            img = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)[i](img).enhance(factors[i])
    return img


def _blend_lut(base: int, factor: float) -> list[int]:
    """Pillow's ``Image.blend(constant image of `base`, img, factor)`` as a lookup table over the 256 values:
    its arithmetic (`Blend.c`: float32, clipped to 0..255, truncated), so the result is bit for bit the blend's
    at a fraction of its cost (one table lookup per value instead of a second image)."""
    v = np.arange(256, dtype=np.float32)
    out = np.float32(base) + np.float32(factor) * (v - np.float32(base))
    return np.clip(out, 0, 255).astype(np.uint8).tolist()


@dataclass
class ImageTransform:
    """Colour jitter, random resized crop + flip for pretraining, resize + centre crop for evaluation; then
    normalise with `mean` and `std` per channel (``data.image_mean`` / ``data.image_std``). The jitter comes first,
    on the whole image, as in Meta's data2vec_vision.

    Evaluation resizes the shorter side to :attr:`eval_resize` = ``int(size / crop_pct)`` (bicubic) and keeps the
    centred `size` x `size` square: `crop_pct` 1 keeps the whole shorter side, Meta's 224 / 256 a centred 87.5%
    of it (``data.eval_crop_pct``).

    Returns float32 `[3, size, size]`. All randomness comes from the generator passed in, so a sample's view
    is a function of its generator's seed alone.
    """

    size: int
    train: bool
    scale: tuple[float, float] = (0.08, 1.0)  # area fraction of the random crop
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio (width / height) of the random crop
    hflip: float = 0.5  # probability of a horizontal flip (train only)
    jitter: float = 0.0  # colour jitter strength (train only): brightness, contrast, saturation (0 turns it off)
    crop_pct: float = 1.0  # evaluation: the centred square's share of the resized shorter side
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def eval_resize(self) -> int:
        """The shorter side before the evaluation crop: Meta's (and timm's) ``int(size / crop_pct)``."""
        return int(self.size / self.crop_pct)

    def __call__(self, img: Image.Image, generator: torch.Generator) -> torch.Tensor:
        if img.mode != "RGB":
            img = img.convert("RGB")
        if self.train:
            img = color_jitter(img, self.jitter, generator)
            box = random_resized_crop_box(*img.size, self.scale, self.ratio, generator)
            img = img.resize((self.size, self.size), Image.BICUBIC, box=box)
            if torch.rand(1, generator=generator).item() < self.hflip:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
        else:  # shorter side to `eval_resize`, the longer one truncated (torchvision's and transformers' resize),
            w, h = img.size  # then the centred square: an exported model's image processor computes the same pixels
            short = self.eval_resize
            long = int(short * max(w, h) / min(w, h))
            img = img.resize((short, long) if w <= h else (long, short), Image.BICUBIC)
            w, h = img.size  # the offset is floored, as transformers' center_crop (torchvision rounds half to even)
            left, top = (w - self.size) // 2, (h - self.size) // 2
            img = img.crop((left, top, left + self.size, top + self.size))
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)  # [3, S, S] in 0..1
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return (x - mean) / std


def train_image_transform(cfg: Config, jitter: float = 0.0) -> ImageTransform:
    """The training transform of a run's images (pretraining passes ``data.color_jitter``, fine-tuning none):
    random resized crop of ``data.crop_scale_min`` .. 1 of the area, flip, the run's normalisation."""
    return ImageTransform(size=cfg.image.image_size, train=True, scale=(cfg.data.crop_scale_min, 1.0),
                          hflip=cfg.data.hflip, jitter=jitter, mean=tuple(cfg.data.image_mean),
                          std=tuple(cfg.data.image_std))


def eval_image_transform(cfg: Config) -> ImageTransform:
    """The one evaluation transform of a run's images (probe, fine-tuning validation, evaluate, embed and the
    exported image processor): resize to ``int(image.image_size / data.eval_crop_pct)``, centre crop, the run's
    normalisation."""
    return ImageTransform(size=cfg.image.image_size, train=False, crop_pct=cfg.data.eval_crop_pct,
                          mean=tuple(cfg.data.image_mean), std=tuple(cfg.data.image_std))


def meta_eval_crop_pct(image_size: int, v2: bool) -> float:
    """Meta's evaluation crop at `image_size`: 224 / 256 below 384 pixels in data2vec_vision (v1: BEiT's
    ``build_transform`` when ``--crop_pct`` is not given), up to 224 in fairseq's data2vec 2.0
    (``mae_finetuning_image_dataset.py``); 1 (the whole shorter side) above."""
    return META_CROP_PCT if image_size < (225 if v2 else 384) else 1.0


def meta_normalization(v2: bool, finetuned: bool) -> tuple[list[float], list[float]]:
    """Meta's (mean, std) for a model it released: data2vec 2.0 (fairseq's ``mae_image_dataset.py`` and
    ``mae_finetuning_image_dataset.py``) and v1 pretraining (data2vec_vision's commands pass
    ``--imagenet_default_mean_and_std``) use ImageNet's statistics; v1 fine-tuning (its ViT-B and ViT-L commands
    omit that flag, so ``build_transform`` takes IMAGENET_INCEPTION_*) 0.5 / 0.5."""
    mean, std = (INCEPTION_MEAN, INCEPTION_STD) if finetuned and not v2 else (IMAGENET_MEAN, IMAGENET_STD)
    return list(mean), list(std)


def _scan(root: Path, strict: bool) -> list[Path]:
    """Image files under `root`, recursively (following links), sorted; hidden files and folders (a leading
    dot, such as macOS `._x.jpg` copies) are left out."""
    def unreadable(err: OSError) -> None:
        if strict:
            raise Data2VecError(f"cannot list folder '{err.filename}' ({err.strerror}); fix its permissions or "
                                "set data.strict=false to skip it")
        log.warning("skipping unreadable folder %s (%s)", err.filename, err.strerror)

    paths = []
    for folder, dirs, files in os.walk(root, onerror=unreadable, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        paths += [Path(folder, f) for f in files if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(paths)


class ImageFolderSource:
    """Image files under `root`, found recursively and sorted. When every image sits in a first-level
    sub-folder, the sorted sub-folder names are the classes; otherwise `labels` is None.

    Files are decoded only in `load`; `strict` decides whether an unreadable sub-folder stops the scan.
    `option` is how the user gave `root` (``--data PATH``), named in an error's fix; None: ``data.path=...``.
    """

    def __init__(self, root: str | Path, strict: bool = False, option: str | None = None) -> None:
        root = Path(root)
        fix = f"set {option or 'data.path=...'} to a folder of images"
        if not root.exists():
            raise Data2VecError(f"data path '{root}' does not exist; {fix}")
        if not root.is_dir():
            raise Data2VecError(f"data path '{root}' is not a folder; {fix}")
        self.root = root
        self.paths = _scan(root, strict)
        if not self.paths:
            raise Data2VecError(f"no images found in '{root}'; accepted extensions: {' '.join(IMAGE_EXTENSIONS)}")
        parts = [p.relative_to(root).parts for p in self.paths]
        self.classes: list[str] = []
        self.labels: list[int] | None = None
        loose = sum(len(part) == 1 for part in parts)
        if loose == 0:
            self.classes = sorted({part[0] for part in parts})
            index = {c: i for i, c in enumerate(self.classes)}
            self.labels = [index[part[0]] for part in parts]
        elif loose < len(parts):
            log.warning("%d images sit directly in %s and %d in sub-folders, so the sub-folders are not used as "
                        "classes; move every image into a class sub-folder to get labels", loose, root,
                        len(parts) - loose)

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> Image.Image:
        """Image `i`, fully decoded as RGB (PIL raises OSError and kin on a corrupt, truncated or empty file)."""
        with Image.open(self.paths[i]) as img:
            return img.convert("RGB")

    def name(self, i: int) -> str:
        return str(self.paths[i])


class ArraySource:
    """In-memory images: uint8 `[N, H, W]` (grey) or `[N, H, W, 3]`, with optional labels `[N]`."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | list[int] | None = None,
                 classes: list[str] | None = None, name: str = "array") -> None:
        images = np.asarray(images)
        if images.dtype != np.uint8 or not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
            raise Data2VecError(f"{name} images have shape {images.shape} and dtype {images.dtype}; give uint8 "
                                "[N, H, W] or [N, H, W, 3] arrays (scale to 0..255 and .astype(np.uint8))")
        if labels is not None and len(labels) != len(images):
            raise Data2VecError(f"{name} has {len(images)} images but {len(labels)} labels; give one label each")
        self.images = images
        self.labels = None if labels is None else [int(v) for v in labels]
        self.classes = list(classes or [])
        self._name = name

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i]).convert("RGB")

    def name(self, i: int) -> str:
        return f"{self._name}[{i}]"


class ImageDataset(StepDataset):
    """Items keyed by (index, epoch) (a plain int means epoch 0), drawn from a generator seeded by
    (seed, epoch, index): a sample's crop, flip and mask never depend on worker count, rank or call order.

    An item is ``{"image": [3, S, S] float32, "mask": [N] bool (with mask_fn), "label": int (-1 unlabelled),
    "index": int}``. An unreadable image gives None with a warning (the collate function counts it), or
    raises Data2VecError when `strict`.
    """

    def __init__(self, source: ImageSource, transform: ImageTransform, seed: int,
                 mask_fn: Callable[[torch.Generator], torch.Tensor] | None = None, strict: bool = False) -> None:
        self.source, self.transform, self.seed = source, transform, seed
        self.mask_fn, self.strict = mask_fn, strict

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: int | tuple[int, int]) -> dict | None:
        index, epoch = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), 0)
        g = sample_generator(self.seed, epoch, index)
        try:
            img = self.source.load(index)
        except Exception as err:  # noqa: BLE001 - any failure to decode a user's file is a data problem
            reason = f"{err.__class__.__name__}: {err}".replace("\n", " ")
            if self.strict:
                raise Data2VecError(f"cannot read image '{self.source.name(index)}' ({reason}); remove the file "
                                    "or set data.strict=false to skip unreadable images") from None
            log.warning("skipping unreadable image %s (%s)", self.source.name(index), reason)
            return None
        item = {"image": self.transform(img, g), "index": index,
                "label": self.source.labels[index] if self.source.labels is not None else -1}
        if self.mask_fn is not None:
            item["mask"] = self.mask_fn(g)
        return item

    @staticmethod
    def collate(items: list[dict | None]) -> dict:
        return collate_images(items)


def collate_images(items: list[dict | None]) -> dict:
    """Stack a batch, dropping unreadable samples (None): ``inputs [B, 3, S, S]``, ``mask [B, N]`` (when the
    items have one), ``label [B]`` and ``index [B]`` int64, and ``skipped`` (int) counting the dropped ones.
    A batch with no readable sample holds only ``skipped``; the training loop skips that update."""
    kept = [it for it in items if it is not None]
    batch: dict = {"skipped": len(items) - len(kept)}
    if not kept:
        return batch
    batch["inputs"] = torch.stack([it["image"] for it in kept])
    batch["label"] = torch.tensor([it["label"] for it in kept], dtype=torch.long)
    batch["index"] = torch.tensor([it["index"] for it in kept], dtype=torch.long)
    if "mask" in kept[0]:
        batch["mask"] = torch.stack([it["mask"] for it in kept])
    return batch
