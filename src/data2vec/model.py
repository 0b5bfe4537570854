"""Data2Vec: a student encoder, its EMA teacher and a regression head; one v1 pretraining step.

The encoder (:class:`Data2VecEncoder`) is a modality front-end plus the shared Transformer; it is what users
load, embed with and fine-tune. :class:`Data2Vec` wraps two of them for pretraining and knows nothing about
the modality beyond the number of prefix (CLS) tokens its front-end adds.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from data2vec.config import Config, check_ema_scope
from data2vec.ema import ema_update
from data2vec.losses import regression_loss
from data2vec.nn.audio import AudioFrontend
from data2vec.nn.decoder import ConvDecoder, projection
from data2vec.nn.frontend import Frontend
from data2vec.nn.image import ImageFrontend
from data2vec.nn.init import init_linear_and_norm
from data2vec.nn.text import TextFrontend
from data2vec.nn.transformer import Encoder, window_bias
from data2vec.targets import build_targets

FRONTENDS = {
    "image": lambda cfg: ImageFrontend(cfg.image, cfg.model),
    "text": lambda cfg: TextFrontend(cfg.text, cfg.model),
    "audio": lambda cfg: AudioFrontend(cfg.audio, cfg.model),
}


@dataclass
class EncoderOutput:
    """Named like Hugging Face outputs so `transformers` users feel at home.

    hidden_states: the embedding output, then each block's output (depth + 1 tensors `[B, T, D]`).
    layer_results: each block's FFN output before its last residual (the speech / text target tap), or its
        self-attention output when `encode` is asked for `tap="attn"`.
    """

    last_hidden_state: Tensor
    hidden_states: tuple[Tensor, ...]
    layer_results: tuple[Tensor, ...]
    padding_mask: Tensor | None = None


class Data2VecEncoder(nn.Module):
    """Front-end + Transformer. `forward` gives per-layer states, `embed` one pooled vector per input."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.frontend: Frontend = FRONTENDS[cfg.modality](cfg)
        self.encoder = Encoder(cfg.model)
        self.apply(partial(init_linear_and_norm, scheme=cfg.model.init))
        self.frontend._init_weights()
        for depth, block in enumerate(self.encoder.blocks, start=1):  # BEiT: shrink deep residual branches
            block.attn.proj.weight.data.div_((2.0 * depth) ** 0.5)
            block.mlp.fc2.weight.data.div_((2.0 * depth) ** 0.5)

    @property
    def num_prefix(self) -> int:
        return self.frontend.num_prefix

    def forward(self, inputs: Tensor, mask: Tensor | None = None, padding_mask: Tensor | None = None) -> EncoderOutput:
        """inputs: images `[B, 3, H, W]` (later waveforms `[B, S]`, token ids `[B, T]`) with an optional input
        padding mask (True = padding); mask bool `[B, N]` over the front-end's tokens (True = masked).

        The front-end turns the input padding mask into a token padding mask (samples -> frames for audio),
        which the output carries.
        """
        return self.encode(*self.frontend(inputs, mask, padding_mask))

    def encode(self, x: Tensor, attn_bias: Tensor | list[Tensor] | None, token_padding: Tensor | None,
               tap: str = "ffn") -> EncoderOutput:
        """The Transformer over front-end output `x` `[B, N, D]` (what `frontend(...)` returns); `tap` as in
        `Encoder.forward`."""
        last, outputs, taps = self.encoder(x, padding_mask=token_padding, attn_bias=attn_bias, tap=tap)
        return EncoderOutput(last, (x, *outputs), tuple(taps), token_padding)

    @torch.no_grad()
    def embed(self, inputs: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Pooled features `[B, D]` of the final layer (what the probe and `data2vec embed` use)."""
        out = self(inputs, padding_mask=padding_mask)
        return self.frontend.pool(out.last_hidden_state, out.padding_mask)


class Data2Vec(nn.Module):
    """Student, EMA teacher and linear regression head for data2vec v1 pretraining."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        check_ema_scope(cfg)  # the rest of config.check_pretraining runs where pretraining starts
        self.cfg = cfg
        self.student = Data2VecEncoder(cfg)
        self.teacher = copy.deepcopy(self.student)
        self.teacher.requires_grad_(False)
        dim, obj = cfg.model.dim, cfg.objective
        if obj.version == 1:
            self.head = regression_head(dim, obj.head_layers)  # v1: on the student's final layer
        else:  # v2: the decoder's output projection is the regression head
            grid = self.student.frontend.grid_hw
            self.decoder = ConvDecoder(dim, obj.decoder_dim, obj.decoder_layers, obj.decoder_kernel,
                                       obj.decoder_groups, spatial_dims=2 if grid else 1,
                                       input_proj=obj.decoder_input_proj, residual=obj.decoder_residual,
                                       proj_layers=obj.decoder_proj_layers, input_dropout=obj.decoder_input_dropout)
            # fairseq regresses the raw CLS output; `objective.cls_head` is the Linear head of older versions
            self.cls_head = nn.Linear(dim, dim) if obj.cls_loss_weight > 0 and obj.cls_head else None
        for module in (getattr(self, name, None) for name in ("head", "decoder", "cls_head")):
            if module is not None:
                module.apply(partial(init_linear_and_norm, scheme=cfg.model.init))
        self._freeze_unused()
        # how the v1 loss reaches the masked positions: None = by device (see `uses_dense_loss`)
        self.dense_loss: bool | None = None

    def _freeze_unused(self) -> None:
        """Freeze student parameters the pretraining loss never reaches: the pooling norm (pooling is for
        probes and fine-tuning) and, in v2, the mask embedding (masked tokens are dropped, not replaced).
        DDP expects every parameter that requires a gradient to get one, and fails on the second step
        otherwise. They stay in the optimiser's list (with no gradient, untouched), so checkpoints and
        resumes keep the same layout."""
        frontend = self.student.frontend
        unused = frontend.pool_parameters() + (frontend.mask_parameters() if self.cfg.objective.version == 2 else [])
        for param in unused:
            param.requires_grad_(False)

    def train(self, mode: bool = True) -> "Data2Vec":
        super().train(mode)
        self.teacher.eval()  # no dropout, drop path or layer drop in the teacher, ever
        return self

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if not n.startswith("teacher.")]

    def ema_groups(self) -> list[tuple[list[Tensor], list[Tensor], bool]]:
        """(teacher tensors, student tensors, averaged?) groups. `objective.ema_scope` says which front-end
        parameters the teacher averages: all of them ("all"), none ("encoder": the front-end is shared, its
        teacher copy overwritten with the student's), or the speech front-end's parts after its local encoder
        ("layers": the norm after the positional convs, fairseq v1; "context": the positional convs and that
        norm, fairseq v2; see `AudioFrontend.ema_averaged`). The Transformer is always averaged."""
        t = dict(self.teacher.named_parameters())
        s = dict(self.student.named_parameters())
        scope = self.cfg.objective.ema_scope
        kept = () if scope == "encoder" else self.student.frontend.ema_averaged.get(scope, ())

        def is_averaged(name: str) -> bool:
            return scope == "all" or not name.startswith("frontend.") or name[len("frontend."):].startswith(kept)

        averaged = [n for n in t if is_averaged(n)]
        copied = [n for n in t if not is_averaged(n)]
        return [([t[n] for n in averaged], [s[n] for n in averaged], True),
                ([t[n] for n in copied], [s[n] for n in copied], False)]

    @torch.no_grad()
    def update_teacher(self, decay: float) -> None:
        for teacher, student, averaged in self.ema_groups():
            ema_update(teacher, student, decay if averaged else 0.0)

    def shares_frontend_output(self) -> bool:
        """Whether the teacher's front-end would compute exactly what the student's computes on the unmasked
        input: its weights are the student's (`ema_scope: encoder` copies rather than averages them) and no
        dropout is active in the student's. Then v2 with fixed positions (images, text), whose student embeds
        the unmasked input anyway, hands that output to the teacher's Transformer and skips a second front-end
        pass. Speech shares less, and more often: see `shares_local_features`."""
        if self.cfg.objective.ema_scope != "encoder" or self.cfg.objective.teacher_precision == "fp32":
            return False
        frontend = self.student.frontend
        return not frontend.training or all(m.p == 0 for m in frontend.modules() if isinstance(m, nn.Dropout))

    def shares_local_features(self) -> bool:
        """Speech: whether the teacher may start from the student's local features (conv feature encoder and
        projection, before dropout) and run only its own positional convs and norm: the local encoder's
        weights are the student's in the teacher (every `ema_scope` but "all"), as in fairseq, whose teacher
        has no local encoder (v1 `ema_transformer_only`, v2 `ema_local_encoder: false`). Not with
        `objective.teacher_precision: fp32`, whose teacher makes its own float32 pass from the input (the copied
        local encoder computes what the student's does, in float32)."""
        obj = self.cfg.objective
        return (self.student.frontend.two_stage and obj.ema_scope != "all"
                and obj.teacher_precision == "step")

    @torch.no_grad()
    def targets(self, inputs: Tensor, padding_mask: Tensor | None = None,
                frontend_output: tuple[Tensor, Tensor | None, Tensor | None] | None = None) -> Tensor:
        """Teacher targets `[B, N, D]` (prefix tokens dropped) from one pass over the unmasked input, or from
        the front-end output the student already computed (see `shares_frontend_output`). With
        `objective.teacher_window` the teacher's attention sees only that many positions around each token."""
        obj = self.cfg.objective
        with self._teacher_precision(inputs.device):
            if frontend_output is None:
                frontend_output = self.teacher.frontend(inputs, None, padding_mask)
            x, attn_bias, token_padding = frontend_output
            if obj.teacher_window > 0:
                attn_bias = self._window(x, attn_bias, token_padding)
            out = self.teacher.encode(x.detach(), attn_bias, token_padding, tap="attn" if obj.tap == "attn" else "ffn")
        layers = out.hidden_states[1:] if obj.tap == "block" else out.layer_results
        p = self.teacher.num_prefix
        layers = [layer[:, p:] for layer in layers]
        frame_padding = out.padding_mask[:, p:] if out.padding_mask is not None else None
        return build_targets(layers, obj.top_k, obj.per_layer_norm, obj.final_norm, frame_padding)

    def _window(self, x: Tensor, attn_bias: Tensor | list[Tensor] | None, token_padding: Tensor | None
                ) -> Tensor | list[Tensor]:
        """`attn_bias` plus the `objective.teacher_window` limit over the front-end's tokens `x` `[B, P + N, D]`
        (a patch grid for images, a sequence otherwise)."""
        p = self.teacher.num_prefix
        shape = self.teacher.frontend.grid_hw or (x.shape[1] - p,)
        window = window_bias(p, tuple(shape), self.cfg.objective.teacher_window, token_padding, x.device)
        if attn_bias is None:
            return window
        return [b + window for b in attn_bias] if isinstance(attn_bias, list) else attn_bias + window

    def uses_dense_loss(self, device: torch.device) -> bool:
        """Which of two equal ways the v1 loss takes (`dense_loss`; None decides by device). Gathered
        (``hidden[mask]``): the head runs on the masked positions only, but a boolean gather needs their count
        on the host, which on CUDA is a sync every step. Dense: the head runs on every position and the loss
        weights each by the mask; no sync, a few % more head FLOPs. Both give the same loss (tests/test_model.py,
        tests/test_cuda.py). By default dense on CUDA, where the sync costs, gathered elsewhere (a CPU gather
        costs no sync and saves the head's work)."""
        return self.dense_loss if self.dense_loss is not None else device.type == "cuda"

    def _teacher_precision(self, device: torch.device) -> contextlib.AbstractContextManager:
        """`objective.teacher_precision`: "step" runs the teacher in the step's precision (fairseq's released
        recipes run model and teacher in fp16); "fp32" steps out of the step's autocast, so the teacher runs in
        float32 whatever the student's precision (Meta's data2vec_vision: `engine_for_cyclical.py` computes the
        targets before `torch.cuda.amp.autocast()`)."""
        if self.cfg.objective.teacher_precision == "fp32":
            return torch.autocast(device_type=device.type, enabled=False)
        return contextlib.nullcontext()

    def forward(self, inputs: Tensor, mask: Tensor, padding_mask: Tensor | None = None,
                student_inputs: Tensor | None = None) -> dict[str, Tensor]:
        """One step's loss: v1 or v2 per `objective.version`. mask bool `[B, N]` (True = masked, predicted),
        or `[B, M, N]` for v2 with M masks per sample. `student_inputs`, when given, is what the student sees
        instead of `inputs` (text: BERT-corrupted ids; the teacher always sees the clean `inputs`).
        Returns tensors only: loss, and the target / prediction variance used to spot collapse."""
        if self.cfg.objective.version == 2:
            if student_inputs is not None:
                raise ValueError("student_inputs is for data2vec v1 (text); v2 drops masked tokens instead")
            return self._forward_v2(inputs, mask, padding_mask)
        obj = self.cfg.objective
        pair = self.student.frontend.forward_pair  # set to None to time or test the two-pass path
        if student_inputs is None and pair is not None and self.shares_local_features():
            # speech: one local encoder pass serves the student (masked) and the teacher (clean)
            seen, clean = pair(inputs, mask, padding_mask, self.teacher.frontend)
            targets = self.targets(inputs, padding_mask, clean)
            out = self.student.encode(*seen)
        else:
            targets = self.targets(inputs, padding_mask)  # [B, N, D]
            seen = inputs if student_inputs is None else student_inputs
            out = self.student(seen, mask=mask, padding_mask=padding_mask)
        hidden = out.last_hidden_state[:, self.student.num_prefix:]  # [B, N, D]
        if self.uses_dense_loss(hidden.device):
            pred = self.head(hidden)  # [B, N, D]
            loss = regression_loss(pred, targets, obj.loss_beta, obj.loss_scale, weight=mask)
            return {"loss": loss, **_spread(pred, targets, mask)}
        pred = self.head(hidden[mask])  # [M, D]
        target = targets[mask]  # [M, D]
        loss = regression_loss(pred, target, obj.loss_beta, obj.loss_scale)
        return {"loss": loss, **_spread(pred, target)}

    def _forward_v2(self, inputs: Tensor, mask: Tensor, padding_mask: Tensor | None) -> dict[str, Tensor]:
        """data2vec 2.0: the teacher runs once per sample; the student encodes only the visible tokens of each
        of the M masked copies; the conv decoder predicts the targets at the masked positions."""
        obj = self.cfg.objective
        mask = mask.unsqueeze(1) if mask.ndim == 2 else mask  # [B, M, N]
        B, M, N = mask.shape
        p = self.student.num_prefix
        if self.student.frontend.two_stage:  # speech: relative positions, from masked input
            x, targets, token_padding = self._speech_v2_inputs(inputs, mask, padding_mask)
        else:  # fixed positions: added before masking, so the clean front-end output serves every clone
            x, attn_bias, token_padding = self.student.frontend(inputs, None, padding_mask)  # [B, P + N, D]
            if attn_bias is not None:
                raise ValueError("data2vec 2.0 drops masked tokens, which a fixed relative position bias cannot "
                                 "follow; use absolute positions (image.rel_pos_bias=none, image.pos_embed=sincos)")
            shared = (x, attn_bias, token_padding) if self.shares_frontend_output() else None
            targets = self.targets(inputs, padding_mask, shared)  # [B, N, D], computed once for every clone
            x = x.repeat_interleave(M, 0)  # [B*M, P + N, D]
        D = x.shape[-1]
        targets, mask = targets.repeat_interleave(M, 0), mask.reshape(B * M, N)
        hidden = mask if token_padding is None else mask | token_padding[:, p:].repeat_interleave(M, 0)
        counts = (~hidden).sum(1)
        n_min, n_vis = counts.aminmax()
        n_min, n_vis = int(n_min), int(n_vis)  # one host sync: the visible length of this batch
        vis_idx = torch.argsort(hidden.int(), dim=1, stable=True)[:, :n_vis]  # visible positions first, in order
        vis_pad = hidden.gather(1, vis_idx)  # rows with fewer visible tokens are padded (True)
        tokens = torch.cat([x[:, :p], x[:, p:].gather(1, vis_idx.unsqueeze(-1).expand(-1, -1, D))], dim=1)
        enc_padding = None if n_min == n_vis else torch.cat([vis_pad.new_zeros(B * M, p), vis_pad], dim=1)
        # ALiBi (speech, text) biases by the visible tokens' true positions (no prefix tokens there: p = 0)
        last, _, _ = self.student.encoder(tokens, padding_mask=enc_padding, positions=vis_idx)  # [B*M, Nv, D]
        noise = torch.randn(B * M, N, D, device=x.device, dtype=last.dtype) * obj.decoder_noise
        filled = noise.scatter(1, vis_idx.unsqueeze(-1).expand(-1, -1, D), last[:, p:])
        filled = torch.where(mask.unsqueeze(-1), noise, filled)  # masked (and filler) positions stay noise
        pred_all = self.decoder(filled, self.student.frontend.grid_hw, mask)  # [B*M, N, D]
        loss = regression_loss(pred_all, targets, obj.loss_beta, obj.loss_scale, weight=mask)  # no gather
        if obj.cls_loss_weight > 0 and p > 0:
            loss = loss + obj.cls_loss_weight * self._cls_loss(last[:, 0], targets)
        return {"loss": loss, **_spread(pred_all, targets, mask)}

    def _speech_v2_inputs(self, inputs: Tensor, mask: Tensor, padding_mask: Tensor | None
                          ) -> tuple[Tensor, Tensor, Tensor | None]:
        """data2vec 2.0 speech, mask `[B, M, N]` -> (the student's frames for each clone `[B*M, N, D]`, the
        teacher's targets `[B, N, D]`, frame padding `[B, N]`). As fairseq (`modalities/base.py`): the local
        features are computed once; each clone's positional convs see its masked frames zeroed, so no frame
        the student keeps carries what a masked one holds; the teacher adds its own positions to the clean
        features (or embeds the input itself under `ema_scope: all`)."""
        B, M, N = mask.shape
        frontend = self.student.frontend
        local, token_padding = frontend.local_features(inputs, padding_mask)  # [B, N, D]
        if self.shares_local_features():
            with torch.no_grad():
                clean = self.teacher.frontend.contextualize(local.detach(), token_padding)
            targets = self.targets(inputs, padding_mask, (clean, None, token_padding))
        else:
            targets = self.targets(inputs, padding_mask)
        clone_padding = None if token_padding is None else token_padding.repeat_interleave(M, 0)
        x = frontend.contextualize(frontend.feature_projection.dropout(local).repeat_interleave(M, 0),
                                   clone_padding, hide=mask.reshape(B * M, N))
        return x, targets, token_padding

    def _cls_loss(self, cls: Tensor, targets: Tensor) -> Tensor:
        """data2vec 2.0 images: the student's CLS output `[B*M, D]` regresses the mean target of its sample
        (`targets` `[B*M, N, D]`), as fairseq's `cls_loss`: the raw CLS output, no head, and the term summed
        over the B*M rows (fairseq scales it by the masked-position count, by which the whole loss is then
        divided), so it weighs as much as `B*M` rows, not one. With `objective.cls_head` (checkpoints saved
        before that key existed): a Linear head and the mean over rows."""
        obj = self.cfg.objective
        if self.cls_head is not None:
            return regression_loss(self.cls_head(cls), targets.mean(dim=1), obj.loss_beta, obj.loss_scale)
        return regression_loss(cls, targets.mean(dim=1), obj.loss_beta, obj.loss_scale) * cls.shape[0]


