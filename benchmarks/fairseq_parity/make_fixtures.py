"""Parity fixtures from Meta's own data2vec code (fairseq), for `tests/test_fairseq_parity.py`.

Builds fairseq's tiny data2vec models (v1 speech and text, data2vec 2.0 text, speech and images), fixes their
weights, inputs, masks and decoder noise, runs fairseq's pretraining forward and saves what it computed: the
targets and predictions at the masked positions and the loss. The fixtures keep fairseq's own state dicts;
`tests/fairseq_mapping.py` maps them onto ours, and the test runs OUR code on them, without fairseq.

Setup and use: see README.md beside this file. Run with the Python of a virtual environment that holds
fairseq's pure-Python dependencies, from the repository root:

    /work/fsenv/bin/python benchmarks/fairseq_parity/make_fixtures.py --fairseq /work/fairseq-src

Every case prints fairseq's loss beside ours and the largest differences of targets and predictions.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import re
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "fairseq"
FAIRSEQ_SDIST = "fairseq-fixed==0.12.3.1"


# --------------------------------------------------------------------------------------------------- setup
def patch_fairseq(src: Path) -> None:
    """Make an unpacked `fairseq-fixed` 0.12.3.1 sdist importable on Python 3.11 / numpy 2 (idempotent):
    mutable dataclass defaults in examples/data2vec become `field(default_factory=...)`, and numpy's removed
    aliases (np.float, np.int) become the builtin types."""
    d2v = src / "fairseq" / "examples" / "data2vec"
    default = re.compile(r"^(\s+\w+: (?:Optional\[)?(\w+)\]? = )(\w+)\(\)$", re.M)
    for path in d2v.rglob("*.py"):
        text = path.read_text()
        new = default.sub(lambda m: f"{m.group(1)}field(default_factory={m.group(3)})"
                          if m.group(2) == m.group(3) else m.group(0), text)
        if new != text:
            if "import field" not in new and ", field" not in new:
                new = "from dataclasses import field\n" + new
            path.write_text(new)
    alias = re.compile(r"\bnp\.(float|int|bool)\b(?![\w.])")
    for path in (src / "fairseq").rglob("*.py"):
        text = path.read_text()
        new = alias.sub(lambda m: m.group(1) if "(" not in m.group(0) else m.group(0), text)
        new = new.replace("dtype=np.int)", "dtype=np.int64)").replace("dtype=np.float)", "dtype=np.float64)")
        if new != text:
            path.write_text(new)


def timm_layers() -> None:
    """fairseq's data2vec 2.0 blocks take `Mlp`, `DropPath` and `to_2tuple` from timm. timm's package
    `__init__` needs torchvision's compiled ops (no CPU build matches torch 2.13 here), so timm's own layer
    files are loaded without it and registered under the names fairseq imports."""
    spec = importlib.util.find_spec("timm")
    if spec is None:
        raise SystemExit("timm is missing: pip install --no-deps timm (see README.md)")
    root = Path(spec.origin).parent
    for name, path in [("timm", root), ("timm.layers", root / "layers")]:
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        sys.modules[name] = module
    helpers = importlib.import_module("timm.layers.helpers")
    mlp = importlib.import_module("timm.layers.mlp")
    drop = importlib.import_module("timm.layers.drop")
    layers = types.ModuleType("timm.models.layers")
    layers.to_2tuple, layers.DropPath, layers.Mlp = helpers.to_2tuple, drop.DropPath, mlp.Mlp
    vit = types.ModuleType("timm.models.vision_transformer")
    vit.DropPath, vit.Mlp = drop.DropPath, mlp.Mlp
    sys.modules["timm.models"] = types.ModuleType("timm.models")
    sys.modules["timm.models.layers"] = layers
    sys.modules["timm.models.vision_transformer"] = vit


def import_fairseq(src: Path) -> None:
    """fairseq from its unpacked source (no C extensions needed); `examples` is fairseq's copy, so
    `examples.data2vec...` (how data2vec 2.0 imports itself) resolves."""
    patch_fairseq(src)
    timm_layers()
    sys.path.insert(0, str(src))
    import logging
    logging.disable(logging.WARNING)
    import fairseq  # noqa: F401
    import fairseq.examples
    sys.modules["examples"] = fairseq.examples


# --------------------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def loss_inputs():
    """Record every (prediction, target) pair fairseq hands to mse_loss / smooth_l1_loss."""
    calls = []
    mse, sl1 = F.mse_loss, F.smooth_l1_loss

    def rec_mse(x, y, *a, **k):
        calls.append((x.detach().clone(), y.detach().clone()))
        return mse(x, y, *a, **k)

    def rec_sl1(x, y, *a, **k):
        calls.append((x.detach().clone(), y.detach().clone()))
        return sl1(x, y, *a, **k)

    F.mse_loss, F.smooth_l1_loss = rec_mse, rec_sl1
    try:
        yield calls
    finally:
        F.mse_loss, F.smooth_l1_loss = mse, sl1


@torch.no_grad()
def perturb(module: torch.nn.Module, seed: int, std: float = 0.05) -> None:
    """Move every parameter away from its initial value (biases off zero, norms off one), so a weight the
    mapping drops or swaps changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(torch.randn(p.shape, generator=g) * std)


