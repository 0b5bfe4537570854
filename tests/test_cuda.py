"""The CUDA-only branches of a training step, and their CPU halves.

Tests marked `cuda` need a GPU and are skipped without one (tests/conftest.py); `bash benchmarks/gpu_check.sh`
runs them first on a GPU machine. What the CPU can check runs everywhere: the dense (sync-free) v1 loss, which
CUDA uses by default, against the gathered one and a float64 reference; a bf16-autocast step against the fp32
step; and the GPU check itself in its `--dry-run` mode, so that the script cannot rot.

Tolerances (a low-precision step against the fp32 step on the same weights and batch, tiny models): the loss
within 3% (bf16, 8 mantissa bits) or 1% (fp16, 11 bits) relative, and the gradient over all trainable
parameters at cosine similarity >= 0.995 (bf16) or 0.999 (fp16) with a norm within 5% (bf16) or 2% (fp16).
Measured on the CPU (bf16): at most 0.44% on the loss, cosine 0.9997 and 0.44% on the norm (audio-tiny).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data2vec.config import build_config
from data2vec.model import Data2Vec
from data2vec.train.device import autocast

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda", 0)
RECIPES = ["image-tiny", "image-tiny-v2", "audio-tiny", "audio-tiny-v2", "text-tiny", "text-tiny-v2"]
# small and without any random layer (dropout, drop path, layer drop), so two precisions see the same network
SMALL = ["model.dim=32", "model.depth=2", "model.heads=2", "objective.top_k=2", "model.dropout=0",
         "model.attn_dropout=0", "model.drop_path=0", "model.layer_drop=0"]
MODALITY = {
    "image": ["image.image_size=16", "image.patch_size=4", "masking.min_block=2"],
    "audio": ["audio.conv_dim=[16,16,16,16,16,16,16]", "audio.pos_conv_groups=2", "audio.pos_conv_kernel=3",
              "audio.pos_conv_layers=1", "audio.max_sample_size=4000", "audio.feature_dropout=0"],
    "text": ["text.vocab_size=300", "text.block_size=24", "text.max_positions=26"],
}
V2 = ["objective.decoder_dim=16", "objective.decoder_groups=2", "objective.decoder_layers=1", "objective.clones=2",
      "objective.decoder_input_dropout=0"]
TOLERANCE = {"bf16": {"loss": 0.03, "cosine": 0.995, "norm": 0.05},  # see the module docstring
             "fp16": {"loss": 0.01, "cosine": 0.999, "norm": 0.02}}


def _benchmark(name: str):
    """A module of benchmarks/ (their batch maker and peak-memory probe, rather than a second copy here)."""
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))  # pretrain_step imports its neighbours by name
    return importlib.import_module(name)


def small(recipe: str, *extra: str):
    modality = recipe.split("-")[0]
    return build_config(recipe, [*SMALL, *MODALITY[modality], *(V2 if recipe.endswith("v2") else []), *extra])


def batch_for(cfg, batch: int = 3, seed: int = 1) -> dict:
    """Random inputs with the recipe's real masks (benchmarks/pretrain_step.py's `make_batches`)."""
    return _benchmark("pretrain_step").make_batches(cfg, batch, 1, seed)[0]


def step(model: Data2Vec, batch: dict, precision: str, device: torch.device) -> tuple[float, torch.Tensor]:
    """Loss and flat unscaled gradient of one training step's forward and backward, as the loop runs them
    (autocast, and for fp16 the gradient scaler and its unscaling); the optimiser update is left out, since
    AdamW's first update is about the sign of each gradient and magnifies rounding noise."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the v2 decoder's noise
    b = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}
    extra = {"student_inputs": b["student_inputs"]} if "student_inputs" in b else {}
    with autocast(device, precision):
        out = model(b["inputs"], b["mask"], b.get("padding_mask"), **extra)
    params = [p for _, p in model.trainable_parameters()]
    if precision == "fp16":
        scaler = torch.amp.GradScaler("cuda")
        optimizer = torch.optim.SGD(params, lr=0.0)  # only to unscale through the scaler's own path
        scaler.scale(out["loss"]).backward()
        scaler.unscale_(optimizer)
    else:
        out["loss"].backward()
    grads = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).float().flatten() for p in params])
    assert torch.isfinite(grads).all(), f"{precision} gradients overflowed"
    return float(out["loss"].detach()), grads


