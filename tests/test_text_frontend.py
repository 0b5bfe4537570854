"""The RoBERTa-layout text front-end (nn/text.py) inside the encoder."""

import torch

from data2vec.config import build_config
from data2vec.model import Data2VecEncoder

TINY = ["model.dim=32", "model.depth=2", "model.heads=2", "text.vocab_size=50", "text.max_positions=34",
        "text.block_size=32", "text.mask_id=4"]


def encoder():
    torch.manual_seed(0)
    return Data2VecEncoder(build_config("text-tiny", TINY)).eval()


def test_positions_start_after_padding_id_and_padding_keeps_it():
    fe = encoder().frontend
    padding = torch.tensor([[False, False, False, True, True]])
    assert fe.position_ids(padding).tolist() == [[2, 3, 4, 1, 1]]


def test_padding_does_not_change_real_token_outputs():
    enc = encoder()
    ids = torch.tensor([[0, 7, 8, 9, 10, 2]])
    alone = enc(ids).last_hidden_state
    padded_ids = torch.tensor([[0, 7, 8, 9, 10, 2, 1, 1, 1], [0, 11, 12, 13, 14, 15, 16, 17, 2]])
    padding = padded_ids == 1
    padding[1] = False
    out = enc(padded_ids, padding_mask=padding)
    torch.testing.assert_close(out.last_hidden_state[0, :6], alone[0], atol=1e-5, rtol=1e-5)
    pooled = enc.embed(padded_ids, padding)
    torch.testing.assert_close(pooled[0], alone[0].mean(0), atol=1e-5, rtol=1e-5)


def test_front_end_has_no_prefix_and_hf_roberta_parameter_layout():
    enc = encoder()
    names = {n for n, _ in enc.frontend.named_parameters()}
    assert enc.num_prefix == 0
    assert names == {"word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight",
                     "norm.weight", "norm.bias"}
    assert torch.all(enc.frontend.word_embeddings.weight[1] == 0)  # padding row, as nn.Embedding(padding_idx)
