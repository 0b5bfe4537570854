"""The data2vec papers' ablations at demo scale (issue 22): does this implementation move the way the papers say?

Each claim is a sweep of the tiny demo recipes (`data2vec demo`'s, from `data2vec.tasks.demo`) on the built-in
sets, cut to a few dozen steps so one run costs 20-60 s of one CPU core, with the frozen features probed by
the demo's linear and kNN probes after every run (`evaluation/probe.py`). Seeds change the initial weights,
the masks and the data order (`train.seed`).

    python benchmarks/paper_ablations.py all                 # every claim, 3 seeds (about 55 CPU-minutes)
    python benchmarks/paper_ablations.py topk --seeds 0 1    # one claim, two seeds
    python benchmarks/paper_ablations.py all --plot-only     # tables and plots from the results so far

Claims (docs/ablations.md quotes the papers): `topk` averaging the top K teacher layers, K = 1..depth, all
three modalities; `tap` speech targets from the FFN output before the last residual, the block output or the
self-attention output; `context` a teacher limited to a window around each position
(`objective.teacher_window`); `norm` targets with and without normalisation; `clones` data2vec 2.0's masks
per sample against probe accuracy and pretraining time.

Every run is a child process with one thread; its record (accuracies, CPU and wall seconds, the final
target variance) is appended to `--out`/results.json as soon as it ends, and a rerun skips the runs found
there, so an interrupted sweep loses at most one run. Runs are ordered so that every claim gets all its seeds
at its end points first (phase 1), then the points in between (phase 2).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "docs" / "ablations"
RUNS = Path("runs/paper-ablations")
SEEDS = (0, 1, 2)

# The demo recipes cut to 20-60 s of one core per run. The EMA schedule is scaled with the run: at the
# recipes' 0.999 a teacher would move only ~8% of the way to an 80-step student; 0.99 -> 0.999 lets it follow.
SCALE = {
    "image": ["train.max_steps=80", "train.batch_size=32", "train.warmup_steps=10", "objective.ema_start=0.99",
              "objective.ema_end=0.999", "objective.ema_anneal_steps=80"],
    "audio": ["train.max_steps=80", "train.batch_size=16", "train.warmup_steps=10", "objective.ema_start=0.99",
              "objective.ema_end=0.999", "objective.ema_anneal_steps=80"],
    "text": ["train.max_steps=60", "train.batch_size=16", "train.warmup_steps=10", "objective.ema_start=0.99",
             "objective.ema_end=0.999", "objective.ema_anneal_steps=60"],
}
DEPTH = 4  # every tiny recipe has 4 blocks
NAMES = {"image": "image (digits)", "audio": "speech (spoken words)", "text": "text (pydocs)"}


def point(modality: str, overrides: list[str] = (), v2: bool = False, random: bool = False) -> dict:
    """One configuration to run: the demo recipe of `modality` (v1 or v2), scaled, plus `overrides`."""
    from data2vec.tasks.demo import RECIPES, RECIPES_V2

    recipe = (RECIPES_V2 if v2 else RECIPES)[modality]
    return {"modality": modality, "recipe": recipe, "overrides": [*SCALE[modality], *overrides], "random": random}


def base_k(modality: str) -> int:
    """The recipe's own top-K, read from it, so the baseline point is shared by every claim."""
    from data2vec.config import build_config
    from data2vec.tasks.demo import RECIPES

    return build_config(RECIPES[modality]).objective.top_k


