"""CTC on characters: loss and greedy decoding against hand examples, WER and CER, vocabulary and targets."""

import math

import pytest
import torch

from data2vec.ctc import char_vocabulary, ctc_loss, decode, encode, error_rates, greedy_decode, letters_to_words


def test_ctc_loss_sums_the_probability_of_every_alignment():
    # T = 2 frames, vocabulary {blank, a}, target "a": alignments "a a", "a -", "- a"
    p = torch.tensor([[0.6, 0.4], [0.3, 0.7]])  # p[t, v]
    logits = p.log()[None]  # [1, T, V]: log-probabilities are logits whose softmax is p
    total = p[0, 1] * p[1, 1] + p[0, 1] * p[1, 0] + p[0, 0] * p[1, 1]
    loss = ctc_loss(logits, None, torch.tensor([[1]]), torch.tensor([1]))
    assert loss.item() == pytest.approx(-math.log(total.item()), rel=1e-5)


def test_ctc_loss_averages_over_utterances_and_ignores_padded_frames():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 4, generator=g)
    targets, lengths = torch.tensor([[1, 2], [3, 0]]), torch.tensor([2, 1])
    padding = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    both = ctc_loss(logits, padding, targets, lengths)
    first = ctc_loss(logits[:1], None, targets[:1], lengths[:1])
    second = ctc_loss(logits[1:, :4], None, targets[1:, :1], lengths[1:])  # padded frames cut off
    assert both.item() == pytest.approx((first.item() + second.item()) / 2, rel=1e-5)


def test_greedy_decoding_merges_repeats_then_drops_blanks():
    best = [0, 1, 1, 0, 1, 2, 2, 0, 0]  # - a a - a b b - -  ->  a a b
    logits = torch.nn.functional.one_hot(torch.tensor(best), 3).float()[None]
    assert greedy_decode(logits) == [[1, 1, 2]]
    padded = torch.tensor([[False] * 5 + [True] * 4])
    assert greedy_decode(logits, padded) == [[1, 1]]  # frames after the padding start are not read


def test_vocabulary_targets_and_text_round_trip():
    vocab = char_vocabulary(["seven", "go  left"])
    assert vocab[:2] == ["<blank>", "|"] and vocab[2:] == sorted(set("sevengoleft"))
    ids = encode("go  left", vocab)
    assert ids[2] == 1 and decode(ids, vocab) == "go left"  # words joined by the | boundary
    assert decode(encode("gox", vocab), vocab) == "go"  # an unknown character has no id
    assert letters_to_words("H E L L O | W O R L D |") == "HELLO WORLD"


def test_word_and_character_error_rates_against_a_hand_example():
    rates = error_rates(["the cat sit", "a dog"], ["the cat sat", "a dog"])
    assert rates["wer"] == pytest.approx(1 / 5)  # one substituted word of five reference words
    assert rates["cer"] == pytest.approx(1 / 16)  # one character of 11 + 5 reference characters
    assert error_rates(["x"], [""]) == {"wer": 0.0, "cer": 0.0}  # empty references are left out
