"""The Mamba backbone: a stack of residual blocks and a final norm, `[B, L, D] -> [B, L, D]`."""

from __future__ import annotations

import torch
from torch import nn

from backbone.block import AddNorm, MambaBlock
from backbone.cache import MambaCache
from backbone.config import MambaConfig
from backbone.init import init_backbone_


class MambaBackbone(nn.Module):
    """Modality-agnostic Mamba stack.

    Example:
        >>> backbone = MambaBackbone(MambaConfig(d_model=64, n_layer=2))
        >>> hidden = backbone(torch.randn(2, 100, 64))        # [B, L, D] -> [B, L, D]
        >>> cache = backbone.allocate_cache(batch=2)
        >>> _ = backbone(torch.randn(2, 10, 64), cache)         # prefill
        >>> next_hidden = backbone.step(torch.randn(2, 64), cache)  # O(1) per token
    """

    def __init__(self, config: MambaConfig) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(MambaBlock(config, i) for i in range(config.n_layer))
        self.norm_f = AddNorm(config.d_model, rms=config.rms_norm, eps=config.norm_epsilon)
        self.gradient_checkpointing = False
        init_backbone_(self, config)

    def allocate_cache(
        self, batch: int, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> MambaCache:
        """Zeroed decoding state; conv states in `dtype` (default: the parameters' dtype), SSM states in fp32."""
        param = next(self.parameters())
        c = self.config
        return MambaCache.allocate(
            c.n_layer, batch, c.d_inner, c.d_conv, c.d_state,
            dtype=dtype or param.dtype, device=device or param.device,
        )  # fmt: skip

    def forward(self, hidden: torch.Tensor, cache: MambaCache | None = None) -> torch.Tensor:
        """`hidden` `[B, L, D]` -> `[B, L, D]`.

        With a `cache`, the states after the last position are stored in it; a cache that has already seen tokens
        (`seqlen_offset > 0`) is continued from, so a long prompt may be pre-filled in pieces.
        """
        if hidden.dim() != 3 or hidden.shape[-1] != self.config.d_model:
            expected = f"[batch, seqlen, d_model={self.config.d_model}]"
            raise ValueError(f"hidden must be {expected}, got {tuple(hidden.shape)}")
        continuing = cache is not None and cache.seqlen_offset > 0
        residual = None
        for i, layer in enumerate(self.layers):
            layer_cache = None if cache is None else cache.layers[i]
            if self.gradient_checkpointing and self.training and cache is None:
                hidden, residual = torch.utils.checkpoint.checkpoint(layer, hidden, residual, use_reentrant=False)
            else:
                hidden, residual = layer(hidden, residual, layer_cache, continuing=continuing)
        if cache is not None:
            cache.seqlen_offset += hidden.shape[1]
        return self.norm_f(hidden, residual, prenorm=False)

    @torch.no_grad()
    def step(self, hidden: torch.Tensor, cache: MambaCache) -> torch.Tensor:
        """One token: `hidden` `[B, D]` -> `[B, D]`, updating `cache` in place; cost independent of the position."""
        residual = None
        for layer, layer_cache in zip(self.layers, cache.layers):
            hidden, residual = layer.step(hidden, residual, layer_cache)
        cache.seqlen_offset += 1
        return self.norm_f(hidden, residual, prenorm=False)
