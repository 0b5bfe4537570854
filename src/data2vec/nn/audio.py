"""The speech front-end: wav2vec 2.0's convolutional feature encoder, a projection to the model width, a
learned mask embedding and a convolutional relative positional embedding (data2vec, Baevski et al. 2022).

The parameter layout and order of operations are Hugging Face's `Data2VecAudio` (so its weights map one to
one, names included): seven convolutions without bias, each followed by a LayerNorm over channels and GELU
("layer-norm mode"); LayerNorm(C) -> Linear(C, D) -> dropout; masked frames replaced by
``masked_spec_embed``; padded frames zeroed; a stack of grouped convolutions over time, each with a
parameter-free LayerNorm and GELU, added once; LayerNorm; dropout. The post-LN Transformer follows.

One deliberate difference, for padded batches only: padded frames are zeroed again before every positional
conv layer, not only before the first. Hugging Face and fairseq zero them once, so with several layers a
frame near the end of an utterance sees a little of the padding and changes with the amount of padding;
here a real frame's output is the same however the batch is padded. Without padding both agree exactly;
``audio.pos_conv_zero_padding: once`` (what models converted from Hugging Face get) zeroes once, as they do;
``none`` (models converted from fairseq's data2vec 2.0) zeroes nothing, as that encoder does.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data2vec.config import AudioConfig, EncoderConfig
from data2vec.frames import Length, conv_output_length, receptive_field
from data2vec.nn.frontend import Frontend
from data2vec.nn.linear import cpu_kernel, linear


class WindowConv1d(nn.Conv1d):
    """``nn.Conv1d`` (the same parameters and state-dict keys) working channels-last, `[B, T, C_in]` ->
    `[B, T', C_out]` with ``T' = (T - kernel) // stride + 1``: a matrix product over unfolded windows, which
    on a CPU is about 1.6x faster than conv1d plus the transposes a LayerNorm over channels would need. Its
    fp32 CPU kernel is chosen when it is built, as :class:`data2vec.nn.linear.Linear`'s."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, bias: bool) -> None:
        super().__init__(in_ch, out_ch, kernel_size=kernel, stride=stride, bias=bias)
        self.cpu_kernel = cpu_kernel()

    def forward(self, x: Tensor) -> Tensor:
        windows = x.unfold(1, self.kernel_size[0], self.stride[0])  # [B, T', C_in, k]
        weight = self.weight.reshape(self.out_channels, -1)  # [C_out, C_in * k]
        return linear(windows.reshape(*windows.shape[:2], -1), weight, self.bias, self.cpu_kernel == "onednn")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, channels_last=True, cpu_kernel={self.cpu_kernel}"


class ConvLayer(nn.Module):
    """Conv1d (no bias by default) -> LayerNorm over channels at each time step -> GELU. Normalising each
    frame on its own (not over time, as wav2vec 2.0's group-norm mode does) keeps padding from leaking in.
    Works channels-last, `[B, T, C]` (see :class:`WindowConv1d`)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, bias: bool) -> None:
        super().__init__()
        self.conv = WindowConv1d(in_ch, out_ch, kernel, stride, bias)
        self.layer_norm = nn.LayerNorm(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        """`[B, T, C_in]` -> `[B, T', C_out]`, ``T' = (T - kernel) // stride + 1``."""
        return F.gelu(self.layer_norm(self.conv(x)))


class FeatureEncoder(nn.Module):
    """Raw 16 kHz waveform `[B, S]` -> features `[B, N, C]`, one frame per 20 ms with the default strides."""

    def __init__(self, cfg: AudioConfig) -> None:
        super().__init__()
        channels = [1, *cfg.conv_dim]
        self.conv_layers = nn.ModuleList(
            ConvLayer(channels[i], channels[i + 1], cfg.conv_kernel[i], cfg.conv_stride[i], cfg.conv_bias)
            for i in range(len(cfg.conv_dim)))

    def forward(self, wave: Tensor) -> Tensor:
        x = wave.unsqueeze(-1)  # [B, S, 1]
        for layer in self.conv_layers:
            x = layer(x)
        return x


