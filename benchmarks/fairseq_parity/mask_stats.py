"""Mask statistics of Meta's own mask generators, the fixture `tests/test_masking.py` compares ours against.

Runs, unmodified, fairseq's `compute_mask_indices` (data2vec v1 speech), `compute_block_mask_1d` (data2vec 2.0
speech) and `compute_block_mask_2d` (data2vec 2.0 images, inverse block masking) from an unpacked
`fairseq-fixed==0.12.3.1` sdist, and `MaskingGenerator` (data2vec v1 images) from Meta's data2vec_vision
repository (`beit/masking_generator.py`), with the settings of the released recipes, many times, and writes
the statistics of `tests/mask_statistics.py` to `tests/fixtures/mask_stats.json`. Nothing of their code is
copied: the files are loaded from where they were unpacked. fairseq's `data_utils.py` is loaded on its own
(its two package imports stubbed, as these functions do not use them), so no fairseq dependency is needed.

    # fairseq's sdist unpacked as in README.md beside this file (Setup); Meta's data2vec_vision cloned:
    git clone https://github.com/facebookresearch/data2vec_vision /work/data2vec_vision
    python benchmarks/fairseq_parity/mask_stats.py --fairseq /work/fairseq-src --beit /work/data2vec_vision/beit

It prints one line per case, about 15 s on one CPU core. Then, without fairseq,

    python benchmarks/fairseq_parity/mask_stats.py --compare

prints the table of docs/fidelity.md ("Masking"): each statistic of the fixture beside ours (seed 0, as many
draws as the fixture).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from mask_statistics import our_stats, regions_2d, spans_1d

OUT = ROOT / "tests" / "fixtures" / "mask_stats.json"


def load(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_data_utils(src: Path) -> types.ModuleType:
    """fairseq/data/data_utils.py alone: its imports of fairseq.file_io and fairseq.utils are stubbed."""
    fairseq = types.ModuleType("fairseq")
    file_io = types.ModuleType("fairseq.file_io")
    file_io.PathManager = None
    fairseq.file_io, fairseq.utils = file_io, types.ModuleType("fairseq.utils")
    sys.modules.update({"fairseq": fairseq, "fairseq.file_io": file_io, "fairseq.utils": fairseq.utils})
    return load(src / "fairseq" / "data" / "data_utils.py", "fairseq_data_utils")


def speech_v1(du, batch: int, frames: int, prob: float, length: int, draws: int, lengths=None) -> dict:
    """fairseq's v1 speech call (examples/data2vec/models/data2vec_audio.py, apply_mask): min_masks=1,
    mask_selection static, no_overlap false, require_same_masks true (base_librispeech.yaml), mask_dropout 0."""
    batches, valid = [], []
    for epoch in range(draws):
        padding = None
        if lengths is not None:
            padding = torch.arange(frames)[None, :] >= torch.tensor(lengths)[:, None]
        m = du.compute_mask_indices((batch, frames), padding, prob, length, "static", 0.0, min_masks=1,
                                    no_overlap=False, require_same_masks=True, mask_dropout=0.0,
                                    seed=1, epoch=epoch, indices=torch.arange(batch))
        batches.append(m)
        valid.append(np.array(lengths if lengths is not None else [frames] * batch))
    return spans_1d(batches, valid)


def speech_v2(du, batch: int, frames: int, prob: float, length: int, adjust: float, draws: int) -> dict:
    """fairseq's v2 speech masks (data/audio/raw_audio_dataset.py with precompute_mask_config, one clip's
    clone_batch masks): compute_block_mask_1d, require_same_masks, not inverse, no expansion, no dropout."""
    batches = [du.compute_block_mask_1d((batch, frames), prob, length, mask_prob_adjust=adjust, inverse_mask=False,
                                        require_same_masks=True).bool().numpy() for _ in range(draws)]
    return spans_1d(batches)


def image_v2(du, batch: int, side: int, prob: float, length: int, adjust: float, draws: int) -> dict:
    """fairseq's v2 image masks (mae_image_dataset.py / modalities/images.py): compute_block_mask_2d, inverse."""
    masks = [du.compute_block_mask_2d((batch, side * side), prob, length, mask_prob_adjust=adjust, inverse_mask=True,
                                      require_same_masks=True).bool().numpy() for _ in range(draws)]
    return regions_2d(np.concatenate(masks), (side, side), visible=True)


def image_v1(beit, side: int, patches: int, min_block: int, draws: int) -> dict:
    """Meta's BEiT generator as data2vec_vision's run_cyclical.py builds it (datasets.py): --num_mask_patches
    120, --max_mask_patches_per_block 196, --min_mask_patches_per_block 16, min_aspect 0.3 (the default)."""
    gen = beit.MaskingGenerator((side, side), patches, min_num_patches=min_block, max_num_patches=side * side)
    masks = np.stack([gen().astype(bool).ravel() for _ in range(draws)])
    return regions_2d(masks, (side, side), visible=False)


