"""Pre-norm residual block: Add -> Norm -> Mixer, returning `(hidden, residual)` so the add fuses into the norm."""

from __future__ import annotations

import torch
from torch import nn

import kernels
from backbone.cache import LayerCache
from backbone.config import MambaConfig
from backbone.mixer import MambaMixer


class AddNorm(nn.Module):
    """RMSNorm or LayerNorm over the last dim, with an optional fused residual add (see `kernels.rms_norm`)."""

    def __init__(self, hidden: int, *, rms: bool, eps: float) -> None:
        super().__init__()
        self.rms, self.eps = rms, eps
        self.weight = nn.Parameter(torch.ones(hidden))
        self.bias = None if rms else nn.Parameter(torch.zeros(hidden))

    def forward(self, x, residual=None, *, prenorm: bool = False, residual_in_fp32: bool = False):
        norm = kernels.rms_norm if self.rms else kernels.layer_norm
        return norm(
            x, self.weight, self.bias, residual, eps=self.eps, prenorm=prenorm, residual_in_fp32=residual_in_fp32
        )


class DropPath(nn.Module):
    """Stochastic depth: zero a whole `[B, ...]` sample's branch with probability p in training, scale the rest.

    The branch is the block's mixer output, so a dropped sequence passes the block on its residual alone.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, branch: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return branch
        keep = 1.0 - self.p
        mask = branch.new_empty((branch.shape[0],) + (1,) * (branch.dim() - 1)).bernoulli_(keep)
        return branch * (mask / keep)

    def extra_repr(self) -> str:
        return f"p={self.p:.3f}"


class MambaBlock(nn.Module):
    def __init__(self, config: MambaConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = AddNorm(config.d_model, rms=config.rms_norm, eps=config.norm_epsilon)
        self.mixer = MambaMixer(config)
        # Identity when unused, so inference and the public checkpoints pay nothing for it.
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        rate = config.drop_path_rate(layer_idx)
        self.drop_path = DropPath(rate) if rate > 0 else nn.Identity()

    def _add_norm(self, hidden, residual):
        return self.norm(hidden, residual, prenorm=True, residual_in_fp32=self.residual_in_fp32)

    def forward(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor | None = None,
        cache: LayerCache | None = None,
        *,
        continuing: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`hidden`, `residual`: `[B, L, D]` (residual None in the first block) -> (mixer output, new residual)."""
        normed, residual = self._add_norm(hidden, residual)
        return self.drop_path(self.dropout(self.mixer(normed, cache, continuing=continuing))), residual

    def step(self, hidden: torch.Tensor, residual: torch.Tensor | None, cache: LayerCache):
        """Decoding: `[B, D]` tensors, same contract as `forward`."""
        if self.norm.rms:  # the add+norm runs as the prologue of in_proj (one launch fewer per layer)
            xz, residual = kernels.decode_rms_norm_linear(
                hidden, self.norm.weight, self.mixer.in_proj.weight, self.mixer.in_proj.bias, residual,
                eps=self.norm.eps, residual_in_fp32=self.residual_in_fp32,
            )  # fmt: skip
            return self.mixer.step_projected(xz, cache), residual
        normed, residual = self._add_norm(hidden, residual)
        return self.mixer.step(normed, cache), residual
