"""The fused mixer decode step (conv step, x_proj, dt_proj, SSM step in two Triton kernels) against its reference,
the unfused ops, under TRITON_INTERPRET=1 on CPU; and a mixer's Triton decode steps against its full forward."""

from __future__ import annotations

import os

import pytest
import torch
from kernel_tolerance import assert_close
from mixer_step_inputs import make_step_inputs, run_step

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="Triton interpreter tests: run with TRITON_INTERPRET=1"
)

import kernels  # noqa: E402
from backbone import MambaConfig  # noqa: E402
from backbone.mixer import MambaMixer  # noqa: E402
from kernels.mixer_step import ref  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    "batch, dim, dstate, dt_rank, width, state_len, optional",
    [
        (2, 6, 16, 3, 4, 3, True),  # smallest conv state (width - 1)
        (1, 37, 16, 5, 4, 4, True),  # odd dim: three channel blocks, the last one partial
        (3, 40, 4, 1, 2, 5, False),  # no z, D, biases; rank 1; a conv state longer than the window
        (2, 70, 64, 8, 7, 6, True),  # dstate 64, width 7, five channel blocks
    ],
)
def test_mixer_step_matches_unfused_reference(batch, dim, dstate, dt_rank, width, state_len, optional, dtype):
    inputs = make_step_inputs(batch, dim, dstate, dt_rank, width, state_len, dtype, optional=optional)
    with kernels.use_triton():
        fast = run_step(kernels.mixer_step, inputs)
    lowp = run_step(ref.mixer_step, inputs)
    hi = run_step(ref.mixer_step, inputs, upcast=True)
    for name, f, lo, h in zip(("out", "conv_state", "ssm_state"), fast, lowp, hi):
        assert_close(name, f, lo, h.to(lo.dtype) if name == "conv_state" else h)


def test_mixer_step_rejects_bad_shapes_by_name():
    inputs = make_step_inputs(1, 8, 4, 2, 4, 3, torch.float32)
    bad = dict(inputs, x_proj_weight=inputs["x_proj_weight"][:-1])
    with pytest.raises(ValueError, match="x_proj_weight"):
        kernels.mixer_step(**bad)
    with pytest.raises(ValueError, match="ssm_state must be float32"):
        kernels.mixer_step(**dict(inputs, ssm_state=inputs["ssm_state"].double()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_mixer_triton_decode_steps_equal_its_full_forward(dtype):
    torch.manual_seed(0)
    config = MambaConfig(d_model=24, n_layer=1, d_state=8, dt_rank=3)
    mixer = MambaMixer(config).to(dtype).eval()
    hidden = torch.randn(2, 9, config.d_model).to(dtype)
    with torch.no_grad(), kernels.use_triton():
        full = mixer(hidden)
        cache = _layer_cache(mixer, batch=2, dtype=dtype)
        steps = torch.stack([mixer.step(hidden[:, t], cache) for t in range(hidden.shape[1])], dim=1)
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(steps, full, **tol)


def _layer_cache(mixer, *, batch, dtype):
    from backbone.cache import LayerCache

    c = mixer.config
    return LayerCache(
        conv_state=torch.zeros(batch, c.d_inner, c.d_conv, dtype=dtype),  # as MambaCache.allocate
        ssm_state=torch.zeros(batch, c.d_inner, c.d_state),
    )
