import math

import torch
import torch.nn.functional as F

from data2vec.config import EncoderConfig
from data2vec.nn.transformer import (
    ALiBi,
    Attention,
    Block,
    Encoder,
    alibi_slopes,
    window_bias,
)


def manual_attention(attn: Attention, x, bias=None):
    """Attention written out with explicit softmax, float64."""
    B, T, D = x.shape
    H = attn.heads
    w = attn.qkv.weight.double()
    b = torch.cat([attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias]).double()
    qkv = x.double() @ w.T + b
    q, k, v = qkv.split(D, dim=-1)
    q, k, v = (t.view(B, T, H, D // H).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(D // H)
    if bias is not None:
        scores = scores + bias.double()
    out = scores.softmax(-1) @ v
    out = out.transpose(1, 2).reshape(B, T, D)
    return out @ attn.proj.weight.double().T + attn.proj.bias.double()


def test_attention_matches_explicit_softmax():
    torch.manual_seed(0)
    attn = Attention(16, 4, "qv", 0.0, 0.0)
    torch.nn.init.normal_(attn.q_bias)
    torch.nn.init.normal_(attn.v_bias)
    x = torch.randn(2, 5, 16)
    bias = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(attn(x, bias).double(), manual_attention(attn, x, bias), atol=1e-5, rtol=1e-4)


def test_padding_does_not_change_real_tokens():
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(dim=16, depth=2, heads=2, norm_first=False))
    x = torch.randn(1, 4, 16)
    padded = torch.cat([x, torch.randn(1, 3, 16) * 100], dim=1)
    mask = torch.tensor([[False] * 4 + [True] * 3])
    a, _, _ = enc(x)
    b, _, _ = enc(padded, padding_mask=mask)
    torch.testing.assert_close(a, b[:, :4], atol=1e-5, rtol=1e-5)


def test_block_returns_ffn_before_last_residual():
    torch.manual_seed(0)
    for norm_first in (True, False):
        cfg = EncoderConfig(dim=8, depth=1, heads=2, norm_first=norm_first, layer_scale=0.5 if norm_first else 0.0)
        block = Block(cfg, 0.0).eval()
        x = torch.randn(2, 3, 8)
        out, ffn = block(x)
        if norm_first:
            mid = x + block.ls1(block.attn(block.norm1(x)))
            torch.testing.assert_close(ffn, block.ls2(block.mlp(block.norm2(mid))))
            torch.testing.assert_close(out, mid + ffn)
        else:
            mid = block.norm1(x + block.attn(x))
            torch.testing.assert_close(ffn, block.mlp(mid))
            torch.testing.assert_close(out, block.norm2(mid + ffn))


def test_per_layer_bias_list_is_used_per_block():
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(dim=8, depth=2, heads=2)).eval()
    x = torch.randn(1, 3, 8)
    zero = torch.zeros(1, 2, 3, 3)
    big = torch.zeros(1, 2, 3, 3)
    big[..., 0] = 50.0  # every query attends to token 0 only
    out_a, _, _ = enc(x, attn_bias=[zero, zero])
    out_b, _, _ = enc(x, attn_bias=[zero, big])
    out_c, _, _ = enc(x, attn_bias=zero)
    torch.testing.assert_close(out_a, out_c)
    assert not torch.allclose(out_a, out_b)


def test_drop_path_only_in_training():
    enc = Encoder(EncoderConfig(dim=8, depth=3, heads=2, drop_path=0.9))
    x = torch.randn(4, 3, 8)
    enc.eval()
    torch.testing.assert_close(enc(x)[0], enc(x)[0])
    enc.train()
    torch.manual_seed(0)
    a = enc(x)[0]
    torch.manual_seed(1)
    assert not torch.allclose(a, enc(x)[0])


def test_grad_checkpoint_gives_the_same_gradients():
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(dim=16, depth=3, heads=2))
    x = torch.randn(2, 5, 16)
    enc(x)[0].sum().backward()
    plain = [p.grad.clone() for p in enc.parameters()]
    enc.zero_grad()
    enc.grad_checkpoint = True
    enc(x)[0].sum().backward()
    for a, p in zip(plain, enc.parameters()):
        torch.testing.assert_close(a, p.grad)


