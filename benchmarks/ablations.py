"""Our pretraining step without each of its optimisations: the "before" side of the ablations in
`benchmarks/pretrain_step.py --ablations`, and the plain computation `tests/test_loop.py` checks the
optimised step against (same losses within float tolerance).

Each function undoes one optimisation on a built model, in place.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from data2vec.model import Data2Vec


def loop_ema(model: Data2Vec) -> None:
    """Before: the EMA as a plain loop, one multiply and one add per parameter."""
    @torch.no_grad()
    def update_teacher(decay: float) -> None:
        for teacher, student, averaged in model.ema_groups():
            for t, s in zip(teacher, student):
                if averaged:
                    t.mul_(decay).add_(s, alpha=1 - decay)
                else:
                    t.copy_(s)

    model.update_teacher = update_teacher


def own_teacher_frontend(model: Data2Vec) -> None:
    """Before (speech v1): the teacher embeds the clean waveform with its own conv feature encoder pass
    instead of sharing the student's conv features (`Data2Vec.forward` takes the two-pass path without it)."""
    model.student.frontend.forward_pair = None


def _project(self, x: torch.Tensor, fused: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v `[B, H, T, Dh]` of `Attention` self from one fused matmul or three (same weights)."""
    B, T, D = x.shape
    if self.q_bias is not None:
        biases = (self.q_bias, torch.zeros_like(self.q_bias), self.v_bias)
    else:
        biases = self.qkv.bias.chunk(3) if self.qkv.bias is not None else (None, None, None)
    if fused:
        bias = torch.cat(biases) if biases[0] is not None else None
        return F.linear(x, self.qkv.weight, bias).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
    return tuple(F.linear(x, w, b).view(B, T, self.heads, D // self.heads).transpose(1, 2)
                 for w, b in zip(self.qkv.weight.chunk(3), biases))


def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_bias: torch.Tensor | None,
            sdpa: bool) -> torch.Tensor:
    """Attention output after the output projection, `[B, T, D]`, by SDPA or written out."""
    B, H, T, Dh = q.shape
    dropout = self.attn_dropout if self.training else 0.0
    if attn_bias is not None and attn_bias.dtype != torch.bool:
        attn_bias = attn_bias.to(q.dtype)
    if sdpa:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=dropout)
    else:
        scores = (q * Dh**-0.5) @ k.transpose(-2, -1)  # [B, H, T, T]
        if attn_bias is not None:
            scores = scores.masked_fill(~attn_bias, float("-inf")) if attn_bias.dtype == torch.bool else scores + attn_bias
        out = F.dropout(scores.softmax(-1), dropout, self.training) @ v
    return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, T, H * Dh)))


def three_projections(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Before fused QKV: separate query, key and value projections (the Hugging Face layout), then SDPA."""
    return _attend(self, *_project(self, x, fused=False), attn_bias, sdpa=True)


def explicit_attention(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Before SDPA: fused QKV, but attention written out (scores, softmax, dropout, weighted sum)."""
    return _attend(self, *_project(self, x, fused=True), attn_bias, sdpa=False)


def autocast_attention(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Before fp32 attention under CPU autocast: SDPA in the autocast dtype (bf16)."""
    return _attend(self, *_project(self, x, fused=True), attn_bias, sdpa=True)


def plain_attention(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Neither: three projections and attention written out."""
    return _attend(self, *_project(self, x, fused=False), attn_bias, sdpa=False)


def patch_attention(model: Data2Vec, forward) -> None:
    """Use `forward` (one of the four above) in every attention layer of student and teacher."""
    from data2vec.nn.transformer import Attention

    for module in model.modules():
        if isinstance(module, Attention):
            module.forward = types.MethodType(forward, module)


def unfused_adamw(model: Data2Vec, cfg) -> torch.optim.AdamW:
    """Before: torch's default AdamW (a loop of elementwise ops per parameter on CPU), same groups."""
    from data2vec.train.optim import param_groups

    return torch.optim.AdamW(param_groups(model.trainable_parameters(), cfg.train.weight_decay), lr=cfg.train.lr,
                             betas=(cfg.train.beta1, cfg.train.beta2), eps=cfg.train.eps, fused=False)
