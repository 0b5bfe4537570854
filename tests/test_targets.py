import numpy as np
import pytest
import torch

from data2vec.targets import build_targets


def reference_targets(layers, top_k, per_layer, final, padding=None):
    """float64 numpy re-computation of the data2vec target recipe."""
    xs = [np.asarray(l, dtype=np.float64) for l in layers][-top_k:]
    keep = None if padding is None else ~np.asarray(padding)

    def norm(x, kind):
        if kind == "none":
            return x
        if kind == "layer":
            mu = x.mean(-1, keepdims=True)
            var = x.var(-1, keepdims=True)
            return (x - mu) / np.sqrt(var + 1e-5)
        out = np.zeros_like(x)
        for b in range(x.shape[0]):
            rows = x[b] if keep is None else x[b][keep[b]]
            mu, var = rows.mean(0), rows.var(0)
            normed = (x[b] - mu) / np.sqrt(var + 1e-5)
            out[b] = normed if keep is None else normed * keep[b][:, None]
        return out

    avg = sum(norm(x, per_layer) for x in xs) / top_k
    return norm(avg, final)


@pytest.mark.parametrize("per_layer,final", [("layer", "layer"), ("layer", "none"), ("instance", "none"),
                                             ("instance", "layer"), ("none", "none")])
def test_targets_match_float64_reference(per_layer, final):
    g = torch.Generator().manual_seed(0)
    layers = [torch.randn(3, 7, 16, generator=g) * (i + 1) + i for i in range(5)]
    got = build_targets(layers, 3, per_layer, final)
    want = reference_targets([l.numpy() for l in layers], 3, per_layer, final)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)


def test_instance_norm_ignores_padding():
    g = torch.Generator().manual_seed(1)
    layers = [torch.randn(2, 10, 8, generator=g) for _ in range(4)]
    padding = torch.zeros(2, 10, dtype=torch.bool)
    padding[1, 6:] = True
    garbage = [l.clone() for l in layers]
    for l in garbage:
        l[1, 6:] = 1e4  # what sits in padding must not change the real frames' targets
    a = build_targets(layers, 2, "instance", "none", padding)
    b = build_targets(garbage, 2, "instance", "none", padding)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    torch.testing.assert_close(a[0], b[0])
    want = reference_targets([l.numpy() for l in layers], 2, "instance", "none", padding.numpy())
    np.testing.assert_allclose(a.numpy(), want, rtol=1e-4, atol=1e-4)


def test_top_k_selects_the_top_layers():
    layers = [torch.full((1, 2, 4), float(i)) + torch.arange(4.0) * (i + 1) for i in range(6)]
    got = build_targets(layers, 2, "none", "none")
    torch.testing.assert_close(got, (layers[4] + layers[5]) / 2)


def test_bad_top_k_is_rejected():
    with pytest.raises(ValueError, match="top_k"):
        build_targets([torch.zeros(1, 2, 3)], 2)
