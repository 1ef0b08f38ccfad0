"""Heads shared by the modalities: next-token LM logits, pooled classification, and a bidirectional wrapper."""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn

Pooling = Literal["mean", "last"]


class LMHead(nn.Module):
    """`[B, L, D]` -> logits `[B, L, V]`; shares the embedding matrix when `tied_embedding` is given."""

    def __init__(self, d_model: int, vocab_size: int, tied_embedding: nn.Embedding | None = None) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, vocab_size, bias=False)
        if tied_embedding is not None:
            if tied_embedding.weight.shape != self.proj.weight.shape:
                raise ValueError(
                    f"cannot tie LM head {tuple(self.proj.weight.shape)} to embedding "
                    f"{tuple(tied_embedding.weight.shape)}"
                )
            self.proj.weight = tied_embedding.weight

    @property
    def weight(self) -> torch.Tensor:
        return self.proj.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden)


def pool(hidden: torch.Tensor, mask: torch.Tensor | None, pooling: Pooling) -> torch.Tensor:
    """`[B, L, D]` (+ mask `[B, L]`, True on real tokens) -> `[B, D]` by mean over real tokens or the last one."""
    if mask is None:
        return hidden.mean(1) if pooling == "mean" else hidden[:, -1]
    mask = mask.to(hidden.dtype)
    if pooling == "mean":
        return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    last = (mask.sum(1).long() - 1).clamp(min=0)  # masks are right-padded: the last real token
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class ClassificationHead(nn.Module):
    """Pooled sequence classification: hidden `[B, L, D]` (+ mask `[B, L]`) -> logits `[B, num_classes]`."""

    def __init__(self, d_model: int, num_classes: int, pooling: Pooling = "mean", dropout: float = 0.0) -> None:
        super().__init__()
        if pooling not in ("mean", "last"):
            raise ValueError(f"pooling must be 'mean' or 'last', got {pooling!r}")
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(d_model, num_classes)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.proj(self.dropout(pool(hidden, mask, self.pooling)))


def reverse_padded(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Reverse each sequence of `[B, L, ...]` over its real (right-padded) tokens; padding stays at the end."""
    if mask is None:
        return x.flip(1)
    lengths = mask.sum(1).long()  # [B]
    positions = torch.arange(x.shape[1], device=x.device)[None, :]  # [1, L]
    index = torch.where(positions < lengths[:, None], lengths[:, None] - 1 - positions, positions)  # [B, L]
    return torch.gather(x, 1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x))


class BidirectionalBackbone(nn.Module):
    """Runs a causal backbone forwards and over the reversed sequence, then adds or concatenates the two.

    The reverse pass uses a copy of the backbone with its own parameters (SaShiMi's bidirectional variant), or the
    same parameters when `share_weights` (Caduceus-style tying; half the parameters). Output `[B, L, out_dim]` is
    aligned position by position.
    """

    def __init__(self, backbone: nn.Module, combine: str = "add", share_weights: bool = False) -> None:
        super().__init__()
        if combine not in ("add", "concat"):
            raise ValueError(f"combine must be 'add' or 'concat', got {combine!r}")
        self.forward_backbone = backbone
        self.reverse_backbone = backbone if share_weights else copy.deepcopy(backbone)
        self.combine = combine
        d_model = backbone.config.d_model
        self.out_dim = d_model if combine == "add" else 2 * d_model

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """`hidden` `[B, L, D]` embeddings (+ mask `[B, L]`) -> `[B, L, out_dim]`."""
        forward_out = self.forward_backbone(hidden)
        reverse_out = reverse_padded(self.reverse_backbone(reverse_padded(hidden, mask)), mask)
        if self.combine == "add":
            return forward_out + reverse_out
        return torch.cat([forward_out, reverse_out], dim=-1)