def assert_step_close(low: tuple[float, torch.Tensor], ref: tuple[float, torch.Tensor], precision: str) -> None:
    (loss, grad), (ref_loss, ref_grad) = low, ref
    tol = TOLERANCE[precision]
    assert math.isfinite(loss) and abs(loss - ref_loss) <= tol["loss"] * abs(ref_loss), (loss, ref_loss)
    assert not grad.equal(ref_grad), f"{precision} changed nothing: autocast did not run"
    cosine = float(torch.nn.functional.cosine_similarity(grad, ref_grad, dim=0))
    ratio = float(grad.norm() / ref_grad.norm())
    assert cosine >= tol["cosine"] and abs(ratio - 1) <= tol["norm"], (cosine, ratio)


# ------------------------------------------------------------------------------------------- CPU halves (CI)

def _float64_loss(model: Data2Vec, batch: dict) -> float:
    """The v1 loss written out in float64 from the model's own student output and targets: head on the
    masked positions, Smooth L1 (or squared error) summed over channels, mean over positions, scaled."""
    obj = model.cfg.objective
    inputs, mask, padding = batch["inputs"], batch["mask"], batch.get("padding_mask")
    seen = batch.get("student_inputs", inputs)
    with torch.no_grad():
        targets = model.targets(inputs, padding)[mask]
        hidden = model.student(seen, mask=mask, padding_mask=padding).last_hidden_state[:, model.student.num_prefix:]
        diff = (model.head(hidden[mask]) - targets).abs()
    beta = obj.loss_beta
    per_elem = diff**2 if beta == 0 else torch.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta)
    dim = diff.shape[-1]
    factor = {"inv_sqrt_dim": dim**-0.5, "mean": 1 / dim, "none": 1.0}[obj.loss_scale]
    return float(per_elem.sum(-1).mean() * factor)


@pytest.mark.parametrize("recipe", ["image-tiny", "audio-tiny", "text-tiny"])
def test_dense_v1_loss_equals_the_gathered_loss_and_a_float64_reference(recipe, one_thread):
    """`Data2Vec.dense_loss` forces the CUDA default (head on every position, loss weighted by the mask, no
    host sync) on the CPU. The model runs in float64 (the loss reduces in float32), so both paths must agree
    with the reference to float32 rounding."""
    torch.manual_seed(0)
    cfg = small(recipe)
    model = Data2Vec(cfg).double().train()
    batch = {k: (v.double() if v.is_floating_point() else v) for k, v in batch_for(cfg).items()}
    losses = {}
    for dense in (False, True):
        model.dense_loss = dense
        b = {k: batch.get(k) for k in ("inputs", "mask", "padding_mask")}
        extra = {"student_inputs": batch["student_inputs"]} if "student_inputs" in batch else {}
        losses[dense] = float(model(b["inputs"], b["mask"], b["padding_mask"], **extra)["loss"].detach())
    reference = _float64_loss(model, batch)
    assert losses[True] == pytest.approx(reference, rel=2e-6)
    assert losses[False] == pytest.approx(reference, rel=2e-6)
    assert losses[True] == pytest.approx(losses[False], rel=2e-6)


@pytest.mark.parametrize("recipe", RECIPES)
def test_bf16_step_on_cpu_matches_the_fp32_step(recipe, one_thread):
    torch.manual_seed(0)
    cfg = small(recipe)
    model = Data2Vec(cfg).train()
    batch = batch_for(cfg)
    cpu = torch.device("cpu")
    ref = step(model, batch, "fp32", cpu)
    assert step(model, batch, "fp32", cpu)[1].equal(ref[1])  # the comparison is of precision alone
    assert_step_close(step(model, batch, "bf16", cpu), ref, "bf16")