def test_cpu_autocast_runs_attention_itself_in_fp32():
    """bf16 flash attention on CPU is 2-4x slower than fp32, so under CPU autocast SDPA gets fp32 inputs; the
    block still hands bf16 to the next product and agrees with an fp32 run to bf16 rounding."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class SdpaDtypes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.dtypes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if "scaled_dot_product" in str(func) and "backward" not in str(func):
                self.dtypes.append(args[0].dtype)
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    attn = Attention(32, 4, "qv", 0.0, 0.0)
    x = torch.randn(2, 10, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16), SdpaDtypes() as seen:
        out = attn(x)
    assert seen.dtypes == [torch.float32] and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), attn(x), atol=3e-2, rtol=3e-2)


def test_layer_drop_skips_whole_blocks_in_training_only():
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(dim=16, depth=6, heads=2, layer_drop=0.3, final_norm=False))
    ran = []
    for i, block in enumerate(enc.blocks):
        block.register_forward_hook(lambda mod, args, out, i=i: ran.append(i))
    x = torch.randn(2, 5, 16)
    counts = 0
    for _ in range(200):
        ran.clear()
        out, outputs, taps = enc(x)
        done = list(ran)
        want = x
        for i in done:  # the blocks that ran, composed in order: a skipped block passes its input on unchanged
            want = enc.blocks[i](want)[0]
        torch.testing.assert_close(out, want)
        assert len(outputs) == len(taps) == len(done)
        counts += len(done)
    assert abs(1 - counts / (200 * 6) - 0.3) < 0.05  # 1,200 draws: the skipped share is p within 3 sigma
    enc.eval()
    ran.clear()
    enc(x)
    assert ran == list(range(6))


def test_no_layer_drop_draws_no_random_numbers():
    enc = Encoder(EncoderConfig(dim=16, depth=3, heads=2))  # dropout 0, drop path 0, layer drop 0
    x = torch.randn(2, 5, 16)
    state = torch.get_rng_state()
    enc(x)
    assert torch.equal(torch.get_rng_state(), state)  # the random stream of runs without it is unchanged


def fairseq_slopes(n):
    """fairseq's get_slopes (examples/data2vec/models/modalities/base.py, get_alibi), as written there."""
    def power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        ratio = start
        return [start * ratio**i for i in range(n)]
    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + fairseq_slopes(2 * closest)[0::2][: n - closest]


def fairseq_alibi64(T, heads, scale):
    """fairseq's get_alibi(dims=1) times its learned per-head alibi_scale clamped at 0, float64 [H, T, T]."""
    pos = torch.arange(T, dtype=torch.float64)
    pos_bias = -(pos[None] - pos[:, None]).abs()
    slopes = torch.tensor(fairseq_slopes(heads), dtype=torch.float64)
    return slopes[:, None, None] * pos_bias[None] * scale.double().clamp(min=0)[:, None, None]


def test_alibi_slopes_are_fairseqs():
    assert alibi_slopes(8) == [2.0 ** -i for i in range(1, 9)]  # the ALiBi paper's 8-head example
    for heads in range(1, 25):
        assert alibi_slopes(heads) == fairseq_slopes(heads)


def test_alibi_bias_matches_fairseq_and_follows_dropped_tokens():
    alibi = ALiBi(12)  # 12 heads, not a power of two, as the Base model
    with torch.no_grad():
        alibi.scale.copy_(torch.tensor([1.0, 0.5, -0.3, 2.0] * 3))  # a negative scale acts as 0 (clamped)
    full = fairseq_alibi64(10, 12, alibi.scale)
    torch.testing.assert_close(alibi(torch.arange(10)[None])[0].double(), full, atol=1e-6, rtol=1e-6)
    kept = torch.tensor([[0, 3, 4, 8], [1, 2, 5, 9]])  # the student's visible frames: fairseq's masked_alibi
    got = alibi(kept)
    for b in range(2):
        torch.testing.assert_close(got[b].double(), full[:, kept[b]][:, :, kept[b]], atol=1e-6, rtol=1e-6)


def test_alibi_encoder_on_visible_tokens_equals_full_sequence_with_the_rest_hidden():
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(dim=16, depth=2, heads=4, norm_first=False, alibi=True)).eval()
    with torch.no_grad():
        enc.alibi.scale.copy_(torch.tensor([1.0, 0.5, 2.0, 0.7]))
    x = torch.randn(1, 9, 16)
    vis = torch.tensor([[0, 2, 3, 7]])
    hidden = torch.ones(1, 9, dtype=torch.bool)
    hidden[0, vis[0]] = False
    # keys of hidden tokens masked out: every visible token attends to the visible ones at their true distances
    full, _, _ = enc(x, padding_mask=hidden)
    alone, _, _ = enc(x[:, vis[0]], positions=vis)
    torch.testing.assert_close(alone, full[:, vis[0]], atol=1e-5, rtol=1e-5)
    shifted, _, _ = enc(x[:, vis[0]])  # positions 0..3 instead: a different bias, a different output
    assert (shifted - alone).abs().max() > 1e-3


