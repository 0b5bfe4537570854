"""The timing half of `bash benchmarks/gpu_check.sh`: Base pretraining steps on one GPU, against Hugging Face.

For image, speech and text at the Base recipes' sizes it times our bf16 step (v1 and v2, eager and
`torch.compile`d) and the Hugging Face reference step (`hf_reference.py`: data2vec v1 written on
`transformers`) in the same run, and writes one Markdown table (and the same rows as JSON beside it). The
pieces are `pretrain_step.py`'s: random inputs with the recipes' real masks, our step through the real
training loop, FLOPs counted by `FlopCounterMode` on our eager step, peak memory from the CUDA allocator
(`max_memory_allocated` during one step above what was allocated before it), MFU against the bf16 matmul rate
measured in this run. v2 runs at the v1 recipe's encoder with one mask per sample (`objective.clones=1`), as in
`pretrain_step.py`, so v1 and v2 compare at equal work per sample.

Unlike `pretrain_step.py` (shared CPUs: interleaved rounds, median ratios) each step is timed on its own: a
GPU of one's own does not change speed under one. The run keeps to a time budget: every eager row first, the
compiled rows after them (v1 of each modality, then v2), and a row that would not finish in what is left is
written as "not run"; a row that fails (an OOM, a bug on a CUDA path) is written with its error and the
others still run. The table is rewritten after every row, so a run cut short still leaves what it measured.

    python benchmarks/gpu_check.py                  # a GPU; rows within --budget seconds (default 240)
    python benchmarks/gpu_check.py --dry-run        # tiny sizes on the CPU, seconds: checks the script runs
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from data2vec.model import Data2Vec
from data2vec.train.optim import build_optimizer

import hf_reference  # benchmarks/hf_reference.py
import pretrain_step as bench  # benchmarks/pretrain_step.py

MODALITIES = ("image", "audio", "text")


@dataclass
class Mode:
    """Sizes of one kind of run: `GPU` the real check, `DRY` the CPU smoke run of `--dry-run`."""

    size: str
    batch: dict[str, int]
    rounds: int  # timed steps per row
    warmup: int  # untimed steps first
    matmul_n: int  # side of the matmul whose rate MFU is taken against
    reserve: dict[str, float]  # seconds a row may take; not started with less of the budget left
    compile_warmup: int  # untimed steps more for compiled rows: the first compiles, the second may recompile
    compiled: tuple[str, ...] = MODALITIES  # modalities with compiled rows
    overrides: tuple[str, ...] = ()


# Base batches that keep an H100 busy (image 64 x 197 tokens, speech 16 x 4 s, text 16 x 512 tokens)
GPU = Mode("base", {"image": 64, "audio": 16, "text": 16}, rounds=5, warmup=2, matmul_n=8192,
           reserve={"eager": 20.0, "compiled": 75.0}, compile_warmup=2)
DRY = Mode("tiny", {"image": 2, "audio": 2, "text": 2}, rounds=1, warmup=1, matmul_n=256,
           reserve={"eager": 0.0, "compiled": 0.0}, compile_warmup=1, compiled=("image",),  # tracing takes seconds
           overrides=("model.dim=32", "model.depth=1", "model.heads=2", "objective.top_k=1",
                      "objective.decoder_dim=16", "objective.decoder_layers=1", "objective.decoder_groups=2",
                      "audio.conv_dim=[16,16,16,16,16,16,16]", "audio.pos_conv_groups=2", "text.block_size=32"))


@dataclass
class Row:
    modality: str
    step: str
    batch: int
    samples_per_s: float = 0.0
    peak_mib: float = 0.0
    gflop_per_sample: float = 0.0
    tflops: float = 0.0
    mfu: float = 0.0
    seconds: float = 0.0  # wall time of the row: building, compiling, timing, counting
    skipped: str = ""


class Report:
    """The rows so far, written as Markdown and JSON after each one."""

    def __init__(self, path: Path, header: list[str]) -> None:
        self.path, self.header, self.rows = path, header, []

    def add(self, row: Row) -> None:
        self.rows.append(row)
        self.write()

    def write(self, footer: str = "") -> None:
        ref = {r.modality: r.samples_per_s for r in self.rows if r.step.startswith("HF") and not r.skipped}
        lines = [*self.header, "",
                 "| modality | step | batch | samples/s | vs HF ref | peak MiB | GFLOP/sample | TFLOP/s | MFU | s |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            if r.skipped:
                lines.append(f"| {r.modality} | {r.step} | {r.batch} | {r.skipped} | | | | | | |")
                continue
            vs = f"{r.samples_per_s / ref[r.modality]:.2f}x" if ref.get(r.modality) and not r.step.startswith("HF") else ""
            lines.append(f"| {r.modality} | {r.step} | {r.batch} | {r.samples_per_s:.1f} | {vs} | {r.peak_mib:.0f} | "
                         f"{r.gflop_per_sample:.2f} | {r.tflops:.1f} | {r.mfu:.1%} | {r.seconds:.0f} |")
        self.path.write_text("\n".join(lines + ([f"\n{footer}"] if footer else [])) + "\n")
        self.path.with_suffix(".json").write_text(json.dumps([asdict(r) for r in self.rows], indent=1))


def say(start: float, text: str) -> None:
    print(f"[gpu_check {time.perf_counter() - start:.0f}s] {text}", flush=True)


def configs(modality: str, mode: Mode):
    """The v1 recipe (bf16, the loop's bookkeeping off) and v2 at its encoder with one mask per sample."""
    base = bench.bench_config(bench.recipe_for(modality, mode.size, 1), "bf16", list(mode.overrides))
    v2 = bench.bench_config(bench.recipe_for(modality, mode.size, 2), "bf16",
                            [*mode.overrides, *bench.v1_encoder_overrides(base), "objective.clones=1"])
    return base, v2


def measure(runner: bench.Runner, batches: list[dict], mode: Mode, warmup: int, device: torch.device,
            flops: float | None) -> tuple[float, float, float]:
    """Best samples/s over `mode.rounds` single timed steps, FLOPs per step (counted unless given) and the
    step's peak bytes."""
    bench.time_rounds([runner], {runner.name: batches}, mode.rounds, warmup, device)
    one = batches[:1]
    if flops is None:
        flops = bench.count_flops(lambda: runner.run(one))
    peak = bench.peak_step_bytes(lambda: runner.run(one), device)
    return max(runner.rates), flops, peak


def run_modality(modality: str, compiled: bool, versions: tuple[int, ...], mode: Mode, device: torch.device,
                 rate: float, report: Report, flops: dict, deadline: float, start: float, backend: str) -> None:
    """The rows of one modality: eager (ours v1, HF reference v1, ours v2) or compiled (ours v1, ours v2), of
    the versions asked for. `flops` carries each version's FLOPs per step from the eager rows to the compiled
    ones and the reference."""
    base, v2 = configs(modality, mode)
    batch = mode.batch[modality]
    kind = "compiled" if compiled else "eager"
    plan = [("ours", 1, base), ("ref", 1, base), ("ours", 2, v2)] if not compiled else [("ours", 1, base), ("ours", 2, v2)]
    for impl, version, cfg in [p for p in plan if p[1] in versions]:
        name = (f"ours v{version} bf16" if impl == "ours" else "HF reference v1 bf16") + (" compiled" if compiled else "")
        if compiled and modality not in mode.compiled:
            report.add(Row(modality, name, batch, skipped="not run: the dry run compiles image only"))
            continue
        if time.perf_counter() + mode.reserve[kind] > deadline:
            report.add(Row(modality, name, batch, skipped="not run: time budget spent"))
            say(start, f"{modality}: {name}: not run, time budget spent")
            continue
        say(start, f"{modality}: {name} ...")
        began = time.perf_counter()
        try:
            row = one_row(modality, name, impl, version, cfg, compiled, mode, device, rate, flops, backend)
        except Exception as err:  # one failed row (an OOM, a bug in a CUDA path) must not cost the others
            traceback.print_exc()
            row = Row(modality, name, batch, skipped=f"failed: {type(err).__name__}: {' '.join(str(err).split())[:120]}".replace("|", "/"))
        row.seconds = time.perf_counter() - began
        report.add(row)
        say(start, f"{modality}: {name}: " + (row.skipped or f"{row.samples_per_s:.1f} samples/s, MFU {row.mfu:.1%}, "
                                                         f"peak {row.peak_mib:.0f} MiB") + f" ({row.seconds:.0f} s)")
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def one_row(modality: str, name: str, impl: str, version: int, cfg, compiled: bool, mode: Mode,
            device: torch.device, rate: float, flops: dict, backend: str) -> Row:
    """Build one implementation (ours eager or compiled, or the HF reference), time it and measure it."""
    batch = mode.batch[modality]
    warmup = mode.warmup + (mode.compile_warmup if compiled else 0)
    torch.manual_seed(0)
    model = Data2Vec(cfg).to(device).train()
    if impl == "ref":
        model, optimizer = hf_reference.build_reference(cfg, model.student, device)
        runner = bench.ref_runner(cfg, model, optimizer, device)
    else:
        optimizer = build_optimizer(model.trainable_parameters(), cfg.train)
        step_model = None
        if compiled:
            torch._dynamo.reset()  # a fresh cache: earlier models' graphs would count toward the recompile limit
            step_model = torch.compile(model, backend=backend)
        runner = bench.ours_runner(cfg, model, optimizer, device, name, step_model)
    runner.name = name
    batches = bench.make_batches(cfg, batch, warmup + min(mode.rounds, 4), seed=1)
    known = flops.get(version) if compiled or impl == "ref" else None
    best, step_flops, peak = measure(runner, batches, mode, warmup, device, known)
    if impl == "ours" and not compiled:
        flops[version] = step_flops
    achieved = step_flops * best / batch
    return Row(modality, name, batch, best, peak / 2**20, step_flops / batch / 1e9, achieved / 1e12, achieved / rate)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: checks that the script runs")
    parser.add_argument("--out", default="runs/gpu_check.md",
                        help="the Markdown table (and .json beside it: the same rows)")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds for all rows (default 240)")
    parser.add_argument("--modalities", nargs="+", default=list(MODALITIES), choices=MODALITIES)
    parser.add_argument("--no-compile", action="store_true", help="eager rows only")
    parser.add_argument("--compile-backend", default="",
                        help="torch.compile backend (default: inductor; eager in a dry run, which has no time "
                             "to generate kernels on a CPU)")
    parser.add_argument("--tests", default="not run", help="the summary line of the cuda tests, for the header")
    args = parser.parse_args()

    start = time.perf_counter()
    deadline = start + args.budget
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a GPU machine, or pass --dry-run for the CPU smoke run")
        return 2
    mode = DRY if args.dry_run else GPU
    device = torch.device("cpu" if args.dry_run else "cuda")
    backend = args.compile_backend or ("eager" if args.dry_run else "inductor")
    say(start, f"measuring the bf16 matmul rate ({mode.matmul_n} x {mode.matmul_n})")
    rate = bench.matmul_rate(device, torch.bfloat16, n=mode.matmul_n)
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU: {bench.cpu_name()}"
    cuda = f", CUDA {torch.version.cuda}" if device.type == "cuda" else ""
    dry = "dry run (tiny sizes on the CPU, numbers mean nothing): " if args.dry_run else ""
    machine = (f"{dry}{where}; torch {torch.__version__}{cuda}; bf16 matmul {rate / 1e12:.1f} TFLOP/s "
               f"({mode.matmul_n} x {mode.matmul_n}); {mode.size} recipes, compile backend {backend}; "
               f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    header = [machine, f"cuda tests: {args.tests}"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    report = Report(Path(args.out), header)
    report.write()
    flops: dict[str, dict[int, float]] = {m: {} for m in args.modalities}
    # eager rows first, then the compiled ones, v1 of every modality before v2 (compiling takes most of the time)
    phases = [(False, (1, 2))] + ([] if args.no_compile else [(True, (1,)), (True, (2,))])
    for compiled, versions in phases:
        for modality in args.modalities:
            run_modality(modality, compiled, versions, mode, device, rate, report, flops[modality], deadline, start,
                         backend)
    report.write(footer=f"{time.perf_counter() - start:.0f} s for the table. samples/s: the best of "
                        f"{mode.rounds} timed steps after {mode.warmup} untimed ({mode.warmup + mode.compile_warmup} when "
                        "compiled); vs HF ref: over the reference's samples/s; peak MiB: allocated during one step "
                        "above what was allocated before it; GFLOP/sample: FlopCounterMode on our eager step (the "
                        "reference and compiled rows take its count); MFU: achieved FLOP/s over the bf16 matmul rate; "
                        "s: wall time of the row, building and compiling included.")
    failed = [f"{r.modality} {r.step}" for r in report.rows if r.skipped.startswith("failed")]
    say(start, f"table written to {args.out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
