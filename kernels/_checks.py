"""Argument checks for the public ops: each failure is a ValueError that names the argument."""

from __future__ import annotations

import torch


def check_tensor(name: str, t: torch.Tensor | None, ndim: int | tuple[int, ...], *, optional: bool = False) -> None:
    if t is None:
        if optional:
            return
        raise ValueError(f"{name} is required, got None")
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if t.dim() not in allowed:
        raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} dimensions, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")


def check_shape(name: str, t: torch.Tensor | None, expected: tuple[int, ...]) -> None:
    if t is not None and tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(t.shape)}")


def check_same_device(reference_name: str, reference: torch.Tensor, **others: torch.Tensor | None) -> None:
    for name, t in others.items():
        if t is not None and t.device != reference.device:
            raise ValueError(f"{name} is on {t.device} but {reference_name} is on {reference.device}")


def check_groups(name: str, BC: torch.Tensor, batch: int, dim: int, dstate: int, seqlen: int | None) -> None:
    """B/C: `(batch, dstate[, seqlen])` or grouped `(batch, groups, dstate[, seqlen])`."""
    tail = () if seqlen is None else (seqlen,)
    if BC.dim() == 2 + len(tail):
        check_shape(name, BC, (batch, dstate, *tail))
        return
    groups = BC.shape[1]
    if groups < 1 or dim % groups != 0:
        raise ValueError(f"{name} has {groups} groups, which must divide dim={dim}")
    check_shape(name, BC, (batch, groups, dstate, *tail))
