import pytest
import torch

from data2vec.ema import decay_at, ema_update


def test_decay_schedule_ends_and_midpoint():
    assert decay_at(0, 0.999, 0.9999, 30000) == pytest.approx(0.999)
    assert decay_at(15000, 0.999, 0.9999, 30000) == pytest.approx(0.99945)
    assert decay_at(30000, 0.999, 0.9999, 30000) == pytest.approx(0.9999)
    assert decay_at(10**6, 0.999, 0.9999, 30000) == pytest.approx(0.9999)


def test_constant_decay_without_annealing():
    assert decay_at(0, 0.5, 0.9998, 0) == 0.9998


def test_ema_update_matches_formula():
    g = torch.Generator().manual_seed(0)
    teacher = [torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)]
    student = [torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)]
    want = [0.9 * t + 0.1 * s for t, s in zip(teacher, student)]
    ema_update(teacher, student, 0.9)
    for got, w in zip(teacher, want):
        torch.testing.assert_close(got, w)


def test_zero_decay_copies_student():
    teacher, student = [torch.zeros(3)], [torch.arange(3.0)]
    ema_update(teacher, student, 0.0)
    torch.testing.assert_close(teacher[0], student[0])
