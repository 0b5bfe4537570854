"""The reference: a data2vec v1 pretraining step as a user would write it today on top of Hugging Face
`transformers` (issue 10), for `benchmarks/pretrain_step.py` to time against ours.

The student is `transformers`' own `Data2VecVisionModel` / `Data2VecTextModel` / `Data2VecAudioModel`
(default attention implementation, which is SDPA), built from a config with the same sizes as our recipe
and, for image and text, holding the same initial weights as our student (through our HF exporter). The
teacher is a `copy.deepcopy` of it in eval mode, updated by a plain loop over parameters; targets are the
average of the top-K `output_hidden_states`, each normalised as the recipe says; the head is one
`nn.Linear` on the masked positions; Smooth L1 (or L2) as in the recipe; torch's default AdamW with the
same groups and settings, gradient clipping, the same learning rate. No `torch.compile`, no fused
optimiser: the plain way.

What HF gives differs from our targets in one place only: for text and speech the reference regresses the
block outputs (`hidden_states`, after the block's last LayerNorm), not the FFN output before the last
residual that data2vec uses, since `transformers` does not expose that tap. The FLOPs are the same.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data2vec.config import Config
from data2vec.train.device import autocast
from data2vec.train.optim import lr_at, param_groups, set_lr


def hf_student(cfg: Config, our_student: nn.Module | None = None) -> nn.Module:
    """An HF model with our recipe's sizes; with `our_student`, its weights too (image and text)."""
    import transformers

    if cfg.modality == "audio":
        return _hf_audio(cfg)
    from data2vec.interop.hf import text, vision

    state = (our_student or _fresh_student(cfg)).state_dict()
    if cfg.modality == "image":
        hf, tensors, _ = vision.export(cfg, state, None)
        config = transformers.Data2VecVisionConfig(**_config_keys(hf))
        model = transformers.Data2VecVisionModel(config, add_pooling_layer=False)
    else:
        hf, tensors, _ = text.export(cfg, state, None)
        config = transformers.Data2VecTextConfig(**_config_keys(hf))
        model = transformers.Data2VecTextModel(config, add_pooling_layer=False)
    tensors = {k: v for k, v in tensors.items() if not k.startswith("pooler.")}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected or [k for k in missing if "position_ids" not in k and "relative_position_index" not in k]:
        raise RuntimeError(f"HF reference weights: missing {missing}, unexpected {unexpected}")
    return model


def _fresh_student(cfg: Config) -> nn.Module:
    from data2vec.model import Data2VecEncoder

    return Data2VecEncoder(cfg)


def _config_keys(hf: dict) -> dict:
    return {k: v for k, v in hf.items() if k not in ("model_type", "architectures", "data2vec")}


def _hf_audio(cfg: Config) -> nn.Module:
    """Data2VecAudioModel at our audio recipe's sizes (random weights: no exporter for speech)."""
    import transformers

    m, a = cfg.model, cfg.audio
    config = transformers.Data2VecAudioConfig(
        hidden_size=m.dim, num_hidden_layers=m.depth, num_attention_heads=m.heads,
        intermediate_size=int(m.dim * m.mlp_ratio), hidden_dropout=m.dropout, attention_dropout=m.attn_dropout,
        activation_dropout=0.0, feat_proj_dropout=a.feature_dropout, layerdrop=0.0, layer_norm_eps=m.norm_eps,
        conv_dim=list(a.conv_dim), conv_kernel=list(a.conv_kernel), conv_stride=list(a.conv_stride),
        conv_bias=a.conv_bias, num_conv_pos_embeddings=a.pos_conv_layers, conv_pos_kernel_size=a.pos_conv_kernel,
        num_conv_pos_embedding_groups=a.pos_conv_groups, mask_time_prob=0.05,
        apply_spec_augment=True)  # builds masked_spec_embed; the masks are ours (mask_time_indices), never HF's
    return transformers.Data2VecAudioModel(config)


