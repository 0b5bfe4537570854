"""The image front-end's fixed sin-cos positions, against MAE's `get_2d_sincos_pos_embed` (the function fairseq's
data2vec 2.0 image encoder calls) written out in float64 numpy."""

import numpy as np
import pytest
import torch

from data2vec.config import build_config, config_from_yaml_text, save_config
from data2vec.model import Data2VecEncoder
from data2vec.nn.image import sincos_pos_embed


def _mae_2d_sincos(embed_dim: int, grid_size: int) -> np.ndarray:
    """MAE's util/pos_embed.py, line by line: meshgrid(w, h) ('xy' indexing), the first half from grid[0]."""
    grid_h = np.arange(grid_size, dtype=np.float64)
    grid_w = np.arange(grid_size, dtype=np.float64)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, grid_size, grid_size])

    def one_d(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
        omega = 1.0 / 10000 ** omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)


def test_sincos_positions_match_mae_and_fairseq():
    ours = sincos_pos_embed(32, (5, 5))
    np.testing.assert_allclose(ours.numpy(), _mae_2d_sincos(32, 5), rtol=0, atol=1e-6)
    # patch 1 (row 0, column 1) differs from patch 0 in the first (x) half only
    assert not torch.equal(ours[1, :16], ours[0, :16]) and torch.equal(ours[1, 16:], ours[0, 16:])


def test_yx_order_swaps_the_halves():
    xy, yx = sincos_pos_embed(32, (4, 4), "xy"), sincos_pos_embed(32, (4, 4), "yx")
    assert torch.equal(yx, torch.cat([xy[:, 16:], xy[:, :16]], dim=1))
    with pytest.raises(ValueError, match="order"):
        sincos_pos_embed(32, (4, 4), "zz")


def test_front_end_uses_the_configured_order():
    small = ["model.dim=32", "model.depth=1", "model.heads=2", "image.image_size=16", "image.patch_size=4",
             "image.pos_embed=sincos"]
    for order in ("xy", "yx"):
        enc = Data2VecEncoder(build_config("image-tiny", small + [f"image.sincos_order={order}"]))
        torch.testing.assert_close(enc.frontend.pos_embed[0, 1:], sincos_pos_embed(32, (4, 4), order))


def test_config_saved_before_the_key_keeps_the_old_order(tmp_path, caplog):
    cfg = build_config("image-tiny")
    save_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text().replace("  sincos_order: xy\n", "")
    assert "sincos_order" not in text
    assert config_from_yaml_text(text).image.sincos_order == "yx"  # what the model was trained with
    assert "image.sincos_order=yx" in caplog.text
    assert config_from_yaml_text((tmp_path / "config.yaml").read_text()).image.sincos_order == "xy"


def test_embed_norm_normalises_the_tokens_before_the_first_block():
    """image.embed_norm: fairseq v2's context-encoder LayerNorm over CLS and patch tokens (positions added),
    recomputed in float64 from the patch embedding."""
    import torch.nn.functional as F

    small = ["model.dim=32", "model.depth=1", "model.heads=2", "image.image_size=16", "image.patch_size=4",
             "image.pos_embed=sincos", "model.norm_first=false"]
    torch.manual_seed(0)
    enc = Data2VecEncoder(build_config("image-tiny-v2", small + ["image.embed_norm=true"]))
    front = enc.frontend
    with torch.no_grad():
        front.embed_norm.weight.normal_()
        front.embed_norm.bias.normal_()
    images = torch.randn(2, 3, 16, 16)
    x, _, _ = front(images)
    patches = F.conv2d(images.double(), front.patch_embed.weight.double(), front.patch_embed.bias.double(),
                       stride=4).flatten(2).transpose(1, 2)
    tokens = torch.cat([front.cls_token.double().expand(2, -1, -1), patches + sincos_pos_embed(32, (4, 4)).double()],
                       dim=1)
    want = F.layer_norm(tokens, (32,), front.embed_norm.weight.double(), front.embed_norm.bias.double(), 1e-6)
    torch.testing.assert_close(x.double(), want, rtol=1e-5, atol=1e-5)
    plain = Data2VecEncoder(build_config("image-tiny-v2", small))
    assert plain.frontend.embed_norm is None and "embed_norm" not in str(plain)  # the default: BEiT / v1 layout
