"""Which inputs the student does not see: block masks for images, span masks for audio, token masks for text.

All three are pure functions of sizes (or tokens) and a CPU ``torch.Generator``: every random number comes
from that generator, so one seed gives one mask, in a data-loader worker as in a test. Masks are bool with
``True`` = masked (hidden from the student, predicted from the teacher).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from data2vec.errors import Data2VecError


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise Data2VecError(message)


def _block_mask_row(h: int, w: int, n: int, min_block: int, min_aspect: float, g: torch.Generator) -> Tensor:
    """One ``[H, W]`` mask with exactly `n` cells: rectangles while they fit, then single random cells."""
    mask = torch.zeros(h, w, dtype=torch.bool)
    count, log_lo = 0, math.log(min_aspect)
    while count < n:
        remaining, added = n - count, 0
        for _ in range(10):  # attempts per block: BEiT gives up on a block after 10 overshoots
            u_area, u_aspect, u_top, u_left = torch.rand(4, generator=g).tolist()
            area = min(min_block, remaining) + u_area * (remaining - min(min_block, remaining))
            aspect = math.exp(log_lo - 2 * log_lo * u_aspect)  # log-uniform in [min_aspect, 1 / min_aspect]
            bh = min(max(round(math.sqrt(area * aspect)), 1), h)
            bw = min(max(round(math.sqrt(area / aspect)), 1), w)
            top, left = int(u_top * (h - bh + 1)), int(u_left * (w - bw + 1))
            cells = mask[top:top + bh, left:left + bw]
            new = bh * bw - int(cells.sum())  # only newly covered cells spend the budget
            if 0 < new <= remaining:
                cells.fill_(True)
                added = new
                break
        if added == 0:
            break
        count += added
    if count < n:  # no rectangle fits the last few cells (small grids): top up one cell at a time
        free = (~mask).flatten().nonzero().squeeze(1)
        pick = free[torch.randperm(free.numel(), generator=g)[: n - count]]
        mask.view(-1)[pick] = True
    return mask


def block_mask(batch_size: int, grid_hw: tuple[int, int], mask_ratio: float, *, generator: torch.Generator,
               min_block: int = 16, min_aspect: float = 0.3) -> Tensor:
    """BEiT block-wise masks over a patch grid: ``[B, H*W]`` bool, row-major, exactly round(ratio*H*W) per row.

    Masking whole rectangles rather than scattered patches keeps the task from being solved by interpolating
    neighbours (data2vec v1 images, after BEiT). Blocks have area uniform in ``[min_block, remaining]`` and
    aspect log-uniform in ``[min_aspect, 1/min_aspect]``; a block that would overshoot the budget is redrawn.
    Note: the paper's "120 of 196" patches is ratio ~0.612; ratio 0.6 gives round(117.6) = 118.
    """
    _check(batch_size > 0, f"block_mask: batch_size must be positive, got {batch_size}")
    h, w = grid_hw
    _check(h > 0 and w > 0, f"block_mask: grid_hw must be two positive sizes, got {grid_hw}")
    _check(0.0 <= mask_ratio < 1.0, f"block_mask: mask_ratio must be in [0, 1), got {mask_ratio}")
    _check(min_block > 0, f"block_mask: min_block must be positive, got {min_block}")
    _check(0.0 < min_aspect <= 1.0, f"block_mask: min_aspect must be in (0, 1], got {min_aspect}")
    n = round(mask_ratio * h * w)
    if n == 0:
        return torch.zeros(batch_size, h * w, dtype=torch.bool)
    rows = [_block_mask_row(h, w, n, min(min_block, n), min_aspect, generator) for _ in range(batch_size)]
    return torch.stack(rows).view(batch_size, h * w)  # [B, H*W]


def span_mask(batch_size: int, num_frames: int, mask_prob: float, span_length: int, *,
              generator: torch.Generator, padding_mask: Tensor | None = None, min_spans: int = 2) -> Tensor:
    """wav2vec 2.0 / data2vec speech span masks: ``[B, T]`` bool, padding (``padding_mask`` True) never masked.

    A row with L valid frames gets ``max(min_spans, int(mask_prob * L / span_length + u))`` starts, u ~ U[0, 1)
    (stochastic rounding, so the expected count is exact), drawn without replacement from ``[0, L - span]``;
    each masks ``span`` frames and overlaps merge, so p=0.65, span 10 masks ~49% of a long input. Spans
    shorter than audio events force the model to use context. Short rows use a span of at most L-1 and at
    most (L-1)//span starts, so a row is never entirely masked.
    """
    _check(batch_size > 0 and num_frames > 0,
           f"span_mask: batch_size and num_frames must be positive, got {batch_size} and {num_frames}")
    _check(0.0 <= mask_prob <= 1.0, f"span_mask: mask_prob must be in [0, 1], got {mask_prob}")
    _check(span_length > 0, f"span_mask: span_length must be positive, got {span_length}")
    _check(min_spans >= 0, f"span_mask: min_spans must be >= 0, got {min_spans}")
    if padding_mask is None:
        lengths = [num_frames] * batch_size
    else:
        _check(padding_mask.shape == (batch_size, num_frames) and padding_mask.dtype == torch.bool,
               f"span_mask: padding_mask must be bool [{batch_size}, {num_frames}], got "
               f"{padding_mask.dtype} {list(padding_mask.shape)}")
        lengths = (~padding_mask).sum(1).tolist()  # padding sits at the end of each row
    mask = torch.zeros(batch_size, num_frames, dtype=torch.bool)
    for b, length in enumerate(lengths):
        u = torch.rand((), generator=generator).item()
        span = min(span_length, length - 1)
        if mask_prob == 0.0 or span <= 0:
            continue
        k = max(min_spans, int(mask_prob * length / span_length + u))
        k = min(k, (length - 1) // span)  # k * span <= L - 1: at least one frame stays visible
        starts = torch.randperm(length - span + 1, generator=generator)[:k]  # [k]
        mask[b, (starts[:, None] + torch.arange(span)).flatten()] = True  # [k * span], overlaps merge
    return mask


def token_choice(tokens: Tensor, mask_prob: float, *, generator: torch.Generator,
                 special_ids: Sequence[int], span: int = 1) -> Tensor:
    """Which tokens of int64 ``tokens [B, T]`` to predict: bool ``[B, T]``, never a special token.

    Each row chooses ``int(mask_prob * n_eligible / span + u)`` (at least 1) of its non-special tokens
    uniformly without replacement, u ~ U[0, 1), as span starts; a span covers its start and the `span - 1`
    tokens after it, overlapping spans merge and special tokens inside a span stay unchosen (fairseq's
    `mask_multiple_length`, which data2vec's released text recipe sets to 4). With `span=1` the expected share
    is exactly `mask_prob`; longer spans choose a little less, through overlaps and row ends. BERT masking
    (v1) then corrupts the chosen ids; data2vec 2.0 drops them from the student's input instead.
    """
    _check(tokens.dim() == 2 and tokens.dtype == torch.int64,
           f"token_choice: tokens must be int64 [B, T], got {tokens.dtype} {list(tokens.shape)}")
    _check(0.0 <= mask_prob <= 1.0, f"token_choice: mask_prob must be in [0, 1], got {mask_prob}")
    _check(span >= 1, f"token_choice: span must be at least 1 (masking.token_span), got {span}")
    special = torch.tensor(list(special_ids), dtype=torch.int64)
    eligible = ~torch.isin(tokens, special)  # [B, T]
    n_eligible = eligible.sum(1)  # [B]
    u = torch.rand(tokens.shape[0], generator=generator)  # [B]
    k = (mask_prob * n_eligible / span + u).long().clamp(min=1)
    k = torch.minimum(k, n_eligible) if mask_prob > 0 else torch.zeros_like(k)
    scores = torch.rand(tokens.shape, generator=generator).masked_fill(~eligible, 2.0)  # ineligible sort last
    rank = scores.argsort(1).argsort(1)  # [B, T] position of each token in its row's random order
    chosen = rank < k[:, None]  # [B, T] (span starts)
    if span > 1:
        starts = chosen.clone()
        for offset in range(1, min(span, tokens.shape[1])):
            chosen[:, offset:] |= starts[:, :-offset]
        chosen &= eligible
    return chosen


def token_mask(tokens: Tensor, mask_prob: float, *, generator: torch.Generator, mask_id: int, vocab_size: int,
               special_ids: Sequence[int], random_prob: float = 0.1,
               keep_prob: float = 0.1, span: int = 1) -> tuple[Tensor, Tensor]:
    """BERT-style corruption of int64 ``tokens [B, T]``: returns ``(corrupted [B, T], chosen [B, T] bool)``.

    Each row chooses ``int(mask_prob * n_eligible + u)`` (at least 1) of its non-special tokens uniformly
    without replacement (in spans of `span`, see :func:`token_choice`). A chosen token is kept with
    `keep_prob`, replaced by a random non-special token with `random_prob`, else by `mask_id`; keeping and
    replacing some stops the model from trusting that only ``[MASK]`` positions matter. `tokens` is not
    modified.
    """
    _check(tokens.dim() == 2 and tokens.dtype == torch.int64,
           f"token_mask: tokens must be int64 [B, T], got {tokens.dtype} {list(tokens.shape)}")
    _check(0.0 <= mask_prob <= 1.0, f"token_mask: mask_prob must be in [0, 1], got {mask_prob}")
    _check(random_prob >= 0 and keep_prob >= 0 and random_prob + keep_prob <= 1,
           f"token_mask: random_prob and keep_prob must be >= 0 with sum <= 1, got {random_prob}, {keep_prob}")
    _check(vocab_size > 0, f"token_mask: vocab_size must be positive, got {vocab_size}")
    special = torch.tensor(list(special_ids), dtype=torch.int64)
    allowed = torch.arange(vocab_size)[~torch.isin(torch.arange(vocab_size), special)]  # [V']
    _check(allowed.numel() > 0 or random_prob == 0,
           "token_mask: vocab_size leaves no non-special token for random replacement; set random_prob=0")

    chosen = token_choice(tokens, mask_prob, generator=generator, special_ids=special_ids, span=span)  # [B, T]
    action = torch.rand(tokens.shape, generator=generator)  # [B, T]
    random_tokens = tokens
    if allowed.numel() > 0:
        random_tokens = allowed[torch.randint(allowed.numel(), tokens.shape, generator=generator)]  # [B, T]
    corrupted = tokens.clone()
    to_mask = chosen & (action >= keep_prob + random_prob)
    to_random = chosen & (action >= keep_prob) & ~to_mask
    corrupted[to_mask] = mask_id
    corrupted[to_random] = random_tokens[to_random]
    return corrupted, chosen


def inverse_block_mask(batch_size: int, grid_hw: tuple[int, int], mask_ratio: float, *,
                       generator: torch.Generator, block_size: int = 3) -> Tensor:
    """data2vec 2.0 inverse block masks: ``[B, H*W]`` bool, exactly round(ratio*H*W) masked per row.

    Instead of masking blocks, blocks of ``block_size x block_size`` patches are chosen to stay *visible*:
    at high mask ratios (0.8) this leaves a few contiguous islands of context rather than scattered patches,
    so the student cannot solve the task by local interpolation. Seeds are drawn without replacement until
    the kept blocks cover the visible budget; the last block is trimmed at random to hit it exactly.
    """
    _check(batch_size > 0, f"inverse_block_mask: batch_size must be positive, got {batch_size}")
    h, w = grid_hw
    _check(h > 0 and w > 0, f"inverse_block_mask: grid_hw must be two positive sizes, got {grid_hw}")
    _check(0.0 <= mask_ratio < 1.0, f"inverse_block_mask: mask_ratio must be in [0, 1), got {mask_ratio}")
    _check(block_size > 0, f"inverse_block_mask: block_size must be positive, got {block_size}")
    n_keep = h * w - round(mask_ratio * h * w)
    rows = []
    for _ in range(batch_size):
        keep = torch.zeros(h, w, dtype=torch.bool)
        count = 0
        for seed in torch.randperm(h * w, generator=generator).tolist():
            if count >= n_keep:
                break
            top, left = max(seed // w - block_size // 2, 0), max(seed % w - block_size // 2, 0)
            block = torch.zeros(h, w, dtype=torch.bool)
            block[top:top + block_size, left:left + block_size] = True
            new = (block & ~keep).flatten().nonzero().squeeze(1)
            if count + new.numel() > n_keep:  # trim the last block to the exact budget
                new = new[torch.randperm(new.numel(), generator=generator)[: n_keep - count]]
            keep.view(-1)[new] = True
            count += new.numel()
        rows.append(~keep.flatten())
    return torch.stack(rows)  # [B, H*W], True = masked