def state(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().clone().contiguous() for k, v in module.state_dict().items()
            if isinstance(v, torch.Tensor) and not k.startswith("_ema")}


def teacher_state(teacher: torch.nn.Module, student: torch.nn.Module, student_prefix: str) -> dict[str, torch.Tensor]:
    """The EMA teacher's tensors that differ from the student's (`student_prefix` + the same name): the
    rest the test takes from the student, which keeps the fixtures small."""
    s = student.state_dict()
    return {"fs.teacher." + k: v.detach().clone().contiguous() for k, v in teacher.state_dict().items()
            if not torch.equal(v, s.get(student_prefix + k, torch.empty(0)))}


def save_case(name: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, str(OUT / f"{name}.safetensors"))
    (OUT / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    size = (OUT / f"{name}.safetensors").stat().st_size
    print(f"{name}: loss {meta['loss']:.6g} over {meta['sample_size']} positions, {size / 1024:.0f} KB")


# --------------------------------------------------------------------------------------------------- v1 speech
TINY = dict(dim=16, depth=3, heads=2, ffn=32)  # a few KB of weights per model
AUDIO_CONVS = [(16, 10, 5), (16, 3, 2), (16, 3, 2)]  # 20 samples per frame, receptive field 50


def v1_audio(padded: bool) -> None:
    """data2vec v1 speech (`data2vec_audio.py`): fairseq's 7-conv feature encoder cut to 3 convs, 3 post-LN
    layers, 3 positional conv layers, EMA teacher over the Transformer only (`ema_transformer_only`), the
    positional convs copied (`ema_layers_only`). The padded case regresses layer-normalised layers: fairseq's
    instance norm counts padded frames, ours leaves them out on purpose (docs/fidelity.md)."""
    from examples.data2vec.models.data2vec_audio import Data2VecAudioConfig, Data2VecAudioModel
    from fairseq.data.data_utils import compute_mask_indices

    torch.manual_seed(0)
    cfg = Data2VecAudioConfig(
        extractor_mode="layer_norm", conv_feature_layers=repr(AUDIO_CONVS), conv_bias=False,
        encoder_layers=TINY["depth"], encoder_embed_dim=TINY["dim"], encoder_ffn_embed_dim=TINY["ffn"],
        encoder_attention_heads=TINY["heads"], activation_fn="gelu", layer_norm_first=False,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0,
        dropout_input=0.0, dropout_features=0.0, feature_grad_mult=1.0,
        conv_pos=15, pos_conv_depth=3, conv_pos_groups=4,  # kernel max(3, 15 // 3) = 5
        mask_prob=0.65, mask_length=3, require_same_masks=True, mask_dropout=0.0,
        average_top_k_layers=2, instance_norm_target_layer=not padded, layer_norm_target_layer=padded,
        loss_beta=0.0, loss_scale=None, ema_decay=0.999, ema_end_decay=0.9999, ema_anneal_end_step=1000,
        max_update=1000, ema_transformer_only=True, ema_layers_only=True)
    model = Data2VecAudioModel(cfg)
    perturb(model, seed=1)
    model.make_ema_teacher()
    perturb(model.ema.model.layers, seed=2)  # a teacher some updates behind the student
    model.eval()

    g = torch.Generator().manual_seed(3)
    lengths = [1200, 1000, 760] if padded else [1200, 1200]
    source = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        source[i, :n] = torch.randn(n, generator=g)
    sample_pad = torch.arange(source.shape[1])[None] >= torch.tensor(lengths)[:, None]
    frames = model._get_feat_extract_output_lengths(torch.tensor(lengths))
    n_frames = int(model._get_feat_extract_output_lengths(torch.tensor([source.shape[1]]))[0])
    frame_pad = torch.arange(n_frames)[None] >= frames[:, None]
    np.random.seed(4)
    mask = torch.from_numpy(compute_mask_indices(
        (len(lengths), n_frames), frame_pad if padded else None, cfg.mask_prob, cfg.mask_length,
        min_masks=1, require_same_masks=True))

    with loss_inputs() as calls, torch.no_grad():
        result = model(source, padding_mask=sample_pad if padded else None, mask=True, mask_indices=mask)
    pred, target = calls[-1]
    loss = result["losses"]["regression"]
    tensors = {**state(model, "fs.student."), **teacher_state(model.ema.model, model, "encoder."),
               "in.source": source, "in.mask": mask, "out.targets": target, "out.pred": pred,
               "out.loss": loss.reshape(1)}
    if padded:
        tensors["in.padding_mask"] = sample_pad
    norm = "layer" if padded else "instance"
    save_case(f"v1_audio_{'padded' if padded else 'unpadded'}", tensors, {
        "fairseq": "examples/data2vec/models/data2vec_audio.py (Data2VecAudioModel)",
        "recipe": "audio-tiny",
        "overrides": [f"model.dim={TINY['dim']}", f"model.depth={TINY['depth']}", f"model.heads={TINY['heads']}",
                      "model.mlp_ratio=2.0", "model.norm_eps=1e-5", "model.dropout=0.0", "model.attn_dropout=0.0",
                      f"audio.conv_dim={[c[0] for c in AUDIO_CONVS]}",
                      f"audio.conv_kernel={[c[1] for c in AUDIO_CONVS]}",
                      f"audio.conv_stride={[c[2] for c in AUDIO_CONVS]}", "audio.conv_bias=false",
                      "audio.pos_conv_layers=3", "audio.pos_conv_kernel=5", "audio.pos_conv_groups=4",
                      "audio.pos_conv_zero_padding=once", "objective.top_k=2", "objective.tap=ffn",
                      f"objective.per_layer_norm={norm}", "objective.final_norm=none", "objective.loss_beta=0.0",
                      "objective.loss_scale=inv_sqrt_dim", "objective.ema_scope=encoder",
                      "objective.head_layers=1"],
        "teacher_prefix": "encoder.",
        "loss": float(loss) / mask.sum().item(), "loss_sum": float(loss), "sample_size": int(mask.sum()),
    })


# --------------------------------------------------------------------------------------------------- v1 text
TEXT_WORDS, TEXT_LEN = 40, 16


def text_dictionary():
    """fairseq's Dictionary (<s> <pad> </s> <unk> = 0-3), 40 words, then <mask> (id 44)."""
    from fairseq.data import Dictionary

    d = Dictionary()
    for i in range(TEXT_WORDS):
        d.add_symbol(f"w{i}")
    d.add_symbol("<mask>")
    return d


def text_batch(d, seed: int) -> list[torch.Tensor]:
    """Three sentences of 16, 12 and 9 tokens: <s> words </s>."""
    g = torch.Generator().manual_seed(seed)
    return [torch.cat([torch.tensor([d.bos()]), torch.randint(d.nspecial, d.nspecial + TEXT_WORDS, (n - 2,),
                                                              generator=g), torch.tensor([d.eos()])])
            for n in (TEXT_LEN, 12, 9)]


def pad_batch(items: list[torch.Tensor], pad: int) -> torch.Tensor:
    out = torch.full((len(items), max(len(x) for x in items)), pad, dtype=torch.long)
    for i, x in enumerate(items):
        out[i, :len(x)] = x
    return out


def text_overrides(d, depth: int, dim: int) -> list[str]:
    return [f"model.dim={dim}", f"model.depth={depth}", f"model.heads={TINY['heads']}", "model.mlp_ratio=2.0",
            "model.norm_eps=1e-5", "model.dropout=0.0", "model.attn_dropout=0.0",
            f"text.vocab_size={len(d)}", f"text.max_positions={TEXT_LEN + d.pad() + 1}",
            f"text.mask_id={d.index('<mask>')}", "text.pad_id=1", "text.bos_id=0", "text.eos_id=2"]


def v1_text(masking: str) -> None:
    """data2vec v1 text (`data2vec_text.py`, settings of `config/text/pretraining/base.yaml` at tiny size):
    RoBERTa post-LN encoder, teacher = EMA of the layers (`ema_transformer_layers_only`), top-2 layer-normed
    FFN outputs, Smooth L1 beta 4, loss scale 1, 2-layer head. Masks from fairseq's `MaskTokensDataset`: BERT
    (15%, 80/10/10) or the released spans (35% in spans of 4, all <mask>)."""
    from examples.data2vec.models.data2vec_text import Data2VecTextConfig, Data2VecTextEncoder
    from fairseq.data import MaskTokensDataset
    from fairseq.models.transformer import TransformerConfig

    torch.manual_seed(10)
    d = text_dictionary()
    tcfg = TransformerConfig()
    tcfg.dropout = tcfg.attention_dropout = tcfg.activation_dropout = 0.0
    tcfg.layernorm_embedding, tcfg.activation_fn, tcfg.no_scale_embedding = True, "gelu", True
    tcfg.max_source_positions = TEXT_LEN
    enc = tcfg.encoder
    enc.embed_dim, enc.ffn_embed_dim, enc.layers, enc.attention_heads = (TINY["dim"], TINY["ffn"], TINY["depth"],
                                                                         TINY["heads"])
    enc.normalize_before, enc.learned_pos, enc.layerdrop = False, True, 0.0
    cfg = Data2VecTextConfig(max_positions=TEXT_LEN, head_layers=2, transformer=tcfg, loss_beta=4.0,
                             loss_scale=1.0, average_top_k_layers=2, layer_norm_target_layer=True,
                             ema_decay=0.999, ema_end_decay=0.9999, ema_anneal_end_step=1000,
                             ema_transformer_layers_only=True)
    model = Data2VecTextEncoder(cfg, d, None)
    from fairseq.modules.transformer_sentence_encoder import init_bert_params
    model.apply(init_bert_params)  # as Data2VecTextModel does
    perturb(model, seed=11)
    model.make_ema_teacher()
    perturb(model.ema.model.layers, seed=12)
    model.eval()

    items = text_batch(d, seed=13)
    bert = masking == "bert"
    src, tgt = MaskTokensDataset.apply_mask(
        items, d, pad_idx=d.pad(), mask_idx=d.index("<mask>"), seed=14, mask_prob=0.15 if bert else 0.35,
        leave_unmasked_prob=0.1 if bert else 0.0, random_token_prob=0.1 if bert else 0.0,
        mask_multiple_length=1 if bert else 4)
    clean = pad_batch(items, d.pad())
    corrupted = pad_batch([src[i] for i in range(len(items))], d.pad())
    chosen = pad_batch([tgt[i] for i in range(len(items))], d.pad()) != d.pad()  # what fairseq picked
    regressed = corrupted.eq(d.index("<mask>"))  # what fairseq regresses
    with loss_inputs() as calls, torch.no_grad():
        result = model(corrupted, target_tokens=clean)
    pred, target = calls[-1]
    loss = result["losses"]["main"]
    tensors = {**state(model, "fs.student."), **teacher_state(model.ema.model, model, "sentence_encoder."),
               "in.source": clean, "in.student_source": corrupted, "in.padding_mask": clean.eq(d.pad()),
               "in.mask": chosen, "in.regressed": regressed, "out.targets": target, "out.pred": pred,
               "out.loss": loss.reshape(1)}
    settings = (["masking.token_prob=0.15", "masking.token_span=1", "masking.token_random=0.1",
                 "masking.token_keep=0.1"] if bert else
                ["masking.token_prob=0.35", "masking.token_span=4", "masking.token_random=0.0",
                 "masking.token_keep=0.0"])
    save_case(f"v1_text_{masking}", tensors, {
        "fairseq": "examples/data2vec/models/data2vec_text.py (Data2VecTextEncoder)",
        "recipe": "text-tiny",
        "overrides": text_overrides(d, TINY["depth"], TINY["dim"]) + settings + [
            "objective.top_k=2", "objective.tap=ffn", "objective.per_layer_norm=layer",
            "objective.final_norm=none", "objective.loss_beta=4.0", "objective.loss_scale=none",
            "objective.ema_scope=encoder", "objective.head_layers=2"],
        "teacher_prefix": "sentence_encoder.",
        "loss": float(loss) / int(regressed.sum()), "loss_sum": float(loss), "sample_size": int(regressed.sum()),
        "chosen": int(chosen.sum()),
    })
