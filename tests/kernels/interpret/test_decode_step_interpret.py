"""The decode-step kernels against their references under TRITON_INTERPRET=1 on CPU: the fused mixer step (conv step,
x_proj, dt_proj, SSM step in two kernels), the decode linears (GEMV, GEMV behind a fused add+RMSNorm, and the
tensor-core kernel for batched rows), and a model's Triton decode steps against its full forward."""

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
from backbone import MambaBackbone, MambaConfig  # noqa: E402
from kernels.decode_linear import ref as linear_ref  # noqa: E402
from kernels.mixer_step import ref  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    "batch, dim, dstate, dt_rank, width, state_len, optional",
    [
        (2, 6, 16, 3, 4, 3, True),  # smallest conv state (width - 1)
        (1, 37, 16, 5, 4, 4, True),  # odd dim: three channel blocks, the last one partial
        (3, 40, 4, 1, 2, 5, False),  # no z, D, biases; rank 1; a conv state longer than the window
        (2, 70, 64, 8, 7, 6, True),  # dstate 64, width 7, five channel blocks
        (16, 40, 16, 3, 4, 3, True),  # batch >= 16: kernel 2 takes twice kernel 1's channels per program
        (1, 2100, 4, 2, 4, 3, True),  # 33 channel blocks of 64: kernel 2 sums the partials in two chunks
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
@pytest.mark.parametrize("rows", [1, 2, 3])  # 3: more than MAX_ROWS, the norm kernel + matmul route
@pytest.mark.parametrize("residual, bias, residual_in_fp32", [(True, False, True), (False, True, False)])
def test_decode_rms_norm_linear_matches_reference(rows, residual, bias, residual_in_fp32, dtype):
    K, N = 300, 37  # a row shorter than its power-of-two block (masked tail); a partial block of output features
    g = torch.Generator().manual_seed(rows)
    args = dict(
        x=torch.randn(rows, K, generator=g).to(dtype),
        norm_weight=1 + 0.1 * torch.randn(K, generator=g),
        weight=(torch.randn(N, K, generator=g) / K**0.5).to(dtype),
        bias=torch.randn(N, generator=g).to(dtype) if bias else None,
        residual=torch.randn(rows, K, generator=g) if residual else None,
    )
    options = dict(eps=1e-5, residual_in_fp32=residual_in_fp32)
    with kernels.use_triton():
        fast = kernels.decode_rms_norm_linear(**args, **options)
    lowp = linear_ref.decode_rms_norm_linear(**args, **options)
    hi = linear_ref.decode_rms_norm_linear(**{k: v if v is None else v.float() for k, v in args.items()}, **options)
    assert_close("out", fast[0], lowp[0], hi[0])
    assert_close("residual", fast[1], lowp[1], hi[1].to(lowp[1].dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("rows, bias", [(1, False), (2, True), (3, False)])
def test_decode_linear_matches_reference(rows, bias, dtype):
    K, N = 70, 45
    g = torch.Generator().manual_seed(rows)
    x, weight = torch.randn(rows, K, generator=g).to(dtype), (torch.randn(N, K, generator=g) / K**0.5).to(dtype)
    b = torch.randn(N, generator=g).to(dtype) if bias else None
    with kernels.use_triton():
        fast = kernels.decode_linear(x, weight, b)
    lowp = linear_ref.decode_linear(x, weight, b)
    hi = linear_ref.decode_linear(x.float(), weight.float(), None if b is None else b.float())
    assert_close("out", fast, lowp, hi)
    with pytest.raises(ValueError, match="weight must have shape"):
        kernels.decode_linear(x, weight[:, 1:])


@pytest.mark.parametrize("rows, K, N, bias", [(3, 70, 45, False), (17, 300, 50, True), (64, 40, 33, False)])
def test_decode_linear_on_tensor_cores_matches_reference(monkeypatch, rows, K, N, bias):
    # Batched decoding (more rows than the GEMV takes, bf16): the tensor-core kernel, with row and column tiles that do
    # not divide the shape and a K loop of several steps (K 300 over 128-wide steps).
    from kernels.decode_linear import gemv

    monkeypatch.setattr(gemv, "MMA_CONFIG", dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=128, num_warps=4, num_stages=2))
    launched, original = [], gemv._few_rows_matmul
    monkeypatch.setattr(gemv, "_few_rows_matmul", lambda *a: launched.append(1) or original(*a))
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, K, generator=g).to(torch.bfloat16)
    weight = (torch.randn(N, K, generator=g) / K**0.5).to(torch.bfloat16)
    b = torch.randn(N, generator=g).to(torch.bfloat16) if bias else None
    with kernels.use_triton():
        fast = kernels.decode_linear(x, weight, b)
    assert launched, "the tensor-core kernel did not run"
    lowp = linear_ref.decode_linear(x, weight, b)
    hi = linear_ref.decode_linear(x.float(), weight.float(), None if b is None else b.float())
    assert_close("out", fast, lowp, hi)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_model_triton_decode_steps_equal_its_full_forward(dtype):
    """Prefill then Triton steps (fused norm+in_proj, mixer step, out_proj GEMV) against one full forward."""
    torch.manual_seed(0)
    backbone = MambaBackbone(MambaConfig(d_model=24, n_layer=2, d_state=8, dt_rank=3)).to(dtype).eval()
    hidden = torch.randn(2, 9, 24).to(dtype)
    with torch.no_grad(), kernels.use_triton():
        full = backbone(hidden)
        cache = backbone.allocate_cache(batch=2)
        prefix = backbone(hidden[:, :4], cache)
        steps = [backbone.step(hidden[:, t], cache) for t in range(4, hidden.shape[1])]
    got = torch.cat([prefix, torch.stack(steps, dim=1)], dim=1)
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(got, full, **tol)
