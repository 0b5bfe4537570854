"""The speech front-end (nn/audio.py): frame counts, padding, the channels-last conv, HF Data2VecAudio layout."""

import pytest
import torch
import torch.nn.functional as F

from data2vec.config import AudioConfig, EncoderConfig, build_config
from data2vec.model import Data2VecEncoder
from data2vec.nn.audio import AudioFrontend, ConvLayer, FeatureEncoder, conv_output_length, receptive_field

KERNELS, STRIDES = [10, 3, 3, 3, 3, 2, 2], [5, 2, 2, 2, 2, 2, 2]
TINY = ["model.dim=32", "model.depth=2", "model.heads=4", "audio.conv_dim=[8,8,8,8,8,8,8]",
        "audio.pos_conv_layers=3", "audio.pos_conv_kernel=5", "audio.pos_conv_groups=4", "objective.top_k=2"]

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def encoder(*extra):
    torch.manual_seed(0)
    return Data2VecEncoder(build_config("audio-tiny", [*TINY, *extra])).eval()


def test_receptive_field_and_frame_rate_are_wav2vec2s():
    assert receptive_field(KERNELS, STRIDES) == 400  # 25 ms at 16 kHz
    assert conv_output_length(400, KERNELS, STRIDES) == 1
    assert conv_output_length(399, KERNELS, STRIDES) == 0
    assert conv_output_length(16000, KERNELS, STRIDES) == 49  # one frame per 20 ms


def test_conv_output_lengths_match_the_formula_for_many_lengths():
    torch.manual_seed(0)
    fe = FeatureEncoder(AudioConfig(conv_dim=[2] * 7)).eval()
    lengths = list(range(400, 1400, 23)) + [1599, 1600, 1601, 3333, 16000, 16001, 16319, 16320, 16321]
    lengths += torch.randint(400, 40000, (10,), generator=torch.Generator().manual_seed(1)).tolist()
    as_tensor = conv_output_length(torch.tensor(lengths), KERNELS, STRIDES)
    with torch.no_grad():
        for i, n in enumerate(lengths):
            expected = n
            for k, s in zip(KERNELS, STRIDES):
                expected = (expected - k) // s + 1
            frames = fe(torch.randn(1, n)).shape[1]
            assert frames == expected == conv_output_length(n, KERNELS, STRIDES) == int(as_tensor[i]), n


def test_channels_last_conv_equals_conv1d_layer_norm_gelu_in_float64():
    torch.manual_seed(0)
    layer = ConvLayer(3, 5, kernel=3, stride=2, bias=True).double()
    torch.nn.init.normal_(layer.layer_norm.weight)
    torch.nn.init.normal_(layer.layer_norm.bias)
    x = torch.randn(2, 3, 41, dtype=torch.float64)  # [B, C, T]
    ref = F.conv1d(x, layer.conv.weight, layer.conv.bias, stride=2).transpose(1, 2)
    ref = F.gelu(F.layer_norm(ref, (5,), layer.layer_norm.weight, layer.layer_norm.bias))
    torch.testing.assert_close(layer(x.transpose(1, 2)), ref, rtol=1e-12, atol=1e-12)


def test_frame_padding_follows_sample_padding():
    fe = encoder().frontend
    padding = torch.zeros(3, 16000, dtype=torch.bool)
    padding[1, 8000:] = True
    padding[2, 399:] = True
    frames = fe.frame_padding(padding, 49)
    assert (~frames).sum(1).tolist() == [49, conv_output_length(8000, KERNELS, STRIDES), 0]


