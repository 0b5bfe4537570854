"""The Transformer encoder shared by every modality.

One block class covers both layouts data2vec needs: pre-LN (ViT / BEiT, with optional layer scale) and post-LN
(wav2vec 2.0, RoBERTa). Each block also hands back its FFN output before the last residual, which is the
data2vec target tap for speech and text, so the teacher gets all taps in a single pass.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from data2vec.config import EncoderConfig
from data2vec.nn.linear import Linear


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch for whole samples during training."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)


class LayerScale(nn.Module):
    """Per-channel learned scale of a residual branch (CaiT / BEiT); starts small so deep nets train."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Attention(nn.Module):
    """Multi-head self-attention with one fused QKV projection, computed by SDPA (the projections are
    :class:`data2vec.nn.linear.Linear`, built with the fastest fp32 CPU kernel).

    `qkv_bias="qv"` keeps biases on queries and values only (the key bias cancels in softmax), which is the
    BEiT / Hugging Face Data2VecVision layout.
    """

    def __init__(self, dim: int, heads: int, qkv_bias: str, attn_dropout: float, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"model.dim={dim} must be divisible by model.heads={heads}")
        self.heads = heads
        self.qkv = Linear(dim, 3 * dim, bias=qkv_bias == "all")
        if qkv_bias == "qv":
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.proj = Linear(dim, dim)
        self.attn_dropout = attn_dropout
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, attn_bias: Tensor | None = None) -> Tensor:
        """x `[B, T, D]`; attn_bias additive `[B or 1, H or 1, T, T]` (or a bool mask, True = attend)."""
        B, T, D = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = self.qkv(x, bias)  # [B, T, 3D]; the layer's own bias when `bias` is None
        q, k, v = qkv.view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # 3 x [B, H, T, Dh]
        dropout = self.attn_dropout if self.training else 0.0
        dtype = q.dtype
        fp32 = q.device.type == "cpu" and dtype != torch.float32
        if fp32:
            # CPU flash attention is 2-4x slower in bf16 than in fp32 (its backward above all) at our sequence
            # lengths (BENCHMARKS.md), so under CPU autocast the attention itself runs in fp32.
            q, k, v = q.float(), k.float(), v.float()
        if attn_bias is not None and attn_bias.dtype != torch.bool:
            attn_bias = attn_bias.to(q.dtype)
        with torch.autocast("cpu", enabled=False) if fp32 else contextlib.nullcontext():
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=dropout).to(dtype)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, T, D)))


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout (`activation_dropout`) -> fc2."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.fc2 = Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.drop(F.gelu(self.fc1(x))))


class Block(nn.Module):
    """One Transformer block; returns (output, FFN output before the last residual)."""

    def __init__(self, cfg: EncoderConfig, drop_path: float) -> None:
        super().__init__()
        self.norm_first = cfg.norm_first
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg.dim, cfg.heads, cfg.qkv_bias, cfg.attn_dropout, cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        activation_dropout = cfg.dropout if cfg.activation_dropout is None else cfg.activation_dropout
        self.mlp = Mlp(cfg.dim, int(cfg.dim * cfg.mlp_ratio), activation_dropout)
        use_scale = cfg.layer_scale > 0
        self.ls1 = LayerScale(cfg.dim, cfg.layer_scale) if use_scale else nn.Identity()
        self.ls2 = LayerScale(cfg.dim, cfg.layer_scale) if use_scale else nn.Identity()
        self.drop_path = DropPath(drop_path)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, attn_bias: Tensor | None = None, tap: str = "ffn") -> tuple[Tensor, Tensor]:
        """-> (block output, tap): the FFN output before the last residual, or with `tap="attn"` the
        self-attention sublayer's output before its residual (data2vec's Table 5 ablation)."""
        if self.norm_first:
            attn = self.ls1(self.attn(self.norm1(x), attn_bias))
            x = x + self.drop_path(attn)
            ffn = self.ls2(self.mlp(self.norm2(x)))
            return x + self.drop_path(self.drop(ffn)), attn if tap == "attn" else ffn
        attn = self.ls1(self.attn(x, attn_bias))
        x = self.norm1(x + self.drop_path(attn))
        ffn = self.ls2(self.mlp(x))
        return self.norm2(x + self.drop_path(self.drop(ffn))), attn if tap == "attn" else ffn


def alibi_slopes(heads: int) -> list[float]:
    """ALiBi's per-head slopes (Press et al., 2022; fairseq's `get_alibi` in `modalities/base.py`): for n heads,
    n a power of two, the geometric sequence 2^(-8/n), 2^(-16/n), ...; otherwise those of the largest power of
    two below n, then every other slope of twice that power, until there are n."""
    if math.log2(heads).is_integer():
        start = 2 ** (-(2 ** -(math.log2(heads) - 3)))
        return [start * start**i for i in range(heads)]
    below = 2 ** math.floor(math.log2(heads))
    return alibi_slopes(below) + alibi_slopes(2 * below)[0::2][: heads - below]