def claims() -> dict[str, dict[str, list[tuple[str, dict]]]]:
    """claim -> phase -> [(label, point)]. A point equal to another claim's is run once (same key)."""
    base = {m: point(m) for m in ("image", "audio", "text")}
    out: dict[str, dict[str, list[tuple[str, dict]]]] = {}
    topk = {"1": [], "2": []}
    for m in ("image", "audio", "text"):
        k0 = base_k(m)
        topk["1"] += [(f"{m} K={k0}", base[m]), (f"{m} random", point(m, random=True))]
        for k in range(1, DEPTH + 1):
            if k != k0:
                topk["1" if k in (1, DEPTH) else "2"].append((f"{m} K={k}", point(m, [f"objective.top_k={k}"])))
    out["topk"] = topk
    out["tap"] = {"1": [("ffn", base["audio"]), ("block", point("audio", ["objective.tap=block"])),
                        ("attn", point("audio", ["objective.tap=attn"]))], "2": []}
    out["context"] = {
        "1": [("image all", base["image"]), ("image w=1", point("image", ["objective.teacher_window=1"])),
              ("audio all", base["audio"]), ("audio w=1", point("audio", ["objective.teacher_window=1"]))],
        "2": [(f"image w={w}", point("image", [f"objective.teacher_window={w}"])) for w in (2, 4)]
        + [(f"audio w={w}", point("audio", [f"objective.teacher_window={w}"])) for w in (4, 16)]}
    out["norm"] = {"1": [x for m in ("image", "audio", "text") for x in (
        (f"{m} on", base[m]),
        (f"{m} off", point(m, ["objective.per_layer_norm=none", "objective.final_norm=none"])))], "2": []}
    out["clones"] = {"1": [("v1", base["image"]), ("M=4", point("image", v2=True)),
                           ("M=1", point("image", ["objective.clones=1"], v2=True))],
                     "2": [(f"M={m}", point("image", [f"objective.clones={m}"], v2=True)) for m in (2, 8)]}
    return out


def key(p: dict, seed: int) -> str:
    kind = "random" if p["random"] else "pretrained"
    return f"{p['recipe']}|{kind}|{' '.join(p['overrides'])}|seed={seed}"


def run_folder(p: dict, seed: int, runs: Path) -> Path:
    return runs / f"{p['recipe']}-{hashlib.sha1(key(p, seed).encode()).hexdigest()[:10]}"


def run_child(p: dict, seed: int, runs: Path) -> dict:
    """Pretrain and probe one point in a child process with one thread; returns its record."""
    folder = run_folder(p, seed, runs)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    spec = json.dumps({"point": p, "seed": seed, "out": str(folder)})
    with open(folder.with_suffix(".log"), "w") as log:
        done = subprocess.run([sys.executable, __file__, "--one", spec], env=env, stdout=subprocess.PIPE,
                              stderr=log, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"run failed ({folder.with_suffix('.log')}): {key(p, seed)}")
    record = json.loads(done.stdout.strip().splitlines()[-1])
    record.update(key=key(p, seed), seed=seed, recipe=p["recipe"], modality=p["modality"], random=p["random"],
                  overrides=p["overrides"], wall_s=round(time.perf_counter() - start, 1),
                  cpu_s=round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1))
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # ~8 MB a run; metrics.jsonl and the log stay
    return record


