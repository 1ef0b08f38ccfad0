"""Typed configuration of the Mamba backbone, with the derived sizes in one place."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


@dataclass
class MambaConfig:
    """Hyper-parameters of a stack of Mamba (S6) residual blocks.

    Defaults are the published Mamba-130M block; only `d_model` and `n_layer` change across the public sizes.

    Attributes:
        d_model: width of the residual stream D (the backbone maps `[B, L, D] -> [B, L, D]`).
        n_layer: number of residual blocks.
        d_state: SSM state size N per channel.
        d_conv: width of the depthwise causal convolution.
        expand: inner width multiplier; `d_inner = expand * d_model`.
        dt_rank: rank of the input-dependent step size projection; "auto" means `ceil(d_model / 16)`.
        dt_min, dt_max, dt_init, dt_scale, dt_init_floor: step-size initialization (see `backbone/init.py`).
        conv_bias, bias: biases of the conv and of in_proj/out_proj.
        rms_norm: RMSNorm (True, as published) or LayerNorm.
        residual_in_fp32: keep the residual stream in fp32 under mixed precision.
        norm_epsilon: epsilon of every norm.
        rescale_prenorm_residual: scale out_proj by 1/sqrt(n_layer) at init (GPT-2's pre-norm residual rule).
        dropout: dropout on each block's mixer output before it joins the residual stream (training only; the public
            checkpoints use 0). Small corpora such as tinyshakespeare need it.
        mixer_dropout: dropout inside each mixer on the convolution's output, the input of both the SSM and the
            x_proj that makes its step sizes and B/C (training only; 0 in the public checkpoints).
        drop_path: stochastic depth. In training, block i's whole mixer output is dropped for a random subset of the
            batch's sequences with probability `drop_path * i / (n_layer - 1)` (0 for the first block, `drop_path` for
            the last), the rest scaled by 1 / (1 - p), so a sequence sees a random shallower stack (training only).
    """

    d_model: int = 768
    n_layer: int = 24
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | str = "auto"
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init: Literal["random", "constant"] = "random"
    dt_scale: float = 1.0
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False
    rms_norm: bool = True
    residual_in_fp32: bool = True
    norm_epsilon: float = 1e-5
    rescale_prenorm_residual: bool = True
    dropout: float = 0.0
    mixer_dropout: float = 0.0
    drop_path: float = 0.0

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layer", "d_state", "expand"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"MambaConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_conv < 2:
            raise ValueError(f"MambaConfig.d_conv must be >= 2, got {self.d_conv}")
        if isinstance(self.dt_rank, str) and self.dt_rank != "auto":
            raise ValueError(f"MambaConfig.dt_rank must be a positive int or 'auto', got {self.dt_rank!r}")
        for name in ("dropout", "mixer_dropout", "drop_path"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"MambaConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"MambaConfig needs 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")

    def drop_path_rate(self, layer_idx: int) -> float:
        """Stochastic-depth probability of block `layer_idx`: linear in depth, from 0 to `drop_path`."""
        return self.drop_path * layer_idx / max(1, self.n_layer - 1)

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def dt_rank_value(self) -> int:
        return math.ceil(self.d_model / 16) if self.dt_rank == "auto" else int(self.dt_rank)
