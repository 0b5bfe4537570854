"""The figures of `data2vec report`: each function takes plain numbers (lists, numpy arrays) and writes one PNG.

Figures are drawn on matplotlib's Agg canvas directly (no `pyplot`), so making a report never changes the
backend or global state of a user's notebook, and works on machines without a display.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100
GREY = np.array([0.55, 0.55, 0.55])
TINT = np.array([0.85, 0.25, 0.2])  # masked patches: greyed, with a red cast so they read as "hidden"


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI)
    return path


def curves(series: dict[str, tuple[list[float], list[float]]], path: Path, columns: int = 3) -> Path:
    """One small panel per curve. series: title -> (steps, values); panels appear in dict order."""
    rows = math.ceil(len(series) / columns)
    fig = Figure(figsize=(4 * columns, 2.3 * rows), layout="constrained")
    for k, (title, (steps, values)) in enumerate(series.items()):
        ax = fig.add_subplot(rows, columns, k + 1)
        ax.plot(steps, values, lw=1.2, marker="." if len(steps) < 30 else None)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def variance(steps: list[float], target_var: list[float], path: Path, threshold: float,
             pred: tuple[list[float], list[float]] | None = None) -> Path:
    """Teacher-target variance over steps, with the collapse threshold as a dashed horizontal line."""
    fig = Figure(figsize=(8, 2.7), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(steps, target_var, lw=1.5, label="target variance (teacher)")
    if pred is not None:
        ax.plot(pred[0], pred[1], lw=1.0, alpha=0.7, label="prediction variance (student)")
    ax.axhline(threshold, color="tab:red", ls="--", lw=1.2, label=f"collapse threshold {threshold:g}")
    ax.set_ylim(bottom=0, top=max([threshold, *target_var, *(pred[1] if pred else [])]) * 1.1)
    ax.set_xlabel("step")
    ax.set_ylabel("variance across samples")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def accuracy_bars(results: dict[str, dict[str, float]], path: Path) -> Path:
    """Grouped bars: one group per row of results (e.g. "pretrained"), one bar per probe ("linear", "knn")."""
    names = list(results)
    probes = sorted({p for accs in results.values() for p in accs}, key=["linear", "knn"].index)
    width = 0.8 / len(probes)
    fig = Figure(figsize=(2.2 + 1.1 * len(names), 3.0), layout="constrained")
    ax = fig.add_subplot()
    for j, probe in enumerate(probes):
        xs = [i + (j - (len(probes) - 1) / 2) * width for i, n in enumerate(names) if probe in results[n]]
        ys = [results[n][probe] for n in names if probe in results[n]]
        bars = ax.bar(xs, ys, width, label={"linear": "linear probe", "knn": "kNN"}[probe])
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(range(len(names)), [n.replace(" (", "\n(") for n in names], fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("test top-1 accuracy")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def embedding_map(points: np.ndarray, labels: np.ndarray, path: Path, title: str) -> Path:
    """Scatter of 2-D points `[N, 2]` coloured by integer label `[N]`, one legend entry per class."""
    classes = np.unique(labels)
    cmap = _colormap(len(classes))
    fig = Figure(figsize=(5.6, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for k, label in enumerate(classes):
        at = labels == label
        ax.scatter(points[at, 0], points[at, 1], s=8, color=cmap(k), label=str(label), alpha=0.85, linewidths=0)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    if len(classes) <= 20:
        ax.legend(title="label", fontsize=7, title_fontsize=8, markerscale=2, loc="center left",
                  bbox_to_anchor=(1.0, 0.5), frameon=False)
    return _save(fig, path)


def _colormap(n: int):
    from matplotlib import colormaps

    name = "tab10" if n <= 10 else "tab20" if n <= 20 else "viridis"
    cmap = colormaps[name]
    return cmap if n <= 20 else (lambda k: cmap(k / max(n - 1, 1)))


def masked_waveforms(waves: list[np.ndarray], masks: list[np.ndarray], hop: int, field: int, rate: int,
                     path: Path) -> Path:
    """One waveform per row with its masked frames shaded. waves: `[S_i]` each; masks: bool `[N_i]` over
    frames (True = masked); frame n covers samples ``[n * hop, n * hop + field)``."""
    fig = Figure(figsize=(10, 1.1 * len(waves) + 0.4), layout="constrained")
    for i, (wave, mask) in enumerate(zip(waves, masks)):
        ax = fig.add_subplot(len(waves), 1, i + 1)
        t = np.arange(len(wave)) / rate
        ax.plot(t, wave, linewidth=0.4, color="#333")
        edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))  # run starts, ends
        for start, end in zip(edges[::2], edges[1::2]):  # one span per run of masked frames
            ax.axvspan(start * hop / rate, ((end - 1) * hop + field) / rate, color=TINT, alpha=0.2, linewidth=0)
        ax.set_xlim(0, len(wave) / rate)
        ax.set_yticks([])
        ax.set_ylabel(f"{mask.mean():.0%} masked", fontsize=8)
        if i < len(waves) - 1:
            ax.set_xticklabels([])
    fig.axes[-1].set_xlabel("seconds", fontsize=9)
    return _save(fig, path)


def masked_images(images: np.ndarray, masks: np.ndarray, path: Path) -> Path:
    """Inputs above, the same inputs with masked patches greyed below.

    images: `[B, H, W, 3]` in [0, 1]; masks: bool `[B, h, w]` over the patch grid (True = masked), with
    H and W multiples of h and w.
    """
    b, height, width, _ = images.shape
    ph, pw = height // masks.shape[1], width // masks.shape[2]
    fig = Figure(figsize=(1.5 * b, 3.4), layout="constrained")
    for i in range(b):
        pixels = masks[i].repeat(ph, axis=0).repeat(pw, axis=1)[..., None]  # [H, W, 1]
        hidden = 0.25 * images[i] + 0.5 * GREY + 0.25 * TINT
        for row, shown in enumerate((images[i], np.where(pixels, hidden, images[i]))):
            ax = fig.add_subplot(2, b, row * b + i + 1)
            ax.imshow(shown, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 1:
                ax.set_xlabel(f"{masks[i].mean():.0%} masked", fontsize=8)
        if i == 0:
            fig.axes[-2].set_ylabel("input", fontsize=9)
            fig.axes[-1].set_ylabel("student sees", fontsize=9)
    return _save(fig, path)
