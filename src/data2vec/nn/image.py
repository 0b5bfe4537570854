"""The ViT image front-end: patch embedding, CLS token, positions, mask embedding, relative position bias."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from data2vec.config import EncoderConfig, ImageConfig
from data2vec.nn.frontend import Frontend
from data2vec.nn.init import trunc_normal_


def sincos_pos_embed(dim: int, grid_hw: tuple[int, int], order: str = "xy") -> Tensor:
    """Fixed 2-D sine-cosine positions `[H*W, dim]` (MAE / data2vec 2.0), patches in row-major order.

    Half the channels encode one axis, half the other, each as [sin, cos] of the coordinate times the
    frequencies ``10000 ** (-i / (dim / 4))``. `order` "xy" puts the column (x) half first, as MAE's
    ``get_2d_sincos_pos_embed`` and fairseq do, so converted weights see the positions they were trained
    with; "yx" (row half first) is what models of this library saved before ``image.sincos_order`` existed use.
    """
    if dim % 4:
        raise ValueError(f"sin-cos positions need model.dim divisible by 4, got {dim}")
    if order not in ("xy", "yx"):
        raise ValueError(f"sin-cos order must be xy or yx, got {order!r}")
    h, w = grid_hw
    freqs = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    parts = []
    for coord in ((xs, ys) if order == "xy" else (ys, xs)):
        angles = coord.reshape(-1)[:, None] * freqs[None, :]  # [H*W, dim / 4]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1).float()


class RelativePositionBias(nn.Module):
    """BEiT relative position bias: one learned scalar per head and 2-D offset, plus three CLS entries."""

    def __init__(self, grid_hw: tuple[int, int], heads: int, cls_token: bool) -> None:
        super().__init__()
        h, w = grid_hw
        num_offsets = (2 * h - 1) * (2 * w - 1)
        self.table = nn.Parameter(torch.zeros(num_offsets + 3, heads))
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        coords = torch.stack([ys.reshape(-1), xs.reshape(-1)])  # [2, N]
        rel = coords[:, :, None] - coords[:, None, :]  # [2, N, N]
        index = (rel[0] + h - 1) * (2 * w - 1) + (rel[1] + w - 1)
        if cls_token:
            n = h * w + 1
            full = torch.zeros(n, n, dtype=torch.long)
            full[1:, 1:] = index
            full[0, 1:] = num_offsets  # CLS attends to a patch
            full[1:, 0] = num_offsets + 1  # a patch attends to CLS
            full[0, 0] = num_offsets + 2
            index = full
        self.register_buffer("index", index, persistent=False)

    def forward(self) -> Tensor:
        """Additive attention bias `[1, H, T, T]`."""
        return self.table[self.index].permute(2, 0, 1).unsqueeze(0)


class ImageFrontend(Frontend):
    """Turns images `[B, C, H, W]` into tokens `[B, 1 + N, D]`, with masked patches replaced by a learned
    embedding (data2vec v1) before positions are added, then optionally normalised (`image.embed_norm`: the
    LayerNorm fairseq's data2vec 2.0 puts before its first post-LN block)."""

    def __init__(self, cfg: ImageConfig, enc: EncoderConfig) -> None:
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image.image_size={cfg.image_size} must be a multiple of image.patch_size={cfg.patch_size}")
        self.cfg = cfg
        self.init = enc.init
        side = cfg.image_size // cfg.patch_size
        self.grid_hw = (side, side)
        self.num_patches = side * side
        self.num_prefix = 1 if cfg.cls_token else 0
        self.patch_embed = nn.Conv2d(cfg.in_chans, enc.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, enc.dim)) if cfg.cls_token else None
        self.mask_token = nn.Parameter(torch.zeros(1, 1, enc.dim))
        if cfg.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix + self.num_patches, enc.dim))
        elif cfg.pos_embed == "sincos":
            pos = torch.cat([torch.zeros(self.num_prefix, enc.dim),
                             sincos_pos_embed(enc.dim, self.grid_hw, cfg.sincos_order)])
            self.register_buffer("pos_embed", pos.unsqueeze(0), persistent=False)
        else:
            self.pos_embed = None
        if cfg.rel_pos_bias == "shared":
            self.rel_pos = nn.ModuleList([RelativePositionBias(self.grid_hw, enc.heads, cfg.cls_token)])
        elif cfg.rel_pos_bias == "per_layer":
            self.rel_pos = nn.ModuleList(RelativePositionBias(self.grid_hw, enc.heads, cfg.cls_token)
                                         for _ in range(enc.depth))
        else:
            self.rel_pos = nn.ModuleList()
        self.embed_norm = nn.LayerNorm(enc.dim, eps=enc.norm_eps) if cfg.embed_norm else None
        self.pool_norm = nn.LayerNorm(enc.dim, eps=enc.norm_eps) if cfg.pool_norm else None
        self._init_weights()

    def _init_weights(self) -> None:
        """Tokens and learned positions as `model.init` says; the patch embedding xavier-uniform as a Linear
        over the flattened patch (MAE, fairseq's data2vec 2.0) or, with `model.init: beit`, as BEiT /
        data2vec_vision: the truncated normal and a zero bias."""
        for param in (self.mask_token, self.cls_token, self.pos_embed):
            if isinstance(param, nn.Parameter):
                trunc_normal_(param, self.init)
        w = self.patch_embed.weight
        if self.init == "beit":
            trunc_normal_(w, "beit")
            nn.init.zeros_(self.patch_embed.bias)
        else:
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))

    def forward(self, images: Tensor, mask: Tensor | None = None, padding_mask: Tensor | None = None
                ) -> tuple[Tensor, Tensor | list[Tensor] | None, Tensor | None]:
        """images `[B, C, H, W]`, mask bool `[B, N]` (True = masked) -> (tokens `[B, P + N, D]`, attention bias,
        token padding mask: always None for images, which all have the same size)."""
        if images.ndim != 4 or images.shape[1] != self.cfg.in_chans or images.shape[-1] != self.cfg.image_size:
            raise ValueError(f"expected images [B, {self.cfg.in_chans}, {self.cfg.image_size}, "
                             f"{self.cfg.image_size}], got {list(images.shape)}")
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # [B, N, D]
        if mask is not None:
            x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        if self.embed_norm is not None:  # per token, so v2 may drop masked tokens before or after it
            x = self.embed_norm(x)
        if len(self.rel_pos) == 0:
            bias = None
        elif len(self.rel_pos) == 1:
            bias = self.rel_pos[0]()
        else:
            bias = [rp() for rp in self.rel_pos]
        return x, bias, None

    def mask_parameters(self) -> list[nn.Parameter]:
        return [self.mask_token]

    def pool_parameters(self) -> list[nn.Parameter]:
        return list(self.pool_norm.parameters()) if self.pool_norm is not None else []

    def pool(self, hidden: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """One vector per image `[B, D]`: mean of patch tokens, or the CLS token (then `image.pool_norm`)."""
        if self.cfg.pool == "cls" and self.num_prefix:
            pooled = hidden[:, 0]
        else:
            pooled = hidden[:, self.num_prefix:].mean(dim=1)
        return self.pool_norm(pooled) if self.pool_norm is not None else pooled
