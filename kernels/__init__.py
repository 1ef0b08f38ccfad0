"""mambalab kernels: the ops under the Mamba backbone, with mamba-ssm's names, argument order and layouts.

Public ops (sequences are `(batch, dim, seqlen)`, SSM state `(batch, dim, dstate)` in fp32):

* `selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, *, delta_softplus, return_last_state,
  initial_state)`
* `selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, *, dt_softplus)` (in place)
* `causal_conv1d(x, weight, bias=None, *, activation, initial_state, return_final_state)`
* `causal_conv1d_update(x, conv_state, weight, bias=None, *, activation)` (in place)
* `mixer_step(x, z, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, dt_bias)`:
  a Mamba-1 mixer's decode step between in_proj and out_proj (conv step, x_proj, dt_proj, SSM step; in place)
* `rms_norm` / `layer_norm(x, weight, bias=None, residual=None, *, eps, prenorm, residual_in_fp32)` (fused add+norm)
* `decode_linear(x, weight, bias=None)` and `decode_rms_norm_linear(x, norm_weight, weight, bias=None, residual=None,
  *, eps, residual_in_fp32)`: linear layers for the few rows of a decode step (the second after a fused add+RMSNorm)
* `cross_entropy_grad_(logits, targets, *, ignore_index)`: per-row NLL, logits overwritten with their gradient

Dispatch lives here and only here. Each call picks a backend:

* `reference`: the pure-PyTorch ops in `kernels/<op>/ref.py` (any device).
* `triton`: the Triton kernels (`scan.py`, `conv.py`, `fused.py`, `step.py`). On CUDA tensors, or on CPU tensors
  when `TRITON_INTERPRET=1` (that is how CI runs them without a GPU).

`MAMBALAB_KERNELS=auto|triton|reference` chooses (default `auto`: Triton for CUDA tensors, the reference otherwise);
the `use_reference()` / `use_triton()` context managers override it for a block. Asking for Triton where it cannot
run raises `KernelUnavailableError`: there is no silent fallback.

On Hopper and newer GPUs the decode-step kernels (norm, decode linears, mixer step) launch with programmatic
dependent launch, so each starts while the one before it finishes (`kernels._triton_utils.pdl`; `MAMBALAB_PDL=0`
turns it off).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
import sys
from collections.abc import Iterator

import torch

from kernels._checks import check_groups, check_same_device, check_shape, check_tensor
from kernels._triton_utils import sequence_strides
from kernels.causal_conv1d import ref as _conv_ref
from kernels.cross_entropy import ref as _ce_ref
from kernels.decode_linear import ref as _linear_ref
from kernels.mixer_step import ref as _mixer_step_ref
from kernels.rms_norm import ref as _norm_ref
from kernels.selective_scan import ref as _scan_ref

__all__ = [
    "KernelUnavailableError",
    "causal_conv1d",
    "causal_conv1d_update",
    "cross_entropy_grad_",
    "decode_linear",
    "decode_rms_norm_linear",
    "kernel_backend",
    "layer_norm",
    "mixer_step",
    "rms_norm",
    "selective_scan",
    "selective_state_update",
    "use_reference",
    "use_triton",
]

_BACKENDS = ("auto", "triton", "reference")
_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("mambalab_kernels", default=None)

# op name -> (reference function, module of the Triton fast path, which defines a function of the same name)
_OPS = {
    "selective_scan": (_scan_ref.selective_scan, "kernels.selective_scan.scan"),
    "selective_state_update": (_scan_ref.selective_state_update, "kernels.selective_scan.step"),
    "causal_conv1d": (_conv_ref.causal_conv1d, "kernels.causal_conv1d.conv"),
    "causal_conv1d_update": (_conv_ref.causal_conv1d_update, "kernels.causal_conv1d.step"),
    "mixer_step": (_mixer_step_ref.mixer_step, "kernels.mixer_step.fused"),
    "rms_norm": (_norm_ref.rms_norm, "kernels.rms_norm.fused"),
    "layer_norm": (_norm_ref.layer_norm, "kernels.rms_norm.fused"),
    "cross_entropy_grad_": (_ce_ref.cross_entropy_grad_, "kernels.cross_entropy.fused"),
    "decode_linear": (_linear_ref.decode_linear, "kernels.decode_linear.gemv"),
    "decode_rms_norm_linear": (_linear_ref.decode_rms_norm_linear, "kernels.decode_linear.gemv"),
}


class KernelUnavailableError(RuntimeError):
    """The Triton path was requested but cannot run here."""


def _requested_backend() -> str:
    requested = _override.get() or os.environ.get("MAMBALAB_KERNELS", "auto").strip().lower() or "auto"
    if requested not in _BACKENDS:
        raise ValueError(f"MAMBALAB_KERNELS must be one of {'|'.join(_BACKENDS)}, got {requested!r}")
    return requested


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def kernel_backend(device: torch.device | str) -> str:
    """The backend (`"triton"` or `"reference"`) that an op on tensors of `device` will use right now."""
    device = torch.device(device)
    requested = _requested_backend()
    if requested == "reference":
        return "reference"
    if requested == "auto":
        return "triton" if device.type == "cuda" else "reference"
    if device.type != "cuda" and not _interpreting():
        raise KernelUnavailableError(
            f"MAMBALAB_KERNELS=triton but the tensors are on {device}: Triton runs on CUDA tensors, or on CPU tensors "
            "only under TRITON_INTERPRET=1"
        )
    return "triton"


@contextlib.contextmanager
def _backend_scope(name: str) -> Iterator[None]:
    token = _override.set(name)
    try:
        yield
    finally:
        _override.reset(token)


def use_reference() -> contextlib.AbstractContextManager[None]:
    """Run every op in the block on the pure-PyTorch reference, whatever the device."""
    return _backend_scope("reference")


def use_triton() -> contextlib.AbstractContextManager[None]:
    """Run every op in the block on the Triton kernels (raises where they cannot run)."""
    return _backend_scope("triton")


@torch._dynamo.assume_constant_result
def _backend_for(device_type: str) -> str:
    # Dynamo cannot trace ContextVar.get or os.environ; a compiled graph fixes the backend at trace time instead
    # (changing MAMBALAB_KERNELS after compiling does not recompile).
    return kernel_backend(device_type)


def _implementation(op: str, device: torch.device):
    reference, fast_module = _OPS[op]
    if _backend_for(device.type) == "reference":
        return reference
    module = sys.modules.get(fast_module)
    if module is None:
        try:
            module = importlib.import_module(fast_module)
        except ImportError as err:
            message = f"Triton path for {op} could not be imported from {fast_module}: {err}"
            raise KernelUnavailableError(message) from err
    return getattr(module, op)


def _contiguous(t: torch.Tensor | None) -> torch.Tensor | None:
    # Weights, states and the norms' rows: the kernels need stride 1 on the last dim; fix it here, once.
    return t if t is None or t.stride(-1) == 1 else t.contiguous()


def _sequence(t: torch.Tensor | None) -> torch.Tensor | None:
    # Sequences `(batch, ..., channels, seqlen)`: time-major and channel-last memory go through as they are (the
    # mixer's transposed views cost no copy); the rule is the launchers' own, `sequence_strides`.
    return sequence_strides(t)[0]


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    *,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: torch.Tensor | None = None,
):
    """Selective scan (Mamba S6). Math in `kernels/selective_scan/ref.py`.

    Args:
        u, delta: `(batch, dim, seqlen)`; z: same shape or None.
        A: `(dim, dstate)` fp32.  B, C: `(batch, dstate, seqlen)` or `(batch, groups, dstate, seqlen)`.
        D, delta_bias: `(dim,)` or None.  initial_state: `(batch, dim, dstate)` or None (gradients flow into it).
        The sequences (u, delta, z, B, C) may be channel-last (e.g. `xz[..., :d].transpose(1, 2)` of a
        `[batch, seqlen, 2 * d]` projection): the Triton path reads them without a copy.

    Returns:
        out `(batch, dim, seqlen)` in u's dtype; with `return_last_state`, `(out, last_state)` where last_state is
        `(batch, dim, dstate)` fp32. On the Triton path out (and du, ddelta, dz, dB, dC) are channel-last where
        their input is, so `out.transpose(1, 2)` is a contiguous `[batch, seqlen, dim]`.
    """
    check_tensor("u", u, 3)
    batch, dim, seqlen = u.shape
    check_tensor("delta", delta, 3)
    check_shape("delta", delta, (batch, dim, seqlen))
    check_tensor("A", A, 2)
    if A.shape[0] != dim:
        raise ValueError(f"A must have shape (dim={dim}, dstate), got {tuple(A.shape)}")
    dstate = A.shape[1]
    for name, BC in (("B", B), ("C", C)):
        check_tensor(name, BC, (3, 4))
        check_groups(name, BC, batch, dim, dstate, seqlen)
    for name, vec in (("D", D), ("delta_bias", delta_bias)):
        check_tensor(name, vec, 1, optional=True)
        check_shape(name, vec, (dim,))
    check_tensor("z", z, 3, optional=True)
    check_shape("z", z, (batch, dim, seqlen))
    check_tensor("initial_state", initial_state, 3, optional=True)
    check_shape("initial_state", initial_state, (batch, dim, dstate))
    check_same_device("u", u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, initial_state=initial_state)
    fn = _implementation("selective_scan", u.device)
    return fn(
        _sequence(u),
        _sequence(delta),
        _contiguous(A),
        _sequence(B),
        _sequence(C),
        _contiguous(D),
        _sequence(z),
        _contiguous(delta_bias),
        delta_softplus=delta_softplus,
        return_last_state=return_last_state,
        initial_state=_contiguous(initial_state),
    )


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    *,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """One decoding step of the selective scan; updates `state` `(batch, dim, dstate)` fp32 in place.

    x, dt, z: `(batch, dim)`; A `(dim, dstate)`; B, C `(batch, dstate)` or `(batch, groups, dstate)`;
    D, dt_bias `(dim,)`. Returns out `(batch, dim)` in x's dtype.
    """
    check_tensor("state", state, 3)
    batch, dim, dstate = state.shape
    if state.dtype != torch.float32:
        raise ValueError(f"state must be float32 (the SSM state is kept in fp32), got {state.dtype}")
    for name, t in (("x", x), ("dt", dt)):
        check_tensor(name, t, 2)
        check_shape(name, t, (batch, dim))
    check_tensor("A", A, 2)
    check_shape("A", A, (dim, dstate))
    for name, BC in (("B", B), ("C", C)):
        check_tensor(name, BC, (2, 3))
        check_groups(name, BC, batch, dim, dstate, None)
    for name, vec in (("D", D), ("dt_bias", dt_bias)):
        check_tensor(name, vec, 1, optional=True)
        check_shape(name, vec, (dim,))
    check_tensor("z", z, 2, optional=True)
    check_shape("z", z, (batch, dim))
    check_same_device("state", state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    fn = _implementation("selective_state_update", state.device)
    return fn(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus=dt_softplus)


def _check_activation(activation: str | None) -> None:
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")


def _check_conv_weight(name: str, weight: torch.Tensor, dim: int) -> int:
    """A depthwise conv weight `(dim, width >= 2)`; returns the width."""
    check_tensor(name, weight, 2)
    if weight.shape[0] != dim or weight.shape[1] < 2:
        raise ValueError(f"{name} must have shape (dim={dim}, width>=2), got {tuple(weight.shape)}")
    return weight.shape[1]


def _check_conv_state(conv_state: torch.Tensor, batch: int, dim: int, width: int) -> None:
    """A decoding conv state `(batch, dim, state_len >= width - 1)`."""
    check_tensor("conv_state", conv_state, 3)
    if conv_state.shape[:2] != (batch, dim) or conv_state.shape[2] < width - 1:
        raise ValueError(
            f"conv_state must have shape (batch={batch}, dim={dim}, >= width-1={width - 1}), "
            f"got {tuple(conv_state.shape)}"
        )


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    activation: str | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
):
    """Depthwise causal conv1d (+ SiLU). Math in `kernels/causal_conv1d/ref.py`.

    x: `(batch, dim, seqlen)`, time-major or channel-last (read without a copy on the Triton path); weight
    `(dim, width)` with width >= 2; bias `(dim,)`; initial_state `(batch, dim, width - 1)`. Returns out
    `(batch, dim, seqlen)` (on the Triton path in x's layout, and dx too) and, with `return_final_state`, the final
    state `(batch, dim, width - 1)`.
    """
    check_tensor("x", x, 3)
    batch, dim, _ = x.shape
    width = _check_conv_weight("weight", weight, dim)
    check_tensor("bias", bias, 1, optional=True)
    check_shape("bias", bias, (dim,))
    check_tensor("initial_state", initial_state, 3, optional=True)
    check_shape("initial_state", initial_state, (batch, dim, width - 1))
    _check_activation(activation)
    check_same_device("x", x, weight=weight, bias=bias, initial_state=initial_state)
    fn = _implementation("causal_conv1d", x.device)
    return fn(
        _sequence(x),
        _contiguous(weight),
        bias,
        activation="silu" if activation in ("silu", "swish") else None,
        initial_state=_contiguous(initial_state),
        return_final_state=return_final_state,
    )


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    activation: str | None = None,
) -> torch.Tensor:
    """One decoding step of the causal conv; updates `conv_state` `(batch, dim, state_len >= width - 1)` in place.

    x: `(batch, dim)`; weight `(dim, width)`; bias `(dim,)`. Returns out `(batch, dim)` in x's dtype.
    """
    check_tensor("x", x, 2)
    batch, dim = x.shape
    _check_conv_state(conv_state, batch, dim, _check_conv_weight("weight", weight, dim))
    check_tensor("bias", bias, 1, optional=True)
    check_shape("bias", bias, (dim,))
    _check_activation(activation)
    check_same_device("x", x, conv_state=conv_state, weight=weight, bias=bias)
    fn = _implementation("causal_conv1d_update", x.device)
    return fn(x, conv_state, weight, bias, activation="silu" if activation in ("silu", "swish") else None)


def mixer_step(
    x: torch.Tensor,
    z: torch.Tensor | None,
    conv_state: torch.Tensor,
    ssm_state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    x_proj_weight: torch.Tensor,
    dt_proj_weight: torch.Tensor,
    A: torch.Tensor,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """One decoding step of a Mamba-1 mixer between in_proj and out_proj; updates both states in place.

    Math in `kernels/mixer_step/ref.py`: conv step + SiLU, x_proj, dt_proj, SSM step (softplus step size, D skip,
    SiLU(z) gate). On the Triton path two kernels instead of the unfused ops' four launches.

    x, z: `(batch, dim)`, the halves of in_proj's output; conv_state `(batch, dim, state_len >= width - 1)`;
    ssm_state `(batch, dim, dstate)` fp32; conv_weight `(dim, width)`; conv_bias, D, dt_bias `(dim,)`;
    x_proj_weight `(dt_rank + 2 * dstate, dim)`; dt_proj_weight `(dim, dt_rank)`; A `(dim, dstate)`.
    Returns out `(batch, dim)` in x's dtype.
    """
    check_tensor("x", x, 2)
    batch, dim = x.shape
    check_tensor("z", z, 2, optional=True)
    check_shape("z", z, (batch, dim))
    _check_conv_state(conv_state, batch, dim, _check_conv_weight("conv_weight", conv_weight, dim))
    check_tensor("ssm_state", ssm_state, 3)
    if ssm_state.shape[:2] != (batch, dim) or ssm_state.dtype != torch.float32:
        raise ValueError(
            f"ssm_state must be float32 of shape (batch={batch}, dim={dim}, dstate), "
            f"got {ssm_state.dtype} {tuple(ssm_state.shape)}"
        )
    for name, state in (("conv_state", conv_state), ("ssm_state", ssm_state)):
        if state.stride(-1) != 1:
            raise ValueError(f"{name} must have last-dim stride 1 (it is updated in place)")
    dstate = ssm_state.shape[2]
    check_tensor("dt_proj_weight", dt_proj_weight, 2)
    if dt_proj_weight.shape[0] != dim:
        raise ValueError(f"dt_proj_weight must have shape (dim={dim}, dt_rank), got {tuple(dt_proj_weight.shape)}")
    dt_rank = dt_proj_weight.shape[1]
    check_tensor("x_proj_weight", x_proj_weight, 2)
    check_shape("x_proj_weight", x_proj_weight, (dt_rank + 2 * dstate, dim))
    check_tensor("A", A, 2)
    check_shape("A", A, (dim, dstate))
    for name, vec in (("conv_bias", conv_bias), ("D", D), ("dt_bias", dt_bias)):
        check_tensor(name, vec, 1, optional=True)
        check_shape(name, vec, (dim,))
    check_same_device(
        "x", x, z=z, conv_state=conv_state, ssm_state=ssm_state, conv_weight=conv_weight, conv_bias=conv_bias,
        x_proj_weight=x_proj_weight, dt_proj_weight=dt_proj_weight, A=A, D=D, dt_bias=dt_bias,
    )  # fmt: skip
    fn = _implementation("mixer_step", x.device)
    weights = map(_contiguous, (conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, dt_bias))
    return fn(_contiguous(x), _contiguous(z), conv_state, ssm_state, *weights)


def _check_decode_linear_args(x, weight, bias):
    check_tensor("x", x, 2)
    check_tensor("weight", weight, 2)
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight must have shape (out_features, {x.shape[1]}), got {tuple(weight.shape)}")
    check_tensor("bias", bias, 1, optional=True)
    check_shape("bias", bias, (weight.shape[0],))
    check_same_device("x", x, weight=weight, bias=bias)


def decode_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`x @ weight.T + bias` for the few rows of a decode step: x `(rows, K)`, weight `(N, K)` -> `(rows, N)`.

    On the Triton path up to 2 rows run as one GEMV kernel spread over the whole GPU (cuBLAS uses a handful of
    64-row tiles there); 3-64 rows of bf16/fp16 as a tensor-core matmul in small tiles (`kernels/decode_linear`);
    more rows, or fp32, go to cuBLAS."""
    _check_decode_linear_args(x, weight, bias)
    fn = _implementation("decode_linear", x.device)
    return fn(_contiguous(x), _contiguous(weight), _contiguous(bias))


def decode_rms_norm_linear(
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    *,
    eps: float = 1e-5,
    residual_in_fp32: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`residual = x + residual; out = RMSNorm(residual) @ weight.T + bias` for the few rows of a decode step.

    x, residual `(rows, K)`; norm_weight `(K,)`; weight `(N, K)`. Returns out `(rows, N)` (x's dtype) and the new
    residual (fp32 if `residual_in_fp32`). On the Triton path up to 2 rows are one kernel (the norm is the GEMV's
    prologue); more rows are the fused norm kernel then cuBLAS."""
    _check_decode_linear_args(x, weight, bias)
    _check_norm_args(x, norm_weight, None, residual)
    fn = _implementation("decode_rms_norm_linear", x.device)
    return fn(
        _contiguous(x), _contiguous(norm_weight), _contiguous(weight), _contiguous(bias), _contiguous(residual),
        eps=eps, residual_in_fp32=residual_in_fp32,
    )  # fmt: skip


def _check_norm_args(x, weight, bias, residual):
    check_tensor("x", x, tuple(range(1, 9)))
    hidden = x.shape[-1]
    check_tensor("weight", weight, 1)
    check_shape("weight", weight, (hidden,))
    check_tensor("bias", bias, 1, optional=True)
    check_shape("bias", bias, (hidden,))
    if residual is not None:
        check_tensor("residual", residual, x.dim())
        check_shape("residual", residual, tuple(x.shape))
    check_same_device("x", x, weight=weight, bias=bias, residual=residual)


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    *,
    eps: float = 1e-5,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
):
    """Fused `residual = x + residual; out = RMSNorm(residual)` over the last dim of `(..., hidden)`.

    Returns out (x's dtype) and, when `prenorm`, also the new residual (fp32 if `residual_in_fp32`).
    """
    _check_norm_args(x, weight, bias, residual)
    fn = _implementation("rms_norm", x.device)
    return fn(
        _contiguous(x), weight, bias, _contiguous(residual), eps=eps, prenorm=prenorm, residual_in_fp32=residual_in_fp32
    )


def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    *,
    eps: float = 1e-5,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
):
    """Fused `residual = x + residual; out = LayerNorm(residual)`; same contract as `rms_norm`."""
    _check_norm_args(x, weight, bias, residual)
    fn = _implementation("layer_norm", x.device)
    return fn(
        _contiguous(x), weight, bias, _contiguous(residual), eps=eps, prenorm=prenorm, residual_in_fp32=residual_in_fp32
    )


def cross_entropy_grad_(logits: torch.Tensor, targets: torch.Tensor, *, ignore_index: int = -100) -> torch.Tensor:
    """Softmax cross-entropy per row, and its gradient written over the logits (in place, no autograd).

    Args:
        logits: `[N, V]`, any float dtype, unit stride along V; overwritten with `softmax - onehot(target)` (zeros
            in rows whose target is `ignore_index`), i.e. the gradient of `nats.sum()`.
        targets: `[N]` integer ids in `[0, V)` or `ignore_index`.

    Returns:
        `nats` `[N]` fp32: `logsumexp(logits[r]) - logits[r, targets[r]]`, 0 for ignored rows.
    """
    check_tensor("logits", logits, 2)
    if not isinstance(targets, torch.Tensor) or targets.dim() != 1:
        raise ValueError(f"targets must be a 1-D tensor of ids, got {getattr(targets, 'shape', type(targets))}")
    if targets.shape[0] != logits.shape[0] or targets.is_floating_point():
        raise ValueError(f"targets must be integer ids of shape ({logits.shape[0]},), got {targets.dtype} "
                         f"{tuple(targets.shape)}")  # fmt: skip
    check_same_device("logits", logits, targets=targets)
    if logits.stride(-1) != 1:  # a copy would take the gradient away from the caller's tensor
        raise ValueError(f"logits must have unit stride along V (the gradient is written in place), got strides "
                         f"{logits.stride()}")  # fmt: skip
    fn = _implementation("cross_entropy_grad_", logits.device)
    return fn(logits, targets.contiguous(), ignore_index=ignore_index)
