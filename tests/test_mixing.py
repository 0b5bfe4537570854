"""Label smoothing, mixup and cutmix: targets stay distributions and follow the mixed pixels."""

import pytest
import torch

from data2vec.finetuning.mixing import cutmix_box, mix_batch, smooth_one_hot


def test_smoothed_targets_put_the_rest_on_the_label():
    t = smooth_one_hot(torch.tensor([2, 0]), 4, smoothing=0.1)
    assert t[0].tolist() == pytest.approx([0.025, 0.025, 0.925, 0.025])
    assert t.sum(1).tolist() == pytest.approx([1.0, 1.0])


def test_mixup_blends_images_and_targets_with_the_same_weight():
    images = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 4, 4)
    targets = smooth_one_hot(torch.tensor([0, 1, 2, 3]), 4)
    mixed, soft, lam = mix_batch(images, targets, torch.Generator().manual_seed(0), mixup=0.8)
    assert 0.0 < lam < 1.0
    torch.testing.assert_close(mixed[0], images[0] * lam + images[3] * (1 - lam))
    assert soft[0].tolist() == pytest.approx([lam, 0, 0, 1 - lam])


def test_cutmix_target_weight_is_the_share_of_pixels_kept():
    images = torch.zeros(2, 3, 16, 16)
    images[1] = 1.0
    targets = smooth_one_hot(torch.tensor([0, 1]), 2)
    for seed in range(5):
        mixed, soft, lam = mix_batch(images, targets, torch.Generator().manual_seed(seed), cutmix=1.0)
        pasted = mixed[0, 0].mean().item()  # sample 0 is zeros; pasted pixels come from sample 1 (ones)
        assert soft[0, 1].item() == pytest.approx(pasted) and lam == pytest.approx(1 - pasted)


def test_mixing_is_a_function_of_the_generator_and_off_by_default():
    images, targets = torch.randn(4, 3, 8, 8), smooth_one_hot(torch.tensor([0, 1, 2, 3]), 4)
    a = mix_batch(images, targets, torch.Generator().manual_seed(3), mixup=0.8, cutmix=1.0)
    b = mix_batch(images, targets, torch.Generator().manual_seed(3), mixup=0.8, cutmix=1.0)
    torch.testing.assert_close(a[0], b[0])
    assert a[2] == b[2]
    same, soft, lam = mix_batch(images, targets, torch.Generator().manual_seed(3))
    assert same is images and soft is targets and lam == 1.0


def test_cutmix_box_stays_inside_the_image():
    g = torch.Generator().manual_seed(1)
    for lam in (0.0, 0.3, 0.9):
        top, bottom, left, right = cutmix_box(10, 12, lam, g)
        assert 0 <= top <= bottom <= 10 and 0 <= left <= right <= 12