class ALiBi(nn.Module):
    """Attention with linear biases over 1-D positions and a learned scale per head, as data2vec 2.0 speech
    (fairseq's `use_alibi_encoder` with `learned_alibi_scale_per_head`): head h adds
    ``-slope_h * max(scale_h, 0) * |p_i - p_j|`` to the attention logits of tokens at positions p_i, p_j. The
    scale starts at 1 and is clamped at 0 in the forward, as fairseq's. Positions are indices in the unmasked
    sequence, so a student that sees only visible tokens keeps their true distances."""

    def __init__(self, heads: int) -> None:
        super().__init__()
        self.register_buffer("slopes", torch.tensor(alibi_slopes(heads)), persistent=False)
        self.scale = nn.Parameter(torch.ones(heads))

    def forward(self, positions: Tensor) -> Tensor:
        """positions int `[B or 1, N]` -> additive float32 bias `[B or 1, H, N, N]`."""
        distance = (positions[:, :, None] - positions[:, None, :]).abs().float()  # [B, N, N]
        slopes = self.slopes * self.scale.float().clamp(min=0)  # [H]
        return -distance[:, None] * slopes[None, :, None, None]


def padding_bias(padding_mask: Tensor | None, attn_bias: Tensor | None) -> Tensor | None:
    """Combine a key padding mask `[B, T]` (True = padding) with an additive bias into one SDPA mask."""
    if padding_mask is None:
        return attn_bias
    keep = ~padding_mask[:, None, None, :]  # [B, 1, 1, T]
    if attn_bias is None:
        return keep
    return attn_bias.masked_fill(~keep, float("-inf"))


def window_bias(n_prefix: int, shape: tuple[int, ...], window: int, padding_mask: Tensor | None = None,
                device: torch.device | None = None) -> Tensor:
    """Additive attention bias `[B or 1, 1, T, T]` that limits each token to the tokens within `window` positions
    of it (a 1-D sequence of `shape=(N,)`, or a patch grid of `shape=(H, W)`: within `window` rows and
    columns), for data2vec's local-target ablation (a teacher that sees only part of the input, paper Figure 3).
    The `n_prefix` tokens before them (CLS) are hidden from the others and themselves see everything (nothing
    reads their output); padded queries (`padding_mask` `[B, T]` over prefix and tokens) see everything too, so
    no row is all -inf (their outputs are never used)."""
    coords = torch.stack(torch.meshgrid(*(torch.arange(n, device=device) for n in shape), indexing="ij"), -1)
    coords = coords.reshape(-1, len(shape))  # [N, dims]
    near = (coords[:, None] - coords[None, :]).abs().amax(-1) <= window  # [N, N]
    T = n_prefix + near.shape[0]
    allowed = torch.zeros(T, T, dtype=torch.bool, device=device)
    allowed[:n_prefix] = True
    allowed[n_prefix:, n_prefix:] = near
    allowed = allowed[None, None]  # [1, 1, T, T]
    if padding_mask is not None:
        allowed = allowed | padding_mask[:, None, :, None]
    return torch.zeros(allowed.shape, device=device).masked_fill(~allowed, float("-inf"))


class Encoder(nn.Module):
    """A stack of blocks; modality-agnostic (front-ends build the tokens and any attention bias)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(Block(cfg, rate) for rate in rates)
        self.layer_drop = cfg.layer_drop
        self.alibi = ALiBi(cfg.heads) if cfg.alibi else None
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps) if cfg.norm_first and cfg.final_norm else nn.Identity()
        self.grad_checkpoint = False  # set by the trainer: trade compute for activation memory

    def forward(
        self,
        x: Tensor,
        padding_mask: Tensor | None = None,
        attn_bias: Tensor | list[Tensor] | None = None,
        positions: Tensor | None = None,
        tap: str = "ffn",
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """x `[B, T, D]` -> (final output, block outputs, taps), lists bottom to top; the taps are each block's
        FFN output before the last residual, or its self-attention output with `tap="attn"` (see `Block`).

        `attn_bias` is one additive bias for all blocks or one per block (per-layer relative positions).
        `positions` int `[B or 1, T]`: each token's index in the unmasked sequence, for ALiBi (`model.alibi`;
        default 0..T-1, ignored without ALiBi), which is added to every block's bias.
        With `layer_drop` > 0, training skips each block with that probability (drawn from torch's global
        generator, the whole batch alike; fairseq's layerdrop) and the lists hold only the blocks that ran, as
        fairseq's layer results do: only the student trains with it, the teacher (always in eval mode) runs
        every block, so its top-K targets are those of the full stack.
        """
        if self.alibi is not None:
            alibi = self.alibi(positions if positions is not None else torch.arange(x.shape[1], device=x.device)[None])
            if attn_bias is None:
                attn_bias = alibi
            else:
                attn_bias = [b + alibi for b in attn_bias] if isinstance(attn_bias, list) else attn_bias + alibi
        outputs, taps = [], []
        shared = attn_bias if not isinstance(attn_bias, list) else None
        shared_mask = padding_bias(padding_mask, shared)
        for i, block in enumerate(self.blocks):
            if self.layer_drop > 0 and self.training and float(torch.rand(())) < self.layer_drop:
                continue
            mask = shared_mask if shared is not None or attn_bias is None else padding_bias(padding_mask, attn_bias[i])
            if self.grad_checkpoint and self.training and torch.is_grad_enabled():
                x, tapped = checkpoint(block, x, mask, tap, use_reentrant=False)
            else:
                x, tapped = block(x, mask, tap)
            outputs.append(x)
            taps.append(tapped)
        return self.norm(x), outputs, taps
