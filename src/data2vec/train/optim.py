"""AdamW with decoupled weight decay, layer-wise learning-rate decay for fine-tuning, and the learning-rate
schedules (`train.schedule`): cosine with linear warm-up, and fairseq's tri-stage of its speech recipes."""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from data2vec.config import TrainConfig

# Which parameters weight decay leaves alone (`train.no_decay`). Every rule spares 1-D tensors (norms, biases,
# layer scales); they differ in the named tensors they also spare:
#   tokens: CLS and mask tokens, positions and relative position tables too (this library's rule, as timm / MAE)
#   beit: only `pos_embed` and `cls_token`, Meta's data2vec_vision (`optim_factory.get_parameter_groups`: 1-D,
#     names ending in ".bias", and the model's `no_weight_decay()` = {"pos_embed", "cls_token"}), so the mask
#     token and the relative position table are decayed
#   fairseq_v2: nothing named but ALiBi scales (`data2vec2.py`: 1-D, ".bias", "alibi_scale")
#   none: every parameter is decayed (fairseq's plain `adam` optimiser: v1 speech and text, v2 speech)
NO_DECAY_RULES: dict[str, tuple[str, ...]] = {
    "tokens": ("cls_token", "mask_token", "pos_embed", "rel_pos", "table"),
    "beit": (".pos_embed", ".cls_token"),
    "fairseq_v2": ("alibi_scale",),
    "none": (),
}


def _decayed(name: str, p: nn.Parameter, rule: str = "tokens") -> bool:
    """Whether `p` (named as in `named_parameters`) is weight-decayed under `rule` (see NO_DECAY_RULES)."""
    if rule == "none":
        return True
    if p.ndim <= 1 or name.endswith(".bias"):
        return False
    if rule == "beit":  # Meta matches whole names; ours carry a prefix (student.frontend.cls_token)
        return not ("." + name).endswith(NO_DECAY_RULES[rule])
    return not any(key in name for key in NO_DECAY_RULES[rule])


