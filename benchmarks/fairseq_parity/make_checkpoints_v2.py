"""data2vec 2.0 checkpoint fixtures written by fairseq itself, for `tests/test_fairseq_convert_v2.py`.

Each case builds a tiny fairseq model of one released kind (pretrained image / speech / text, the ImageNet
classifier of `mae_image_classification.py`, the CTC model of `wav2vec2_asr.py` around a v2 speech encoder),
saves it as fairseq's trainer does (`Trainer.state_dict` layout: the config as a plain container with enums as
strings, `model` with the EMA teacher under `_ema`, optimizer history, extra state) with
`checkpoint_utils.torch_persistent_save`, and records what fairseq computes on a fixed input: the student's
and the teacher's last-layer features, the pretraining loss on a fixed mask and decoder noise, or the
fine-tuned model's logits. The fine-tunes are built as fairseq builds them, from the pretrained fixture file
(`model_path` / `w2v_path`), so their configs carry the pretrained model's arguments as released files do.

Run with the fairseq environment of README.md, from the repository root (about 20 s):

    /work/fsenv/bin/python benchmarks/fairseq_parity/make_checkpoints_v2.py --fairseq /work/fairseq-src

Writes `tests/fixtures/fairseq_ckpt/<case>.pt` (fairseq's file) and `<case>.safetensors` / `<case>.json`
(inputs and fairseq's outputs). The same bytes on every run.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf

OUT = mf.ROOT / "tests" / "fixtures" / "fairseq_ckpt"
TINY = mf.TINY


# --------------------------------------------------------------------------------------------------- saving
def full_config(model_cfg, task_cfg, name: str, task_name: str | None = None):
    """A whole fairseq config (`FairseqConfig`, as hydra_train builds it) with `model` and `task` set; `name`
    and `task_name` are the registry names hydra writes as `_name`."""
    from fairseq.dataclass.configs import FairseqConfig
    from omegaconf import OmegaConf

    cfg = OmegaConf.structured(FairseqConfig)
    model = OmegaConf.structured(model_cfg)
    with _open(model):
        model._name = name
    cfg.model = model
    task = OmegaConf.structured(task_cfg) if not isinstance(task_cfg, dict) else OmegaConf.create(task_cfg)
    if task_name is not None:
        with _open(task):
            task._name = task_name
    cfg.task = task
    cfg.common.seed = 1
    cfg.optimization.max_update = 1000
    return cfg


def _open(cfg):
    from omegaconf import open_dict

    return open_dict(cfg)


def save_checkpoint(path: Path, cfg, model) -> None:
    """fairseq's `Trainer.state_dict()` layout, written by `checkpoint_utils.torch_persistent_save`."""
    from fairseq import checkpoint_utils
    from fairseq.logging import metrics
    from omegaconf import OmegaConf

    metrics.reset()
    with metrics.aggregate("train"):
        metrics.log_scalar("loss", 1.25, 16, round=3)
    state = {
        "args": None,
        "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "model": model.state_dict(),
        "criterion": None,
        "optimizer_history": [{"criterion_name": "ModelCriterion", "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {"best": None}, "num_updates": 7}],
        "task_state": {},
        "extra_state": {"metrics": metrics.state_dict(), "previous_training_time": 1.5,
                        "train_iterator": {"epoch": 1, "iterations_in_epoch": 7, "shuffle": True}},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint_utils.torch_persistent_save(state, str(path))


def save_outputs(name: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    save_file(tensors, str(OUT / f"{name}.safetensors"))
    (OUT / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    size = sum((OUT / f"{name}{ext}").stat().st_size for ext in (".pt", ".safetensors", ".json"))
    print(f"{name}: {meta['kind']}, {size / 1024:.0f} KB")


# --------------------------------------------------------------------------------------------------- fairseq runs
def v2_config(modality: str, modality_cfg, *, depth: int, top_k: int, loss_scale, cls_loss: float = 0.0,
              encoder_only: bool, norm_eps: float, layer_norm_targets: bool = False, dropout: float = 0.0,
              layerdrop: float = 0.0):
    """fairseq's `Data2VecMultiConfig` at tiny size (what `make_fixtures.v2_model` builds, as a config)."""
    from examples.data2vec.data.modality import Modality
    from examples.data2vec.models.data2vec2 import (
        D2vModalitiesConfig,
        Data2VecMultiConfig,
    )

    modality_cfg.model_depth, modality_cfg.num_alibi_heads = depth, TINY["heads"]
    modalities = D2vModalitiesConfig()
    for other in ("audio", "image", "text"):  # as hydra resolves them: the interpolated sizes
        getattr(modalities, other).model_depth, getattr(modalities, other).num_alibi_heads = depth, TINY["heads"]
    setattr(modalities, modality, modality_cfg)
    return Data2VecMultiConfig(
        loss_beta=0.0, loss_scale=loss_scale, depth=depth, num_heads=TINY["heads"], embed_dim=TINY["dim"],
        mlp_ratio=TINY["ffn"] / TINY["dim"], norm_eps=norm_eps, encoder_dropout=dropout, post_mlp_drop=dropout,
        attention_dropout=dropout, activation_dropout=0.0, dropout_input=0.0, layerdrop=layerdrop,
        layer_norm_first=False, average_top_k_layers=top_k, clone_batch=mf.CLONES, instance_norm_target_layer=True,
        layer_norm_targets=layer_norm_targets, ema_decay=0.999, ema_end_decay=0.9999, ema_anneal_end_step=1000,
        max_update=1000, ema_encoder_only=encoder_only, modalities=modalities,
        supported_modality=Modality[modality.upper()], seed=1, cls_loss=cls_loss)


def build_v2(cfg, task=None):
    """`Data2VecMultiModel` from the whole config's model node (a DictConfig, as fairseq's trainer passes it),
    weights moved off their initial values, the EMA teacher lagging the student, eval mode."""
    from examples.data2vec.models.data2vec2 import Data2VecMultiModel

    torch.manual_seed(60)
    model = Data2VecMultiModel.build_model(cfg.model, task)
    mf.perturb(model, seed=61)
    model.ema = model.make_ema_teacher(0.999)
    mf.perturb(model.ema.model, seed=62)
    model.ema.build_fp32_params()  # `_ema` in the state dict: the perturbed teacher
    return model.eval()


@torch.no_grad()
def fairseq_features(model, source, mode: str, padding_mask=None) -> dict[str, torch.Tensor]:
    """The student's last layer (`extract_features`, extra tokens kept) and the EMA teacher's, computed as
    `Data2VecMultiModel.forward` computes the teacher's pass (blocks only, or the whole teacher model, from the
    student's local features when the teacher has no local encoder)."""
    student = model.extract_features(source, mode=mode, padding_mask=padding_mask, mask=False,
                                     remove_extra_tokens=False)
    enc = model.modality_encoders[mode]
    tm = model.ema.model.eval()  # not a submodule of the model (EMAModule holds it): as forward, eval it here
    local = enc.local_features(source)
    if model.cfg.ema_encoder_only:
        inp, blocks = enc.contextualized_features(local, padding_mask, mask=False, remove_masked=False), tm
    elif enc.modality_cfg.ema_local_encoder:
        inp, blocks = tm.modality_encoders[mode](source, padding_mask, mask=False, remove_masked=False), tm.blocks
    else:
        inp = tm.modality_encoders[mode].contextualized_features(local, padding_mask, mask=False, remove_masked=False)
        blocks = tm.blocks
    x, scale = inp["x"], inp.get("alibi_scale")
    for i, blk in enumerate(blocks):
        ab = inp.get("alibi_bias")
        if ab is not None and scale is not None:
            ab = ab * (scale[i] if scale.size(0) > 1 else scale.squeeze(0)).type_as(ab)
        x, _ = blk(x, padding_mask=inp["padding_mask"], alibi_bias=ab)
    return {"out.features": student["x"], "out.teacher_features": x}


def pretraining_loss(model, mode: str, source, mask) -> dict[str, torch.Tensor]:
    """fairseq's loss per masked position on `mask` `[B * clones, N]` with the decoder noise ours draws
    (make_fixtures.v2_run)."""
    out, _, _ = mf.v2_run(model, mode, source, mask)
    return {"out.loss": out["out.loss"], "in.mask": mask.view(source.shape[0], mf.CLONES, -1)}


# --------------------------------------------------------------------------------------------------- cases
IMAGE_TASK = {"_name": "mae_image_pretraining", "data": "/datasets01/imagenet_full_size/061417", "input_size": 16,
              "local_cache_path": None, "key": "imgs", "beit_transforms": False, "target_transform": False,
              "no_transform": False, "rebuild_batches": True, "precompute_mask_config": None, "subsample": 1.0,
              "seed": 1, "dataset_type": "imagefolder"}


def image_config():
    from examples.data2vec.models.modalities.images import D2vImageConfig

    mcfg = D2vImageConfig(input_size=mf.IMAGE_SIZE, patch_size=mf.PATCH, in_chans=3, embed_dim=TINY["dim"],
                          prenet_depth=1, num_extra_tokens=1, init_extra_token_zero=False, inverse_mask=True,
                          mask_prob=0.8, mask_prob_adjust=0.07, mask_length=2, mask_noise_std=mf.NOISE_STD,
                          ema_local_encoder=True, use_alibi_encoder=False, decoder=mf.v2_decoder_cfg(kernel=3, groups=4))
    return full_config(v2_config("image", mcfg, depth=2, top_k=2, loss_scale=None, cls_loss=0.01, encoder_only=False,
                                 norm_eps=1e-6, layer_norm_targets=True), IMAGE_TASK, "data2vec_multi")


def images(seed: int, n: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, mf.IMAGE_SIZE, mf.IMAGE_SIZE, generator=g).half().float()


def v2_image() -> None:
    """data2vec 2.0 images (`config/v2/base_images_only_task.yaml` at tiny size): 1 prenet block and its
    LayerNorm, 2 main blocks, CLS token, the whole model in the EMA teacher, CLS loss 0.01."""
    from fairseq.data.data_utils import compute_block_mask_2d

    cfg = image_config()
    model = build_v2(cfg)
    path = OUT / "v2_image.pt"
    save_checkpoint(path, cfg, model)
    source = images(63)
    torch.manual_seed(64)
    mask = torch.as_tensor(compute_block_mask_2d((2 * mf.CLONES, (mf.IMAGE_SIZE // mf.PATCH) ** 2), 0.8, 2,
                                                 mask_prob_adjust=0.07, inverse_mask=True,
                                                 require_same_masks=True)).bool()
    tensors = {"in.source": source, **fairseq_features(model, source, "IMAGE"),
               **pretraining_loss(model, "IMAGE", source, mask)}
    save_outputs("v2_image", tensors, {"kind": "image pretrained", "noise_seed": mf.NOISE_SEED,
                                       "file": "fairseq Trainer.state_dict of Data2VecMultiModel (IMAGE)"})


def v2_image_ft() -> None:
    """The ImageNet classifier (`mae_image_classification.py`, `config/vision/finetuning/mae_imagenet_clean.yaml`
    settings: mean pooling, fc_norm, mixup 0.7 / cutmix 1.0, label smoothing 0.1, layer decay 0.65), built from
    the `v2_image` file through `model_path` as fairseq builds it, 5 classes."""
    import examples.data2vec.models.data2vec2  # noqa: F401 - registers data2vec_multi
    from examples.data2vec.models import mae_image_classification as mic
    from fairseq import models

    class Task:  # tasks.setup_task(mae_image_pretraining) needs torchvision's datasets; the model is all it builds
        @staticmethod
        def build_model(model_cfg, from_checkpoint=False):  # what FairseqTask.build_model does
            return models.build_model(model_cfg, None, from_checkpoint)

    mic.tasks = types.SimpleNamespace(setup_task=lambda cfg, **kw: Task())
    timm_data = types.ModuleType("timm.data")  # only training mixes; eval mode never calls it
    timm_data.Mixup = lambda **kwargs: None
    sys.modules["timm.data"] = timm_data
    ft = mic.MaeImageClassificationConfig(model_path=str(OUT / "v2_image.pt"), num_classes=5, mixup=0.7, cutmix=1.0,
                                          label_smoothing=0.1, drop_path_rate=0.1, layer_decay=0.65, data="/data")
    cfg = full_config(ft, {"_name": "mae_image_classification", "data": "/data", "input_size": mf.IMAGE_SIZE},
                      "mae_image_classification")
    torch.manual_seed(65)
    model = mic.MaeImageClassificationModel(cfg.model)  # reads the pretrained file, sets pretrained_model_args
    mf.perturb(model, seed=66)
    model.eval()
    cfg.model.model_path = "/checkpoint/data2vec2/base_imagenet.pt"  # where it was read from: no local path in the file
    save_checkpoint(OUT / "v2_image_ft.pt", cfg, model)
    source = images(67, 3)
    with torch.no_grad():
        logits = model(source)
    save_outputs("v2_image_ft", {"in.source": source, "out.logits": logits},
                 {"kind": "image classifier", "file": "fairseq Trainer.state_dict of MaeImageClassificationModel"})


AUDIO_TASK_KEYS = {"data": "/data/librispeech", "sample_rate": 16000, "normalize": True, "enable_padding": False,
                   "max_sample_size": 320000, "min_sample_size": 32000}


def audio_config(prenet: int):
    """Speech at tiny size, 3 blocks in all: `prenet` of them in the modality encoder (Large: 8 of 24; Base:
    none), the rest main blocks."""
    from examples.data2vec.models.modalities.audio import D2vAudioConfig
    from fairseq.tasks.audio_pretraining import AudioPretrainingConfig

    mcfg = D2vAudioConfig(feature_encoder_spec=repr(mf.AUDIO_CONVS), conv_pos_width=15, conv_pos_depth=3,
                          conv_pos_groups=4, prenet_depth=prenet, mask_prob=0.5, mask_prob_adjust=0.05, mask_length=5,
                          mask_noise_std=mf.NOISE_STD, ema_local_encoder=False, use_alibi_encoder=True,
                          learned_alibi_scale=True, learned_alibi_scale_per_head=True, prenet_dropout=0.1,
                          prenet_layerdrop=0.05,
                          decoder=mf.v2_decoder_cfg(kernel=5, groups=2, dim=TINY["dim"] // 2))
    mcfg.decoder.input_dropout = 0.1
    model = v2_config("audio", mcfg, depth=TINY["depth"] - prenet, top_k=2, loss_scale=None, encoder_only=False,
                      norm_eps=1e-5, dropout=0.1, layerdrop=0.05)
    return full_config(model, AudioPretrainingConfig(**AUDIO_TASK_KEYS), "data2vec_multi",
                       "audio_pretraining")


def clips(seed: int, lengths=(1200, 1200)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(lengths), max(lengths), generator=g).half().float()


def v2_audio() -> None:
    """data2vec 2.0 speech (`config/v2/large_audio_only_task.yaml`'s layout at tiny size: a prenet block in the
    modality encoder, then 2 main blocks): ALiBi with a learned scale per head, the teacher averaging the
    positional convs, their norm and the prenet (`ema_local_encoder: false`), a decoder half the model's width,
    dropout 0.1 and layer drop 0.05 (eval mode: off)."""
    from fairseq.data.data_utils import compute_mask_indices

    cfg = audio_config(prenet=1)
    model = build_v2(cfg)
    save_checkpoint(OUT / "v2_audio.pt", cfg, model)
    source = clips(70)
    mask = torch.from_numpy(compute_mask_indices((2 * mf.CLONES, 59), None, 0.5, 5, min_masks=1,
                                                 require_same_masks=True, seed=71, epoch=1,
                                                 indices=torch.arange(2 * mf.CLONES)))
    padded, padding = padded_clips(source)
    tensors = {"in.source": source, **fairseq_features(model, source, "AUDIO"),
               "in.padded": padded, "in.padding_mask": padding,
               **{f"{k}_padded": v for k, v in fairseq_features(model, padded, "AUDIO", padding).items()},
               **pretraining_loss(model, "AUDIO", source, mask)}
    save_outputs("v2_audio", tensors, {"kind": "audio pretrained", "noise_seed": mf.NOISE_SEED,
                                       "file": "fairseq Trainer.state_dict of Data2VecMultiModel (AUDIO)"})


def padded_clips(source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`source` with its later clips cut short (1000 and 760 samples, zeros after), and the padding mask."""
    lengths = torch.tensor([source.shape[1], 1000, 760][:source.shape[0]])
    padding = torch.arange(source.shape[1])[None] >= lengths[:, None]
    return source.masked_fill(padding, 0.0), padding


LETTERS = list("|ETAONIHSRDLUMWCFGYPBVK'XJQZ")  # LibriSpeech's dict.ltr.txt order


def v2_audio_ctc() -> None:
    """The 960 h CTC fine-tune (`wav2vec2_asr.py` `Wav2VecCtc` around the v2 encoder, wav2vec 2.0's base_960h
    settings) of a Base-layout pretrained model (no prenet; written to a temporary `w2v_path`, not kept),
    fairseq's letter dictionary (<s> <pad> </s> <unk>, then LibriSpeech's 28 characters): 32 outputs, index 0
    the CTC blank."""
    import tempfile

    from fairseq.data import Dictionary
    from fairseq.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig, Wav2VecCtc

    pretrained = Path(tempfile.mkdtemp()) / "base_libri.pt"
    cfg = audio_config(prenet=0)
    save_checkpoint(pretrained, cfg, build_v2(cfg))

    d = Dictionary()
    for c in LETTERS:
        d.add_symbol(c)
    ft = Wav2Vec2CtcConfig(w2v_path=str(pretrained), normalize=True, data="/data/librispeech",
                           dropout=0.0, activation_dropout=0.1, attention_dropout=0.0, layerdrop=0.1,
                           feature_grad_mult=0.0, final_dropout=0.0, mask_prob=0.5, mask_length=10,
                           mask_channel_prob=0.1, mask_channel_length=64, apply_mask=True,
                           freeze_finetune_updates=0)
    from fairseq.tasks.audio_finetuning import AudioFinetuningConfig

    cfg = full_config(ft, AudioFinetuningConfig(labels="ltr", **AUDIO_TASK_KEYS), "wav2vec_ctc",
                      "audio_finetuning")
    torch.manual_seed(72)
    model = Wav2VecCtc.build_model(cfg.model, types.SimpleNamespace(target_dictionary=d))
    mf.perturb(model, seed=73)
    model.eval()
    cfg.model.w2v_path = "/checkpoint/data2vec2/base_libri.pt"  # where it was read from: no local path in the file
    save_checkpoint(OUT / "v2_audio_ctc.pt", cfg, model)
    source, padding = padded_clips(clips(74, (1200, 1200, 1200)))  # a padded batch, as fine-tuning batches are
    with torch.no_grad():
        out = model(source=source, padding_mask=padding)
    logits = out["encoder_out"].transpose(0, 1)  # T x B x V -> B x T x V
    save_outputs("v2_audio_ctc", {"in.source": source, "in.padding_mask": padding, "out.logits": logits,
                                  "out.padding_mask": out["padding_mask"]},
                 {"kind": "audio ctc", "labels": [d[i] for i in range(len(d))],
                  "file": "fairseq Trainer.state_dict of Wav2VecCtc (data2vec_multi encoder)"})


def text_config(d):
    from examples.data2vec.models.modalities.text import D2vTextConfig

    mcfg = D2vTextConfig(max_source_positions=mf.TEXT_LEN, dropout=0.1, prenet_depth=0, mask_prob=0.48,
                         mask_length=1, mask_noise_std=mf.NOISE_STD,
                         decoder=mf.v2_decoder_cfg(kernel=5, groups=1, residual=False, projections=2))
    mcfg.decoder.input_dropout = 0.1
    model = v2_config("text", mcfg, depth=TINY["depth"], top_k=2, loss_scale=1.0, encoder_only=True,
                      norm_eps=1e-5, dropout=0.1)
    task = {"_name": "masked_lm", "data": "/data/books_wiki", "sample_break_mode": "none", "tokens_per_sample": 30,
            "mask_prob": 0.0, "leave_unmasked_prob": 0.0, "random_token_prob": 0.0, "freq_weighted_replacement": False,
            "mask_whole_words": False, "mask_multiple_length": 1, "mask_stdev": 0.0, "shorten_method": "none",
            "shorten_data_split_list": "", "seed": 1, "include_target_tokens": True, "include_index": True,
            "skip_masking": True, "d2v2_multi": True}
    return full_config(model, task, "data2vec_multi")


def v2_text() -> None:
    """data2vec 2.0 text (`config/v2/base_text_only_task.yaml` at tiny size): the teacher averages the blocks only
    (`ema_encoder_only`), the released decoder (no residual, 2 projection layers), loss scale 1. The dictionary is
    fairseq's (<s> <pad> </s> <unk>, 40 words, <mask> last, as masked_lm adds it): not in the checkpoint."""
    from examples.data2vec.models.modalities.base import random_masking

    d = mf.text_dictionary()
    cfg = text_config(d)
    model = build_v2(cfg, types.SimpleNamespace(source_dictionary=d))
    save_checkpoint(OUT / "v2_text.pt", cfg, model)
    g = torch.Generator().manual_seed(75)
    B = 2
    source = torch.cat([torch.zeros(B, 1, dtype=torch.long),
                        torch.randint(d.nspecial, d.nspecial + mf.TEXT_WORDS, (B, mf.TEXT_LEN - 2), generator=g),
                        torch.full((B, 1), d.eos(), dtype=torch.long)], dim=1)
    padded = source.clone()
    padded[1, 20:] = d.pad()  # the second sentence is 20 tokens (ends without </s>: what a truncation leaves)
    torch.manual_seed(76)
    mask = random_masking(torch.zeros(B * mf.CLONES, mf.TEXT_LEN, 1), 0.48, None).mask.bool()
    tensors = {"in.source": source, "in.padded": padded,
               **{f"{k}_padded": v for k, v in fairseq_features(model, padded, "TEXT", padded.eq(d.pad())).items()},
               **fairseq_features(model, source, "TEXT"), **pretraining_loss(model, "TEXT", source, mask)}
    save_outputs("v2_text", tensors, {"kind": "text pretrained", "noise_seed": mf.NOISE_SEED, "pad": d.pad(),
                                      "file": "fairseq Trainer.state_dict of Data2VecMultiModel (TEXT)"})


def released_configs() -> None:
    """The config sections every released data2vec 2.0 model was pretrained with, as its file holds them:
    fairseq's `config/v2/*.yaml` merged over `Data2VecMultiConfig`'s defaults (interpolations resolved, enums
    as strings), the model, task and optimiser sections. `tests/test_fairseq_convert_v2.py` converts each
    into our config (no weights: the files are 0.3 to 2.5 GB)."""
    import examples.data2vec
    from examples.data2vec.models.data2vec2 import Data2VecMultiConfig
    from fairseq.dataclass.configs import FairseqConfig
    from omegaconf import OmegaConf

    folder = Path(examples.data2vec.__path__[0]) / "config" / "v2"
    out = {}
    for path in sorted(folder.glob("*.yaml")):
        raw = OmegaConf.to_container(OmegaConf.load(path))  # hydra's YAML reading (1e-06 is a float)
        cfg = OmegaConf.structured(FairseqConfig)
        # untyped, so that keys of a later fairseq (huge: decoder.final_layer_norm) stay as the file has them
        model = OmegaConf.create(OmegaConf.to_container(OmegaConf.structured(Data2VecMultiConfig), enum_to_str=True))
        cfg.model = OmegaConf.merge(model, raw["model"])
        for section in ("common", "optimization"):
            for key, value in (raw.get(section) or {}).items():
                if key in cfg[section] and not (isinstance(value, str) and "${" in value):  # ${env:PWD}/...
                    cfg[section][key] = value
        for section in ("task", "optimizer", "lr_scheduler"):  # `lr_scheduler: pass_through` picks hydra's group
            value = raw.get(section)
            cfg[section] = {"_name": value} if isinstance(value, str) else value
        plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        out[path.stem] = {k: plain[k] for k in ("model", "task", "optimization", "optimizer", "lr_scheduler")}
    (OUT / "v2_released_configs.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"v2_released_configs: {len(out)} configs, {(OUT / 'v2_released_configs.json').stat().st_size // 1024} KB")


CASES = {"v2_image": v2_image, "v2_image_ft": v2_image_ft, "v2_audio": v2_audio, "v2_audio_ctc": v2_audio_ctc,
         "v2_text": v2_text, "v2_released_configs": released_configs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fairseq", type=Path, required=True, help="folder of the unpacked fairseq-fixed sdist")
    parser.add_argument("cases", nargs="*", default=list(CASES), help=f"any of {', '.join(CASES)} (default: all)")
    args = parser.parse_args()
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    torch.set_num_threads(1)
    mf.import_fairseq(args.fairseq.resolve())
    OUT.mkdir(parents=True, exist_ok=True)
    for case in args.cases:
        CASES[case]()


if __name__ == "__main__":
    main()
