"""Run configuration: plain dataclasses, filled from a YAML recipe and `key=value` overrides.

A recipe is a YAML file whose nesting mirrors :class:`Config`. Recipes ship inside the package
(``data2vec/recipes/NAME.yaml``) and are chosen by name, or by path for a user's own file. Every key and
value is checked against the dataclass fields, so a typo fails loudly instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from data2vec.errors import Data2VecError

# Per-channel (R, G, B) mean and standard deviation that image pixels in 0..1 are normalised with
# (data.image_mean / data.image_std): timm's IMAGENET_DEFAULT_* (torchvision's ImageNet statistics) and
# IMAGENET_INCEPTION_* (0.5 / 0.5, values in [-1, 1]; transformers' IMAGENET_STANDARD_*, BeitImageProcessor's default)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclass
class EncoderConfig:
    """The Transformer shared by every modality (sizes and block variant)."""

    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    norm_first: bool = True  # pre-LN (ViT/BEiT) when true, post-LN (wav2vec 2.0, RoBERTa) when false
    norm_eps: float = 1e-6
    layer_scale: float = 0.0  # initial value of the per-channel layer scale; 0 turns it off
    qkv_bias: Literal["all", "qv", "none"] = "qv"  # BEiT / HF Data2VecVision: key projection has no bias
    dropout: float = 0.0
    attn_dropout: float = 0.0
    # dropout on the FFN's hidden activations; None: `dropout` (HF's layout); fairseq's recipes use 0 there
    # (activation_dropout) while `dropout` still acts after attention and after the FFN
    activation_dropout: Optional[float] = None
    drop_path: float = 0.0  # rate of the deepest block; earlier blocks get a linearly smaller rate
    # chance that training skips a whole block (fairseq's layerdrop: 0.05 in its speech recipes); the student
    # only, as the teacher runs in eval mode
    layer_drop: float = 0.0
    # ALiBi attention bias over token distances with a learned per-head scale (fairseq v2 speech:
    # use_alibi_encoder, learned_alibi_scale_per_head); 1-D sequences only (audio, text)
    alibi: bool = False
    final_norm: bool = True  # layer norm after the last block (pre-LN encoders only)
    # initial weights (nn/init.py): "normal" (0, 0.02) for Linear layers and tokens, a xavier patch embedding
    # (this library, fairseq's init_bert_params, MAE); "beit": the same normal cut at +-0.02 (std ~0.0108), the
    # patch embedding too (Meta's data2vec_vision trunc_normal_(std=0.02) with a=-std, b=std)
    init: Literal["normal", "beit"] = "normal"

    def __post_init__(self) -> None:
        _check(0.0 <= self.layer_drop < 1.0, "model.layer_drop", self.layer_drop, "must be in [0, 1)")
        _check(self.activation_dropout is None or 0.0 <= self.activation_dropout < 1.0, "model.activation_dropout",
               self.activation_dropout, "must be in [0, 1)")


@dataclass
class ImageConfig:
    """The ViT front-end: patches, positions and the learned mask embedding."""

    image_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    cls_token: bool = True
    pos_embed: Literal["learned", "sincos", "none"] = "sincos"
    # channel halves of the sin-cos positions: [x (column), y (row)] as MAE and fairseq, or [y, x] (configs saved
    # before this key existed load with "yx", so their models keep the positions they were trained with)
    sincos_order: Literal["xy", "yx"] = "xy"
    # LayerNorm over the tokens (CLS and patches with their positions) before the first block: fairseq's data2vec
    # 2.0 image model has it (its context encoder's norm, as its blocks are post-LN); BEiT / data2vec v1 does not
    embed_norm: bool = False
    rel_pos_bias: Literal["none", "shared", "per_layer"] = "none"
    pool: Literal["mean", "cls"] = "mean"
    pool_norm: bool = False  # LayerNorm on the pooled vector (BEiT / HF Data2VecVision pooler with mean pooling)


@dataclass
class TextConfig:
    """The RoBERTa-layout text front-end and its token ids (defaults: RoBERTa's / HF Data2VecText's)."""

    vocab_size: int = 50265
    max_positions: int = 514  # RoBERTa: ids start at pad_id + 1, so 512 usable positions
    block_size: int = 512  # most tokens per training sample, <s> and </s> included
    pad_id: int = 1
    bos_id: int = 0
    eos_id: int = 2
    mask_id: int = 50264
    tokenizer: str = ""  # path to a tokenizer.json; empty: the one stored beside the binarised data
    embed_norm_eps: float = 1e-5


@dataclass
class AudioConfig:
    """The speech front-end and its input (defaults: data2vec Base / HF Data2VecAudio, 16 kHz, 20 ms frames)."""

    sample_rate: int = 16000  # everything is resampled to this rate on loading
    conv_dim: list[int] = field(default_factory=lambda: [512] * 7)  # channels of each feature-encoder conv
    conv_kernel: list[int] = field(default_factory=lambda: [10, 3, 3, 3, 3, 2, 2])
    conv_stride: list[int] = field(default_factory=lambda: [5, 2, 2, 2, 2, 2, 2])
    conv_bias: bool = False
    pos_conv_layers: int = 5  # data2vec: 5 layers of kernel 19 (total width 95); 0: no positional convolution
    pos_conv_kernel: int = 19
    pos_conv_groups: int = 16
    # padded frames zeroed before every positional conv layer (a real frame's output does not depend on the
    # padding), once, before the first (HF Data2VecAudio / fairseq v1: what models converted from them use), or
    # "none": not at all, so the padding's features reach the convs (fairseq's data2vec 2.0 speech encoder: what
    # models converted from it use)
    pos_conv_zero_padding: Literal["every_layer", "once", "none"] = "every_layer"
    feature_dropout: float = 0.0  # after the projection to model width (HF feat_proj_dropout)
    normalize: bool = True  # zero mean, unit variance per utterance (the reference recipe's `normalize: true`)
    max_sample_size: int = 320000  # random crop for pretraining (20 s); evaluation keeps the centre
    min_sample_size: int = 0  # pretraining skips shorter files (never below the receptive field, 400)
    max_batch_samples: int = 0  # most padded samples per global batch (0: only train.batch_size limits it)


@dataclass
class MaskingConfig:
    """How the student's input is masked (block-wise for images). The image and speech masks draw what Meta's
    code draws (docs/fidelity.md, "Masking")."""

    ratio: float = 0.6  # images: share of patches masked (v1: at most round(ratio * patches), as Meta's BEiT generator)
    min_block: int = 16
    min_aspect: float = 0.3
    inverse: bool = False  # data2vec 2.0: choose blocks to keep visible instead of blocks to mask
    block_size: int = 3  # side of a kept block when `inverse`
    # data2vec 2.0 images (inverse) and speech: extra share of block centres drawn, as overlaps shrink the blocks
    # (fairseq's mask_prob_adjust: 0.07 Base / 0.1 Large images, 0.05 Base / 0.1 Large speech)
    prob_adjust: float = 0.0
    token_prob: float = 0.15  # text: BERT masking, share of non-special tokens chosen (paper: 15%)
    token_random: float = 0.1  # text: share of chosen tokens replaced by a random token
    token_keep: float = 0.1  # text: share of chosen tokens left unchanged (the rest become the mask token)
    token_span: int = 1  # text: chosen tokens come in spans of this many (released v1 recipe: 35% in spans of 4)
    # audio v1: chance that a frame starts a masked span (0.65: ~49% masked, ~45% after same_count); audio v2:
    # share of frames masked, exactly (0.5), in spans centred on random frames
    span_prob: float = 0.65
    span_length: int = 10  # audio: frames per masked span (paper: 10, i.e. 200 ms)
    # audio v1: every clip of a batch keeps the batch's smallest masked count, masked frames dropped at random
    # (fairseq's require_same_masks, its released recipe); false: spans as drawn (the wav2vec 2.0 paper's 49%)
    same_count: bool = True

    def __post_init__(self) -> None:
        _check(self.prob_adjust >= 0.0, "masking.prob_adjust", self.prob_adjust, "must be >= 0")


@dataclass
class ObjectiveConfig:
    """What the student regresses and how the teacher follows it."""

    top_k: int = 6
    # block output (images) or FFN output before the last residual (speech, text); "attn": the self-attention
    # sublayer's output before its residual (the paper's Table 5 ablation: no usable model)
    tap: Literal["block", "ffn", "attn"] = "block"
    per_layer_norm: Literal["layer", "instance", "none"] = "layer"
    final_norm: Literal["layer", "instance", "none"] = "layer"
    loss_beta: float = 2.0  # Smooth L1 beta; 0 means plain L2
    loss_scale: Literal["inv_sqrt_dim", "mean", "none"] = "mean"
    # the teacher's context: 0 sees the whole input (contextualised targets); w > 0 lets each token attend only
    # to tokens within w positions (images: w rows and columns of patches), the paper's Figure 3 ablation
    teacher_window: int = 0
    ema_start: float = 0.9998
    ema_end: float = 0.9998
    ema_anneal_steps: int = 0
    # what the teacher averages of the front-end: "all" of it; nothing ("encoder": shared with the student);
    # speech: the norm after the positional convs ("layers", fairseq v1 ema_layers_only) or the convs and that
    # norm ("context", fairseq v2), the conv feature encoder shared. The Transformer is always averaged.
    ema_scope: Literal["all", "encoder", "layers", "context"] = "all"
    # the teacher's precision: the step's (train.precision; fairseq runs model and teacher in fp16) or float32
    # outside the step's autocast (Meta's data2vec_vision, v1 images)
    teacher_precision: Literal["step", "fp32"] = "step"
    head_layers: int = 1  # v1 regression head: 1 = linear; 2 = Linear(D, 2D) + GELU + Linear(2D, D) (text reference)
    version: Literal[1, 2] = 1  # 2: data2vec 2.0 (visible-only student, conv decoder, several masks per sample)
    clones: int = 1  # v2: masks (student passes) per sample; the teacher runs once
    decoder_dim: int = 768  # v2 conv decoder width, layers, kernel and groups
    decoder_layers: int = 6
    decoder_kernel: int = 3
    decoder_groups: int = 16
    decoder_noise: float = 0.01  # v2: std of the noise that stands in for masked tokens at the decoder input
    # v2 decoder layout: true (ours) puts Linear(D, decoder_dim) before the convs; false is fairseq's layout,
    # where the first conv takes the D encoder channels (no residual on it when decoder_dim != D)
    decoder_input_proj: bool = True
    decoder_residual: bool = True  # residual around each conv block of equal widths (fairseq: decoder_residual)
    decoder_proj_layers: int = 1  # back to D: 1 Linear; 2: Linear(C, 2C) + GELU + Linear(2C, D) (fairseq v2 text)
    decoder_input_dropout: float = 0.0  # dropout on the encoder outputs entering the decoder (fairseq: 0.1 speech, text)
    cls_loss_weight: float = 0.0  # v2 images: weight of the loss between CLS output and mean target
    # v2 images: a Linear head on the CLS output and the CLS term averaged over rows (this library before
    # issue 19; configs saved before the key load with true); false: fairseq's raw CLS output, summed over rows
    cls_head: bool = False

    def __post_init__(self) -> None:
        _check(self.teacher_window >= 0, "objective.teacher_window", self.teacher_window,
               "must be >= 0 (0: the teacher sees the whole input)")
        _check(self.head_layers >= 1, "objective.head_layers", self.head_layers,
               "must be at least 1 (1: a linear regression head; the text reference uses 2)")
        _check(self.decoder_proj_layers >= 1, "objective.decoder_proj_layers", self.decoder_proj_layers,
               "must be at least 1")
        _check(0.0 <= self.decoder_input_dropout < 1.0, "objective.decoder_input_dropout",
               self.decoder_input_dropout, "must be in [0, 1)")


@dataclass
class DataConfig:
    """Where samples come from and how they are augmented."""

    path: str = "builtin:digits"
    eval_path: Optional[str] = None  # labelled set for probing; defaults to path
    crop_scale_min: float = 0.08
    hflip: float = 0.5
    # images, pretraining: colour jitter strength of brightness, contrast and saturation, before the crop (Meta's
    # data2vec_vision: 0.4); 0 turns it off
    color_jitter: float = 0.0
    # images, evaluation (probe, fine-tuning validation, evaluate, embed, the exported image processor): the shorter
    # side to int(image.image_size / eval_crop_pct) (bicubic), then the centred image_size square. 1 keeps the whole
    # shorter side; Meta's evaluation at 224 uses 224 / 256 = 0.875 (the shorter side to 256: data2vec_vision
    # datasets.py, fairseq's mae_finetuning_image_dataset.py, timm's crop_pct)
    eval_crop_pct: float = 1.0
    # images, every transform (pretraining, fine-tuning, evaluation, the exported image processor): pixels in 0..1
    # become (x - image_mean) / image_std per channel (R, G, B). ImageNet's statistics by default (Meta's v1
    # pretraining command, fairseq's data2vec 2.0); Meta's v1 fine-tuning normalises with 0.5 / 0.5 (data2vec_vision
    # without --imagenet_default_mean_and_std; image-base-ft)
    image_mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    image_std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    num_workers: int = 2
    strict: bool = False  # raise on an unreadable sample instead of skipping it
    # speech pretraining: crop every clip of a batch to the batch's shortest (a random window of each), so no
    # batch is padded, as fairseq's audio_pretraining without enable_padding; false pads to the longest
    crop_to_shortest: bool = False

    def __post_init__(self) -> None:
        _check(self.color_jitter >= 0.0, "data.color_jitter", self.color_jitter, "must be >= 0 (0 turns it off)")
        _check(0.0 < self.eval_crop_pct <= 1.0, "data.eval_crop_pct", self.eval_crop_pct,
               "must be in (0, 1]: the share of the resized shorter side that the centre crop keeps (Meta: 0.875)")
        _check(len(self.image_mean) == 3 and all(map(math.isfinite, self.image_mean)), "data.image_mean",
               self.image_mean, "must be 3 finite numbers, one per channel (R, G, B), such as ImageNet's "
               f"{list(IMAGENET_MEAN)} or [0.5, 0.5, 0.5]")
        _check(len(self.image_std) == 3 and all(math.isfinite(v) and v > 0 for v in self.image_std),
               "data.image_std", self.image_std, "must be 3 finite numbers above 0, one per channel (R, G, B), "
               f"such as ImageNet's {list(IMAGENET_STD)} or [0.5, 0.5, 0.5]")


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping of the training loop."""

    max_steps: int = 1000
    batch_size: int = 256  # global batch, summed over processes and accumulation steps
    accum_steps: int = 1  # micro-batches per update and process (at least)
    device_batch_size: int = 0  # most samples one forward may take; more accumulation when needed (0: no cap)
    lr: float = 2e-3
    min_lr: float = 1e-5
    warmup_steps: int = 100
    # where the linear warm-up starts: "linear" at lr / warmup_steps on the first update; "beit" at 0, reaching lr
    # on the last warm-up update (Meta's data2vec_vision utils.cosine_scheduler, start_warmup_value=0)
    warmup: Literal["linear", "beit"] = "linear"
    # the learning-rate schedule (train/optim.py lr_at): "cosine": the warm-up above, then cosine decay to min_lr
    # at max_steps; "tri_stage": fairseq's speech schedule (wav2vec 2.0, data2vec v1 speech), in three phases of
    # max_steps given by phase_ratio: linear from init_lr_scale x lr to lr, lr held, exponential decay to
    # final_lr_scale x lr, then constant (warmup_steps, warmup and min_lr do not apply)
    schedule: Literal["cosine", "tri_stage"] = "cosine"
    # tri_stage: fractions of max_steps for warm-up, hold and decay, summing to 1 (fairseq's phase_ratio; each
    # phase lasts int(max_steps x fraction) updates); data2vec v1 speech pretraining [0.03, 0.9, 0.07], wav2vec 2.0
    # / data2vec speech CTC fine-tuning [0.1, 0.4, 0.5]
    phase_ratio: Optional[list[float]] = None
    init_lr_scale: float = 0.01  # tri_stage: the warm-up starts at this times lr (fairseq's default)
    final_lr_scale: float = 0.01  # tri_stage: the decay ends at this times lr (fairseq's default; CTC: 0.05)
    weight_decay: float = 0.05
    # which parameters weight decay spares besides 1-D ones (train/optim.py NO_DECAY_RULES): "tokens" also the
    # CLS / mask tokens, positions and relative position tables; "beit" only positions and the CLS token (Meta's
    # data2vec_vision, v1 images); "fairseq_v2" only ALiBi scales; "none" spares nothing (fairseq's plain adam)
    no_decay: Literal["tokens", "beit", "fairseq_v2", "none"] = "tokens"
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    clip_grad: float = 3.0  # 0 turns clipping off
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    strategy: Literal["ddp", "fsdp"] = "ddp"  # data parallel: replicate (DDP) or shard (FSDP2) the model
    compile: bool = False  # torch.compile the training step
    grad_checkpoint: bool = False  # recompute block activations in backward to save memory
    seed: int = 0
    log_every: int = 10
    save_every: int = 500
    keep_last: int = 2
    skip_nonfinite: bool = True  # skip (and count) an update whose loss or gradient is NaN / inf
    max_bad_steps: int = 10  # stop after this many skipped updates (non-finite or unreadable batch) in a row
    collapse_var: float = 0.01  # warn when target variance falls below this: std 0.1, the reference's stop (collapse)

    def __post_init__(self) -> None:
        if self.schedule != "tri_stage":
            return
        ratio = self.phase_ratio
        _check(ratio is not None and len(ratio) == 3 and min(ratio) >= 0.0 and math.isclose(sum(ratio), 1.0),
               "train.phase_ratio", ratio, "must be three fractions of train.max_steps (warm-up, hold, decay) "
               "summing to 1 for train.schedule=tri_stage, e.g. [0.1, 0.4, 0.5]")
        _check(self.init_lr_scale >= 0.0, "train.init_lr_scale", self.init_lr_scale,
               "must be >= 0 (the warm-up starts at this times train.lr)")
        _check(self.final_lr_scale > 0.0, "train.final_lr_scale", self.final_lr_scale,
               "must be > 0 (the exponential decay ends at this times train.lr)")