def test_gpu_check_dry_run_writes_its_table(tmp_path):
    """`bash benchmarks/gpu_check.sh --dry-run`: install check, the `cuda` tests (skipped here), and every row
    of the table at tiny sizes on the CPU."""
    out = tmp_path / "gpu_check.md"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
                          check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = out.read_text()
    for modality in ("image", "audio", "text"):
        for name in ("ours v1 bf16", "ours v1 bf16 compiled", "HF reference v1 bf16", "ours v2 bf16",
                     "ours v2 bf16 compiled"):
            assert f"| {modality} | {name} |" in table, (modality, name, table)
    assert "dry run" in table and "cuda tests: 24 skipped" in table  # every cuda test collected, none run
    assert "[gpu_check" in proc.stdout  # progress lines
    rows = json.loads((out.with_suffix(".json")).read_text())
    measured = [r for r in rows if not r["skipped"]]
    assert len(measured) == 11  # the dry run compiles image only
    assert all(r["samples_per_s"] > 0 and r["peak_mib"] > 0 and r["gflop_per_sample"] > 0 for r in measured)


# ------------------------------------------------------------------------------------------- CUDA (GPU only)

@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("recipe", RECIPES)
def test_low_precision_step_on_cuda_matches_the_fp32_step(recipe, precision):
    torch.manual_seed(0)
    cfg = small(recipe)
    model = Data2Vec(cfg).to(CUDA).train()
    batch = batch_for(cfg, batch=4)
    ref = step(model, batch, "fp32", CUDA)
    assert_step_close(step(model, batch, precision, CUDA), ref, precision)


@pytest.mark.cuda
@pytest.mark.parametrize("recipe", ["image-tiny", "audio-tiny", "text-tiny"])
def test_dense_loss_is_the_cuda_default_and_equals_the_gathered_loss(recipe):
    torch.manual_seed(0)
    cfg = small(recipe)
    model = Data2Vec(cfg).to(CUDA).train()
    batch = batch_for(cfg, batch=4)
    default = step(model, batch, "fp32", CUDA)  # dense_loss None: dense on CUDA
    model.dense_loss = False
    gathered = step(model, batch, "fp32", CUDA)
    model.dense_loss = True
    dense = step(model, batch, "fp32", CUDA)
    assert default[0] == dense[0]  # the same computation (its backward may add in another order: atomics)
    torch.testing.assert_close(default[1], dense[1], rtol=1e-5, atol=1e-8)
    assert dense[0] == pytest.approx(gathered[0], rel=1e-5)
    torch.testing.assert_close(dense[1], gathered[1], rtol=1e-4, atol=1e-7)


def _pretrain(out: Path, *extra: str) -> Path:
    from data2vec.tasks.pretrain import pretrain

    cfg = build_config("image-tiny", [*SMALL[:4], *MODALITY["image"], "model.drop_path=0.2", f"device={CUDA}",
                                      "train.batch_size=16", "train.warmup_steps=2", "train.log_every=1",
                                      "data.num_workers=0", "train.keep_last=5", f"out={out}", *extra])
    return pretrain(cfg, progress=False)


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def deterministic(monkeypatch):
    """Deterministic kernels (attention backward, index ops), which bit-exact comparisons of two GPU runs need
    (an op without one warns rather than fails: the comparison then says what differs). benchmarks/gpu_check.sh
    also sets CUBLAS_WORKSPACE_CONFIG before any CUDA work."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", os.environ.get("CUBLAS_WORKSPACE_CONFIG", ":4096:8"))
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(False)


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_resume_on_cuda_is_bit_exact(precision, deterministic, tmp_path):
    """Drop path draws from the CUDA generator and fp16 carries the gradient scaler: both are in the checkpoint."""
    from safetensors.torch import load_file

    extra = ["train.max_steps=6", "train.save_every=3", f"train.precision={precision}"]
    full = _pretrain(tmp_path / "full", *extra)
    resumed = _pretrain(tmp_path / "resumed", *extra, f"resume={full / 'checkpoints' / 'step_00000003'}")
    a = load_file(str(full / "checkpoints" / "step_00000006" / "model.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "step_00000006" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _losses(full)[3:] == _losses(resumed)


class _WorldOfOne:
    """A process group of one that the library treats as distributed (DistInfo.enabled), so the NCCL code
    paths run on a single GPU: DDP's gradient all-reduce, FSDP2's all-gathers, the loop's reductions."""

    def __init__(self, tmp_path: Path) -> None:
        import torch.distributed as dist

        from data2vec.train.distributed import DistInfo

        class OneProcess(DistInfo):
            @property
            def enabled(self) -> bool:
                return True

        dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1,
                                device_id=torch.device("cuda", 0))
        self.info = OneProcess()

    def close(self) -> None:
        import torch.distributed as dist

        dist.destroy_process_group()


