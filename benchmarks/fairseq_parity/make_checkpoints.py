"""fairseq checkpoint files of tiny data2vec models, for `tests/test_fairseq_convert.py`.

Builds each kind of released data2vec checkpoint at tiny size with fairseq's own code (v1 speech
`data2vec_audio`, its `wav2vec_ctc` fine-tune, v1 text `data2vec_text`), moves every weight off its initial value
and the EMA teacher off the student, and saves the file as fairseq's trainer does: `checkpoint_utils.
torch_persistent_save` of the trainer's state dict, with `cfg` an omegaconf DictConfig made the way
`fairseq_cli/hydra_train.py` makes it (so the same pickled layout as the released files: omegaconf classes in the
pickle). Beside each `<case>.pt` it writes what fairseq computes on a fixed input (`<case>.safetensors`: the
student's and the teacher's last layer, or the CTC logits) and `<case>.json`. The test converts the `.pt` with
data2vec, which needs neither fairseq nor this script, and compares.

Setup as for make_fixtures.py (README.md beside this file); from the repository root:

    OMP_NUM_THREADS=1 /work/fsenv/bin/python benchmarks/fairseq_parity/make_checkpoints.py --fairseq /work/fairseq-src

data2vec 2.0 kinds come from `make_checkpoints_v2.py` (its `CASES`, merged into ours when the file exists); its
functions reuse `fairseq_config`, `save_checkpoint_file` and `save_outputs` from here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf

OUT = mf.ROOT / "tests" / "fixtures" / "fairseq_ckpt"
TEXTS = ["The quick brown fox jumps over the lazy dog.", "data2vec: one objective for speech, vision & text!",
         "Zebras?"]


# --------------------------------------------------------------------------------------------------- saving
def fairseq_config(model, model_name: str, task, task_name: str, **sections):
    """The run's config as fairseq's hydra_train.py holds it when it saves: FairseqConfig with `model` and `task`
    (dataclass instances, or DictConfigs, registered as `model_name` / `task_name`) and any other section
    overridden, then to_container(resolve, enum_to_str) and back to a DictConfig in struct mode."""
    from fairseq.dataclass.configs import FairseqConfig
    from omegaconf import OmegaConf, open_dict

    cfg = OmegaConf.structured(FairseqConfig())
    with open_dict(cfg):
        cfg.model = OmegaConf.structured(model)
        cfg.task = OmegaConf.structured(task)
        cfg.model._name, cfg.task._name = model_name, task_name
        for name, value in sections.items():
            cfg[name] = OmegaConf.merge(cfg[name], value) if cfg.get(name) is not None else value
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    OmegaConf.set_struct(cfg, True)
    return cfg


def save_checkpoint_file(name: str, cfg, model: torch.nn.Module, num_updates: int = 1000) -> Path:
    """`<name>.pt` with the keys and layout of fairseq's `Trainer.state_dict` of the data2vec releases (`cfg` the
    DictConfig itself, the model's own `state_dict`, which holds `_ema` where the model has an EMA teacher),
    written by fairseq's `checkpoint_utils.torch_persistent_save`."""
    from fairseq import checkpoint_utils

    OUT.mkdir(parents=True, exist_ok=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-6)
    state = {
        "args": None, "cfg": cfg, "model": model.state_dict(), "criterion": None,
        "optimizer_history": [{"criterion_name": "ModelCriterion", "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {"best": None}, "num_updates": num_updates}],
        "task_state": {}, "extra_state": {"metrics": {}, "previous_training_time": 12.5,
                                          "train_iterator": {"epoch": 1, "iterations_in_epoch": 0}},
        "last_optimizer_state": optimizer.state_dict(),
    }
    path = OUT / f"{name}.pt"
    checkpoint_utils.torch_persistent_save(state, str(path))
    return path


def save_outputs(name: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """`<name>.safetensors` (inputs and fairseq's outputs) and `<name>.json`."""
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT / f"{name}.safetensors"))
    (OUT / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
    sizes = sum((OUT / f"{name}{ext}").stat().st_size for ext in (".pt", ".safetensors", ".json"))
    print(f"{name}: {sizes / 1024:.0f} KB")


# --------------------------------------------------------------------------------------------------- v1 speech
def audio_model_cfg(**overrides):
    """fairseq's tiny data2vec_audio config (the parity fixtures' sizes, make_fixtures.v1_audio)."""
    from examples.data2vec.models.data2vec_audio import Data2VecAudioConfig

    settings = {
        "extractor_mode": "layer_norm", "conv_feature_layers": repr(mf.AUDIO_CONVS), "conv_bias": False,
        "encoder_layers": mf.TINY["depth"], "encoder_embed_dim": mf.TINY["dim"],
        "encoder_ffn_embed_dim": mf.TINY["ffn"], "encoder_attention_heads": mf.TINY["heads"], "activation_fn": "gelu",
        "layer_norm_first": False, "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0,
        "encoder_layerdrop": 0.05, "conv_pos": 15, "pos_conv_depth": 3, "conv_pos_groups": 4, "mask_prob": 0.65,
        "mask_length": 3, "require_same_masks": True, "mask_dropout": 0.0, "average_top_k_layers": 2,
        "instance_norm_target_layer": True, "loss_beta": 0.0, "loss_scale": None, "ema_decay": 0.999,
        "ema_end_decay": 0.9999, "ema_anneal_end_step": 1000, "max_update": 1000,
        "ema_transformer_only": True, "ema_layers_only": True}
    settings.update(overrides)
    return Data2VecAudioConfig(**settings)


def audio_input() -> tuple[torch.Tensor, torch.Tensor]:
    """Two clips of 1,200 and 760 samples, zero-padded: (source [2, 1200], padding mask, True = padding)."""
    g = torch.Generator().manual_seed(3)
    lengths = [1200, 760]
    source = torch.zeros(2, max(lengths))
    for i, n in enumerate(lengths):
        source[i, :n] = torch.randn(n, generator=g)
    return source, torch.arange(source.shape[1])[None] >= torch.tensor(lengths)[:, None]


def audio_task_cfg():
    from fairseq.tasks.audio_pretraining import AudioPretrainingConfig

    return AudioPretrainingConfig(data="/data/librispeech", normalize=True, sample_rate=16000,
                                  max_sample_size=320000, min_sample_size=32000)


def training_sections(phase_ratio: tuple[float, float, float] = (0.03, 0.9, 0.07),
                      final_lr_scale: float = 0.01) -> dict:
    """The run's optimisation sections; the scheduler is fairseq's `TriStageLRScheduleConfig` with every field, as
    hydra writes it into a released file (default: data2vec's base_librispeech.yaml phases; wav2vec 2.0's CTC
    fine-tuning: (0.1, 0.4, 0.5) to 0.05). Its max_update and lr interpolations resolve to `optimization`'s."""
    from fairseq.optim.lr_scheduler.tri_stage_lr_scheduler import TriStageLRScheduleConfig
    from omegaconf import OmegaConf

    scheduler = OmegaConf.structured(TriStageLRScheduleConfig(_name="tri_stage", phase_ratio=list(phase_ratio),
                                                              final_lr_scale=final_lr_scale))
    return {"optimization": {"max_update": 1000, "lr": [5e-4], "clip_norm": 0.0},
            "optimizer": {"_name": "adam", "adam_betas": "(0.9,0.98)", "adam_eps": 1e-6, "weight_decay": 0.01},
            "lr_scheduler": scheduler}


def v1_audio() -> None:
    """data2vec_audio pretraining: student, EMA teacher (`_ema`: the Transformer, pos convs copied) and
    `final_proj`; outputs: the student's last layer (`extract_features`) and the teacher's (the same model with
    the EMA encoder), on two padded clips."""
    import copy

    from examples.data2vec.models.data2vec_audio import Data2VecAudioModel

    torch.manual_seed(0)
    model_cfg = audio_model_cfg()
    model = Data2VecAudioModel(model_cfg)
    mf.perturb(model, seed=21)
    model.make_ema_teacher()
    mf.perturb(model.ema.model.layers, seed=22)
    mf.perturb(model.ema.model.layer_norm, seed=23)
    model.eval()
    cfg = fairseq_config(model_cfg, "data2vec_audio", audio_task_cfg(), "audio_pretraining", **training_sections())
    path = save_checkpoint_file("v1_audio", cfg, model)

    source, padding = audio_input()
    teacher = copy.deepcopy(model)
    teacher.ema = None
    teacher.encoder.load_state_dict(model.ema.model.state_dict())
    with torch.no_grad():
        student_out = model.extract_features(source, padding, mask=False)
        teacher_out = teacher.extract_features(source, padding, mask=False)
    save_outputs("v1_audio", {"in.source": source, "in.padding_mask": padding,
                              "out.frame_padding": student_out["padding_mask"],
                              "out.student": student_out["x"], "out.teacher": teacher_out["x"]},
                 {"fairseq": "examples/data2vec/models/data2vec_audio.py", "file": path.name,
                  "outputs": "extract_features(mask=False)['x'] of the student and of the model with the EMA encoder"})


def v1_audio_ctc() -> None:
    """wav2vec_ctc over a data2vec_audio model (fairseq's `Wav2VecCtc`, the released data2vec speech fine-tunes):
    `w2v_args` holds the pretraining config, the CTC projection has LibriSpeech's 32 letters. Fine-tuning-only
    settings (channel masking, frozen feature encoder, freeze updates) are set as the released ones set them;
    outputs: the logits of two padded clips."""
    from fairseq.models.wav2vec.wav2vec2_asr import (
        Wav2Vec2CtcConfig,
        Wav2VecCtc,
        Wav2VecEncoder,
    )
    from fairseq.tasks.audio_finetuning import AudioFinetuningConfig

    torch.manual_seed(1)
    pretrain = fairseq_config(audio_model_cfg(), "data2vec_audio", audio_task_cfg(), "audio_pretraining",
                              **training_sections())
    ctc_cfg = Wav2Vec2CtcConfig(w2v_path="/models/audio_base_ls.pt", apply_mask=True, mask_prob=0.65,
                                mask_length=3, mask_channel_prob=0.5, mask_channel_length=4, layerdrop=0.05,
                                activation_dropout=0.1, feature_grad_mult=0.0, freeze_finetune_updates=100,
                                final_dropout=0.0, w2v_args=pretrain, normalize=True, data="/data/ll10h")
    encoder = Wav2VecEncoder(ctc_cfg, output_size=32)
    model = Wav2VecCtc(ctc_cfg, encoder)
    mf.perturb(model, seed=31)
    model.eval()
    task = AudioFinetuningConfig(data="/data/ll10h", normalize=True, labels="ltr")
    cfg = fairseq_config(ctc_cfg, "wav2vec_ctc", task, "audio_finetuning", **training_sections((0.1, 0.4, 0.5), 0.05))
    path = save_checkpoint_file("v1_audio_ctc", cfg, model, num_updates=20000)

    source, padding = audio_input()
    with torch.no_grad():
        out = model(source=source, padding_mask=padding)
    save_outputs("v1_audio_ctc", {"in.source": source, "in.padding_mask": padding,
                                  "out.frame_padding": out["padding_mask"],
                                  "out.logits": out["encoder_out"].transpose(0, 1)},
                 {"fairseq": "fairseq/models/wav2vec/wav2vec2_asr.py (Wav2VecCtc)", "file": path.name,
                  "outputs": "encoder_out (logits, [B, T, V]) in eval mode"})


# --------------------------------------------------------------------------------------------------- v1 text
def text_bpe() -> Path:
    """A tiny GPT-2 byte-level BPE (`encoder.json`, `vocab.bpe`, trained with `tokenizers` on a few lines) and
    fairseq's `dict.txt` over it (counts of the BPE ids in the same lines, as fairseq-preprocess writes it): the
    three files a user passes with `--dict`. Ids are in order of frequency, so they differ from the BPE's."""
    from fairseq.data import Dictionary
    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder
    from tokenizers import ByteLevelBPETokenizer

    folder = OUT / "v1_text_dict"
    folder.mkdir(parents=True, exist_ok=True)
    corpus = [*TEXTS[:2], "A quick dog, a lazy fox; the objective of speech and text.", "Brown dogs jump over foxes."]
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(corpus * 3, vocab_size=300, min_frequency=2, show_progress=False)
    vocab = json.loads(tok.to_str())["model"]
    (folder / "encoder.json").write_text(json.dumps(vocab["vocab"], ensure_ascii=False))
    merges = [m if isinstance(m, str) else " ".join(m) for m in vocab["merges"]]
    (folder / "vocab.bpe").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    bpe = get_encoder(str(folder / "encoder.json"), str(folder / "vocab.bpe"))
    d = Dictionary()
    for line in corpus:
        for i in bpe.encode(line):
            d.add_symbol(str(i))
    for i in range(len(vocab["vocab"])):  # every BPE id, as GPT-2's released dict.txt (unseen ones count 0)
        d.add_symbol(str(i), n=0)
    d.add_symbol("madeupword0000", n=0)  # a literal symbol, as RoBERTa's padding entries
    d.finalize(padding_factor=1)
    d.save(str(folder / "dict.txt"))
    return folder


def v1_text() -> None:
    """data2vec_text pretraining (`Data2VecTextModel`, the released text Base's settings at tiny size): student,
    EMA teacher (`encoder._ema`), 2-layer regression head; outputs: the last layer of student and teacher on
    `TEXTS`, tokenised by fairseq's GPT-2 BPE and dictionary (the ids are saved too)."""
    import copy

    from examples.data2vec.models.data2vec_text import (
        Data2VecTextConfig,
        Data2VecTextModel,
    )
    from fairseq.data import Dictionary
    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder
    from fairseq.models.transformer import TransformerConfig
    from fairseq.models.transformer.transformer_config import (
        DecoderConfig,
        EncDecBaseConfig,
    )
    from fairseq.tasks.masked_lm import MaskedLMConfig

    folder = text_bpe()
    d = Dictionary.load(str(folder / "dict.txt"))
    d.add_symbol("<mask>")  # as MaskedLMTask.setup_task
    torch.manual_seed(10)
    tcfg = TransformerConfig()
    tcfg.dropout, tcfg.attention_dropout, tcfg.activation_dropout = 0.1, 0.1, 0.0
    tcfg.layernorm_embedding, tcfg.activation_fn, tcfg.no_scale_embedding = True, "gelu", True
    tcfg.max_source_positions = 32
    # `${model.decoder.embed_dim}` resolves only at the top level, not under model.transformer
    tcfg.decoder = DecoderConfig(input_dim=512, output_dim=512)
    # instances: TransformerConfig's defaults are the classes, whose field defaults OmegaConf would save
    tcfg.encoder = EncDecBaseConfig(embed_dim=mf.TINY["dim"], ffn_embed_dim=mf.TINY["ffn"], layers=mf.TINY["depth"],
                                    attention_heads=mf.TINY["heads"], normalize_before=False, learned_pos=True,
                                    layerdrop=0.0)
    model_cfg = Data2VecTextConfig(max_positions=32, head_layers=2, transformer=tcfg, loss_beta=4.0, loss_scale=1.0,
                                   average_top_k_layers=2, layer_norm_target_layer=True, ema_decay=0.999,
                                   ema_end_decay=0.9999, ema_anneal_end_step=1000, ema_transformer_layers_only=True)
    task_cfg = MaskedLMConfig(data="/data/books", sample_break_mode="complete_doc", tokens_per_sample=32,
                              mask_prob=0.35, leave_unmasked_prob=0.0, random_token_prob=0.0, mask_multiple_length=4,
                              include_target_tokens=True)

    class Task:  # what Data2VecTextModel.build_model reads of the task
        source_dictionary = d
        cfg = task_cfg

    model = Data2VecTextModel.build_model(model_cfg, Task())
    mf.perturb(model, seed=41)
    model.encoder.make_ema_teacher()
    mf.perturb(model.encoder.ema.model.layers, seed=42)
    model.eval()
    sections = {"optimization": {"max_update": 1000, "lr": [2e-4], "clip_norm": 5.0},
                "optimizer": {"_name": "adam", "adam_betas": "(0.9,0.98)", "adam_eps": 1e-6, "weight_decay": 0.01},
                "lr_scheduler": {"_name": "cosine", "warmup_updates": 100}}
    path = save_checkpoint_file("v1_text", fairseq_config(model_cfg, "data2vec_text", task_cfg, "masked_lm",
                                                           **sections), model)

    bpe = get_encoder(str(folder / "encoder.json"), str(folder / "vocab.bpe"))
    rows = [torch.cat([torch.tensor([d.bos()]), d.encode_line(" ".join(map(str, bpe.encode(t))),
                                                             append_eos=True, add_if_not_exist=False).long()])
            for t in TEXTS]
    tokens = mf.pad_batch(rows, d.pad())
    teacher = copy.deepcopy(model.encoder)
    teacher.ema = None
    teacher.sentence_encoder.load_state_dict(model.encoder.ema.model.state_dict())
    with torch.no_grad():
        student_out, _ = model.encoder.extract_features(tokens)
        teacher_out, _ = teacher.extract_features(tokens)
    save_outputs("v1_text", {"in.tokens": tokens, "out.student": student_out, "out.teacher": teacher_out},
                 {"fairseq": "examples/data2vec/models/data2vec_text.py", "file": path.name, "texts": TEXTS,
                  "dict": folder.name,
                  "outputs": "encoder.extract_features of the student and of the EMA sentence encoder"})


CASES = {"v1_audio": v1_audio, "v1_audio_ctc": v1_audio_ctc, "v1_text": v1_text}


def all_cases() -> dict:
    """Ours and data2vec 2.0's (make_checkpoints_v2.CASES, when that file is there)."""
    if (Path(__file__).parent / "make_checkpoints_v2.py").is_file():
        import make_checkpoints_v2

        return {**CASES, **make_checkpoints_v2.CASES}
    return dict(CASES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fairseq", type=Path, required=True, help="the unpacked fairseq-fixed sdist")
    parser.add_argument("cases", nargs="*", help="cases to write (default: all)")
    args = parser.parse_args()
    mf.import_fairseq(args.fairseq)
    cases = all_cases()
    for name in args.cases or list(cases):
        cases[name]()


if __name__ == "__main__":
    main()
