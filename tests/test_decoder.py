"""The data2vec 2.0 conv decoder: our layout unchanged, fairseq's layout and text decoder, input dropout."""

import pytest
import torch
import torch.nn.functional as F

from data2vec.config import build_config
from data2vec.errors import Data2VecError
from data2vec.model import Data2Vec
from data2vec.nn.decoder import ConvDecoder


def block64(h, conv):
    """fairseq's decoder block in float64: conv (same padding) -> LayerNorm over channels, no affine -> GELU."""
    w, b = conv.weight.double(), conv.bias.double()
    h = F.conv1d(h, w, b, padding=w.shape[-1] // 2, groups=conv.groups)
    mean = h.mean(1, keepdim=True)
    var = h.var(1, unbiased=False, keepdim=True)
    h = (h - mean) / torch.sqrt(var + 1e-5)
    return 0.5 * h * (1 + torch.erf(h / 2 ** 0.5))


def fairseq_decoder64(dec, x, residual, proj):
    """fairseq's Decoder1d.forward (modules.py) in float64: no input projection; a block's input is added back
    only when `decoder_residual` and its width equals the block's output width; then the projection."""
    h = x.double().transpose(1, 2)
    for block in dec.blocks:
        out = block64(h, block.conv)
        h = out + h if residual and out.shape[1] == h.shape[1] else out
    h = h.transpose(1, 2)
    for layer in proj:
        h = F.linear(h, layer.weight.double(), layer.bias.double()) if isinstance(layer, torch.nn.Linear) else \
            0.5 * h * (1 + torch.erf(h / 2 ** 0.5))
    return h


def test_default_layout_is_the_old_one():
    torch.manual_seed(0)
    dec = ConvDecoder(8, 4, layers=2, kernel=3, groups=2, spatial_dims=1).double()
    keys = {"proj_in.weight", "proj_in.bias", "blocks.0.conv.weight", "blocks.0.conv.bias", "blocks.1.conv.weight",
            "blocks.1.conv.bias", "proj_out.weight", "proj_out.bias"}
    assert set(dec.state_dict()) == keys  # old checkpoints load
    x = torch.randn(2, 7, 8, dtype=torch.double)
    h = F.linear(x, dec.proj_in.weight, dec.proj_in.bias).transpose(1, 2)
    for block in dec.blocks:
        h = h + block64(h, block.conv)
    want = F.linear(h.transpose(1, 2), dec.proj_out.weight, dec.proj_out.bias)
    torch.testing.assert_close(dec(x), want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("dim,width,residual,proj_layers", [
    (8, 4, True, 1),    # fairseq v2 speech: decoder_dim 384 of 768, first conv without residual
    (8, 8, True, 1),    # fairseq v2 image: decoder_dim = D, every block residual
    (8, 8, False, 2),   # fairseq v2 text: decoder_residual false, projection_layers 2
])
def test_fairseq_layout_matches_a_float64_reference(dim, width, residual, proj_layers):
    torch.manual_seed(0)
    dec = ConvDecoder(dim, width, layers=3, kernel=5, groups=2, spatial_dims=1, input_proj=False,
                      residual=residual, proj_layers=proj_layers).eval()
    assert dec.proj_in is None and dec.blocks[0].conv.in_channels == dim
    proj = list(dec.proj_out) if proj_layers > 1 else [dec.proj_out]
    if proj_layers == 2:
        assert [p.weight.shape for p in proj[::2]] == [(2 * width, width), (dim, 2 * width)]
    x = torch.randn(3, 11, dim)
    torch.testing.assert_close(dec(x).double(), fairseq_decoder64(dec, x, residual, proj), atol=1e-5, rtol=1e-5)


def test_input_dropout_hits_encoder_outputs_only_and_only_in_training():
    torch.manual_seed(0)
    dec = ConvDecoder(8, 8, layers=1, kernel=3, groups=1, spatial_dims=1, input_dropout=0.5)
    seen = []
    dec.proj_in.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    x = torch.randn(4, 50, 8)
    masked = torch.rand(4, 50) < 0.5
    dec(x, None, masked)
    got = seen.pop()
    assert torch.equal(got[masked], x[masked])  # the noise at masked positions enters as it is
    visible = got[~masked]
    kept = visible != 0
    torch.testing.assert_close(visible[kept], 2 * x[~masked][kept])  # inverted dropout, p = 0.5
    assert 0.4 < 1 - kept.float().mean() < 0.6
    dec.eval()
    dec(x, None, masked)
    assert torch.equal(seen.pop(), x)


def test_zero_input_dropout_draws_nothing():
    dec = ConvDecoder(8, 8, layers=1, kernel=3, groups=1, spatial_dims=1)
    x = torch.randn(2, 5, 8)
    state = torch.get_rng_state()
    dec(x, None, torch.zeros(2, 5, dtype=torch.bool))
    assert torch.equal(torch.get_rng_state(), state)  # the old behaviour: same random stream afterwards


def test_model_trains_with_fairseq_text_decoder():
    cfg = build_config("text-tiny-v2", ["model.dim=32", "model.depth=2", "model.heads=2", "objective.top_k=2",
                                        "objective.decoder_dim=16", "objective.decoder_groups=4",
                                        "objective.decoder_input_proj=false", "objective.decoder_residual=false",
                                        "objective.decoder_proj_layers=2", "objective.decoder_input_dropout=0.1",
                                        "text.vocab_size=64"])
    torch.manual_seed(0)
    model = Data2Vec(cfg)
    ids = torch.randint(5, 64, (2, 20))
    mask = torch.rand(2, 4, 20) < 0.5
    out = model(ids, mask)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert model.decoder.blocks[0].conv.weight.grad is not None and model.decoder.proj_out[0].weight.shape == (32, 16)


@pytest.mark.parametrize("override,key", [("objective.decoder_proj_layers=0", "objective.decoder_proj_layers"),
                                          ("objective.decoder_input_dropout=1.0", "objective.decoder_input_dropout")])
def test_bad_decoder_settings_are_one_line_errors(override, key):
    with pytest.raises(Data2VecError, match=key.replace(".", r"\.")) as err:
        build_config("text-tiny-v2", [override])
    assert "\n" not in str(err.value)