def regression_head(dim: int, layers: int) -> nn.Module:
    """The v1 head from the student's final layer to the targets: linear (image and speech reference), or
    `layers` linear maps with GELUs between them, the first widening to 2D (the text reference uses 2), which
    lets the encoder's last layer keep features the targets do not need."""
    if layers < 1:
        raise ValueError(f"objective.head_layers={layers} must be at least 1")
    return projection(dim, dim, layers)  # the v2 decoder's projection back to D, at width D


def _spread(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
    """Variance across masked positions, averaged over channels: near zero means collapse. pred and target are
    `[M, D]` (masked positions), or `[..., N, D]` with `mask` `[..., N]` selecting them without a gather."""
    with torch.no_grad():
        if mask is None:
            return {"target_var": _variance(target.float()), "pred_var": _variance(pred.float())}
        weight = mask.reshape(-1, 1).float()
        return {"target_var": _variance(target.float().reshape(weight.shape[0], -1), weight),
                "pred_var": _variance(pred.float().reshape(weight.shape[0], -1), weight)}


def _variance(x: Tensor, weight: Tensor | None = None) -> Tensor:
    """Unbiased variance over rows of `x` `[M, D]` (only rows with weight 1), averaged over channels; 0 for
    fewer than two rows."""
    if weight is None:
        return x.var(dim=0).mean() if x.shape[0] > 1 else x.new_zeros(())
    n = weight.sum()
    mean = (x * weight).sum(0) / n.clamp(min=1)
    var = (((x - mean) ** 2) * weight).sum(0) / (n - 1).clamp(min=1)
    return torch.where(n > 1, var.mean(), torch.zeros_like(n))
