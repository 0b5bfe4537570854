"""Which inputs the student does not see: block masks for images, span masks for audio, token masks for text.

All are pure functions of sizes (or tokens) and a CPU ``torch.Generator``: every random number comes from
that generator, so one seed gives one mask, in a data-loader worker as in a test. Masks are bool with
``True`` = masked (hidden from the student, predicted from the teacher). The image and speech masks draw
what Meta's code draws (fairseq's `data_utils.py`, data2vec_vision's BEiT generator): `tests/test_masking.py`
compares their statistics with a fixture computed by running Meta's functions.
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
    """One ``[H, W]`` mask of at most `n` cells, drawn as Meta's BEiT `MaskingGenerator` draws it."""
    mask = torch.zeros(h, w, dtype=torch.bool)
    count, log_lo = 0, math.log(min_aspect)
    while count < n:
        budget, added = n - count, 0
        for _ in range(10):  # attempts per block; after 10 without a new cell the mask is final
            u_area, u_aspect, u_top, u_left = torch.rand(4, generator=g).tolist()
            area = min_block + u_area * (budget - min_block)  # uniform between min_block and the budget
            aspect = math.exp(log_lo - 2 * log_lo * u_aspect)  # log-uniform in [min_aspect, 1 / min_aspect]
            bh, bw = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if bh >= h or bw >= w:  # strictly smaller than the grid
                continue
            top, left = int(u_top * (h - bh + 1)), int(u_left * (w - bw + 1))
            cells = mask[top:top + bh, left:left + bw]
            new = bh * bw - int(cells.sum())  # a block may overlap earlier ones: only new cells count
            if 0 < new <= budget:
                cells.fill_(True)
                added = new
                break
        if added == 0:
            break
        count += added
    return mask


def block_mask(batch_size: int, grid_hw: tuple[int, int], mask_ratio: float, *, generator: torch.Generator,
               min_block: int = 16, min_aspect: float = 0.3) -> Tensor:
    """BEiT block-wise masks over a patch grid: ``[B, H*W]`` bool, row-major, at most round(ratio*H*W) per row.

    Masking whole rectangles rather than scattered patches keeps the task from being solved by interpolating
    neighbours (data2vec v1 images, after BEiT). This is Meta's `MaskingGenerator` (data2vec_vision's
    ``beit/masking_generator.py``) with the release's settings: rectangles of area uniform in
    ``[min_block, remaining budget]`` and aspect log-uniform in ``[min_aspect, 1/min_aspect]``, strictly smaller
    than the grid, placed uniformly; a rectangle may overlap earlier ones and spends the budget by its new cells
    only; one that would overshoot is redrawn, and after 10 draws without a new cell the mask is final. So a
    row has `round(ratio*H*W)` cells or a few fewer (the release's 120 of 196: 119.5 on average, 1.15 regions).
    """
    _check(batch_size > 0, f"block_mask: batch_size must be positive, got {batch_size}")
    h, w = grid_hw
    _check(h > 0 and w > 0, f"block_mask: grid_hw must be two positive sizes, got {grid_hw}")
    _check(0.0 <= mask_ratio < 1.0, f"block_mask: mask_ratio must be in [0, 1), got {mask_ratio}")
    _check(min_block > 0, f"block_mask: min_block must be positive, got {min_block}")
    _check(0.0 < min_aspect <= 1.0, f"block_mask: min_aspect must be in (0, 1], got {min_aspect}")
    n = round(mask_ratio * h * w)
    rows = [_block_mask_row(h, w, n, min_block, min_aspect, generator) for _ in range(batch_size)]
    return torch.stack(rows).view(batch_size, h * w)  # [B, H*W]


