"""Initial weights (`model.init`, nn/init.py): the statistics of every initialised tensor against the formulas."""

import math

import pytest
import torch

from data2vec.config import build_config
from data2vec.model import Data2Vec

SIZE = ["model.dim=96", "model.depth=3", "model.heads=2", "image.image_size=32", "image.patch_size=8"]


def truncated_std(std: float, cut: float) -> float:
    """Standard deviation of normal(0, std) cut at +-cut std (float64): std sqrt(1 - 2 cut phi(cut) / Z),
    Z = 2 Phi(cut) - 1."""
    phi = math.exp(-cut * cut / 2) / math.sqrt(2 * math.pi)
    z = math.erf(cut / math.sqrt(2))
    return std * math.sqrt(1 - 2 * cut * phi / z)


def _scale(name: str) -> float:
    """BEiT's `fix_init_weight` (ours too): the attention output and second FFN layer of block l (from 1)
    divided by sqrt(2 l)."""
    if name.endswith(("attn.proj.weight", "mlp.fc2.weight")):
        return 1 / math.sqrt(2 * (int(name.split(".")[3]) + 1))
    return 1.0


def _initialised(model):
    """The student's and head's tensors drawn at random: Linear / conv weights and the tokens."""
    for name, p in model.named_parameters():
        if name.startswith("teacher."):
            continue
        if name.endswith(("cls_token", "mask_token")) or (p.ndim >= 2 and "rel_pos" not in name):
            yield name, p.detach().double()


def _check(name, w, want_std, bound=None):
    n = w.numel()
    # the sample std's standard error is about std sqrt((kurtosis - 1) / (4 n)); kurtosis <= 3 here
    tol = 5 * want_std * math.sqrt(2 / (4 * n)) + 1e-12
    assert abs(w.std().item() - want_std) < tol, f"{name}: std {w.std().item():.5f} vs {want_std:.5f} (n {n})"
    assert abs(w.mean().item()) < 5 * want_std / math.sqrt(n), name
    if bound is not None:
        assert w.abs().max().item() <= bound * (1 + 1e-6), name


def test_beit_init_is_a_normal_cut_at_one_std_patch_embedding_included():
    """`model.init=beit`: every Linear and conv weight, the CLS and mask tokens are normal(0, 0.02) cut at
    +-0.02 as data2vec_vision's trunc_normal_(a=-std, b=std): std 0.0108 (times BEiT's depth scaling for the
    residual outputs), values within the cut; biases 0 (the patch embedding's too)."""
    torch.manual_seed(0)
    model = Data2Vec(build_config("image-base", [*SIZE, "model.init=beit"]))
    want = truncated_std(0.02, 1.0)
    assert want == pytest.approx(0.010791, abs=1e-6)
    names = []
    for name, w in _initialised(model):
        _check(name, w, want * _scale(name), 0.02 * _scale(name))
        names.append(name)
    assert "student.frontend.patch_embed.weight" in names and "head.weight" in names
    assert "student.frontend.mask_token" in names and len(names) == 3 + 4 * 3 + 1
    assert not model.student.frontend.patch_embed.bias.any()


def test_normal_init_is_normal_002_and_a_xavier_patch_embedding():
    """`model.init=normal` (default; fairseq's init_bert_params draws normal(0, 0.02)): Linear weights and
    tokens std 0.02 with no cut to speak of, the patch embedding xavier-uniform over the flattened patch."""
    torch.manual_seed(0)
    model = Data2Vec(build_config("image-tiny", SIZE))
    for name, w in _initialised(model):
        if name.endswith("patch_embed.weight"):
            fan_in, fan_out = w[0].numel(), w.shape[0]
            bound = math.sqrt(6 / (fan_in + fan_out))
            _check(name, w, bound / math.sqrt(3), bound)
        else:
            _check(name, w, 0.02 * _scale(name))
            assert w.abs().max().item() > 0.04 * _scale(name), name  # beyond 2 std: not cut at one


def test_init_check_can_fail():
    """The statistics tell the schemes apart: a normal model's Linear weights fail the truncated std."""
    torch.manual_seed(0)
    model = Data2Vec(build_config("image-tiny", SIZE))
    name, w = next((n, w) for n, w in _initialised(model) if n.endswith("qkv.weight"))
    with pytest.raises(AssertionError):
        _check(name, w, truncated_std(0.02, 1.0), 0.02)