def test_padding_does_not_change_real_frames_however_much_there_is():
    enc = encoder()
    wave = torch.randn(1, 9000)
    alone = enc(wave)
    for total in (9500, 15000):
        batch = torch.randn(2, total)  # row 1 is another utterance of full length
        batch[0, :9000] = wave[0]
        batch[0, 9000:] = 5.0  # garbage in the padding must not matter
        padding = torch.zeros(2, total, dtype=torch.bool)
        padding[0, 9000:] = True
        out = enc(batch, padding_mask=padding)
        n = alone.last_hidden_state.shape[1]
        assert out.padding_mask[0].sum() == out.padding_mask.shape[1] - n
        torch.testing.assert_close(out.last_hidden_state[0, :n], alone.last_hidden_state[0], atol=2e-5, rtol=1e-4)
        for tap, ref in zip(out.layer_results, alone.layer_results):
            torch.testing.assert_close(tap[0, :n], ref[0], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(enc.embed(batch, padding)[0], alone.last_hidden_state[0].mean(0),
                                   atol=2e-5, rtol=1e-4)


def test_masked_frames_get_the_mask_embedding_only_where_masked():
    enc = encoder()
    wave = torch.randn(2, 8000)
    mask = torch.zeros(2, 24, dtype=torch.bool)
    mask[0, 5:15] = True
    clean, masked = enc(wave).hidden_states[0], enc(wave, mask=mask).hidden_states[0]
    assert torch.equal(clean[1], masked[1])
    assert not torch.allclose(clean[0, 5:15], masked[0, 5:15])


def test_front_end_has_the_hf_data2vec_audio_parameter_layout():
    fe = AudioFrontend(AudioConfig(), EncoderConfig(dim=768, norm_first=False, qkv_bias="all"))
    shapes = {n: tuple(p.shape) for n, p in fe.named_parameters()}
    assert shapes["feature_extractor.conv_layers.0.conv.weight"] == (512, 1, 10)
    assert shapes["feature_extractor.conv_layers.6.conv.weight"] == (512, 512, 2)
    assert "feature_extractor.conv_layers.0.conv.bias" not in shapes  # conv_bias false
    assert shapes["feature_projection.layer_norm.weight"] == (512,)
    assert shapes["feature_projection.projection.weight"] == (768, 512)
    assert shapes["pos_conv_embed.layers.4.conv.weight"] == (768, 48, 19)  # 5 layers, kernel 19, 16 groups
    assert "pos_conv_embed.layers.5.conv.weight" not in shapes
    assert shapes["masked_spec_embed"] == (768,) and shapes["layer_norm.weight"] == (768,)
    assert len(shapes) == 7 * 3 + 4 + 5 * 2 + 1 + 2  # no parameters in the positional convs' LayerNorms


def _hf_state_dict(enc: Data2VecEncoder) -> dict[str, torch.Tensor]:
    """Our weights under HF Data2VecAudioModel names (what the interop converter does)."""
    sd = {}
    for name, value in enc.frontend.state_dict().items():
        prefix = "encoder." if name.startswith(("pos_conv_embed.", "layer_norm.")) else ""
        sd[prefix + name] = value
    for i, block in enumerate(enc.encoder.blocks):
        p = f"encoder.layers.{i}."
        for part, w, b in zip("qkv", block.attn.qkv.weight.chunk(3), block.attn.qkv.bias.chunk(3)):
            sd[f"{p}attention.{part}_proj.weight"], sd[f"{p}attention.{part}_proj.bias"] = w, b
        pairs = {"attention.out_proj": block.attn.proj, "layer_norm": block.norm1, "final_layer_norm": block.norm2,
                 "feed_forward.intermediate_dense": block.mlp.fc1, "feed_forward.output_dense": block.mlp.fc2}
        for hf, module in pairs.items():
            sd[f"{p}{hf}.weight"], sd[f"{p}{hf}.bias"] = module.weight, module.bias
    return sd


@pytest.fixture
def hf_matmul():
    """F.linear for our products too, as in transformers: the tolerances below then check the layout, not how
    two GEMM kernels round (oneDNN, which data2vec.nn.linear may pick on CPU, differs from MKL by ~1e-5)."""
    from data2vec.nn import linear

    linear.set_cpu_matmul("default")
    yield
    linear.set_cpu_matmul("auto")


def test_matches_hugging_face_data2vec_audio_exactly_without_padding(hf_matmul):
    transformers = pytest.importorskip("transformers")
    enc = encoder("model.qkv_bias=all", "model.norm_first=false", "model.final_norm=false")
    hc = transformers.Data2VecAudioConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, conv_dim=(8,) * 7,
        conv_kernel=KERNELS, conv_stride=STRIDES, num_conv_pos_embeddings=3, conv_pos_kernel_size=5,
        num_conv_pos_embedding_groups=4, layer_norm_eps=1e-5, hidden_dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0)
    hf = transformers.Data2VecAudioModel(hc).eval()
    missing, unexpected = hf.load_state_dict(_hf_state_dict(enc), strict=False)
    assert not missing and unexpected == ["masked_spec_embed"]  # HF builds it only when masking in training
    wave = torch.randn(2, 12345, dtype=torch.float64)
    with torch.no_grad():  # float64: this checks the layout, not how a CPU's fp32 kernels round (they differ)
        ours = enc.double()(wave)
        theirs = hf.double()(wave, output_hidden_states=True)
    torch.testing.assert_close(ours.last_hidden_state, theirs.last_hidden_state, atol=1e-7, rtol=1e-5)
    for a, b in zip(ours.hidden_states, theirs.hidden_states):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)
