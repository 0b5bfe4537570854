"""Classifier metrics against hand-worked examples and scikit-learn."""

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score as sk_f1
from sklearn.metrics import matthews_corrcoef as sk_mcc
from sklearn.metrics import top_k_accuracy_score

from data2vec.evaluation.metrics import (accuracy, classification_metrics, confusion_matrix, f1_score,
                                         matthews_corrcoef, top_k_accuracy)


def test_binary_metrics_match_a_hand_example():
    # labels 1 1 1 0 0 0, predictions 1 1 0 1 0 0: tp 2, fn 1, fp 1, tn 2
    labels, pred = torch.tensor([1, 1, 1, 0, 0, 0]), torch.tensor([1, 1, 0, 1, 0, 0])
    assert confusion_matrix(pred, labels, 2).tolist() == [[2, 1], [1, 2]]
    assert accuracy(pred, labels) == pytest.approx(4 / 6)
    assert f1_score(pred, labels, 2) == pytest.approx(2 / 3)  # precision 2/3, recall 2/3
    assert matthews_corrcoef(pred, labels, 2) == pytest.approx((2 * 2 - 1 * 1) / 9)  # (tp tn - fp fn) / sqrt(3^4)


def test_top5_counts_a_label_among_the_five_largest_logits():
    logits = torch.tensor([[9.0, 8, 7, 6, 5, 4, 3], [9.0, 8, 7, 6, 5, 4, 3]])
    assert top_k_accuracy(logits, torch.tensor([4, 5]), 5) == 0.5  # class 4 is 5th largest, class 5 is 6th
    assert top_k_accuracy(logits[:, :3], torch.tensor([2, 2]), 5) == 1.0  # fewer classes than k


@pytest.mark.parametrize("num_classes", [2, 3, 7])
def test_metrics_match_scikit_learn(num_classes):
    g = torch.Generator().manual_seed(num_classes)
    labels = torch.randint(num_classes, (300,), generator=g)
    logits = torch.randn(300, num_classes, generator=g) + 1.5 * torch.nn.functional.one_hot(labels, num_classes)
    pred = logits.argmax(1)
    got = classification_metrics(logits, labels)
    y, p = labels.numpy(), pred.numpy()
    assert got["accuracy"] == pytest.approx(float((y == p).mean()))
    assert got["f1"] == pytest.approx(sk_f1(y, p, average="binary" if num_classes == 2 else "macro"))
    assert got["mcc"] == pytest.approx(sk_mcc(y, p))
    if num_classes > 5:
        assert got["top5"] == pytest.approx(top_k_accuracy_score(y, logits.numpy(), k=5))
    else:
        assert "top5" not in got


def test_macro_f1_leaves_out_classes_neither_present_nor_predicted():
    labels, pred = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])  # class 2 never occurs
    assert f1_score(torch.tensor(pred), torch.tensor(labels), 3) == pytest.approx(sk_f1(labels, pred, average="macro"))


def test_mcc_is_zero_when_every_prediction_is_one_class():
    assert matthews_corrcoef(torch.zeros(5, dtype=torch.long), torch.tensor([0, 1, 0, 1, 1]), 2) == 0.0


def test_best_checkpoint_comparison_knows_direction_and_breaks_wer_ties_with_cer():
    from data2vec.evaluation.classify import better

    assert better("accuracy", {"accuracy": 0.6}, {"accuracy": 0.5}) and not better("mcc", {"mcc": 0.1}, {"mcc": 0.2})
    assert better("wer", {"wer": 0.3, "cer": 0.2}, {"wer": 0.4, "cer": 0.1})  # lower is better
    assert better("wer", {"wer": 1.0, "cer": 0.5}, {"wer": 1.0, "cer": 0.9})  # tie on WER: CER decides
    assert not better("accuracy", {"accuracy": 0.5}, {"accuracy": 0.5}) and better("f1", {"f1": 0.0}, None)
