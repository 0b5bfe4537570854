"""`data2vec report RUN_DIR`: one HTML page that shows what a run did, in `RUN_DIR/report/index.html`.

The page is self-contained: the PNGs it shows sit beside it and are referenced by relative name, and it has
no scripts and no network references, so it opens offline, from an archive or as a CI artefact. Sections:
training curves (with the collapse signal), probe accuracies, a t-SNE map of the newest checkpoint's
features, and example training inputs with their masks. A section whose inputs are missing says why instead
of failing the page. The figures themselves are drawn in :mod:`data2vec.tasks.plots`.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from data2vec.config import Config
from data2vec.errors import Data2VecError
from data2vec.tasks import plots
from data2vec.train.run_folder import run_config

if TYPE_CHECKING:  # torch is imported where a page needs it
    import torch

COLLAPSE_THRESHOLD = 0.01  # variance; the reference stops a run whose target *std* falls below 0.1
TSNE_SAMPLES = 1000
CURVES = {"loss": "loss", "lr": "learning rate", "ema_decay": "EMA decay (teacher)",
          "grad_norm": "gradient norm (before clipping)", "samples_per_s": "throughput (samples/s)"}


def read_metrics(path: Path) -> list[dict]:
    """The records of `metrics.jsonl` in step order. A step logged twice (a run resumed from an earlier
    checkpoint appends again) keeps its last record; an unreadable line (a run killed mid-write) is skipped."""
    by_step: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), (int, float)):
            by_step[int(record["step"])] = record
    return [by_step[s] for s in sorted(by_step)]


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the rows that logged `key` as a finite number."""
    pairs = [(r["step"], float(r[key])) for r in rows
             if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _img(name: str, alt: str) -> str:
    return f'<img src="{html.escape(name)}" alt="{html.escape(alt)}">'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def curves_section(run_dir: Path, out: Path, threshold: float) -> str:
    path = run_dir / "metrics.jsonl"
    rows = read_metrics(path) if path.is_file() else []
    if not rows:
        return _note(f"No training curves: {path} is missing or has no records.")
    series = {title: _series(rows, key) for key, title in CURVES.items()}
    series = {title: s for title, s in series.items() if s[0]}
    parts = []
    if series:
        parts.append(_img(plots.curves(series, out / "curves.png").name, "training curves"))
    bad = [r["step"] for r in rows if isinstance(r.get("loss"), float) and not math.isfinite(r["loss"])]
    if bad:
        parts.append(f'<p class="warn">The loss was not finite at {len(bad)} logged step(s), first at step '
                     f'{bad[0]}; those points are left out of the curves.</p>')
    skipped = sum(r.get("skipped", 0) for r in rows if isinstance(r.get("skipped"), int))
    if skipped:
        parts.append(_note(f"{skipped} unreadable training sample(s) were skipped (see train.log)."))
    parts.append("<h3>Target variance: the collapse signal</h3>")
    steps, target_var = _series(rows, "target_var")
    if not steps:
        parts.append(_note("This run logged no target_var, so collapse cannot be checked."))
        return "\n".join(parts)
    pred = _series(rows, "pred_var")
    parts.append(_img(plots.variance(steps, target_var, out / "target_var.png", threshold,
                                     pred if pred[0] else None).name, "target variance over steps"))
    below = [s for s, v in zip(steps, target_var) if v < threshold]
    if target_var[-1] < threshold:
        parts.append(f'<p class="warn">Target variance ended at {target_var[-1]:.4g}, below the collapse threshold '
                     f'{threshold:g} (first below at step {below[0]}): the teacher\'s targets are becoming alike for '
                     'every input, so the representations are likely collapsing. Lower the learning rate, lengthen '
                     'warm-up or raise the EMA decay, and restart from a checkpoint before the drop.</p>')
    elif below:
        parts.append(_note(f"Target variance dipped below {threshold:g} at {len(below)} logged step(s) (first at "
                           f"step {below[0]}) but ended at {target_var[-1]:.4g}; watch it."))
    else:
        parts.append(_note(f"Target variance stayed above the collapse threshold {threshold:g} "
                           f"(lowest {min(target_var):.4g}, last {target_var[-1]:.4g})."))
    return "\n".join(parts)


def _accuracies(data: object) -> dict[str, float]:
    if not isinstance(data, dict):
        return {}
    return {k: float(data[k]) for k in ("linear", "knn") if isinstance(data.get(k), (int, float))}


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def probe_results(run_dir: Path) -> dict[str, tuple[str, dict[str, float]]]:
    """Row name -> (source file, accuracies), from the demo's `../demo.json`, `probe.json` in the run folder,
    and `probe.json` in each checkpoint folder (where `data2vec probe RUN_DIR` writes by default)."""
    rows: dict[str, tuple[str, dict[str, float]]] = {}
    # `data2vec demo --out OUT` pretrains into OUT/pretrain and writes OUT/demo.json; any other run folder
    # would take a stranger's demo.json for its own.
    demo = _read_json(run_dir / ".." / "demo.json") if run_dir.resolve().name == "pretrain" else None
    if isinstance(demo, dict):
        for key, name in (("pretrained", "pretrained"), ("random", "random weights"), ("raw_pixels", "raw pixels")):
            rows[f"{name} (demo)"] = ("../demo.json", _accuracies(demo.get(key)))
    rows["this run"] = ("probe.json", _accuracies(_read_json(run_dir / "probe.json")))
    for path in sorted((run_dir / "checkpoints").glob("step_*/probe.json")):
        rows[path.parent.name] = (f"checkpoints/{path.parent.name}/probe.json", _accuracies(_read_json(path)))
    return {name: row for name, row in rows.items() if row[1]}


def probe_section(run_dir: Path, out: Path) -> str:
    rows = probe_results(run_dir)
    if not rows:
        return _note("No probe results: run `data2vec probe RUN_DIR` (it writes probe.json into the newest "
                     "checkpoint folder), or `data2vec demo`.")
    cell = lambda accs, k: f"{accs[k]:.3f}" if k in accs else "&ndash;"  # noqa: E731
    body = "".join(f"<tr><td>{html.escape(name)}</td><td>{cell(accs, 'linear')}</td>"
                   f"<td>{cell(accs, 'knn')}</td></tr>" for name, (_, accs) in rows.items())
    table = f"<table><tr><th>features</th><th>linear probe</th><th>kNN</th></tr>{body}</table>"
    sources = ", ".join(f"<code>{html.escape(src)}</code>" for src in dict.fromkeys(src for src, _ in rows.values()))
    chart = plots.accuracy_bars({name: accs for name, (_, accs) in rows.items()}, out / "probe.png")
    return (f'<div class="row"><div class="side">{table}<p class="note">Top-1 accuracy on the test split; '
            f'from {sources}.</p></div>{_img(chart.name, "probe accuracies")}</div>')


def embedding_section(run_dir: Path, out: Path) -> str:
    from data2vec.checkpoint import resolve_checkpoint

    try:
        checkpoint = resolve_checkpoint(run_dir)
    except Data2VecError as err:
        return _note(f"No embedding map: {err}")
    from sklearn.manifold import TSNE  # imported only now: a run without checkpoints need not pay for these
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    from data2vec.api import load
    from data2vec.tasks.probe import extract_features

    try:
        encoder = load(checkpoint)
        x, y = extract_features(encoder, encoder.cfg, "test")
    except Data2VecError as err:
        return _note(f"No embedding map: {err}")
    if len(x) < 5:
        return _note(f"No embedding map: the test split has only {len(x)} sample(s).")
    if len(x) > TSNE_SAMPLES:
        keep = np.sort(np.random.default_rng(0).choice(len(x), TSNE_SAMPLES, replace=False))
        x, y = x[keep], y[keep]
    # One OpenMP thread: torch and scikit-learn each bundle a libgomp whose busy-waiting threads fight over
    # the cores (40 s instead of 1 s on a busy 2-core machine); t-SNE of 1000 points needs no more.
    with threadpool_limits(1, user_api="openmp"):
        tsne = TSNE(n_components=2, perplexity=min(30.0, (len(x) - 1) / 3), init="pca", random_state=0)
        points = tsne.fit_transform(x)
    title = f"{checkpoint.name}: pooled features of {len(x)} test samples"
    path = plots.embedding_map(points, y, out / "tsne.png", title)
    caption = _note("Each dot is one test input, placed by t-SNE of its pooled final-layer features and coloured "
                    "by its label. Features that separate the classes form one cluster per colour; a single blob "
                    "of mixed colours means the encoder has not (yet) learned what tells the classes apart.")
    return f'<div class="row">{_img(path.name, "t-SNE map of test features")}<div class="side">{caption}</div></div>'


def image_examples(cfg: Config, png: Path, count: int = 8) -> str:
    """Draw `count` training inputs as the pretraining loader makes them, masks greyed; returns a caption."""
    import torch

    from data2vec.data.build import pretrain_dataset

    dataset = pretrain_dataset(cfg)
    picks = np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int)  # spread over the set
    items = [item for item in (dataset[(int(i), 0)] for i in picks) if item is not None]
    if not items:
        raise Data2VecError(f"none of the sampled training inputs of '{cfg.data.path}' could be read")
    mean = torch.tensor(dataset.transform.mean).view(3, 1, 1)  # undo the loader's normalisation
    std = torch.tensor(dataset.transform.std).view(3, 1, 1)
    images = torch.stack([(it["image"] * std + mean).clamp(0, 1) for it in items]).permute(0, 2, 3, 1)
    side = cfg.image.image_size // cfg.image.patch_size
    masks = torch.stack([_first_clone(it["mask"]) for it in items]).reshape(-1, side, side)
    plots.masked_images(images.numpy(), masks.numpy(), png)
    return (f"{len(items)} training inputs as the pretraining loader makes them (augmented crop), and the same "
            f"inputs with their {side}&times;{side} patch block masks (ratio {cfg.masking.ratio:g}) greyed: the "
            "student sees the greyed patches only as a learned mask embedding and predicts the teacher's "
            "representation of them.")