def one(spec: str) -> None:
    """The child: pretrain (unless a random-weights point), probe, print one JSON line."""
    import torch

    from data2vec.api import load
    from data2vec.config import build_config
    from data2vec.evaluation.probe import probe_encoder
    from data2vec.model import Data2VecEncoder
    from data2vec.tasks.pretrain import pretrain

    torch.set_num_threads(1)
    s = json.loads(spec)
    p, seed = s["point"], s["seed"]
    cfg = build_config(p["recipe"], [*p["overrides"], f"train.seed={seed}", f"out={s['out']}", "overwrite=true",
                                     "train.log_every=10", "train.save_every=100000"])
    cpu = time.process_time()
    wall = time.perf_counter()
    if p["random"]:
        torch.manual_seed(seed)
        encoder, stats = Data2VecEncoder(cfg).eval(), {}
    else:
        pretrain(cfg, progress=False)
        encoder = load(cfg.out)
        logs = [json.loads(line) for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
        stats = {"final_loss": logs[-1]["loss"], "final_target_var": logs[-1]["target_var"],
                 "final_pred_var": logs[-1]["pred_var"]}
    pretrain_cpu, pretrain_wall = time.process_time() - cpu, time.perf_counter() - wall
    probe = probe_encoder(encoder, cfg)
    print(json.dumps({**probe, **stats, "pretrain_cpu_s": round(pretrain_cpu, 1),
                      "pretrain_wall_s": round(pretrain_wall, 1),
                      "probe_cpu_s": round(time.process_time() - cpu - pretrain_cpu, 1)}))


def load_results(out: Path) -> dict[str, dict]:
    path = out / "results.json"
    return {r["key"]: r for r in json.loads(path.read_text())} if path.exists() else {}


def add_result(out: Path, record: dict, runs: Path) -> None:
    """Add one record to results.json under a lock in `runs` (two sweeps may share the file), written atomically."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    with open(runs / "results.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = load_results(out)
        results[record["key"]] = record
        tmp = out / "results.json.tmp"
        tmp.write_text(json.dumps(sorted(results.values(), key=lambda r: r["key"]), indent=1))
        tmp.replace(out / "results.json")


def sweep(names: list[str], seeds: list[int], out: Path, runs: Path) -> None:
    """Phase 1 of every claim asked for, seed by seed in the order given, then phase 2. A run already in
    results.json, or claimed by another sweep (a `.claim` file beside its run folder), is skipped, so two
    sweeps (`--seeds 0 1 2` and `--seeds 2 1 0`) can share the work."""
    table = claims()
    queue, seen = [], set()
    for phase in ("1", "2"):
        for seed in seeds:
            for name in names:
                for _, p in table[name][phase]:
                    if key(p, seed) not in seen:
                        seen.add(key(p, seed))
                        queue.append((p, seed))
    print(f"{len(queue)} runs in this sweep ({len(load_results(out))} records in {out / 'results.json'})", flush=True)
    runs.mkdir(parents=True, exist_ok=True)
    for i, (p, seed) in enumerate(queue, 1):
        claim = run_folder(p, seed, runs).with_suffix(".claim")
        if key(p, seed) in load_results(out):
            continue
        try:
            os.close(os.open(claim, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            continue
        try:
            record = run_child(p, seed, runs)
        except RuntimeError as err:
            print(f"[{i}/{len(queue)}] {err}", flush=True)
            continue
        finally:
            claim.unlink()
        add_result(out, record, runs)
        print(f"[{i}/{len(queue)}] {record['key']}: linear {record['linear']:.3f} kNN {record['knn']:.3f} "
              f"({record['cpu_s']:.0f} CPU s)", flush=True)


def stats(results: dict[str, dict], p: dict, seeds: list[int], field: str) -> tuple[float, float, int]:
    """Mean, sample standard deviation and count of `field` over the seeds that have run."""
    values = [results[key(p, s)][field] for s in seeds if key(p, s) in results]
    if not values:
        return float("nan"), float("nan"), 0
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, len(values)


def reference(name: str, label: str) -> str:
    """The row a row of claim `name` is compared with: the recipe's own setting (the baseline)."""
    m = label.split()[0]
    return {"topk": f"{m} K={base_k(m)}" if m in NAMES else "", "tap": "ffn", "context": f"{m} all",
            "norm": f"{m} on", "clones": "M=4"}[name]


def order(name: str, label: str) -> tuple:
    """Rows by modality, then by the swept value (K, window with "all" last, clones), random weights last."""
    parts = label.split()
    value = parts[-1].split("=")[-1]
    rank = {"all": 10**6, "random": 10**7, "on": 0, "off": 1, "ffn": 0, "block": 1, "attn": 2, "v1": -1}
    return (parts[0] if len(parts) > 1 else "", rank[value] if value in rank else int(value))


def summary(name: str, results: dict[str, dict], seeds: list[int]) -> str:
    """A markdown table of one claim: mean +- sd over seeds of each probe, the paired difference of the linear
    probe to the baseline row (same seeds: same initial weights and data), CPU time and final target variance."""
    header = f"| {name} | linear probe | kNN (k=20) | linear - baseline, paired | seeds | CPU s per run | final target var |"
    rows = [header, "|---|---|---|---|---|---|---|"]
    table = dict(claims()[name]["1"] + claims()[name]["2"])
    for label in sorted(table, key=lambda lab: order(name, lab)):
        p = table[label]
        lin, lin_sd, n = stats(results, p, seeds, "linear")
        if n == 0:
            rows.append(f"| {label} | not run | | | 0 | | |")
            continue
        knn, knn_sd, _ = stats(results, p, seeds, "knn")
        ref = table.get(reference(name, label))
        diffs = [results[key(p, s)]["linear"] - results[key(ref, s)]["linear"] for s in seeds
                 if ref is not None and ref is not p and key(p, s) in results and key(ref, s) in results]
        diff = (f"{np.mean(diffs):+.3f} ± {np.std(diffs, ddof=1) if len(diffs) > 1 else 0:.3f} "
                f"({sum(d > 0 for d in diffs)}/{len(diffs)} above)") if diffs and not p["random"] else ""
        cpu = stats(results, p, seeds, "cpu_s")[0]
        var = "" if p["random"] else f"{stats(results, p, seeds, 'final_target_var')[0]:.3g}"
        rows.append(f"| {label} | {lin:.3f} ± {lin_sd:.3f} | {knn:.3f} ± {knn_sd:.3f} | {diff} | {n} | {cpu:.0f} | "
                    f"{var} |")
    total = sum(results[key(p, s)]["cpu_s"] for p in {key(p, 0): p for p in table.values()}.values()
                for s in seeds if key(p, s) in results)
    rows.append(f"\nCPU time of the runs in this table: {total / 60:.1f} min (a run shared with another claim "
                "counts in both).")
    return "\n".join(rows)


def at_init() -> str:
    """How much K and the teacher's window change the targets of a freshly initialised teacher: the cosine
    between whole-target tensors (one batch of built-in inputs' shapes, random values), per modality."""
    import torch

    from data2vec.config import build_config
    from data2vec.model import Data2Vec
    from data2vec.tasks.demo import RECIPES

    torch.manual_seed(0)
    inputs = {"image": torch.randn(8, 3, 32, 32), "audio": torch.randn(8, 16000), "text": torch.randint(5, 8000, (8, 128))}
    rows = ["| recipe | K=1 against K=2, 3, 4 | whole input against w=1, w=4 |", "|---|---|---|"]
    for m, x in inputs.items():
        model = Data2Vec(build_config(RECIPES[m])).eval()
        k0 = base_k(m)
        one, full = _targets(model, x, 1, 0), _targets(model, x, k0, 0)
        rows.append(f"| {RECIPES[m]} | {', '.join(_cos(one, _targets(model, x, k, 0)) for k in (2, 3, 4))} | "
                    f"{', '.join(_cos(full, _targets(model, x, k0, w)) for w in (1, 4))} |")
    return "\n".join(rows)


def _targets(model, x, top_k: int, window: int):
    model.cfg.objective.top_k, model.cfg.objective.teacher_window = top_k, window
    return model.targets(x).flatten()


def _cos(a, b) -> str:
    import torch

    return f"{float(torch.nn.functional.cosine_similarity(a, b, dim=0)):.4f}"


def _figure(panels: int):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * panels, 3.2), layout="constrained")
    return fig, [fig.add_subplot(1, panels, i + 1) for i in range(panels)]


