"""CTC speech recognition on characters: vocabulary, targets, loss, greedy decoding and error rates.

The vocabulary is ``<blank>`` (index 0, the CTC blank), ``|`` (the word boundary, as in fairseq's letter
dictionaries) and the other characters of the training transcripts, sorted. Transcripts are used as given
apart from whitespace, which is collapsed: normalise case and punctuation before, as LibriSpeech does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

BLANK, BOUNDARY = "<blank>", "|"


def normalize_transcript(text: str) -> str:
    """Whitespace collapsed to single spaces, none at the ends."""
    return " ".join(text.split())


def letters_to_words(letters: str) -> str:
    """A fairseq ``.ltr`` line (``H E L L O | W O R L D |``) as words (``HELLO WORLD``)."""
    return normalize_transcript("".join(letters.split()).replace(BOUNDARY, " "))


def char_vocabulary(transcripts: list[str]) -> list[str]:
    """``[<blank>, |, sorted characters of the transcripts]``."""
    chars = {c for t in transcripts for c in t if not c.isspace()} - {BOUNDARY}
    return [BLANK, BOUNDARY, *sorted(chars)]


def encode(text: str, vocab: list[str]) -> list[int]:
    """Token ids of a transcript: characters, ``|`` between words; characters outside `vocab` are dropped
    (the reference text keeps them, so they count as errors)."""
    index = {c: i for i, c in enumerate(vocab)}
    spelled = BOUNDARY.join(normalize_transcript(text).split(" "))
    return [index[c] for c in spelled if c in index and c != BLANK]


def decode(ids: list[int], vocab: list[str]) -> str:
    """Text of token ids (no blanks, no repeats already): ``|`` becomes a space."""
    return normalize_transcript("".join(vocab[i] for i in ids).replace(BOUNDARY, " "))


def greedy_decode(logits: Tensor, frame_padding: Tensor | None = None) -> list[list[int]]:
    """Best path of each utterance: the most likely token per frame, repeats merged, blanks (0) removed.
    logits `[B, T, V]`, frame_padding bool `[B, T]` (True = padding, ignored)."""
    best = logits.argmax(dim=-1)  # [B, T]
    lengths = frame_lengths(best.shape, frame_padding)
    out = []
    for row, n in zip(best.tolist(), lengths.tolist()):
        path = row[:n]
        out.append([t for i, t in enumerate(path) if t != 0 and (i == 0 or t != path[i - 1])])
    return out


def frame_lengths(shape: torch.Size, frame_padding: Tensor | None) -> Tensor:
    """Real frames per utterance `[B]` of a `[B, T, ...]` batch."""
    if frame_padding is None:
        return torch.full((shape[0],), shape[1], dtype=torch.long)
    return (~frame_padding).sum(dim=1).long().cpu()


def ctc_loss(logits: Tensor, frame_padding: Tensor | None, targets: Tensor, target_lengths: Tensor) -> Tensor:
    """CTC loss summed over each utterance and averaged over utterances (fairseq's `sentence_avg`).
    logits `[B, T, V]`, targets int `[B, L]` padded beyond `target_lengths` `[B]`. An utterance too short for
    its transcript gives zero loss instead of infinity (`zero_infinity`, as the reference)."""
    log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # [T, B, V]
    lengths = frame_lengths(logits.shape, frame_padding).to(logits.device)
    loss = F.ctc_loss(log_probs, targets, lengths, target_lengths, blank=0, reduction="sum", zero_infinity=True)
    return loss / logits.shape[0]


def error_rates(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Corpus word and character error rates (edit operations over reference length) with `jiwer`."""
    import jiwer

    empty = [i for i, r in enumerate(references) if not r]
    if empty:  # jiwer rejects empty references; an empty one would make the rate undefined anyway
        keep = [i for i in range(len(references)) if i not in set(empty)]
        hypotheses, references = [hypotheses[i] for i in keep], [references[i] for i in keep]
    if not references:
        return {"wer": 0.0, "cer": 0.0}
    return {"wer": float(jiwer.wer(references, hypotheses)), "cer": float(jiwer.cer(references, hypotheses))}
