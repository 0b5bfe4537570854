"""A data2vec 2.0 image encoder (and its image classifier) for `transformers`, written by data2vec's
``convert --to-hf`` beside the weights. Load it with ``AutoModel.from_pretrained(folder, trust_remote_code=True)``
(or ``AutoModelForImageClassification`` / ``pipeline("image-classification", model=folder,
trust_remote_code=True)`` for a fine-tuned classifier).

It computes what data2vec's encoder computes (``data2vec.load(run)(images)``): patch embedding, CLS token,
positions, an optional LayerNorm on the tokens, then blocks that are post-LN (data2vec 2.0, fairseq's
``layer_norm_first: false``) or pre-LN, each attention with one fused QKV projection. `hidden_states` are the
embedding output and each block's output, as data2vec's `EncoderOutput.hidden_states`; `pooler_output` is
data2vec's pooled embedding (``data2vec embed``).
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput

from .configuration_data2vec2_vision import Data2Vec2VisionConfig


class Data2Vec2VisionEmbeddings(nn.Module):
    """images `[B, C, H, W]` -> tokens `[B, P + N, D]` (P = 1 with a CLS token)."""

    def __init__(self, config):
        super().__init__()
        side = config.image_size // config.patch_size
        prefix = 1 if config.use_cls_token else 0
        dim = config.hidden_size
        self.patch_embeddings = nn.Conv2d(config.num_channels, dim, config.patch_size, stride=config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if config.use_cls_token else None
        if config.position_embeddings == "learned":
            self.position_embeddings = nn.Parameter(torch.zeros(1, prefix + side * side, dim))
        elif config.position_embeddings == "fixed":  # sin-cos values, loaded from the weights file
            self.register_buffer("position_embeddings", torch.zeros(1, prefix + side * side, dim))
        else:
            self.position_embeddings = None
        self.layernorm = nn.LayerNorm(dim, eps=config.layer_norm_eps) if config.use_embed_norm else None

    def forward(self, pixel_values):
        x = self.patch_embeddings(pixel_values).flatten(2).transpose(1, 2)  # [B, N, D]
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        if self.position_embeddings is not None:
            x = x + self.position_embeddings
        return self.layernorm(x) if self.layernorm is not None else x


class Data2Vec2VisionAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.heads = config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.attn_dropout = config.attention_probs_dropout_prob
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # 3 x [B, H, T, Dh]
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)
        return self.dropout(self.proj(out.transpose(1, 2).reshape(B, T, D)))


class Data2Vec2VisionMlp(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.activation_dropout)

    def forward(self, x):
        return self.fc2(self.dropout(F.gelu(self.fc1(x))))


class Data2Vec2VisionLayer(nn.Module):
    """One block: post-LN ``norm2(h + mlp(h))`` with ``h = norm1(x + attn(x))``, or pre-LN; optional layer
    scale (`lambda_1`, `lambda_2`) and stochastic depth (`drop_path`) on the residual branches."""

    def __init__(self, config, drop_path):
        super().__init__()
        dim = config.hidden_size
        self.norm_first = config.layer_norm_first
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attention = Data2Vec2VisionAttention(config)
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = Data2Vec2VisionMlp(config)
        scale = config.layer_scale_init_value
        self.lambda_1 = nn.Parameter(torch.full((dim,), float(scale))) if scale > 0 else None
        self.lambda_2 = nn.Parameter(torch.full((dim,), float(scale))) if scale > 0 else None
        self.drop_path = drop_path
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def _branch(self, x, gamma):
        x = x * gamma if gamma is not None else x
        if self.drop_path == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_path
        return x * x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep).div_(keep)

    def forward(self, x):
        if self.norm_first:
            x = x + self._branch(self.attention(self.norm1(x)), self.lambda_1)
            return x + self._branch(self.dropout(self.mlp(self.norm2(x))), self.lambda_2)
        x = self.norm1(x + self._branch(self.attention(x), self.lambda_1))
        return self.norm2(x + self._branch(self.dropout(self.mlp(x)), self.lambda_2))


class Data2Vec2VisionEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        depth = config.num_hidden_layers
        rates = [config.drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.layer = nn.ModuleList(Data2Vec2VisionLayer(config, rate) for rate in rates)

    def forward(self, x, output_hidden_states=False):
        states = [x]
        for layer in self.layer:
            x = layer(x)
            states.append(x)
        return x, tuple(states) if output_hidden_states else None


class Data2Vec2VisionPooler(nn.Module):
    """The mean of the patch tokens (or the CLS token), then an optional LayerNorm."""

    def __init__(self, config):
        super().__init__()
        self.prefix = 1 if config.use_cls_token else 0
        self.pooling = config.pooling
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.use_pool_norm else None

    def forward(self, hidden):
        pooled = hidden[:, 0] if self.pooling == "cls" and self.prefix else hidden[:, self.prefix:].mean(dim=1)
        return self.layernorm(pooled) if self.layernorm is not None else pooled


class Data2Vec2VisionPreTrainedModel(PreTrainedModel):
    config_class = Data2Vec2VisionConfig
    base_model_prefix = "data2vec2_vision"
    main_input_name = "pixel_values"
    _no_split_modules = ["Data2Vec2VisionLayer"]

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.weight.data.normal_(mean=0.0, std=std)
            module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()


class Data2Vec2VisionModel(Data2Vec2VisionPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embeddings = Data2Vec2VisionEmbeddings(config)
        self.encoder = Data2Vec2VisionEncoder(config)
        final = config.use_final_norm and config.layer_norm_first
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if final else None
        self.pooler = Data2Vec2VisionPooler(config)
        self.post_init()

    def forward(self, pixel_values=None, output_hidden_states=None, return_dict=None, **kwargs):
        output_hidden_states = bool(output_hidden_states if output_hidden_states is not None
                                    else self.config.output_hidden_states)
        x, states = self.encoder(self.embeddings(pixel_values), output_hidden_states)
        if self.layernorm is not None:
            x = self.layernorm(x)
        out = BaseModelOutputWithPooling(last_hidden_state=x, pooler_output=self.pooler(x), hidden_states=states)
        return out if return_dict is not False else out.to_tuple()


class Data2Vec2VisionForImageClassification(Data2Vec2VisionPreTrainedModel):
    """A linear layer on the pooled output (mean of the patch tokens and its LayerNorm, as data2vec 2.0's
    fine-tuned classifiers)."""

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.data2vec2_vision = Data2Vec2VisionModel(config)
        self.dropout = nn.Dropout(getattr(config, "classifier_dropout", 0.0) or 0.0)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, pixel_values=None, labels=None, output_hidden_states=None, return_dict=None, **kwargs):
        outputs = self.data2vec2_vision(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1).to(logits.device))
        out = ImageClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)
        return out if return_dict is not False else out.to_tuple()