def _save(fig, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100)


def _series(ax, xs, points, results, seeds, label_prefix="") -> None:
    """Linear and kNN probe means with error bars (sample sd over seeds) at positions xs."""
    for field, marker in (("linear", "o"), ("knn", "s")):
        s = [stats(results, p, seeds, field) for p in points]
        ok = [i for i, (_, _, n) in enumerate(s) if n]
        ax.errorbar([xs[i] for i in ok], [s[i][0] for i in ok], yerr=[s[i][1] for i in ok], marker=marker,
                    capsize=3, label=f"{label_prefix}{'linear' if field == 'linear' else 'kNN'}")


def plot(name: str, results: dict[str, dict], seeds: list[int], out: Path) -> None:
    """accuracy vs K / tap / window / normalisation / clones (and CPU time), mean +- sd over seeds."""
    table = dict(claims()[name]["1"] + claims()[name]["2"])
    if name == "topk":
        fig, axes = _figure(3)
        for ax, m in zip(axes, ("image", "audio", "text")):
            ks = list(range(1, DEPTH + 1))
            _series(ax, ks, [table[f"{m} K={k}"] for k in ks], results, seeds)
            rand = stats(results, table[f"{m} random"], seeds, "linear")
            if rand[2]:
                ax.axhline(rand[0], ls="--", color="grey", label="random weights, linear")
            ax.set(title=NAMES[m], xlabel="K (teacher layers averaged)", ylabel="probe accuracy", xticks=ks)
    elif name == "tap":
        fig, (ax,) = _figure(1)
        _series(ax, [0, 1, 2], [table[t] for t in ("ffn", "block", "attn")], results, seeds)
        ax.set(xticks=[0, 1, 2], xticklabels=["FFN before\nlast residual", "block output", "self-attention"],
               title="speech target tap", ylabel="probe accuracy")
    elif name == "context":
        fig, axes = _figure(2)
        for ax, m, ws in ((axes[0], "image", (1, 2, 4)), (axes[1], "audio", (1, 4, 16))):
            labels = [f"w={w}" for w in ws] + ["all"]
            _series(ax, list(range(len(labels))), [table[f"{m} {lab}"] for lab in labels], results, seeds)
            ax.set(xticks=list(range(len(labels))), xticklabels=labels, title=NAMES[m],
                   xlabel="teacher context (+-w patches / frames)", ylabel="probe accuracy")
    elif name == "norm":
        fig, axes = _figure(3)
        for ax, m in zip(axes, ("image", "audio", "text")):
            _series(ax, [0, 1], [table[f"{m} on"], table[f"{m} off"]], results, seeds)
            ax.set(xticks=[0, 1], xticklabels=["normalised", "not normalised"], title=NAMES[m],
                   ylabel="probe accuracy")
    else:  # clones
        fig, axes = _figure(2)
        ms = [1, 2, 4, 8]
        _series(axes[0], ms, [table[f"M={m}"] for m in ms], results, seeds)
        v1 = stats(results, table["v1"], seeds, "linear")
        if v1[2]:
            axes[0].axhline(v1[0], ls="--", color="grey", label="v1, same steps, linear")
        axes[0].set_xscale("log", base=2)
        axes[0].minorticks_off()
        axes[0].set(xticks=ms, xticklabels=[str(m) for m in ms], title="data2vec 2.0, image-tiny-v2",
                    xlabel="masks per sample (clones)", ylabel="probe accuracy")
        for label in ["v1", *[f"M={m}" for m in ms]]:
            p = table[label]
            x, y = stats(results, p, seeds, "pretrain_cpu_s"), stats(results, p, seeds, "linear")
            if x[2]:
                axes[1].errorbar(x[0], y[0], xerr=x[1], yerr=y[1], marker="o", capsize=3, label=label)
        axes[1].set(title="linear probe vs pretraining cost", xlabel="pretraining CPU s (one thread)",
                    ylabel="linear probe accuracy")
    for ax in fig.axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, out / f"{name}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("claim", nargs="?", choices=["topk", "tap", "context", "norm", "clones", "all"])
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="seeds to run (default 0 1 2); a claim's table and plot use the seeds all its points have")
    parser.add_argument("--out", type=Path, default=OUT, help="results.json, tables and plots (default docs/ablations)")
    parser.add_argument("--runs", type=Path, default=RUNS, help="run folders (default runs/paper-ablations)")
    parser.add_argument("--plot-only", action="store_true", help="tables and plots from results.json; no runs")
    parser.add_argument("--at-init", action="store_true",
                        help="print how much K and the teacher window change an untrained teacher's targets")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process of one run
    args = parser.parse_args()
    if args.one:
        return one(args.one)
    if args.at_init:
        return print(at_init())
    if args.claim is None:
        parser.error("name a claim or all")
    names = ["topk", "tap", "context", "norm", "clones"] if args.claim == "all" else [args.claim]
    if not args.plot_only:
        sweep(names, args.seeds or list(SEEDS), args.out, args.runs)
    results = load_results(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    tables = []
    for name in names:
        points = [p for _, p in claims()[name]["1"] + claims()[name]["2"]]
        seeds = [s for s in sorted({r["seed"] for r in results.values()})  # the seeds every point of the claim has
                 if all(key(p, s) in results for p in points)] or list(SEEDS)
        plot(name, results, seeds, args.out)
        tables.append(f"### {name}\n\n{summary(name, results, seeds)}\n\n![{name}]({name}.png)\n")
    (args.out / ("tables.md" if args.claim == "all" else f"tables-{args.claim}.md")).write_text("\n".join(tables))
    print("\n".join(tables))


if __name__ == "__main__":
    main()
