"""Configuration of a data2vec 2.0 image encoder for `transformers` (written by data2vec's ``convert --to-hf``
beside the weights; loaded with ``trust_remote_code=True``).

Meta's data2vec 2.0 image encoder is a ViT with post-LN blocks and a LayerNorm on the tokens before the first
block, which `transformers`' own vision classes (BEiT / Data2VecVision, all pre-LN) cannot compute; the model
code beside this file computes exactly what data2vec computes.
"""

from transformers import PretrainedConfig


class Data2Vec2VisionConfig(PretrainedConfig):
    """Sizes and switches of the encoder. `layer_norm_first` false is data2vec 2.0's post-LN block
    (``x = norm1(x + attn(x)); x = norm2(x + mlp(x))``); `position_embeddings` is "fixed" (sin-cos values
    stored with the weights, not trained), "learned" or "none"; `pooling` ("mean" of the patch tokens or
    "cls") and `use_pool_norm` give the pooled output that the classifier reads."""

    model_type = "data2vec2-vision"

    def __init__(self, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 layer_norm_eps=1e-6, image_size=224, patch_size=16, num_channels=3, layer_norm_first=False,
                 layer_scale_init_value=0.0, use_cls_token=True, position_embeddings="fixed", use_embed_norm=True,
                 use_final_norm=False, pooling="mean", use_pool_norm=False, hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0, activation_dropout=0.0, drop_path_rate=0.0,
                 initializer_range=0.02, **kwargs):
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.layer_norm_eps = layer_norm_eps
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.layer_norm_first = layer_norm_first
        self.layer_scale_init_value = layer_scale_init_value
        self.use_cls_token = use_cls_token
        self.position_embeddings = position_embeddings
        self.use_embed_norm = use_embed_norm
        self.use_final_norm = use_final_norm
        self.pooling = pooling
        self.use_pool_norm = use_pool_norm
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.activation_dropout = activation_dropout
        self.drop_path_rate = drop_path_rate
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
