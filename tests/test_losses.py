import math

import pytest
import torch

from data2vec.losses import regression_loss


def smooth_l1_by_hand(d, beta):
    d = abs(d)
    return 0.5 * d * d / beta if d < beta else d - 0.5 * beta


def test_smooth_l1_hand_example():
    pred = torch.tensor([[0.0, 1.0, 5.0], [2.0, -2.0, 0.5]])
    target = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    beta = 2.0
    rows = [sum(smooth_l1_by_hand(p - t, beta) for p, t in zip(pr, tr)) for pr, tr in zip(pred.tolist(), target.tolist())]
    # row 0: 0.25 + 0 + 4.0 ; row 1: 1.0 + 1.0 + 0.0625
    assert rows == [4.25, 2.0625]
    mean_rows = sum(rows) / 2
    assert regression_loss(pred, target, beta, "none").item() == pytest.approx(mean_rows)
    assert regression_loss(pred, target, beta, "mean").item() == pytest.approx(mean_rows / 3)
    assert regression_loss(pred, target, beta, "inv_sqrt_dim").item() == pytest.approx(mean_rows / math.sqrt(3))


def test_beta_zero_is_squared_error():
    pred = torch.tensor([[1.0, 3.0]])
    target = torch.tensor([[0.0, 0.0]])
    assert regression_loss(pred, target, 0.0, "none").item() == pytest.approx(10.0)


def test_no_masked_position_gives_zero_with_gradient():
    pred = torch.zeros(0, 4, requires_grad=True)
    loss = regression_loss(pred, torch.zeros(0, 4), 2.0, "mean")
    loss.backward()
    assert loss.item() == 0.0