def compare(path: Path) -> None:
    """Markdown table: the fixture's statistics (Meta's functions) beside ours, as many units as the fixture."""
    cases = json.loads(path.read_text())["cases"]
    print("| case | statistic | Meta's code | ours |\n|---|---|---|---|")
    for name, case in cases.items():
        ref = case["stats"]
        units = next(iter(ref.values()))["n"]
        rows = case["params"].get("batch", 1)
        got = our_stats(name, case["params"], max(units // rows, 1), torch.Generator().manual_seed(0))
        for key, r in ref.items():
            print(f"| {name} | {key} | {r['mean']:.3f} ({r['std']:.3f}) | {got[key]['mean']:.3f} ({got[key]['std']:.3f}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fairseq", type=Path, help="unpacked fairseq-fixed 0.12.3.1 sdist")
    parser.add_argument("--beit", type=Path, help="data2vec_vision's beit/ folder")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--compare", action="store_true", help="print the fixture beside ours (needs neither)")
    args = parser.parse_args()
    if args.compare:
        return compare(args.out)
    if args.fairseq is None or args.beit is None:
        parser.error("--fairseq and --beit are required to write the fixture")
    du = load_data_utils(args.fairseq)
    if not hasattr(np, "int"):
        np.int = int  # numpy 2 removed the alias that masking_generator.py's np.zeros(dtype=np.int) uses
    beit = load(args.beit / "masking_generator.py", "beit_masking_generator")
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    padded = [500, 420, 340, 260]
    cases = {
        # v1 speech, base_librispeech.yaml: mask_prob 0.65, mask_length 10; B=8 clips of 500 frames (10 s)
        "speech_v1": ({"batch": 8, "frames": 500, "prob": 0.65, "length": 10},
                      lambda: speech_v1(du, 8, 500, 0.65, 10, 500)),
        # one clip per batch: nothing to equalise, the wav2vec 2.0 paper's "49%, mean span 14.7"
        "speech_v1_single": ({"batch": 1, "frames": 500, "prob": 0.65, "length": 10},
                             lambda: speech_v1(du, 1, 500, 0.65, 10, 2000)),
        "speech_v1_padded": ({"batch": 4, "frames": 500, "lengths": padded, "prob": 0.65, "length": 10},
                             lambda: speech_v1(du, 4, 500, 0.65, 10, 800, padded)),
        # audio-tiny: 1 s clips (49 frames), spans of 5
        "speech_v1_tiny": ({"batch": 8, "frames": 49, "prob": 0.65, "length": 5},
                           lambda: speech_v1(du, 8, 49, 0.65, 5, 1000)),
        # v2 speech, base_audio_only_task.yaml: mask_prob 0.5, mask_prob_adjust 0.05, mask_length 5, clone_batch 8
        "speech_v2": ({"batch": 8, "frames": 500, "prob": 0.5, "length": 5, "adjust": 0.05},
                      lambda: speech_v2(du, 8, 500, 0.5, 5, 0.05, 500)),
        # large_audio_only_task.yaml: mask_prob 0.55, mask_prob_adjust 0.1, clone_batch 12
        "speech_v2_large": ({"batch": 12, "frames": 500, "prob": 0.55, "length": 5, "adjust": 0.1},
                            lambda: speech_v2(du, 12, 500, 0.55, 5, 0.1, 400)),
        "speech_v2_tiny": ({"batch": 2, "frames": 49, "prob": 0.5, "length": 5, "adjust": 0.05},
                           lambda: speech_v2(du, 2, 49, 0.5, 5, 0.05, 2000)),
        # v2 images, base_images_only_task.yaml: inverse, mask_prob 0.8, mask_prob_adjust 0.07, mask_length 3
        "image_v2": ({"batch": 16, "side": 14, "prob": 0.8, "length": 3, "adjust": 0.07},
                     lambda: image_v2(du, 16, 14, 0.8, 3, 0.07, 250)),
        # large_images_only_task.yaml: mask_prob 0.75, mask_prob_adjust 0.1
        "image_v2_large": ({"batch": 16, "side": 14, "prob": 0.75, "length": 3, "adjust": 0.1},
                           lambda: image_v2(du, 16, 14, 0.75, 3, 0.1, 250)),
        # image-tiny-v2: an 8x8 grid, blocks of 2
        "image_v2_tiny": ({"batch": 4, "side": 8, "prob": 0.8, "length": 2, "adjust": 0.07},
                          lambda: image_v2(du, 4, 8, 0.8, 2, 0.07, 1000)),
        # v1 images, data2vec_vision README: 120 of 196 patches, blocks of 16..196
        "image_v1": ({"side": 14, "patches": 120, "min_block": 16}, lambda: image_v1(beit, 14, 120, 16, 4000)),
        # image-tiny: an 8x8 grid, round(0.6 * 64) = 38 patches, blocks of at least 4
        "image_v1_tiny": ({"side": 8, "patches": 38, "min_block": 4}, lambda: image_v1(beit, 8, 38, 4, 4000)),
    }
    result = {"source": {"fairseq": "fairseq-fixed==0.12.3.1 fairseq/data/data_utils.py",
                         "beit": "facebookresearch/data2vec_vision beit/masking_generator.py"}, "cases": {}}
    for name, (params, run) in cases.items():
        stats = run()
        result["cases"][name] = {"params": params, "stats": stats}
        print(name, {k: round(v["mean"], 3) for k, v in stats.items()})
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
