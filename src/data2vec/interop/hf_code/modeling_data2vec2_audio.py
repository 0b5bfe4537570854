"""data2vec 2.0 speech models for `transformers` (written by data2vec's ``convert --to-hf`` beside the weights):
`transformers`' own Data2VecAudio with ALiBi added to every attention layer, which Meta's data2vec 2.0 speech
models use (fairseq's ``use_alibi_encoder`` with a learned scale per head) and no `transformers` class computes.

Load with ``AutoModel`` / ``AutoModelForCTC`` / ``AutoModelForAudioClassification.from_pretrained(folder,
trust_remote_code=True)`` or ``pipeline("automatic-speech-recognition", model=folder, trust_remote_code=True)``.
Everything but the attention bias is Data2VecAudio's, so the weights are its names plus
``encoder.alibi_scale``: head h adds ``-slope_h * max(alibi_scale_h, 0) * |i - j|`` to the logits of frames
i, j, with ALiBi's slopes (Press et al., 2022).
"""

import math

import torch
from torch import nn
from transformers import (
    Data2VecAudioConfig,
    Data2VecAudioForCTC,
    Data2VecAudioForSequenceClassification,
    Data2VecAudioModel,
)
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.data2vec.modeling_data2vec_audio import Data2VecAudioEncoder


class Data2Vec2AudioConfig(Data2VecAudioConfig):
    """`Data2VecAudioConfig` under its own model type, so that loading without `trust_remote_code` fails
    instead of silently building Data2VecAudio without ALiBi."""

    model_type = "data2vec2-audio"

    def __init__(self, zero_padding_before_pos_conv: bool = True, **kwargs):
        # Data2VecAudio zeroes padded frames before its positional convs; Meta's data2vec 2.0 speech encoder
        # does not (they reach the convs as the feature encoder left them), so exports of it set False
        self.zero_padding_before_pos_conv = zero_padding_before_pos_conv
        super().__init__(**kwargs)


def alibi_slopes(heads: int) -> list[float]:
    """For n heads, n a power of two, 2^(-8/n), 2^(-16/n), ...; otherwise those of the largest power of two
    below n, then every other slope of twice that power (fairseq's `get_alibi`)."""
    if math.log2(heads).is_integer():
        start = 2 ** (-(2 ** -(math.log2(heads) - 3)))
        return [start * start**i for i in range(heads)]
    below = 2 ** math.floor(math.log2(heads))
    return alibi_slopes(below) + alibi_slopes(2 * below)[0::2][: heads - below]


class Data2Vec2AudioEncoder(Data2VecAudioEncoder):
    """Data2VecAudio's encoder whose layers all get the ALiBi bias (and the padding mask) as attention mask."""

    def __init__(self, config):
        super().__init__(config)
        self.alibi_scale = nn.Parameter(torch.ones(config.num_attention_heads))
        # a list, not a buffer: `from_pretrained` builds the model on the meta device and would leave a
        # non-persistent buffer uninitialised
        self.alibi_slopes = alibi_slopes(config.num_attention_heads)

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        if attention_mask is not None and getattr(self.config, "zero_padding_before_pos_conv", True):
            hidden_states = hidden_states.masked_fill(~attention_mask.bool()[..., None], 0.0)
        T = hidden_states.shape[1]
        positions = torch.arange(T, device=hidden_states.device)
        distance = (positions[:, None] - positions[None, :]).abs().float()  # [T, T]
        slopes = torch.tensor(self.alibi_slopes, device=hidden_states.device) * self.alibi_scale.float().clamp(min=0)
        bias = (-distance[None] * slopes[:, None, None])[None]  # [1, H, T, T]
        if attention_mask is not None:
            bias = bias.masked_fill(~attention_mask.bool()[:, None, None, :], float("-inf"))
        bias = bias.to(hidden_states.dtype)
        hidden_states = hidden_states + self.pos_conv_embed(hidden_states)
        hidden_states = self.dropout(self.layer_norm(hidden_states))
        for layer in self.layers:
            if self.training and self.config.layerdrop > 0.0 and torch.rand([]) < self.config.layerdrop:
                continue
            hidden_states = layer(hidden_states, attention_mask=bias, **kwargs)
        return BaseModelOutput(last_hidden_state=hidden_states)


class Data2Vec2AudioModel(Data2VecAudioModel):
    config_class = Data2Vec2AudioConfig

    def __init__(self, config):
        super().__init__(config)
        self.encoder = Data2Vec2AudioEncoder(config)
        self.post_init()


class Data2Vec2AudioForCTC(Data2VecAudioForCTC):
    config_class = Data2Vec2AudioConfig

    def __init__(self, config):
        super().__init__(config)
        self.data2vec_audio = Data2Vec2AudioModel(config)
        self.post_init()


class Data2Vec2AudioForSequenceClassification(Data2VecAudioForSequenceClassification):
    config_class = Data2Vec2AudioConfig

    def __init__(self, config):
        super().__init__(config)
        self.data2vec_audio = Data2Vec2AudioModel(config)
        self.post_init()