class Reference(nn.Module):
    """HF student, deep-copied HF teacher, the recipe's regression head (one Linear, or fairseq's 2-layer text
    head): the user's data2vec v1 on `transformers`."""

    def __init__(self, cfg: Config, student: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.student = student
        self.teacher = copy.deepcopy(student)
        self.teacher.requires_grad_(False)
        d, layers = cfg.model.dim, cfg.objective.head_layers  # fairseq's text head: d -> 2d, GELU, ..., -> d
        hidden = [m for i in range(layers - 1) for m in (nn.Linear(d if i == 0 else 2 * d, 2 * d), nn.GELU())]
        self.head = nn.Sequential(*hidden, nn.Linear(2 * d, d)) if layers > 1 else nn.Linear(d, d)
        self.prefix = 1 if cfg.modality == "image" else 0  # CLS token of Data2VecVision

    def train(self, mode: bool = True) -> "Reference":
        super().train(mode)
        self.teacher.eval()
        return self

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if not n.startswith("teacher.")]

    def _run(self, model: nn.Module, inputs: Tensor, mask: Tensor | None, padding_mask: Tensor | None,
             hidden: bool) -> Any:
        if self.cfg.modality == "image":
            return model(pixel_values=inputs, bool_masked_pos=mask, output_hidden_states=hidden)
        if self.cfg.modality == "text":
            attention = None if padding_mask is None else (~padding_mask).long()
            return model(input_ids=inputs, attention_mask=attention, output_hidden_states=hidden)
        attention = None if padding_mask is None else (~padding_mask).long()
        return model(input_values=inputs, attention_mask=attention, mask_time_indices=mask,
                     output_hidden_states=hidden)

    def forward(self, inputs: Tensor, mask: Tensor, padding_mask: Tensor | None = None,
                student_inputs: Tensor | None = None) -> Tensor:
        obj, D = self.cfg.objective, self.cfg.model.dim
        with torch.no_grad():
            states = self._run(self.teacher, inputs, None, padding_mask, True).hidden_states
            layers = [h[:, self.prefix:].float() for h in states[-obj.top_k:]]
            target = sum(_norm(h, obj.per_layer_norm) for h in layers) / obj.top_k
            target = _norm(target, obj.final_norm)
        seen = inputs if student_inputs is None else student_inputs
        student_mask = mask if self.cfg.modality != "text" else None  # text: the ids are already corrupted
        hidden = self._run(self.student, seen, student_mask, padding_mask, False).last_hidden_state
        pred = self.head(hidden[:, self.prefix:][mask]).float()
        y = target[mask]
        if obj.loss_beta == 0:
            per_elem = F.mse_loss(pred, y, reduction="none")
        else:
            per_elem = F.smooth_l1_loss(pred, y, reduction="none", beta=obj.loss_beta)
        scale = {"inv_sqrt_dim": 1 / math.sqrt(D), "mean": 1 / D, "none": 1.0}[obj.loss_scale]
        return per_elem.sum(-1).mean() * scale

    @torch.no_grad()
    def update_teacher(self, decay: float) -> None:
        """The plain loop: one multiply and one add per parameter (what `ema_scope` shares copied: HF's
        `encoder.` holds the speech positional conv and its norm, so "layers" copies the conv there too)."""
        scope = self.cfg.objective.ema_scope
        for (name, t), s in zip(self.teacher.named_parameters(), self.student.parameters()):
            copied = scope != "all" and (not name.startswith("encoder.")
                                         or (scope == "layers" and name.startswith("encoder.pos_conv_embed.")))
            if copied:
                t.copy_(s)
            else:
                t.mul_(decay).add_(s, alpha=1 - decay)


def _norm(x: Tensor, kind: str) -> Tensor:
    """[B, T, D]: layer norm over channels, instance norm over time (no padding in the benchmark), or none."""
    if kind == "layer":
        return F.layer_norm(x, x.shape[-1:])
    if kind == "instance":
        return F.instance_norm(x.transpose(1, 2)).transpose(1, 2)
    return x


def build_reference(cfg: Config, our_student: nn.Module | None, device: torch.device
                    ) -> tuple[Reference, torch.optim.Optimizer]:
    """The reference model and torch's default AdamW (what `torch.optim.AdamW(...)` gives a user: a loop of
    elementwise ops per parameter on CPU, `foreach` on CUDA) with our parameter groups and settings."""
    model = Reference(cfg, hf_student(cfg, our_student)).to(device).train()
    tc = cfg.train
    groups = param_groups(model.trainable_parameters(), tc.weight_decay)
    return model, torch.optim.AdamW(groups, lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=tc.eps)


def train_reference(model: Reference, optimizer: torch.optim.Optimizer, batches: Iterable[dict], cfg: Config,
                    device: torch.device, start_step: int = 0) -> list[float]:
    """The user's loop: lr, forward, backward, clip, step, EMA. Returns nothing the host must wait for
    except at the end (the losses, as floats)."""
    tc = cfg.train
    params = [p for _, p in model.trainable_parameters()]
    losses = []
    for step, batch in enumerate(batches, start=start_step):
        set_lr(optimizer, lr_at(step, tc))
        b = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in batch.items()}
        with autocast(device, tc.precision):
            loss = model(b["inputs"], b["mask"], b.get("padding_mask"), b.get("student_inputs"))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tc.clip_grad if tc.clip_grad > 0 else math.inf)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update_teacher(cfg.objective.ema_end)
        losses.append(loss.detach())
    return [float(x) for x in losses]