@dataclass
class FinetuneConfig:
    """Supervised fine-tuning (`data2vec finetune`; pretraining ignores this section).

    The architecture (model, image, text, audio sections) always comes from `checkpoint`; these keys say how
    to train on top of it. `data.path` is the labelled training set, `data.eval_path` the validation set
    (default: the validation split of `data.path`).
    """

    checkpoint: str = ""  # pretrained checkpoint or run folder (the command line also takes checkpoint=PATH)
    random_init: bool = False  # keep the checkpoint's architecture, not its weights: the from-scratch baseline
    task: Literal["classify", "ctc"] = "classify"  # ctc: speech recognition on characters (a linear head per frame)
    train_examples: int = 0  # train on this many labelled examples, equal shares per class, seeded (0: all)
    head: Literal["linear", "sentence"] = "linear"  # linear on pooled features, or RoBERTa's head on <s> (text)
    pool: Literal["mean", "cls"] = "mean"  # images: LayerNorm(mean of patches) without final norm (BEiT), or CLS
    head_dropout: float = 0.0
    head_init_scale: float = 1.0  # scales the head's initial weights (BEiT: 0.001)
    layer_decay: float = 1.0  # lr of layer l (0 = embeddings, depth + 1 = head) is lr x decay^(depth + 1 - l)
    label_smoothing: float = 0.0
    mixup: float = 0.0  # images: Beta(alpha, alpha) of mixup; 0 turns it off
    cutmix: float = 0.0  # images: Beta(alpha, alpha) of cutmix; 0 turns it off
    mix_prob: float = 1.0  # chance that a batch is mixed at all (when mixup or cutmix is on)
    mix_switch_prob: float = 0.5  # with both on: chance of cutmix rather than mixup for a batch
    drop_path: Optional[float] = None  # regularisation while fine-tuning; None keeps the checkpoint's value
    dropout: Optional[float] = None
    attn_dropout: Optional[float] = None
    activation_dropout: Optional[float] = None  # FFN hidden units (wav2vec 2.0's base_10h: 0.1, dropout 0)
    layer_drop: Optional[float] = None  # fairseq's speech fine-tuning recipes use 0.05 (wav2vec 2.0's base_10h: 0.05)
    freeze_frontend_steps: int = 0  # the front-end (speech: its conv feature encoder) is frozen this long (-1: always)
    freeze_encoder_steps: int = 0  # only the head trains for this many steps (wav2vec 2.0's frozen start)
    eval_every: int = 100  # validate every N updates (and at the end); the best checkpoint goes to OUT/best
    metric: Literal["accuracy", "top5", "f1", "mcc", "wer", "cer"] = "accuracy"  # what "best" means (ctc: wer)
    eval_batch_size: int = 128
    text_column: str = ""  # text files: column of the (first) sentence; empty: guessed from the header
    pair_column: str = ""  # text files: column of the second sentence of a pair; empty: guessed, or none
    label_column: str = ""  # text files: column of the label; empty: guessed (label, gold_label, ...)

    def __post_init__(self) -> None:
        _check(self.layer_drop is None or 0.0 <= self.layer_drop < 1.0, "finetune.layer_drop", self.layer_drop,
               "must be in [0, 1)")
        _check(self.activation_dropout is None or 0.0 <= self.activation_dropout < 1.0,
               "finetune.activation_dropout", self.activation_dropout, "must be in [0, 1)")