def _keep_first(chosen: Tensor, count: int | Tensor, order: Tensor) -> Tensor:
    """Exactly `count` cells per row of bool ``chosen [B, N]``: the chosen cells first, each group in the
    random `order` (float ``[B, N]`` in [0, 1)). A row with more drops chosen cells at random, one with fewer
    adds unchosen cells at random, as fairseq's `require_same_masks` does."""
    rank = (order + (~chosen).float()).argsort(1).argsort(1)  # [B, N]: chosen cells rank before the others
    return rank < count


def equal_counts(mask: Tensor, order: Tensor) -> Tensor:
    """Trims every row of bool ``mask [B, N]`` to the batch's smallest masked count, dropping masked cells in
    the random `order` (float ``[B, N]`` in [0, 1)): ``[B, N]`` bool with equal row sums.

    fairseq's v1 speech masking (`compute_mask_indices` with `require_same_masks`) gives every row of a batch
    the same count this way; it splits spans, so the masked runs are shorter than the spans drawn.
    """
    return mask & _keep_first(mask, mask.sum(1).min(), order)


def span_mask(batch_size: int, num_frames: int, mask_prob: float, span_length: int, *,
              generator: torch.Generator, padding_mask: Tensor | None = None, min_spans: int = 1,
              same_count: bool = True) -> Tensor:
    """data2vec v1 / wav2vec 2.0 speech span masks: ``[B, T]`` bool, padding (``padding_mask`` True) never masked.

    fairseq's `compute_mask_indices` as data2vec's speech model calls it: a row with L valid frames gets
    ``k = max(min_spans, int(mask_prob * L / span_length + u))`` starts, u ~ U[0, 1) (stochastic rounding),
    drawn without replacement from ``[0, L - span_length)``; each masks `span_length` frames and overlaps merge
    (p=0.65, span 10: ~49% of a long row, mean masked run 14.7, the wav2vec 2.0 paper's figures). With
    `same_count` every row is then trimmed to the batch's smallest count by dropping masked frames at random
    (:func:`equal_counts`; fairseq's `require_same_masks`, on in its released recipes): 8 rows of 500 frames
    keep ~45% in runs of ~7 frames; padded rows count their valid frames only, so the shortest row sets the
    count. Short rows (L - span_length <= k) start spans in ``[0, k]`` and cut them at L; a row that would be
    entirely masked, where fairseq raises an error, keeps its last frame visible (a row of one frame gets no
    mask, and with `same_count` neither does its batch).
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
        if mask_prob == 0.0 or length < 2:
            continue
        k = min(max(min_spans, int(mask_prob * length / span_length + u)), length - 1)
        places = length - span_length if length - span_length > k else k + 1
        starts = torch.randperm(places, generator=generator)[:k]  # [k]
        frames = (starts[:, None] + torch.arange(span_length)).flatten()  # [k * span], overlaps merge
        mask[b, frames[frames < length]] = True
        if mask[b, :length].all():
            mask[b, length - 1] = False
    if same_count:
        mask = equal_counts(mask, torch.rand(batch_size, num_frames, generator=generator))
    return mask


def _centred_blocks(batch_size: int, grid_hw: tuple[int, int], centres: int, block_hw: tuple[int, int],
                    generator: torch.Generator) -> Tensor:
    """``[B, H*W]`` bool: the union of `centres` blocks per row, each ``block_hw`` cells around a cell drawn
    uniformly with replacement, clipped at the grid's edges (fairseq's `compute_block_mask_1d/2d`)."""
    (h, w), (bh, bw) = grid_hw, block_hw
    centre = torch.randint(0, h * w, (batch_size, centres), generator=generator)  # [B, C]
    rows = (centre // w)[..., None, None] + (torch.arange(bh) - bh // 2)[:, None]  # [B, C, bh, 1]
    cols = (centre % w)[..., None, None] + (torch.arange(bw) - bw // 2)[None, :]  # [B, C, 1, bw]
    cells = rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)  # [B, C, bh, bw]
    chosen = torch.zeros(batch_size, h * w, dtype=torch.bool)
    return chosen.scatter_(1, cells.reshape(batch_size, -1), True)  # [B, H*W]


def centred_span_mask(batch_size: int, num_frames: int, mask_prob: float, span_length: int, *,
                      generator: torch.Generator, prob_adjust: float = 0.0) -> Tensor:
    """data2vec 2.0 speech masks: ``[B, T]`` bool with exactly ``int(mask_prob * T)`` masked frames per row.

    fairseq's `compute_block_mask_1d` (its v2 speech recipes precompute masks with it): ``int(T * (mask_prob
    + prob_adjust) / span_length)`` centres drawn with replacement, a span of `span_length` frames around
    each (clipped at the ends), then random frames dropped or added to reach the exact count. Overlaps make
    the spans cover less than asked; `prob_adjust` (fairseq's `mask_prob_adjust`, 0.05 in the Base recipe)
    draws more centres so that few frames need adding, which keeps the masked runs whole.
    """
    _check(batch_size > 0 and num_frames > 0,
           f"centred_span_mask: batch_size and num_frames must be positive, got {batch_size} and {num_frames}")
    _check(0.0 <= mask_prob < 1.0, f"centred_span_mask: mask_prob must be in [0, 1), got {mask_prob}")
    _check(span_length > 0, f"centred_span_mask: span_length must be positive, got {span_length}")
    _check(prob_adjust >= 0.0, f"centred_span_mask: prob_adjust must be >= 0 (masking.prob_adjust), got {prob_adjust}")
    centres = int(num_frames * ((mask_prob + prob_adjust) / span_length))
    spans = _centred_blocks(batch_size, (1, num_frames), centres, (1, span_length), generator)  # [B, T]
    order = torch.rand(batch_size, num_frames, generator=generator)
    return _keep_first(spans, int(num_frames * mask_prob), order)  # [B, T]


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
                       generator: torch.Generator, block_size: int = 3, prob_adjust: float = 0.0) -> Tensor:
    """data2vec 2.0 inverse block masks: ``[B, H*W]`` bool, exactly ``H*W - int(H*W * (1 - ratio))`` masked per row.

    Instead of masking blocks, blocks of ``block_size x block_size`` patches are chosen to stay *visible*:
    at high mask ratios (0.8) this leaves a few contiguous islands of context rather than scattered patches,
    so the student cannot solve the task by local interpolation. fairseq's `compute_block_mask_2d` with
    `inverse_mask`: ``int(H*W * (1 - ratio + prob_adjust) / block_size**2)`` centres drawn with replacement,
    a block around each (clipped at the edges), then random patches dropped from or added to the visible set
    to reach the exact count. `prob_adjust` (fairseq's `mask_prob_adjust`: 0.07 for Base, 0.1 for Large)
    draws more blocks than the visible share needs, as overlaps and edges shrink them: 5.2 islands per image
    at ratio 0.8 on a 14x14 grid.
    """
    _check(batch_size > 0, f"inverse_block_mask: batch_size must be positive, got {batch_size}")
    h, w = grid_hw
    _check(h > 0 and w > 0, f"inverse_block_mask: grid_hw must be two positive sizes, got {grid_hw}")
    _check(0.0 <= mask_ratio < 1.0, f"inverse_block_mask: mask_ratio must be in [0, 1), got {mask_ratio}")
    _check(block_size > 0, f"inverse_block_mask: block_size must be positive, got {block_size}")
    _check(prob_adjust >= 0.0, f"inverse_block_mask: prob_adjust must be >= 0 (masking.prob_adjust), got {prob_adjust}")
    n, keep_prob = h * w, 1 - mask_ratio
    centres = int(n * ((keep_prob + prob_adjust) / block_size ** 2))
    blocks = _centred_blocks(batch_size, (h, w), centres, (block_size, block_size), generator)  # [B, H*W]
    keep = _keep_first(blocks, int(n * keep_prob), torch.rand(batch_size, n, generator=generator))
    return ~keep  # [B, H*W], True = masked