def _first_clone(mask: torch.Tensor) -> torch.Tensor:
    """A sample's mask over its tokens: v2 items carry one per clone (`[M, N]`); show the first."""
    return mask.reshape(-1, mask.shape[-1])[0]


def audio_examples(cfg: Config, png: Path, count: int = 6) -> str:
    """Draw `count` training waveforms as the pretraining loader makes them, masked spans shaded."""
    from data2vec.data.build import pretrain_dataset
    from data2vec.frames import receptive_field

    dataset = pretrain_dataset(cfg)
    picks = np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int)
    items = [item for item in (dataset[(int(i), 0)] for i in picks) if item is not None]
    if not items:
        raise Data2VecError(f"none of the sampled training inputs of '{cfg.data.path}' could be read")
    hop = math.prod(cfg.audio.conv_stride)
    masks = [_first_clone(it["mask"]).numpy() for it in items]
    plots.masked_waveforms([it["audio"].numpy() for it in items], masks, hop,
                           receptive_field(cfg.audio.conv_kernel, cfg.audio.conv_stride), cfg.audio.sample_rate, png)
    m = cfg.masking
    spans = f"spans of {m.span_length} frames of {1000 * hop / cfg.audio.sample_rate:g} ms"
    if cfg.objective.version == 2:
        how = (f"{spans} centred on random frames, {m.span_prob:g} of the frames exactly. The student sees only "
               "the other frames; its decoder predicts the teacher's representation of the masked ones.")
    else:
        trim = " (in a training batch every clip then keeps the batch's smallest masked count)" if m.same_count else ""
        how = (f"{spans}, each frame a start with probability {m.span_prob:g}{trim}. The student sees masked frames "
               "only as a learned mask embedding and predicts the teacher's representation of them.")
    return (f"{len(items)} training inputs as the pretraining loader makes them (random crop, normalised), with "
            f"the frames the student does not see shaded: {how}")


