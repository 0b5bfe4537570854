"""Pretraining step speed against the Hugging Face reference and against the machine (issue 10).

One run measures the machine's matmul rate (fp32 and bf16), then times full pretraining steps (teacher
forward, student forward + backward, clipping, AdamW, EMA update) of ours and of the reference (the
data2vec v1 step written on `transformers`, `benchmarks/hf_reference.py`) at the same sizes, batch, inputs
and masks, for each modality, size and version asked for. Ours is timed through the real training loop
(`data2vec.train.loop.train`), so what is measured is what `data2vec pretrain` runs.

Because the machines we develop on are shared, the implementations of one group (modality x size) are
timed in interleaved rounds (ours, reference, ... then the reverse order) and every ratio is the median
over rounds of ratios taken within one round. Columns:

- samples/s: the best round (closest to an unloaded machine), CPU figures where run on a CPU.
- vs ref: our samples/s over the reference's at the same precision (median of per-round ratios).
- peak MiB: CUDA: `max_memory_allocated` during one step above the memory before it. CPU (no allocator
  statistics): the peak of live tensor bytes allocated during one step, counted by a dispatch mode that
  sees every op's outputs (model, gradients of the previous step and optimiser state are not included;
  allocator caching and kernel workspaces are not seen).
- GFLOP/sample: model FLOPs of one step (matmuls, convolutions, attention) counted by
  `torch.utils.flop_counter.FlopCounterMode` on our step (the reference does the same model work).
- MFU: achieved FLOP/s of the best round over the matmul rate measured in this run at that precision: the
  best kernel PyTorch has (fp32 on CPU: the better of MKL, PyTorch's default, and oneDNN).

    python benchmarks/pretrain_step.py                                   # everything: about 10 min on 2 cores
    python benchmarks/pretrain_step.py --sizes tiny --modalities image   # a quick look
    python benchmarks/pretrain_step.py --sizes tiny --ablations          # each optimisation on / off
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from data2vec.config import build_config, recipe_names
from data2vec.model import Data2Vec
from data2vec.nn.linear import _onednn_mm, onednn_available, set_cpu_matmul
from data2vec.train.device import resolve_device
from data2vec.train.loop import train
from data2vec.train.optim import build_optimizer

import ablations as before  # benchmarks/ablations.py: our step without each optimisation
import hf_reference  # benchmarks/hf_reference.py: the reference step on transformers

# batch per step and timed steps per round, by size: base is kept small so the whole run fits in ~10 min
BATCH = {("image", "tiny"): 32, ("image", "base"): 4, ("text", "tiny"): 32, ("text", "base"): 2,
         ("audio", "tiny"): 16, ("audio", "base"): 2}
CROP = {"tiny": 16000, "base": 64000}  # audio samples per utterance: 1 s and 4 s (the base recipe crops up to 20 s)
ROUNDS = {"tiny": 8, "base": 3}  # interleaved rounds of one step per implementation
WARMUP = {"tiny": 2, "base": 1}
CLOCK = time.perf_counter  # --clock cpu: time.process_time, the CPU time this process used


# ------------------------------------------------------------------------------------------------ the machine

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_rate(device: torch.device, dtype: torch.dtype, kernel: str = "torch", tries: int = 5, n: int = 0) -> float:
    """Best measured FLOP/s of an n x n matmul (by default n = 2048 on CPU, 8192 on CUDA) over a few tries.
    `kernel`: "torch" (`a @ b`: MKL for fp32 on CPU builds, oneDNN for bf16) or "onednn" (oneDNN's fp32 product)."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    mm = (lambda: _onednn_mm(a, b)) if kernel == "onednn" else (lambda: a @ b)
    mm()
    best = 0.0
    for _ in range(tries):
        sync(device)
        start = CLOCK()
        for _ in range(3):
            mm()
        sync(device)
        best = max(best, 3 * 2 * n**3 / (CLOCK() - start))
    return best


def machine_rates(device: torch.device, precisions: list[str]) -> tuple[dict[str, float], str]:
    """The machine's matmul rate per precision: the best kernel PyTorch has for it (on CPU, fp32 is timed
    with MKL, PyTorch's default, and with oneDNN), and a line saying what was measured."""
    rates, notes = {}, []
    for p in precisions:
        dtype = torch.float32 if p == "fp32" else torch.bfloat16
        rates[p] = matmul_rate(device, dtype)
        notes.append(f"{p} {rates[p] / 1e9:.0f}")
        if p == "fp32" and device.type == "cpu" and onednn_available():
            onednn = matmul_rate(device, dtype, "onednn")
            notes[-1] = f"fp32 {rates[p] / 1e9:.0f} (MKL) / {onednn / 1e9:.0f} (oneDNN)"
            rates[p] = max(rates[p], onednn)
    return rates, "matmul GFLOP/s " + ", ".join(notes)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# ---------------------------------------------------------------------------------------- counting FLOPs, bytes

def _cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return 2 * sdpa_flop_count(query, key, value)  # grads of Q, K, V: twice the forward's two products


def _onednn_linear(x, weight, *args, out_shape=None, **kwargs) -> int:
    return 2 * math.prod(x) * weight[0]  # x [..., K] times weight [N, K]^T


def count_flops(run_one_step: Callable[[], None]) -> float:
    """Model FLOPs of one step. FlopCounterMode knows neither the CPU flash-attention kernels nor oneDNN's
    linear (data2vec.nn.linear); they are added, attention with the formula it uses for the CUDA kernels."""
    aten = torch.ops.aten
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
               aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward}
    if onednn_available():
        mapping[torch.ops.mkldnn._linear_pointwise] = _onednn_linear
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        run_one_step()
    return float(counter.get_total_flops())


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of tensor storage allocated while the mode is on and still alive (CPU peak memory estimate).

    An op's output is a new allocation when its storage is none of its inputs' (views and in-place ops
    share their input's); each is followed by a weak reference until it is freed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in _tensors((args, kwargs))}
        for t in _tensors(out):
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key and key not in inputs and (key not in self.live or self.live[key][0].expired()):
                self.current -= self.live[key][1] if key in self.live else 0
                self.live[key] = (StorageWeakRef(storage), storage.nbytes())
                self.current += storage.nbytes()
        if self.current > self.peak:  # freed storages are only subtracted when they could make a new peak
            for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
                self.current -= self.live.pop(key)[1]
            self.peak = max(self.peak, self.current)
        return out


def _tensors(tree) -> list[torch.Tensor]:
    return [x for x in torch.utils._pytree.tree_leaves(tree) if isinstance(x, torch.Tensor)]


def peak_step_bytes(run_one_step: Callable[[], None], device: torch.device) -> float:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run_one_step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with LiveTensorBytes() as mode:
        run_one_step()
    return float(mode.peak)


# ------------------------------------------------------------------------------------------------ inputs

def make_batches(cfg, batch: int, n: int, seed: int) -> list[dict]:
    """`n` batches of random inputs with real masks, as the data pipeline gives them (CPU tensors)."""
    from data2vec import masking

    g = torch.Generator().manual_seed(seed)
    obj, m = cfg.objective, cfg.masking
    clones = obj.clones if obj.version == 2 else 1
    out = []
    for _ in range(n):
        if cfg.modality == "image":
            side = cfg.image.image_size // cfg.image.patch_size
            inputs = torch.randn(batch, cfg.image.in_chans, cfg.image.image_size, cfg.image.image_size, generator=g)
            if m.inverse:
                mask = masking.inverse_block_mask(batch * clones, (side, side), m.ratio, generator=g,
                                                  block_size=m.block_size)
            else:
                mask = masking.block_mask(batch * clones, (side, side), m.ratio, generator=g, min_block=m.min_block)
            b = {"inputs": inputs, "mask": mask.view(batch, clones, -1) if obj.version == 2 else mask}
        elif cfg.modality == "text":
            t = cfg.text
            ids = torch.randint(5, t.vocab_size, (batch, t.block_size), generator=g)
            ids[:, 0], ids[:, -1] = t.bos_id, t.eos_id
            specials = [t.bos_id, t.pad_id, t.eos_id, t.mask_id]
            b = {"inputs": ids, "padding_mask": torch.zeros(batch, t.block_size, dtype=torch.bool)}
            if obj.version == 2:
                chosen = masking.token_choice(ids.repeat_interleave(clones, 0), m.token_prob, generator=g,
                                              special_ids=specials)
                b["mask"] = chosen.view(batch, clones, -1)
            else:
                corrupted, chosen = masking.token_mask(ids, m.token_prob, generator=g, mask_id=t.mask_id,
                                                       vocab_size=t.vocab_size, special_ids=specials,
                                                       random_prob=m.token_random, keep_prob=m.token_keep)
                b.update(student_inputs=corrupted, mask=chosen)
        else:
            from data2vec.frames import conv_output_length

            a = cfg.audio
            samples = a.max_sample_size
            frames = conv_output_length(samples, a.conv_kernel, a.conv_stride)
            inputs = torch.randn(batch, samples, generator=g)
            mask = masking.span_mask(batch * clones, frames, m.span_prob, m.span_length, generator=g)
            b = {"inputs": inputs, "mask": mask.view(batch, clones, -1) if obj.version == 2 else mask}
        out.append(b)
    return out


# ------------------------------------------------------------------------------------------------ runners

@dataclass
class Runner:
    """One implementation at one precision: `run(batches)` performs one training step per batch."""

    name: str
    impl: str  # "ours" or "ref"
    version: int
    precision: str
    run: Callable[[list[dict]], None]
    flops_per_step: float = 0.0
    peak_bytes: float = float("nan")
    rates: list[float] = field(default_factory=list)  # samples/s per round


def bench_config(recipe: str, precision: str, extra: list[str] = ()):
    """A recipe with the loop's bookkeeping turned off (no logging, saving or checkpoints inside the timing)
    and, for speech, the benchmark's crop length."""
    size = "base" if "-base" in recipe else "tiny"
    crop = [f"audio.max_sample_size={CROP[size]}"] if recipe.startswith("audio") else []
    return build_config(recipe, [f"train.precision={precision}", "train.max_steps=1000000000",
                                 "train.log_every=1000000000", "train.save_every=1000000000",
                                 "train.warmup_steps=10", "data.num_workers=0", *crop, *extra])


def ours_runner(cfg, model: Data2Vec, optimizer, device: torch.device, name: str,
                step_model: torch.nn.Module | None = None) -> Runner:
    def run(batches: list[dict]) -> None:
        train(model, optimizer, batches, cfg, device, 0, save=lambda step: None, logger=None, step_model=step_model)

    return Runner(name, "ours", cfg.objective.version, cfg.train.precision, run)


def ref_runner(cfg, model, optimizer, device: torch.device) -> Runner:
    def run(batches: list[dict]) -> None:
        hf_reference.train_reference(model, optimizer, batches, cfg, device)

    return Runner("HF reference", "ref", 1, cfg.train.precision, run)


def with_precision(cfg, precision: str):
    cfg = copy.deepcopy(cfg)
    cfg.train.precision = precision
    return cfg


# ------------------------------------------------------------------------------------------------ timing

def time_rounds(runners: list[Runner], batches: dict[str, list[dict]], rounds: int, warmup: int,
                device: torch.device) -> None:
    """Interleaved rounds of one step per runner, the order reversed every other round, so that a change in
    the machine's load hits every runner alike. Batches cycle, each runner sees the same ones."""
    for r in runners:
        r.run(batches[r.name][:warmup])
    for i in range(rounds):
        for r in (runners if i % 2 == 0 else runners[::-1]):
            chunk = batches[r.name][warmup + i % (len(batches[r.name]) - warmup):][:1]
            sync(device)
            start = CLOCK()
            r.run(chunk)
            sync(device)
            r.rates.append(chunk[0]["inputs"].shape[0] / (CLOCK() - start))


def paired_ratio(a: Runner, b: Runner) -> float:
    return statistics.median(x / y for x, y in zip(a.rates, b.rates))


# ------------------------------------------------------------------------------------------------ one group

def recipe_for(modality: str, size: str, version: int) -> str | None:
    name = f"{modality}-{size}" + ("-v2" if version == 2 else "")
    return name if name in recipe_names() else None


def v1_encoder_overrides(v1_cfg) -> list[str]:
    """v2 at the v1 recipe's encoder (same width, depth, heads and block layout): only the objective differs."""
    return [f"model.{k}={getattr(v1_cfg.model, k)}" for k in ("dim", "depth", "heads", "norm_first", "qkv_bias")]


def same_loss_check(ours: Data2Vec, ref, batch: dict, device: torch.device) -> None:
    """Prints our loss and the reference's on the same weights and batch (eval mode: no dropout or drop path).
    Image only: for text and speech the reference regresses other layer outputs (see hf_reference.py)."""
    inputs, mask = batch["inputs"].to(device), batch["mask"].to(device)
    ours.eval(), ref.eval()
    with torch.no_grad():
        a, b = float(ours(inputs, mask)["loss"]), float(ref(inputs, mask))
    ours.train(), ref.train()
    print(f"# reference check: loss {b:.6f}, ours {a:.6f} on the same weights and batch", flush=True)


def run_group(modality: str, size: str, versions: list[int], precisions: list[str], rounds: int,
              device: torch.device, with_reference: bool = True) -> list[Runner]:
    v1_recipe = recipe_for(modality, size, 1)
    batch, warmup = BATCH[(modality, size)], WARMUP[size]
    rounds = rounds or ROUNDS[size]
    n = warmup + min(rounds, 4)
    base = bench_config(v1_recipe, "fp32")
    torch.manual_seed(0)
    ours = Data2Vec(base).to(device).train()
    ours_opt = build_optimizer(ours.trainable_parameters(), base.train)
    runners: list[Runner] = []
    for p in precisions:
        runners.append(ours_runner(with_precision(base, p), ours, ours_opt, device, f"ours v1 {p}"))
    if with_reference:
        ref, ref_opt = hf_reference.build_reference(base, ours.student, device)
        ref.head.load_state_dict(ours.head.state_dict())
        if modality == "image":
            same_loss_check(ours, ref, make_batches(base, 2, 1, seed=0)[0], device)
        for p in precisions:
            r = ref_runner(with_precision(base, p), ref, ref_opt, device)
            r.name = f"ref v1 {p}"
            runners.append(r)
    v2_recipe = recipe_for(modality, size, 2)
    if 2 in versions and v2_recipe:
        v2 = bench_config(v2_recipe, "fp32", v1_encoder_overrides(base) + ["objective.clones=1"])
        torch.manual_seed(0)
        ours2 = Data2Vec(v2).to(device).train()
        opt2 = build_optimizer(ours2.trainable_parameters(), v2.train)
        for p in precisions:
            runners.append(ours_runner(with_precision(v2, p), ours2, opt2, device, f"ours v2 {p}"))
    cfgs = {"ours v1": base, "ref v1": base, "ours v2": v2 if 2 in versions and v2_recipe else None}
    batches = {r.name: make_batches(cfgs[r.name.rsplit(" ", 1)[0]], batch, n, seed=1) for r in runners}
    time_rounds(runners, batches, rounds, warmup, device)
    for r in runners:  # FLOPs and memory after timing, so the steps above run unobserved
        one = batches[r.name][:1]
        if r.impl == "ours":
            r.flops_per_step = count_flops(lambda: r.run(one))
        r.peak_bytes = peak_step_bytes(lambda: r.run(one), device)
    for r in runners:
        if r.impl == "ref":
            r.flops_per_step = next(o.flops_per_step for o in runners
                                    if o.impl == "ours" and o.version == 1 and o.precision == r.precision)
    return runners


# ------------------------------------------------------------------------------------------------ ablations
# Each optimisation of ours against ours without it ("before"), in the same interleaved rounds.

# name -> (precision, how to undo it on a fresh model: (model, cfg) -> optimiser to use instead or None; or
# "default-matmul": data2vec.nn.linear sends products to F.linear; "compile": torch.compile is the "on" side)
ABLATIONS: dict[str, tuple[str, Callable | str]] = {
    "oneDNN fp32 products (vs F.linear, MKL)": ("fp32", "default-matmul"),
    "fused AdamW (vs torch's default AdamW)": ("fp32", lambda model, cfg: before.unfused_adamw(model, cfg)),
    "foreach EMA (vs a loop over parameters)": ("fp32", lambda model, cfg: before.loop_ema(model)),
    "fused QKV (vs three projections)": ("fp32", lambda model, cfg: before.patch_attention(model, before.three_projections)),
    "SDPA (vs attention written out)": ("fp32", lambda model, cfg: before.patch_attention(model, before.explicit_attention)),
    "fp32 attention under CPU autocast (vs bf16 SDPA)":
        ("bf16", lambda model, cfg: before.patch_attention(model, before.autocast_attention)),
    "shared conv features for the teacher (vs its own pass)": ("fp32", lambda model, cfg: before.own_teacher_frontend(model)),
}
ONLY_FOR = {"shared conv features for the teacher (vs its own pass)": "audio"}  # the others apply everywhere
COMPILE = ("fp32", "compile")


def _built(cfg, device: torch.device, default_matmul: bool) -> Data2Vec:
    """A fresh model; with `default_matmul` its layers send every fp32 CPU product to F.linear (layers choose
    their kernel when they are built, see data2vec.nn.linear)."""
    torch.manual_seed(0)
    if default_matmul:
        set_cpu_matmul("default")
    try:
        return Data2Vec(cfg).to(device).train()
    finally:
        set_cpu_matmul("auto")


def run_ablations(modality: str, size: str, rounds: int, device: torch.device, compile_too: bool,
                  only: str = "") -> list[str]:
    """One row per optimisation (those whose name contains `only`): ours as it is against ours with that one
    change undone, interleaved."""
    batch, warmup = BATCH[(modality, size)], WARMUP[size]
    rounds = rounds or ROUNDS[size]
    items = list(ABLATIONS.items()) + ([("torch.compile (vs eager)", COMPILE)] if compile_too else [])
    rows = []
    for name, (precision, undo) in items:
        if ONLY_FOR.get(name, modality) != modality or only.lower() not in name.lower():
            continue
        cfg = bench_config(recipe_for(modality, size, 1), precision)
        pair = []
        for on in (True, False):
            model = _built(cfg, device, default_matmul=undo == "default-matmul" and not on)
            optimizer = build_optimizer(model.trainable_parameters(), cfg.train)
            step_model = None
            if undo == "compile":
                step_model = torch.compile(model) if on else None
            elif not on and callable(undo):
                optimizer = undo(model, cfg) or optimizer
            pair.append(ours_runner(cfg, model, optimizer, device, "on" if on else "off", step_model))
        w = warmup + (2 if undo == "compile" else 0)  # compiling happens in the first steps
        data = make_batches(cfg, batch, w + min(rounds, 4), seed=1)
        time_rounds(pair, {"on": data, "off": data}, rounds, w, device)
        on, off = pair
        rows.append(f"| {modality} | {size} | {batch} | {precision} | {name} | {max(on.rates):.1f} | "
                    f"{max(off.rates):.1f} | {paired_ratio(on, off):.2f}x |")
        print(rows[-1], flush=True)
        del pair
        gc.collect()
    return rows


# ------------------------------------------------------------------------------------------------ report

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "base"], choices=["tiny", "base"])
    parser.add_argument("--modalities", nargs="+", default=["image", "text", "audio"],
                        choices=["image", "text", "audio"])
    parser.add_argument("--versions", nargs="+", type=int, default=[1, 2], choices=[1, 2])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--rounds", type=int, default=0, help="interleaved rounds (default: 8 tiny, 3 base)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="cpu: count this process's CPU time instead of wall time (with --threads 1, a machine "
                             "shared with other jobs then times as if it were idle)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-reference", action="store_true", help="time ours only")
    parser.add_argument("--ablations", action="store_true",
                        help="instead of the table: each optimisation on against off (fp32, v1)")
    parser.add_argument("--compile", action="store_true", help="with --ablations: torch.compile against eager too")
    parser.add_argument("--only", default="", help="with --ablations: only optimisations whose name contains this")
    args = parser.parse_args()

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        global CLOCK
        CLOCK = time.process_time
    start = time.perf_counter()
    rates, measured = machine_rates(device, args.precisions)
    where = (torch.cuda.get_device_name() if device.type == "cuda"
             else f"CPU: {cpu_name()}, {torch.get_num_threads()} threads")
    machine = f"{where}; torch {torch.__version__}; {measured}; {args.clock} clock"
    print(f"# {machine}", flush=True)
    rows = []
    if args.ablations:
        for modality in args.modalities:
            for size in args.sizes:
                if recipe_for(modality, size, 1) is not None:
                    rows += run_ablations(modality, size, args.rounds, device, args.compile, args.only)
        print(f"\n{machine}\n| modality | size | batch | precision | optimisation | samples/s on | samples/s off | on / off |")
        print("|---|---|---|---|---|---|---|---|")
    else:
        for modality in args.modalities:
            for size in args.sizes:
                if recipe_for(modality, size, 1) is None:
                    rows.append(f"| {modality} | {size} | | not yet: no {modality}-{size} recipe | | | | | | | |")
                    print(rows[-1], flush=True)
                    continue
                runners = run_group(modality, size, args.versions, args.precisions, args.rounds, device,
                                    with_reference=not args.no_reference)
                rows += table_rows(modality, size, runners, rates)
                print("\n".join(rows[-len(runners):]), flush=True)
                del runners  # the models of this group
                gc.collect()
        print(f"\n{machine}")
        print("| modality | size | batch | step | samples/s | vs ref | vs v1 | vs fp32 | peak MiB | GFLOP/sample | MFU |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\n{time.perf_counter() - start:.0f} s in all")


def table_rows(modality: str, size: str, runners: list[Runner], rates: dict[str, float]) -> list[str]:
    by_name = {r.name: r for r in runners}
    batch = BATCH[(modality, size)]
    rows = []
    for r in runners:
        best = max(r.rates)
        mfu = r.flops_per_step * best / batch / rates[r.precision]
        ref = by_name.get(f"ref v1 {r.precision}")
        v1 = by_name.get(f"ours v1 {r.precision}")
        fp32 = by_name.get(f"{r.name.rsplit(' ', 1)[0]} fp32")
        vs_ref = f"{paired_ratio(r, ref):.2f}x" if ref is not None and r is not ref else ""
        vs_v1 = f"{paired_ratio(r, v1):.2f}x" if r.version == 2 and v1 is not None else ""
        vs_fp32 = f"{paired_ratio(r, fp32):.2f}x" if r.precision != "fp32" and fp32 is not None else ""
        rows.append(f"| {modality} | {size} | {batch} | {r.name} | {best:.1f} | {vs_ref} | {vs_v1} | {vs_fp32} | "
                    f"{r.peak_bytes / 2**20:.0f} | {r.flops_per_step / batch / 1e9:.2f} | {mfu:.0%} |")
    return rows


if __name__ == "__main__":
    main()
