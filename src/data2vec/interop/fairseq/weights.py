"""fairseq's data2vec parameter names -> ours: one mapping for checkpoint conversion (:func:`data2vec.from_fairseq`)
and the parity tests (`tests/test_fairseq_parity.py`).

The parity fixtures and fairseq checkpoints keep fairseq's own state dicts, so when a fix changes our layout (a new
LayerNorm, a split of the blocks) only this mapping changes, never the fixtures. Each function takes fairseq
tensors under the prefix of one module and returns our names.
"""

from __future__ import annotations

import torch
from torch import Tensor

from data2vec.errors import Data2VecError


def sub(weights: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def post_ln_layer(fs: dict[str, Tensor]) -> dict[str, Tensor]:
    """A fairseq post-LN layer (wav2vec 2.0 `TransformerSentenceEncoderLayer` or the text
    `TransformerEncoderLayer`: separate q/k/v projections) -> our `Block` (fused qkv)."""
    attn = "self_attn."
    return {
        "attn.qkv.weight": torch.cat([fs[f"{attn}{p}_proj.weight"] for p in "qkv"]),
        "attn.qkv.bias": torch.cat([fs[f"{attn}{p}_proj.bias"] for p in "qkv"]),
        "attn.proj.weight": fs[f"{attn}out_proj.weight"], "attn.proj.bias": fs[f"{attn}out_proj.bias"],
        "norm1.weight": fs["self_attn_layer_norm.weight"], "norm1.bias": fs["self_attn_layer_norm.bias"],
        "mlp.fc1.weight": fs["fc1.weight"], "mlp.fc1.bias": fs["fc1.bias"],
        "mlp.fc2.weight": fs["fc2.weight"], "mlp.fc2.bias": fs["fc2.bias"],
        "norm2.weight": fs["final_layer_norm.weight"], "norm2.bias": fs["final_layer_norm.bias"],
    }


def alt_block(fs: dict[str, Tensor]) -> dict[str, Tensor]:
    """A data2vec 2.0 `AltBlock` (timm layout: fused qkv, norm1 / norm2, mlp.fc1 / fc2) -> our `Block`."""
    out = {k: v for k, v in fs.items() if k.split(".")[0] in ("norm1", "norm2", "mlp")}
    out["attn.qkv.weight"] = fs["attn.qkv.weight"]
    out["attn.qkv.bias"] = fs["attn.qkv.bias"]
    out["attn.proj.weight"], out["attn.proj.bias"] = fs["attn.proj.weight"], fs["attn.proj.bias"]
    return out


def blocks(fs: dict[str, Tensor], prefix: str, depth: int, layer=post_ln_layer, offset: int = 0
           ) -> dict[str, Tensor]:
    """fairseq's layers `prefix0.` ... as our `encoder.blocks.{offset}.` onwards."""
    out = {}
    for i in range(depth):
        for k, v in layer(sub(fs, f"{prefix}{i}.")).items():
            out[f"encoder.blocks.{i + offset}.{k}"] = v
    return out


def v2_blocks(model: dict[str, Tensor], enc: dict[str, Tensor], prenet: int, depth: int) -> dict[str, Tensor]:
    """A data2vec 2.0 model's prenet blocks (its modality encoder's `context_encoder.blocks`, in `enc`) then its
    main `blocks` (in `model`) as our one stack of `depth` blocks."""
    return {**blocks(enc, "context_encoder.blocks.", prenet, alt_block),
            **blocks(model, "blocks.", depth - prenet, alt_block, offset=prenet)}


def v1_audio_encoder(student: dict[str, Tensor], encoder: dict[str, Tensor], depth: int) -> dict[str, Tensor]:
    """Our `Data2VecEncoder` for speech: the front-end from fairseq's `Data2VecAudioModel` (`student`), the
    positional convs, their LayerNorm and the blocks from a fairseq wav2vec 2.0 `TransformerEncoder`
    (`encoder`: the student's `encoder.*` or the EMA teacher's state)."""
    out = {}
    n_conv = len({k.split(".")[2] for k in student if k.startswith("feature_extractor.conv_layers.")})
    for i in range(n_conv):
        p = f"feature_extractor.conv_layers.{i}."
        out[f"frontend.feature_extractor.conv_layers.{i}.conv.weight"] = student[p + "0.weight"]
        if p + "0.bias" in student:
            out[f"frontend.feature_extractor.conv_layers.{i}.conv.bias"] = student[p + "0.bias"]
        out[f"frontend.feature_extractor.conv_layers.{i}.layer_norm.weight"] = student[p + "2.1.weight"]
        out[f"frontend.feature_extractor.conv_layers.{i}.layer_norm.bias"] = student[p + "2.1.bias"]
    out["frontend.feature_projection.layer_norm.weight"] = student["layer_norm.weight"]
    out["frontend.feature_projection.layer_norm.bias"] = student["layer_norm.bias"]
    out["frontend.feature_projection.projection.weight"] = student["post_extract_proj.weight"]
    out["frontend.feature_projection.projection.bias"] = student["post_extract_proj.bias"]
    out["frontend.masked_spec_embed"] = student["mask_emb"]
    n_pos = len({k.split(".")[1] for k in encoder if k.startswith("pos_conv.")})
    for i in range(n_pos):
        out[f"frontend.pos_conv_embed.layers.{i}.conv.weight"] = encoder[f"pos_conv.{i}.0.weight"]
        out[f"frontend.pos_conv_embed.layers.{i}.conv.bias"] = encoder[f"pos_conv.{i}.0.bias"]
    out["frontend.layer_norm.weight"] = encoder["layer_norm.weight"]
    out["frontend.layer_norm.bias"] = encoder["layer_norm.bias"]
    out.update(blocks(encoder, "layers.", depth))
    return out


def v1_text_encoder(encoder: dict[str, Tensor], depth: int) -> dict[str, Tensor]:
    """Our text `Data2VecEncoder` from a fairseq `TransformerEncoder` (`sentence_encoder.*` or the EMA
    teacher's state). fairseq has no token-type embedding: ours is zero."""
    word = encoder["embed_tokens.weight"]
    out = {
        "frontend.word_embeddings.weight": word,
        "frontend.position_embeddings.weight": encoder["embed_positions.weight"],
        "frontend.token_type_embeddings.weight": torch.zeros(1, word.shape[1]),
        "frontend.norm.weight": encoder["layernorm_embedding.weight"],
        "frontend.norm.bias": encoder["layernorm_embedding.bias"],
    }
    out.update(blocks(encoder, "layers.", depth))
    return out


def sequential_head(fs: dict[str, Tensor]) -> dict[str, Tensor]:
    """fairseq's `regression_head` (nn.Sequential of Linear / GELU) -> our `regression_head`: the same
    Sequential indices, or a bare Linear when it has one layer."""
    if set(fs) == {"0.weight", "0.bias"}:
        return {"weight": fs["0.weight"], "bias": fs["0.bias"]}
    return dict(fs)


# ------------------------------------------------------------------------------------------- data2vec 2.0
def v2_decoder(fs: dict[str, Tensor], dim: int, input_proj: bool = True) -> dict[str, Tensor]:
    """fairseq's `Decoder1d` / `Decoder2d` (first conv on the model width, residual blocks where widths match,
    1 or 2 projection layers) -> our `ConvDecoder`. With our input projection (`input_proj`, our default layout)
    it is set to the identity, which is fairseq's layout when the decoder width is the model width; without it
    (`objective.decoder_input_proj: false`) the convs map one to one. Two projection layers (fairseq's
    `projection_layers: 2`, the released text decoder) keep their Sequential indices under `proj_out`."""
    n = len({k.split(".")[1] for k in fs if k.startswith("blocks.")})
    out = {f"proj_out.{k[len('proj.'):]}": v for k, v in fs.items() if k.startswith("proj.")}
    if input_proj:
        out.update({"proj_in.weight": torch.eye(dim), "proj_in.bias": torch.zeros(dim)})
    for i in range(n):
        out[f"blocks.{i}.conv.weight"] = fs[f"blocks.{i}.0.weight"]
        out[f"blocks.{i}.conv.bias"] = fs[f"blocks.{i}.0.bias"]
    return out


def v2_alibi(enc: dict[str, Tensor]) -> dict[str, Tensor]:
    """fairseq's learned ALiBi scale per head (`alibi_scale`, `[1, 1, H, 1, 1]`, one for all layers) -> our
    encoder's `alibi.scale` `[H]`; nothing when the model has no ALiBi."""
    if "alibi_scale" not in enc:
        return {}
    scale = enc["alibi_scale"]
    if scale.shape[0] != 1:
        raise Data2VecError(f"an ALiBi scale per layer (alibi_scale of shape {list(scale.shape)}) has no "
                            "counterpart in data2vec, whose scale is shared by the layers")
    return {"encoder.alibi.scale": scale.reshape(-1)}


def v2_text_frontend(enc: dict[str, Tensor]) -> dict[str, Tensor]:
    """fairseq's `TextEncoder` (`modality_encoders.TEXT.*`) -> our text front-end."""
    word = enc["local_encoder.embed_tokens.weight"]
    return {"frontend.word_embeddings.weight": word,
            "frontend.position_embeddings.weight": enc["local_encoder.embed_positions.weight"],
            "frontend.token_type_embeddings.weight": torch.zeros(1, word.shape[1]),
            "frontend.norm.weight": enc["local_encoder.layernorm_embedding.weight"],
            "frontend.norm.bias": enc["local_encoder.layernorm_embedding.bias"]}


def v2_audio_frontend(local: dict[str, Tensor], context: dict[str, Tensor]) -> dict[str, Tensor]:
    """fairseq's `AudioEncoder`: the conv feature encoder and projection from `local` (the student's
    `modality_encoders.AUDIO.*`), the positional convs and the LayerNorm after them (`context_encoder.norm`,
    no prenet blocks) from `context` (the student's or the teacher's)."""
    out = {}
    n_conv = len({k.split(".")[2] for k in local if k.startswith("local_encoder.conv_layers.")})
    for i in range(n_conv):
        p = f"local_encoder.conv_layers.{i}."
        out[f"frontend.feature_extractor.conv_layers.{i}.conv.weight"] = local[p + "0.weight"]
        out[f"frontend.feature_extractor.conv_layers.{i}.layer_norm.weight"] = local[p + "2.1.weight"]
        out[f"frontend.feature_extractor.conv_layers.{i}.layer_norm.bias"] = local[p + "2.1.bias"]
    out["frontend.feature_projection.layer_norm.weight"] = local["project_features.1.weight"]
    out["frontend.feature_projection.layer_norm.bias"] = local["project_features.1.bias"]
    out["frontend.feature_projection.projection.weight"] = local["project_features.2.weight"]
    out["frontend.feature_projection.projection.bias"] = local["project_features.2.bias"]
    out["frontend.masked_spec_embed"] = torch.zeros(local["project_features.2.weight"].shape[0])  # v1 only
    n_pos = len({k.split(".")[1] for k in context if k.startswith("relative_positional_encoder.")
                 and k.endswith(".0.weight")})
    for i in range(n_pos):  # index 0 of the Sequential is a TransposeLast
        conv = f"relative_positional_encoder.{i + 1}.0."
        out[f"frontend.pos_conv_embed.layers.{i}.conv.weight"] = context[conv + "weight"]
        out[f"frontend.pos_conv_embed.layers.{i}.conv.bias"] = context[conv + "bias"]
    out["frontend.layer_norm.weight"] = context["context_encoder.norm.weight"]
    out["frontend.layer_norm.bias"] = context["context_encoder.norm.bias"]
    return out


def v2_image_encoder(model: dict[str, Tensor], prenet: int, depth: int) -> dict[str, Tensor]:
    """fairseq's image model (student, or the teacher, which holds the whole model) -> our image encoder:
    patch embedding, CLS token (`extra_tokens`), the prenet blocks (`context_encoder.blocks`) then the main
    blocks as one stack. The LayerNorm fairseq applies before the prenet (`context_encoder.norm`) is our
    `frontend.embed_norm` (`image.embed_norm`)."""
    enc = sub(model, "modality_encoders.IMAGE.")
    out = {"frontend.patch_embed.weight": enc["local_encoder.proj.weight"],
           "frontend.patch_embed.bias": enc["local_encoder.proj.bias"],
           "frontend.cls_token": enc["extra_tokens"],
           "frontend.mask_token": torch.zeros(1, 1, enc["extra_tokens"].shape[-1]),  # v1 only
           "frontend.embed_norm.weight": enc["context_encoder.norm.weight"],
           "frontend.embed_norm.bias": enc["context_encoder.norm.bias"]}
    out.update(v2_blocks(model, enc, prenet, depth))
    return out


# ------------------------------------------------------------------------------------------- v1 images
def beit_cyclical(fs: dict[str, Tensor], depth: int) -> dict[str, Tensor]:
    """Meta's data2vec_vision `VisionTransformerForCyclicalTraining` (BEiT layout: q / v biases, layer scale
    `gamma_1` / `gamma_2`, shared relative position bias) -> our image encoder."""
    out = {"frontend.patch_embed.weight": fs["patch_embed.proj.weight"],
           "frontend.patch_embed.bias": fs["patch_embed.proj.bias"],
           "frontend.cls_token": fs["cls_token"], "frontend.mask_token": fs["mask_token"],
           "frontend.rel_pos.0.table": fs["rel_pos_bias.relative_position_bias_table"],
           "encoder.norm.weight": fs["norm.weight"], "encoder.norm.bias": fs["norm.bias"]}
    names = {"norm1": "norm1", "norm2": "norm2", "attn.qkv": "attn.qkv", "attn.q_bias": "attn.q_bias",
             "attn.v_bias": "attn.v_bias", "attn.proj": "attn.proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
             "gamma_1": "ls1.gamma", "gamma_2": "ls2.gamma"}
    for i in range(depth):
        for k, v in sub(fs, f"blocks.{i}.").items():
            stem, _, leaf = k.rpartition(".")
            if k in names:  # q_bias, v_bias, gamma_1, gamma_2: bare parameters
                out[f"encoder.blocks.{i}.{names[k]}"] = v
            elif stem in names:
                out[f"encoder.blocks.{i}.{names[stem]}.{leaf}"] = v
    return out