def test_alibi_scale_learns_and_off_means_no_parameter():
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(dim=16, depth=2, heads=4, alibi=True))
    x, w = torch.randn(2, 7, 16), torch.randn(2, 7, 16)
    (enc(x)[0] * w).sum().backward()
    assert enc.alibi.scale.grad is not None and enc.alibi.scale.grad.abs().min() > 0
    assert "alibi.slopes" not in enc.state_dict()  # fixed: recomputed, never stored
    plain = Encoder(EncoderConfig(dim=16, depth=2, heads=4))
    assert plain.alibi is None and not any("alibi" in name for name in plain.state_dict())


def test_activation_dropout_defaults_to_dropout_and_can_differ():
    same = Block(EncoderConfig(dim=16, heads=2, dropout=0.1), 0.0)
    assert same.mlp.drop.p == 0.1 and same.drop.p == 0.1 and same.attn.proj_drop.p == 0.1  # as before
    fairseq = Block(EncoderConfig(dim=16, heads=2, dropout=0.1, activation_dropout=0.0), 0.0)
    assert fairseq.mlp.drop.p == 0.0 and fairseq.drop.p == 0.1 and fairseq.attn.proj_drop.p == 0.1
    fairseq.train()
    x = torch.randn(2, 5, 16)
    hidden = F.gelu(fairseq.mlp.fc1(x))
    torch.testing.assert_close(fairseq.mlp(x), fairseq.mlp.fc2(hidden))  # no dropout on the hidden units


def test_attention_tap_is_the_attention_sublayer_output_before_its_residual():
    for norm_first in (False, True):  # post-LN (speech, text) and pre-LN with layer scale (images)
        torch.manual_seed(0)
        block = Block(EncoderConfig(dim=16, depth=1, heads=4, norm_first=norm_first, layer_scale=0.5 * norm_first),
                      0.0).double().eval()
        torch.nn.init.normal_(block.attn.q_bias)
        torch.nn.init.normal_(block.attn.v_bias)
        x = torch.randn(2, 5, 16, dtype=torch.float64)
        seen = block.norm1(x) if norm_first else x
        scale = block.ls1.gamma if norm_first else 1.0
        out, tapped = block(x, tap="attn")
        torch.testing.assert_close(tapped, manual_attention(block.attn, seen) * scale)
        torch.testing.assert_close(out, block(x)[0])  # the block's output does not depend on the tap


def test_window_bias_equals_running_each_window_by_hand():
    """A 1-D teacher limited to +-w positions: each layer's output at t is that layer run alone on t's window."""
    torch.manual_seed(0)
    T, w = 9, 2
    enc = Encoder(EncoderConfig(dim=16, depth=2, heads=4, norm_first=False)).double().eval()
    x = torch.randn(2, T, 16, dtype=torch.float64)
    last, _, _ = enc(x, attn_bias=window_bias(0, (T,), w))
    h = x
    for block in enc.blocks:
        h = torch.stack([block(h[:, max(t - w, 0):t + w + 1])[0][:, t - max(t - w, 0)] for t in range(T)], dim=1)
    torch.testing.assert_close(last, h)
    assert not torch.allclose(last, enc(x)[0])  # the whole-input teacher differs


def test_window_bias_on_a_patch_grid_hides_cls_and_far_patches():
    """Images: a patch sees the patches within w rows and columns, not the CLS token; CLS sees everything."""
    torch.manual_seed(0)
    side, w = 4, 1
    enc = Encoder(EncoderConfig(dim=16, depth=1, heads=4, norm_first=True)).double().eval()
    x = torch.randn(1, 1 + side * side, 16, dtype=torch.float64)
    _, outputs, _ = enc(x, attn_bias=window_bias(1, (side, side), w))
    block = enc.blocks[0]
    for r in range(side):
        for c in range(side):
            near = [1 + i * side + j for i in range(side) for j in range(side) if max(abs(i - r), abs(j - c)) <= w]
            alone = block(x[:, near])[0]  # no position bias: attention over a set, order free
            torch.testing.assert_close(outputs[0][:, 1 + r * side + c], alone[:, near.index(1 + r * side + c)])
    torch.testing.assert_close(outputs[0][:, 0], block(x)[0][:, 0])


def test_window_bias_keeps_padded_rows_finite():
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(dim=16, depth=2, heads=4, norm_first=False)).eval()
    padding = torch.tensor([[False] * 4 + [True] * 6])  # padded queries far from any real frame
    x = torch.randn(1, 10, 16)
    last, _, _ = enc(x, padding_mask=padding, attn_bias=window_bias(0, (10,), 1, padding))
    assert torch.isfinite(last).all()
    alone, _, _ = enc(x[:, :4], attn_bias=window_bias(0, (4,), 1))
    torch.testing.assert_close(last[:, :4], alone)  # padding changes no real frame
