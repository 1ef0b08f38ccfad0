"""Recurrent inference state: what a Mamba stack carries from one token to the next.

Per layer a conv state `(batch, d_inner, d_conv)` (the last inputs of the causal conv; the kernels use the last
`d_conv - 1` columns before shifting the new input in) and an SSM state `(batch, d_inner, d_state)` kept in fp32.
Its size does not depend on the sequence length, so decoding costs O(1) per token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LayerCache:
    conv_state: torch.Tensor  # [batch, d_inner, d_conv], model dtype
    ssm_state: torch.Tensor  # [batch, d_inner, d_state], fp32


@dataclass
class MambaCache:
    """All layers' states plus how many tokens they have seen (`seqlen_offset`)."""

    layers: list[LayerCache]
    seqlen_offset: int = 0
    batch_size: int = field(init=False)

    def __post_init__(self) -> None:
        self.batch_size = self.layers[0].ssm_state.shape[0] if self.layers else 0

    @classmethod
    def allocate(
        cls,
        n_layer: int,
        batch: int,
        d_inner: int,
        d_conv: int,
        d_state: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> MambaCache:
        layers = [
            LayerCache(
                conv_state=torch.zeros(batch, d_inner, d_conv, dtype=dtype, device=device),
                ssm_state=torch.zeros(batch, d_inner, d_state, dtype=torch.float32, device=device),
            )
            for _ in range(n_layer)
        ]
        return cls(layers)

    def reset(self) -> None:
        """Zero every state in place (keeps the buffers, so captured CUDA graphs stay valid)."""
        for layer in self.layers:
            layer.conv_state.zero_()
            layer.ssm_state.zero_()
        self.seqlen_offset = 0
