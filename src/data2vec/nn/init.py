"""Initial weights (`model.init`): this library's and fairseq's normal(0, 0.02), or BEiT's truncated one.

Meta's data2vec_vision (`modeling_cyclical.py`) wraps timm's ``trunc_normal_`` with ``a=-std, b=std``: the
normal is cut at one standard deviation, so its values lie in [-0.02, 0.02] and their standard deviation is
0.02 x sqrt(1 - 2 phi(1) / (2 Phi(1) - 1)) ~ 0.0108. torch's default cut (``a=-2, b=2``, absolute) is 100
standard deviations away: a plain normal(0, 0.02), as fairseq's ``init_bert_params`` draws.
"""

from __future__ import annotations

from torch import Tensor, nn

STD = 0.02


def trunc_normal_(tensor: Tensor, scheme: str = "normal") -> Tensor:
    """Fill `tensor` in place: normal(0, 0.02) ("normal") or the same cut at +-0.02 ("beit")."""
    if scheme == "beit":
        return nn.init.trunc_normal_(tensor, std=STD, a=-STD, b=STD)
    return nn.init.trunc_normal_(tensor, std=STD)


def init_linear_and_norm(module: nn.Module, scheme: str = "normal") -> None:
    """For `nn.Module.apply`: Linear weights as `trunc_normal_`, their biases 0; LayerNorms 1 and 0."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, scheme)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