# One entry per modality: draw example training inputs with their masks into a PNG, return an HTML caption.
EXAMPLES: dict[str, Callable[[Config, Path], str]] = {
    "image": image_examples,
    "audio": audio_examples,
}


def examples_section(cfg: Config | None, out: Path) -> str:
    if cfg is None:
        return _note("No example inputs: the run folder has no config.yaml to rebuild its data from.")
    draw = EXAMPLES.get(cfg.modality)
    if draw is None:
        return _note(f"No example view for modality '{cfg.modality}' yet.")
    png = out / f"examples_{cfg.modality}.png"
    try:
        caption = draw(cfg, png)
    except Data2VecError as err:
        return _note(f"No example inputs: {err}")
    return f'{_img(png.name, "example training inputs with masks")}\n<p class="note">{caption}</p>'


STYLE = """body{font-family:system-ui,sans-serif;max-width:1180px;margin:1.5em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.2em}h3{font-size:1.05em}
img{max-width:100%;display:block;margin:.6em 0}table{border-collapse:collapse;margin:.6em 0}
td,th{border:1px solid #ccc;padding:.25em .7em;text-align:left}th{background:#f3f3f3}
.note{color:#555}.warn{background:#fdecea;border-left:4px solid #d9534f;padding:.5em .8em}
code{background:#f3f3f3;padding:0 .2em}.row{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}
.side{flex:1;min-width:15em;max-width:30em}"""


def report(run_dir: str | Path, out: str | Path | None = None, collapse_threshold: float = COLLAPSE_THRESHOLD) -> Path:
    """Write the run report into `out` (default `RUN_DIR/report/`); returns the path of its `index.html`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise Data2VecError(f"run folder '{run_dir}' does not exist; give the `out` folder of a pretraining run")
    out = Path(out) if out is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    cfg = run_config(run_dir)
    sections = [("curves", "Training curves", curves_section(run_dir, out, collapse_threshold)),
                ("probe", "Probe accuracy", probe_section(run_dir, out)),
                ("embedding", "Embedding map (t-SNE)", embedding_section(run_dir, out)),
                ("examples", "Masked training inputs", examples_section(cfg, out))]
    about = _note("No config.yaml found.") if cfg is None else (
        f"<p>recipe <b>{html.escape(cfg.name)}</b>, {html.escape(cfg.modality)}, encoder {cfg.model.depth} blocks "
        f"&times; {cfg.model.dim} wide, {cfg.train.max_steps} steps of batch {cfg.train.batch_size}, data "
        f"<code>{html.escape(cfg.data.path)}</code></p>")
    body = "\n".join(f'<section id="{sid}"><h2>{title}</h2>\n{content}</section>' for sid, title, content in sections)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n<title>data2vec report: '
            f'{html.escape(run_dir.resolve().name)}</title>\n<style>{STYLE}</style></head>\n<body>\n'
            f"<h1>data2vec run report: <code>{html.escape(str(run_dir))}</code></h1>\n{about}\n{body}\n"
            "</body></html>\n")
    index = out / "index.html"
    index.write_text(page)
    return index