@dataclass
class Config:
    """Everything one run needs; saved beside every checkpoint."""

    name: str = "custom"
    modality: Literal["image", "text", "audio"] = "image"
    out: str = "runs/data2vec"
    resume: Optional[str] = None  # "auto": newest complete checkpoint in `out`; or a checkpoint path
    overwrite: bool = False  # `out` holds another run: move it aside to OUT.old-TIME (never deleted), start afresh
    device: str = "auto"
    model: EncoderConfig = field(default_factory=EncoderConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    text: TextConfig = field(default_factory=TextConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def __post_init__(self) -> None:
        _check(not (self.model.alibi and self.modality == "image"), "model.alibi", self.model.alibi,
               "is a bias over 1-D distances, for audio and text; images use image.pos_embed or image.rel_pos_bias")
        check_architecture(self)


def check_architecture(cfg: Config) -> None:
    """The sizes the model's modules need of each other, checked when a config is built (so a recipe's mistake
    is one line before any run starts, not a traceback at the first forward). Only the front-end of
    `cfg.modality` is checked: the other sections keep their defaults and build nothing."""
    m = cfg.model
    _check(m.heads >= 1 and m.dim % m.heads == 0, "model.heads", m.heads,
           f"must divide model.dim={m.dim}; set model.heads to a divisor of it (64 channels a head is usual)")
    if cfg.modality == "image":
        im = cfg.image
        _check(im.patch_size >= 1 and im.image_size % im.patch_size == 0, "image.image_size", im.image_size,
               f"must be a multiple of image.patch_size={im.patch_size}")
        _check(im.pos_embed != "sincos" or m.dim % 4 == 0, "model.dim", m.dim,
               "must be divisible by 4 for image.pos_embed=sincos (a sine and a cosine per axis); change model.dim "
               "or set image.pos_embed=learned")
    elif cfg.modality == "audio":
        a = cfg.audio
        _check(len(a.conv_dim) == len(a.conv_kernel) == len(a.conv_stride) > 0, "audio.conv_dim", a.conv_dim,
               f"needs one entry per conv layer, as audio.conv_kernel={a.conv_kernel} and audio.conv_stride="
               f"{a.conv_stride}; give the three lists the same length")
        _check(a.pos_conv_layers == 0 or (a.pos_conv_groups >= 1 and m.dim % a.pos_conv_groups == 0),
               "audio.pos_conv_groups",
               a.pos_conv_groups, f"must divide model.dim={m.dim}; set it to a divisor of model.dim")


def check_ema_scope(cfg: Config) -> None:
    """`objective.ema_scope` "layers" and "context" split the speech front-end; other modalities have no split."""
    scope = cfg.objective.ema_scope
    if scope not in ("all", "encoder") and cfg.modality != "audio":
        raise Data2VecError(f"objective.ema_scope={scope} splits the speech front-end as fairseq does; a "
                            f"{cfg.modality} model takes ema_scope=all or ema_scope=encoder")


def check_pretraining(cfg: Config) -> None:
    """What the objective asks of the model, checked before pretraining builds anything (a fine-tuning config
    keeps a recipe's objective beside a checkpoint's architecture, which these need not fit)."""
    obj, m = cfg.objective, cfg.model
    _check(1 <= obj.top_k <= m.depth, "objective.top_k", obj.top_k,
           f"must be between 1 and model.depth={m.depth} (the teacher averages its top K blocks); lower it")
    check_ema_scope(cfg)
    if obj.version == 2:
        _check(cfg.modality != "image" or cfg.image.rel_pos_bias == "none", "image.rel_pos_bias",
               cfg.image.rel_pos_bias, "cannot follow data2vec 2.0's dropped masked tokens; set image.rel_pos_bias="
               "none (with image.pos_embed=sincos or learned) or objective.version=1")
        width = obj.decoder_dim if obj.decoder_input_proj else m.dim
        _check(obj.decoder_groups >= 1 and obj.decoder_dim % obj.decoder_groups == 0
               and width % obj.decoder_groups == 0, "objective.decoder_groups", obj.decoder_groups,
               f"must divide objective.decoder_dim={obj.decoder_dim}"
               f"{'' if obj.decoder_input_proj else f' and model.dim={m.dim} (no input projection)'}; set it to a "
               "common divisor")


def _check(ok: bool, key: str, value: Any, want: str) -> None:
    """A bad value is the user's: one line naming the key (the CLI prints it and exits 2)."""
    if not ok:
        raise Data2VecError(f"config key '{key}' {want}; got {value!r}")


def recipe_names() -> list[str]:
    """Names of the recipes that ship inside the package."""
    folder = resources.files("data2vec") / "recipes"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_recipe(name_or_path: str) -> dict[str, Any]:
    """Read a recipe by shipped name (``image-tiny``) or by path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise Data2VecError(f"recipe file '{name_or_path}' does not exist; give a YAML path or one of: "
                                f"{', '.join(recipe_names())}")
        text = path.read_text()
    else:
        shipped = resources.files("data2vec") / "recipes" / f"{name_or_path}.yaml"
        if not shipped.is_file():
            raise Data2VecError(f"unknown recipe '{name_or_path}'; choose one of: {', '.join(recipe_names())} "
                                "or give a path to a YAML file")
        text = shipped.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise Data2VecError(f"recipe '{name_or_path}' is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise Data2VecError(f"recipe '{name_or_path}' must be a mapping of config sections, got {type(data).__name__}")
    return data


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["train.lr=1e-3", "out=runs/x"]`` into a nested dict, values parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise Data2VecError(f"override '{item}' is not of the form key=value (for example train.lr=1e-3)")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise Data2VecError(f"override '{item}' sets a field inside '{part}', which is not a section")
        node[parts[-1]] = value
    return nested


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; values in `update` win."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def build_config(recipe: str | None = None, overrides: list[str] | None = None) -> Config:
    """Resolve a recipe plus command-line overrides into a validated :class:`Config`."""
    data = load_recipe(recipe) if recipe else {}
    if recipe and "name" not in data:
        data["name"] = Path(recipe).stem
    data = merge(data, parse_overrides(overrides or []))
    return from_dict(Config, data)


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a dict, rejecting unknown keys and values of the wrong type."""
    if not isinstance(data, dict):
        raise Data2VecError(f"config section '{prefix.rstrip('.')}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in hints:
            raise Data2VecError(f"unknown config key '{prefix}{key}'; valid keys"
                                f"{' under ' + repr(prefix.rstrip('.')) if prefix else ''}: {', '.join(names)}")
        kwargs[key] = _coerce(hints[key], value, f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key + ".")
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(next(a for a in args if a is not type(None)), value, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise Data2VecError(f"config key '{key}' must be a list such as [1, 2, 3]; got {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is Literal:
        if value not in args:
            raise Data2VecError(f"config key '{key}' must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise Data2VecError(f"config key '{key}' must be true or false; got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise Data2VecError(f"config key '{key}' must be an integer; got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise Data2VecError(f"config key '{key}' must be a number; got {value!r}")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise Data2VecError(f"config key '{key}' must be a string; got {value!r}")
    raise TypeError(f"unsupported config type {hint} for {key}")  # a bug of ours, not the user's


def to_dict(config: Config) -> dict[str, Any]:
    """The resolved config as plain data, ready for YAML or JSON."""
    return dataclasses.asdict(config)


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


# Keys renamed between library versions: old dotted key -> new dotted key. Checkpoints keep loading.
RENAMED: dict[str, str] = {}

# Keys added with a default that changes what an older saved config meant: a config saved before the key
# existed gets this value, which reproduces the older behaviour, instead of the default.
LEGACY_VALUES: dict[str, Any] = {"image.sincos_order": "yx", "objective.cls_head": True}


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections as dotted keys: {"train": {"lr": 1}} -> {"train.lr": 1}."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _field_keys(cls: type = Config, prefix: str = "") -> set[str]:
    keys = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys |= _field_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.add(f"{prefix}{f.name}")
    return keys


def config_from_yaml_text(text: str, source: str = "saved config") -> Config:
    """Rebuild a config saved by :func:`save_config`, e.g. from a checkpoint of an older library version.

    Unlike a user's recipe this is lenient: renamed keys move to their new name, keys this version no longer
    has are dropped and keys it added take their defaults, each with a warning, so old checkpoints load. A key
    whose default would change the meaning of an older config takes its value in :data:`LEGACY_VALUES` instead.
    """
    import logging

    log = logging.getLogger("data2vec")
    flat = flatten(yaml.safe_load(text) or {})
    known = _field_keys()
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        if key in RENAMED:
            log.warning("%s: config key '%s' is now '%s'", source, key, RENAMED[key])
            key = RENAMED[key]
        if key not in known:
            log.warning("%s: dropping config key '%s', which this version of data2vec does not have", source, key)
            continue
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    missing = sorted(known - set(flatten(nested)))
    legacy = [key for key in missing if key in LEGACY_VALUES]
    for key in legacy:
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = LEGACY_VALUES[key]
    if legacy:
        log.warning("%s predates config keys %s; using the values that keep its meaning: %s", source,
                    ", ".join(legacy), ", ".join(f"{k}={LEGACY_VALUES[k]}" for k in legacy))
    missing = [key for key in missing if key not in LEGACY_VALUES]
    if missing:
        log.warning("%s predates config keys %s; using their defaults", source, ", ".join(missing))
    return from_dict(Config, nested)
