"""Initialization of the Mamba backbone as published (Gu & Dao, 2023), in one place.

* `A_log`: S4D-real, `A[d, n] = -(n + 1)`, stored as `log(n + 1)` so `A = -exp(A_log)` stays negative.
* `D`: ones (a plain skip connection).
* `dt_proj.weight`: uniform(+-dt_rank^-0.5 * dt_scale) (or constant dt_rank^-0.5 * dt_scale).
* `dt_proj.bias`: inverse softplus of dt, with dt log-uniform in [dt_min, dt_max] and floored at dt_init_floor,
  so that softplus(bias) starts in the intended range of time scales.
* Linear biases zero; embeddings normal(0, 0.02).
* `out_proj.weight`: kaiming-uniform then divided by sqrt(n_layer): the pre-norm residual rescale (GPT-2), so the
  variance of the residual stream does not grow with depth.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from backbone.config import MambaConfig

NO_WEIGHT_DECAY = "_no_weight_decay"


def s4d_real_A_log(d_inner: int, d_state: int) -> torch.Tensor:
    """`(d_inner, d_state)` fp32: log(1..N) for every channel."""
    return torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1)


def inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    return x + torch.log(-torch.expm1(-x))


@torch.no_grad()
def init_dt_proj_(dt_proj: nn.Linear, config: MambaConfig) -> None:
    std = config.dt_rank_value**-0.5 * config.dt_scale
    if config.dt_init == "constant":
        nn.init.constant_(dt_proj.weight, std)
    else:
        nn.init.uniform_(dt_proj.weight, -std, std)
    log_min, log_max = math.log(config.dt_min), math.log(config.dt_max)
    dt = torch.exp(torch.rand(dt_proj.out_features) * (log_max - log_min) + log_min)
    dt = dt.clamp(min=config.dt_init_floor)
    dt_proj.bias.copy_(inverse_softplus(dt))
    dt_proj.bias._no_reinit = True  # type: ignore[attr-defined]


@torch.no_grad()
def init_backbone_(model: nn.Module, config: MambaConfig) -> None:
    """Zero linear biases (except dt_proj's), then rescale every `out_proj` for depth."""
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.bias is not None and not getattr(module.bias, "_no_reinit", False):
            nn.init.zeros_(module.bias)
    if config.rescale_prenorm_residual:
        for name, param in model.named_parameters():
            if name.endswith("out_proj.weight"):
                nn.init.kaiming_uniform_(param, a=math.sqrt(5))
                param /= math.sqrt(config.n_layer)


@torch.no_grad()
def init_embedding_(embedding: nn.Embedding, std: float = 0.02) -> None:
    nn.init.normal_(embedding.weight, std=std)


def optimizer_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW parameter groups: matrices decay; biases, norms, A_log and D do not.

    A parameter's `NO_WEIGHT_DECAY` attribute, when set (True or False), decides over its shape: FSDP hands the
    optimizer flattened 1-D views, so the shape rule is recorded on the parameters before they are sharded
    (`mark_weight_decay`).
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if getattr(param, NO_WEIGHT_DECAY, param.dim() < 2):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def mark_weight_decay(model: nn.Module) -> None:
    """Record `optimizer_groups`' decision on every parameter (`NO_WEIGHT_DECAY` True/False), while shapes are real."""
    for param in model.parameters():
        setattr(param, NO_WEIGHT_DECAY, getattr(param, NO_WEIGHT_DECAY, param.dim() < 2))