@pytest.mark.cuda
@pytest.mark.timeout(180)
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_one_process_nccl_run_equals_a_plain_run(strategy, tmp_path):
    from data2vec.train.distributed import full_state, wrap_model
    from data2vec.train.loop import train
    from data2vec.train.optim import build_optimizer

    cfg = small("image-tiny", "train.max_steps=4", "train.log_every=2", "train.warmup_steps=1",
                f"train.strategy={strategy}")
    data = _benchmark("pretrain_step").make_batches(cfg, 8, 4, seed=2)

    def run(world):
        torch.manual_seed(0)
        model = Data2Vec(cfg).to(CUDA)
        step_model = wrap_model(model, strategy, world.info, CUDA) if world else model
        optimizer = build_optimizer(model.trainable_parameters(), cfg.train)
        train(model, optimizer, data, cfg, CUDA, 0, save=lambda step: None, logger=None, step_model=step_model,
              dist_info=world.info if world else None)
        return full_state(model, optimizer)[0]

    plain = run(None)
    world = _WorldOfOne(tmp_path)
    try:
        nccl = run(world)
    finally:
        world.close()
    assert plain.keys() == nccl.keys()
    for key in plain:
        torch.testing.assert_close(nccl[key], plain[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.cuda
def test_peak_memory_of_a_step_is_reported():
    """benchmarks/pretrain_step.py's probe (what gpu_check.py reports): the allocator's peak during one step
    above what was allocated before it, more than the step's activations need and less than the device has."""
    bench = _benchmark("pretrain_step")
    torch.manual_seed(0)
    cfg = small("image-tiny")
    model = Data2Vec(cfg).to(CUDA).train()
    batch = batch_for(cfg, batch=32)
    peak = bench.peak_step_bytes(lambda: step(model, batch, "fp32", CUDA), CUDA)
    activation = 32 * 17 * cfg.model.dim * 4 * cfg.model.depth  # block outputs alone, float32
    assert activation < peak < torch.cuda.get_device_properties(0).total_memory


# compiling takes longest: last, so that the others have reported when a time limit stops the run

@pytest.mark.cuda
@pytest.mark.parametrize("recipe", ["image-tiny", "image-tiny-v2"])
def test_compiled_step_gives_the_eager_loss(recipe, monkeypatch):
    """The step through `torch.compile(model)` (what train.compile=true runs) gives the eager loss and gradient
    (Inductor may reorder float reductions: 1e-4 relative). Inductor draws random numbers its own way unless
    told to call torch's generator, which the v2 decoder's noise needs to be the eager one."""
    import torch._inductor.config

    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    torch.manual_seed(0)
    cfg = small(recipe)
    model = Data2Vec(cfg).to(CUDA).train()
    batch = batch_for(cfg, batch=4)
    eager = step(model, batch, "fp32", CUDA)
    compiled_model = torch.compile(model)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    b = {k: v.to(CUDA) for k, v in batch.items() if torch.is_tensor(v)}
    out = compiled_model(b["inputs"], b["mask"], b.get("padding_mask"))
    out["loss"].backward()
    grads = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                       for _, p in model.trainable_parameters()])
    assert float(out["loss"].detach()) == pytest.approx(eager[0], rel=1e-4)
    assert float(torch.nn.functional.cosine_similarity(grads, eager[1], dim=0)) > 0.9999


@pytest.mark.cuda
def test_compiled_pretraining_run_gives_the_eager_losses(tmp_path):
    eager = _losses(_pretrain(tmp_path / "eager", "train.max_steps=3", "model.drop_path=0"))
    compiled = _losses(_pretrain(tmp_path / "compiled", "train.max_steps=3", "model.drop_path=0",
                                 "train.compile=true"))
    assert compiled == pytest.approx(eager, rel=1e-3)