def param_groups(named_params: list[tuple[str, nn.Parameter]], weight_decay: float,
                 rule: str = "tokens") -> list[dict]:
    """Split parameters into decayed and not decayed ones by `rule` (`train.no_decay`, see NO_DECAY_RULES)."""
    decay, no_decay = [], []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        (decay if _decayed(name, p, rule) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def layer_id(name: str, depth: int, per_layer_rel_pos: bool = False) -> int:
    """Depth of an encoder parameter for layer-wise lr decay (BEiT's numbering): 0 for the front-end
    (patch / token / feature embeddings, positions, CLS), i + 1 for block i and its own relative position
    bias, depth + 1 for everything above the blocks (final norm, pooler norm, classifier head) and for a
    relative position bias shared by all blocks. `name` is relative to the encoder (``frontend.…``,
    ``encoder.blocks.3.…``) or the head (``head.…``)."""
    block = re.match(r"encoder\.blocks\.(\d+)\.", name)
    if block:
        return int(block.group(1)) + 1
    rel_pos = re.match(r"frontend\.rel_pos\.(\d+)\.", name)
    if rel_pos:
        return int(rel_pos.group(1)) + 1 if per_layer_rel_pos else depth + 1
    if name.startswith("frontend.") and not name.startswith("frontend.pool_norm."):
        return 0
    return depth + 1


def layer_decay_groups(named_params: list[tuple[str, nn.Parameter]], weight_decay: float, depth: int,
                       decay: float, per_layer_rel_pos: bool = False) -> list[dict]:
    """One optimiser group per (layer, decayed or not), its `lr_scale` = decay^(depth + 1 - layer): the head
    learns at the full rate and each block below it at `decay` times the rate of the block above, so the
    pretrained lower layers move least (BEiT / data2vec fine-tuning). :func:`set_lr` applies the scale."""
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in named_params:
        if not p.requires_grad:
            continue
        layer, decayed = layer_id(name, depth, per_layer_rel_pos), _decayed(name, p)
        group = groups.setdefault((layer, decayed), {"params": [], "weight_decay": weight_decay if decayed else 0.0,
                                                     "lr_scale": decay ** (depth + 1 - layer), "layer": layer})
        group["params"].append(p)
    return [groups[key] for key in sorted(groups)]


def build_optimizer(named_params: list[tuple[str, nn.Parameter]], cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW, fused into one kernel per parameter group where torch has one for the parameters' device.

    The fused update reads and writes each tensor once instead of once per elementwise op, and keeps the
    step count on the device (no host read per parameter): at ViT-B size on 2 CPU threads it is about 5x
    faster than the default per-parameter loop (BENCHMARKS.md). It computes the same update up to rounding.
    """
    groups = param_groups(named_params, cfg.weight_decay, cfg.no_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                             fused=can_fuse([p for g in groups for p in g["params"]]))


def can_fuse(params: list[torch.Tensor]) -> bool:
    """Whether torch's fused AdamW takes these parameters: plain floating-point tensors (not the DTensors of
    FSDP) on a device with fused kernels."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    devices = _get_fused_kernels_supported_devices()
    return bool(params) and all(type(p.data) is torch.Tensor and p.is_floating_point() and p.device.type in devices
                                for p in params)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of update `step` (0-based), a function of the step alone (so a resumed run continues the
    same curve): `train.schedule` "cosine" (:func:`cosine_lr`) or "tri_stage" (:func:`tri_stage_lr`). Pretraining
    and fine-tuning both take their rate from here (train/step.py `schedule`)."""
    if cfg.schedule == "tri_stage":
        return tri_stage_lr(step, cfg)
    return cosine_lr(step, cfg)


def cosine_lr(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to `lr` over `warmup_steps` updates, then cosine decay to `min_lr` at `max_steps`.
    `train.warmup` says where the warm-up starts: "linear" at lr / W for the first update (this library's),
    "beit" at 0, as Meta's data2vec_vision `utils.cosine_scheduler` (``np.linspace(0, lr, W)``: lr x step / (W - 1),
    `lr` reached on the last warm-up update)."""
    if step < cfg.warmup_steps:
        if cfg.warmup == "beit":
            return cfg.lr * step / (cfg.warmup_steps - 1) if cfg.warmup_steps > 1 else 0.0
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.max_steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def tri_stage_steps(cfg: TrainConfig) -> tuple[int, int, int]:
    """Updates of the warm-up, hold and decay phases: int(max_steps x fraction) each, as fairseq rounds them
    (so they may sum to a little less than `max_steps`; the rest runs at the final rate)."""
    warmup, hold, decay = (int(cfg.max_steps * r) for r in cfg.phase_ratio)
    return warmup, hold, decay


def tri_stage_lr(step: int, cfg: TrainConfig) -> float:
    """fairseq's `tri_stage` schedule (wav2vec 2.0 and data2vec v1 speech; "SpecAugment", Park et al., 2019):
    from `init_lr_scale` x lr rising linearly by the same amount each update (lr would be reached on the first
    held update), lr held, then lr x final_lr_scale^(s / D) on update s = 0 .. D of the D decay updates and that
    final rate after. fairseq sets the rate of update n to this function of n, the number of updates done before
    it, which is our 0-based step; the arithmetic is in fairseq's order, so the rates are its bit for bit."""
    warmup, hold, decay = tri_stage_steps(cfg)
    start = cfg.init_lr_scale * cfg.lr
    if step < warmup:
        return start + (cfg.lr - start) / warmup * step  # fairseq's order of operations
    step -= warmup
    if step < hold:
        return cfg.lr
    step -= hold
    if step <= decay and decay > 0:  # fairseq divides by D: its decay phase cannot be empty; ours ends at once
        return cfg.lr * math.exp(math.log(cfg.final_lr_scale) / decay * step)  # final_lr_scale^(step / decay)
    return cfg.final_lr_scale * cfg.lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's rate to `lr`, times the group's `lr_scale` where it has one (layer-wise decay)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
