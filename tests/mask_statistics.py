"""Statistics of mask draws, computed the same way for Meta's generators and ours.

`benchmarks/fairseq_parity/mask_stats.py` runs fairseq's and Meta's BEiT mask functions and saves these
statistics in `tests/fixtures/mask_stats.json`; `tests/test_masking.py` computes them on our masks and compares.
Every statistic is a list of per-unit values (a row, an image, a batch), summarised as mean, std and count so
that a test can bound the difference of two means by their standard errors.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def summary(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std()), "n": int(v.size)}


def run_lengths(row: np.ndarray) -> list[int]:
    """Lengths of the runs of True in a 1-D bool array."""
    edges = np.diff(np.concatenate([[0], row.astype(np.int8), [0]]))
    return (np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).tolist()


def spans_1d(batches: list[np.ndarray], lengths: list[np.ndarray] | None = None) -> dict:
    """Speech masks, a list of bool ``[B, T]`` batches (`lengths`: each batch's valid frames per row).

    frac: masked share of each row's valid frames; count: masked frames per row; run: mean masked run of each
    batch (masked frames / runs); same_count: 1 where every row of the batch has the same count.
    """
    frac, count, run, same = [], [], [], []
    for i, m in enumerate(batches):
        valid = lengths[i] if lengths is not None else np.full(m.shape[0], m.shape[1])
        counts = m.sum(1)
        frac += (counts / valid).tolist()
        count += counts.tolist()
        runs = [r for row in m for r in run_lengths(row)]
        run.append(sum(runs) / max(len(runs), 1))
        same.append(float((counts == counts[0]).all()))
    return {"frac": summary(frac), "count": summary(count), "run": summary(run), "same_count": summary(same)}


def regions_2d(masks: np.ndarray, grid_hw: tuple[int, int], visible: bool) -> dict:
    """Image masks, bool ``[R, H*W]`` (True = masked). Regions are 4-connected components of the masked cells,
    or of the visible ones when `visible` (inverse block masking keeps islands visible).

    count: masked cells per image; regions: components per image; small: components of 1 or 2 cells per image.
    """
    h, w = grid_hw
    count, regions, small = [], [], []
    for m in masks.reshape(-1, h, w):
        labels, n = ndimage.label(~m if visible else m)  # 4-connectivity (the default structure)
        sizes = np.bincount(labels.ravel())[1:]
        count.append(int(m.sum()))
        regions.append(n)
        small.append(int((sizes <= 2).sum()))
    return {"count": summary(count), "regions": summary(regions), "small": summary(small)}


def our_stats(case: str, p: dict, draws: int, generator) -> dict:
    """Our masks for a fixture case (its name says which function, `p` its parameters), `draws` calls."""
    import torch

    from data2vec.masking import block_mask, centred_span_mask, inverse_block_mask, span_mask

    g = generator
    if case.startswith("speech_v1"):
        padding, valid = None, None
        if "lengths" in p:
            padding = torch.arange(p["frames"])[None, :] >= torch.tensor(p["lengths"])[:, None]
            valid = [np.array(p["lengths"])] * draws
        return spans_1d([span_mask(p["batch"], p["frames"], p["prob"], p["length"], generator=g, padding_mask=padding,
                                   same_count=p.get("same_count", True)).numpy() for _ in range(draws)], valid)
    if case.startswith("speech_v2"):
        return spans_1d([centred_span_mask(p["batch"], p["frames"], p["prob"], p["length"], generator=g,
                                           prob_adjust=p["adjust"]).numpy() for _ in range(draws)])
    side = p["side"]
    if case.startswith("image_v2"):
        masks = torch.cat([inverse_block_mask(p["batch"], (side, side), p["prob"], generator=g, block_size=p["length"],
                                              prob_adjust=p["adjust"]) for _ in range(draws)])
        return regions_2d(masks.numpy(), (side, side), visible=True)
    masks = block_mask(draws, (side, side), p["patches"] / side ** 2, generator=g, min_block=p["min_block"])
    return regions_2d(masks.numpy(), (side, side), visible=False)