class FeatureProjection(nn.Module):
    """LayerNorm over the conv channels, then a linear map to the Transformer width. Its dropout (HF's layout)
    is applied by the front-end afterwards, to the student's copy only: the teacher starts from the features
    before it, as fairseq's does."""

    def __init__(self, in_dim: int, dim: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(in_dim, eps=eps)
        self.projection = nn.Linear(in_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.projection(self.layer_norm(x))


class PositionalConvLayer(nn.Module):
    """Grouped 'same' convolution over time -> parameter-free LayerNorm -> GELU. An even kernel gives one
    extra output frame, which is dropped (the last), as in wav2vec 2.0."""

    def __init__(self, dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel_size=kernel, padding=kernel // 2, groups=groups)
        self.trim = 1 if kernel % 2 == 0 else 0

    def forward(self, x: Tensor) -> Tensor:
        """`[B, D, N]` -> `[B, D, N]`."""
        x = self.conv(x)
        if self.trim:
            x = x[:, :, :-self.trim]
        x = F.layer_norm(x.transpose(1, 2), x.shape[1:2]).transpose(1, 2)
        return F.gelu(x)


class PositionalConv(nn.Module):
    """Relative positions from convolutions: data2vec uses 5 layers of kernel 19 (total width 95), 16 groups.
    `zero_every_layer`: zero padded frames before every layer (ours), not only before the first (HF, fairseq)."""

    def __init__(self, dim: int, layers: int, kernel: int, groups: int, zero_every_layer: bool = True) -> None:
        super().__init__()
        self.layers = nn.ModuleList(PositionalConvLayer(dim, kernel, groups) for _ in range(layers))
        self.zero_every_layer = zero_every_layer

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """x `[B, N, D]`, padding_mask `[B, N]` (True = padding) -> positional embedding `[B, N, D]`."""
        x = x.transpose(1, 2)  # [B, D, N]
        keep = None if padding_mask is None else (~padding_mask).unsqueeze(1).to(x.dtype)  # [B, 1, N]
        for i, layer in enumerate(self.layers):
            x = layer(x if keep is None or (i and not self.zero_every_layer) else x * keep)
        return x.transpose(1, 2)


class AudioFrontend(Frontend):
    """Waveforms `[B, S]` -> frame embeddings `[B, N, D]`, masked frames replaced by a learned embedding
    (data2vec v1) before positions are added; no prefix token; pooling is a mean over real frames. Two-stage:
    the local encoder (conv feature encoder and projection), then the context stage (positional convs)."""

    two_stage = True
    feature_encoder = "feature_extractor"
    # Front-end parts the EMA teacher averages under `objective.ema_scope` "layers" (fairseq v1's
    # `ema_layers_only`: the LayerNorm after the positional convs, part of fairseq's Transformer; the convs are
    # copied) and "context" (fairseq v2 with `ema_local_encoder: false`: the positional convs too). The local
    # encoder (conv feature encoder and projection) is copied from the student under both.
    ema_averaged: ClassVar[dict[str, tuple[str, ...]]] = {"layers": ("layer_norm.",),
                                                          "context": ("pos_conv_embed.", "layer_norm.")}

    def __init__(self, cfg: AudioConfig, enc: EncoderConfig) -> None:
        super().__init__()
        n = len(cfg.conv_dim)
        if n == 0 or len(cfg.conv_kernel) != n or len(cfg.conv_stride) != n:
            raise ValueError(f"audio.conv_dim, conv_kernel and conv_stride need one entry per conv layer; got "
                             f"{len(cfg.conv_dim)}, {len(cfg.conv_kernel)} and {len(cfg.conv_stride)}")
        if cfg.pos_conv_layers > 0 and enc.dim % cfg.pos_conv_groups:
            raise ValueError(f"model.dim={enc.dim} must be divisible by audio.pos_conv_groups={cfg.pos_conv_groups}")
        self.cfg = cfg
        self.receptive_field = receptive_field(cfg.conv_kernel, cfg.conv_stride)
        self.feature_extractor = FeatureEncoder(cfg)
        self.feature_projection = FeatureProjection(cfg.conv_dim[-1], enc.dim, enc.norm_eps,
                                                    cfg.feature_dropout)
        self.masked_spec_embed = nn.Parameter(torch.zeros(enc.dim))
        self.pos_conv_embed = PositionalConv(enc.dim, cfg.pos_conv_layers, cfg.pos_conv_kernel, cfg.pos_conv_groups,
                                             zero_every_layer=cfg.pos_conv_zero_padding == "every_layer")
        self.zero_padding = cfg.pos_conv_zero_padding != "none"
        self.layer_norm = nn.LayerNorm(enc.dim, eps=enc.norm_eps)
        self.dropout = nn.Dropout(enc.dropout)
        self._init_weights()

    def _init_weights(self) -> None:
        """wav2vec 2.0 / fairseq: Kaiming-normal feature convs, positional convs normal with std
        sqrt(4 / (kernel * D)) and zero bias, mask embedding uniform in [0, 1)."""
        for layer in self.feature_extractor.conv_layers:
            nn.init.kaiming_normal_(layer.conv.weight)
            if layer.conv.bias is not None:
                nn.init.zeros_(layer.conv.bias)
            nn.init.ones_(layer.layer_norm.weight)
            nn.init.zeros_(layer.layer_norm.bias)
        for layer in self.pos_conv_embed.layers:
            conv = layer.conv
            nn.init.normal_(conv.weight, std=math.sqrt(4.0 / (conv.kernel_size[0] * conv.in_channels)))
            nn.init.zeros_(conv.bias)
        nn.init.uniform_(self.masked_spec_embed)

    def num_frames(self, num_samples: Length) -> Length:
        """Frames of `num_samples` samples (an int or a tensor of lengths)."""
        return conv_output_length(num_samples, self.cfg.conv_kernel, self.cfg.conv_stride)

    def frame_padding(self, padding_mask: Tensor, num_frames: int) -> Tensor:
        """Sample padding `[B, S]` (True = padding, at the end of each row) -> frame padding `[B, N]`: a frame
        is real when its whole receptive field lies inside the real samples."""
        frames = self.num_frames((~padding_mask).sum(1))  # [B]
        return torch.arange(num_frames, device=padding_mask.device)[None, :] >= frames[:, None]

    def forward(self, wave: Tensor, mask: Tensor | None = None, padding_mask: Tensor | None = None
                ) -> tuple[Tensor, None, Tensor | None]:
        """wave float `[B, S]`, mask bool `[B, N]` (True = masked), padding_mask bool `[B, S]` (True = padding)
        -> (frames `[B, N, D]`, no attention bias, frame padding mask `[B, N]` or None)."""
        x, padding = self.local_features(wave, padding_mask)
        return self.contextualize(self.feature_projection.dropout(x), padding, mask), None, padding

    def forward_pair(self, wave: Tensor, mask: Tensor, padding_mask: Tensor | None, teacher: Frontend
                     ) -> tuple[tuple[Tensor, None, Tensor | None], tuple[Tensor, None, Tensor | None]]:
        """data2vec v1: the student's masked frames and the `teacher` front-end's clean ones from one pass of
        the student's local encoder, as fairseq's teacher starts from the student's features before dropout
        (`pre_encoder_features`). The local encoder is most of the front-end's cost; only the cheap positional
        convs run twice. The teacher's frames carry no gradient."""
        x, padding = self.local_features(wave, padding_mask)
        with torch.no_grad():
            clean = teacher.contextualize(x.detach(), padding)
        return (self.contextualize(self.feature_projection.dropout(x), padding, mask), None, padding), \
            (clean, None, padding)

    def local_features(self, wave: Tensor, padding_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The local encoder (fairseq's name): checked waveforms -> conv features projected to the model width
        `[B, N, D]`, before the projection's dropout, and the frame padding mask. Its weights are the student's
        in the teacher under every `objective.ema_scope` but "all", so the teacher may start from these."""
        if wave.ndim != 2 or not wave.is_floating_point():
            raise ValueError(f"expected float waveforms [B, S], got {wave.dtype} {list(wave.shape)}")
        if wave.shape[1] < self.receptive_field:
            raise ValueError(f"waveforms of {wave.shape[1]} samples are shorter than the receptive field "
                             f"({self.receptive_field} samples)")
        x = self.feature_projection(self.feature_extractor(wave))  # [B, N, D]
        padding = None if padding_mask is None else self.frame_padding(padding_mask, x.shape[1])
        return x, padding

    def contextualize(self, x: Tensor, padding: Tensor | None, mask: Tensor | None = None,
                      hide: Tensor | None = None) -> Tensor:
        """Local features `[B, N, D]` -> frame embeddings `[B, N, D]`: frames in `mask` `[B, N]` replaced by the
        mask embedding (v1), padded frames zeroed, the positional convs added, LayerNorm, dropout.

        `hide` `[B, N]` (data2vec 2.0: the masked frames, which the student then drops) zeroes those frames in
        the positional convs' input only, as fairseq's ``compute_mask(..., apply=True)`` before its relative
        positional encoder: the convs are 95 frames wide, so otherwise every visible frame near a masked one
        would carry what that frame holds. The hidden frames' own outputs are meaningless and must be dropped.
        """
        if mask is not None:
            x = torch.where(mask.unsqueeze(-1), self.masked_spec_embed.to(x.dtype), x)
        if not self.zero_padding:  # fairseq v2: the padding's features reach the positional convs
            padding = None
        if padding is not None:
            x = x.masked_fill(padding.unsqueeze(-1), 0.0)
        if len(self.pos_conv_embed.layers):
            seen = x if hide is None else x.masked_fill(hide.unsqueeze(-1), 0.0)
            x = x + self.pos_conv_embed(seen, padding)
        return self.dropout(self.layer_norm(x))

    def mask_parameters(self) -> list[nn.Parameter]:
        return [self.masked_spec_embed]

    def pool(self, hidden: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Utterance embedding `[B, D]`: mean over non-padded frames."""
        if padding_mask is None:
            return hidden.mean(dim=1)
        keep = (~padding_mask).unsqueeze(-1).to(hidden.dtype)  # [B, N, 1]
        return (hidden * keep).sum(1) / keep.sum(1).clamp(min=1)
