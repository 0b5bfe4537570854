"""The training step: no host reads per step beyond the finiteness check, and the speed-ups change no result."""

import importlib.util
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from data2vec.config import build_config
from data2vec.masking import block_mask
from data2vec.model import Data2Vec
from data2vec.train.loop import train
from data2vec.train.optim import build_optimizer

TINY = ["model.dim=32", "model.depth=2", "model.heads=2", "image.image_size=16", "image.patch_size=4",
        "objective.top_k=2", "masking.min_block=2", "train.warmup_steps=2", "train.max_steps=1000",
        "train.save_every=1000", "objective.ema_start=0.9", "objective.ema_end=0.9"]


def _load_ablations():
    """benchmarks/ablations.py: the step without each optimisation (the plain computation)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "ablations.py"
    spec = importlib.util.spec_from_file_location("ablations", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def batches(cfg, n, batch=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    side = cfg.image.image_size // cfg.image.patch_size
    return [{"inputs": torch.randn(batch, 3, cfg.image.image_size, cfg.image.image_size, generator=g),
             "mask": block_mask(batch, (side, side), 0.6, generator=g, min_block=2)} for _ in range(n)]


class Records:
    """A stand-in for MetricsLogger that keeps the records."""

    def __init__(self):
        self.records = []

    def step(self):
        pass

    def log(self, record, group="train"):
        self.records.append(record)


class ScalarReads(TorchDispatchMode):
    """Counts reads of a tensor's value by the host (`.item()`, `float()`, `bool()`, `.tolist()`): each one is
    a device sync on a GPU."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_optimizer_is_fused_and_step_reads_one_scalar_outside_log_steps():
    cfg = build_config("image-tiny", TINY + ["train.log_every=1000"])
    torch.manual_seed(0)
    model = Data2Vec(cfg).train()
    optimizer = build_optimizer(model.trainable_parameters(), cfg.train)
    assert optimizer.defaults["fused"]
    data = batches(cfg, 2, batch=4)
    train(model, optimizer, data[:1], cfg, torch.device("cpu"), 0, lambda step: None, None)  # optimiser state exists
    with ScalarReads() as reads:
        train(model, optimizer, data[1:], cfg, torch.device("cpu"), 1, lambda step: None, None)
    # the finiteness check of the gradient norm that lets a NaN batch be skipped (train.skip_nonfinite);
    # torch's default AdamW would add one per parameter.
    assert reads.count == 1


def _losses(cfg, data, plain: bool):
    torch.manual_seed(0)
    model = Data2Vec(cfg).train()
    optimizer = build_optimizer(model.trainable_parameters(), cfg.train)
    if plain:
        before = _load_ablations()
        optimizer = before.unfused_adamw(model, cfg)
        before.loop_ema(model)
        before.patch_attention(model, before.plain_attention)
    logger = Records()
    train(model, optimizer, data, cfg, torch.device("cpu"), 0, lambda step: None, logger)
    return [r["loss"] for r in logger.records], model


@pytest.mark.parametrize("extra", [[], ["image.rel_pos_bias=shared", "image.pos_embed=none"]],
                         ids=["sincos", "relative-bias"])
def test_optimised_step_gives_the_plain_loss_trajectory(extra):
    """Fused AdamW, foreach EMA, fused QKV and SDPA against torch's default AdamW, a parameter loop, three
    projections and attention written out: the same losses and weights after 8 steps, to float rounding."""
    cfg = build_config("image-tiny", TINY + ["train.log_every=1", "train.lr=1e-3"] + extra)
    data = batches(cfg, 8, batch=4)
    fast, fast_model = _losses(cfg, data, plain=False)
    slow, slow_model = _losses(cfg, data, plain=True)
    assert len(fast) == 8 and fast[-1] != fast[0]
    torch.testing.assert_close(torch.tensor(fast), torch.tensor(slow), rtol=1e-4, atol=1e-6)
    for (name, a), b in zip(fast_model.state_dict().items(), slow_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5, msg=name)


def test_accumulated_update_is_the_mean_over_every_masked_position_of_the_batch():
    """Micro-batches whose samples mask different counts (here 2 and 10 of 16 patches) weigh each masked
    position once, as fairseq's division by the batch's sample size: the accumulated update equals one pass
    over the whole batch, and the logged loss is that batch's mean. (Weighting by samples would not.)"""
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(4, 16, dtype=torch.bool)
    mask[:2, :2] = True  # micro-batch 1: 2 masked patches per sample
    mask[2:, :10] = True  # micro-batch 2: 10 per sample
    data = [{"inputs": torch.randn(4, 3, 16, 16, generator=g), "mask": mask}]
    results = []
    for device_batch in (0, 2):
        run = build_config("image-tiny", TINY + ["train.log_every=1", "train.lr=1e-3", "train.clip_grad=0",
                                                 f"train.device_batch_size={device_batch}"])
        torch.manual_seed(0)
        model = Data2Vec(run)
        logger = Records()
        train(model, build_optimizer(model.trainable_parameters(), run.train), data, run, torch.device("cpu"), 0,
              lambda step: None, logger)
        results.append((logger.records[0]["loss"], model.student.state_dict()))
    (whole_loss, whole), (accum_loss, accum) = results
    assert accum_loss == pytest.approx(whole_loss, rel=1e-5)
    for name, value in whole.items():
        torch.testing.assert_close(accum[name], value, rtol=1e-4, atol=1e-6, msg=name)
