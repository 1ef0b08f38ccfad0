"""The channel-major projections and the mixer built on them equal the plain `nn.Linear` formulation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kernels
from backbone import MambaConfig
from backbone.mixer import MambaMixer
from backbone.projections import (
    add_matmul_,
    channel_major_matrix,
    in_projection,
    matmul_in,
    out_projection,
    x_projection,
)


def grads(outputs, inputs):
    # The same weights for outputs of equal shape whatever their strides (randn_like would follow the memory order).
    weights = [torch.randn(o.shape, generator=torch.Generator().manual_seed(i)) for i, o in enumerate(outputs)]
    loss = sum((o * w).sum() for o, w in zip(outputs, weights))
    return torch.autograd.grad(loss, inputs, retain_graph=True)


def channel_major_leaf(batch: int, channels: int, seqlen: int) -> torch.Tensor:
    """Noise `(batch, channels, seqlen)` in channel-major memory (a view of a `[channels, batch * seqlen]` matrix), as
    the projections produce it; a leaf that requires grad."""
    rows = torch.randn(channels, batch * seqlen)
    return rows.unflatten(1, (batch, seqlen)).transpose(0, 1).requires_grad_()


@pytest.mark.parametrize("bias", [False, True])
def test_in_projection_equals_linear_and_is_channel_major(bias):
    batch, seqlen, d_model, d_inner = 3, 7, 5, 6
    hidden = torch.randn(batch, seqlen, d_model, requires_grad=True)
    weight = torch.randn(2 * d_inner, d_model, requires_grad=True)
    b = torch.randn(2 * d_inner, requires_grad=True) if bias else None
    inputs = [t for t in (hidden, weight, b) if t is not None]
    x, z = in_projection(hidden, weight, b)
    ref_x, ref_z = F.linear(hidden, weight, b).transpose(1, 2).chunk(2, dim=1)
    torch.testing.assert_close(x, ref_x)
    torch.testing.assert_close(z, ref_z)
    assert x.stride() == (seqlen, batch * seqlen, 1), "x must be a view of a [d_inner, B L] matrix"
    for got, want in zip(grads((x, z), inputs), grads((ref_x, ref_z), inputs)):
        torch.testing.assert_close(got, want)
    dhidden = grads((x, z), [hidden])[0]
    assert dhidden.is_contiguous(), "the norm's backward wants a contiguous [B, L, D] gradient"


@pytest.mark.parametrize("bias", [False, True])
def test_out_projection_equals_linear_with_a_channel_major_gradient(bias):
    batch, seqlen, d_model, d_inner = 2, 9, 5, 6
    y = channel_major_leaf(batch, d_inner, seqlen)
    weight = torch.randn(d_model, d_inner, requires_grad=True)
    b = torch.randn(d_model, requires_grad=True) if bias else None
    inputs = [t for t in (y, weight, b) if t is not None]
    out = out_projection(y, weight, b)
    ref = F.linear(y.transpose(1, 2), weight, b)
    torch.testing.assert_close(out, ref)
    for got, want in zip(grads((out,), inputs), grads((ref,), inputs)):
        torch.testing.assert_close(got, want)
    dy = grads((out,), [y])[0]
    assert channel_major_matrix(dy).data_ptr() == dy.data_ptr() and dy.stride() == y.stride()


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("use_passthrough", [True, False])
def test_x_projection_sums_both_gradients_of_x(use_passthrough, in_place):
    batch, seqlen, d_inner, rank = 2, 9, 6, 5
    x = channel_major_leaf(batch, d_inner, seqlen)
    weight = torch.randn(rank, d_inner, requires_grad=True)
    passed, x_dbl = x_projection(x, weight, sum_into_downstream_grad=in_place)
    assert passed.data_ptr() == x.data_ptr() and torch.equal(passed, x)
    ref_dbl = weight @ channel_major_matrix(x)
    torch.testing.assert_close(x_dbl, ref_dbl)
    # Downstream uses of x (a stand-in for the scan, which makes a new gradient) go through `passed`; the reference
    # uses x directly.
    got = grads((passed.sin(), x_dbl) if use_passthrough else (x_dbl,), [x, weight])
    want = grads((x.sin(), ref_dbl) if use_passthrough else (ref_dbl,), [x, weight])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    assert got[0].stride() == x.stride(), "dx keeps x's channel-major layout"


@pytest.mark.parametrize("in_place", [False, True])
def test_x_projection_sums_into_a_channel_major_downstream_gradient_in_place(in_place):
    x = channel_major_leaf(2, 6, 9)
    weight = torch.randn(5, 6, requires_grad=True)
    passed, x_dbl = x_projection(x, weight, sum_into_downstream_grad=in_place)
    downstream = []  # the gradient the stand-in for the scan hands back: new, in x's channel-major layout
    passed.register_hook(lambda g: downstream.append((g.data_ptr(), g.stride())))
    out = passed.sin()
    loss = (out * torch.randn_like(out)).sum() + (x_dbl * torch.randn_like(x_dbl)).sum()  # randn_like keeps layouts
    (dx,) = torch.autograd.grad(loss, [x])
    assert downstream[0][1] == x.stride()
    assert (dx.data_ptr() == downstream[0][0]) == in_place, "x_proj's part goes into the downstream gradient"


def test_x_projection_with_a_frozen_weight():
    x = channel_major_leaf(2, 6, 9)
    weight = torch.randn(5, 6)  # requires no gradient
    passed, x_dbl = x_projection(x, weight)
    (dx,) = grads((passed.sin(), x_dbl), [x])
    (want,) = grads((x.sin(), weight @ channel_major_matrix(x)), [x])
    torch.testing.assert_close(dx, want)


def test_projections_follow_autocast_like_linear():
    hidden = torch.randn(2, 4, 8)
    w_in, w_out = torch.randn(12, 8), torch.randn(8, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x, z = in_projection(hidden, w_in)
        out = out_projection(x, w_out)
        _, x_dbl = x_projection(x, w_out[:3])
        ref_x = F.linear(hidden, w_in).transpose(1, 2)[:, :6]
        ref_out = F.linear(ref_x.transpose(1, 2), w_out)
    assert x.dtype == z.dtype == out.dtype == x_dbl.dtype == torch.bfloat16
    torch.testing.assert_close(x, ref_x)
    torch.testing.assert_close(out, ref_out)


def linear_mixer_forward(mixer: MambaMixer, hidden: torch.Tensor) -> torch.Tensor:
    """The mixer written with plain `nn.Linear` calls on `[B, L, channels]` activations: the specification."""
    c = mixer.config
    x, z = mixer.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)
    x = kernels.causal_conv1d(x, mixer._conv_weight, mixer.conv1d.bias, activation="silu")
    dt, B, C = torch.split(mixer.x_proj(x.transpose(1, 2)), [c.dt_rank_value, c.d_state, c.d_state], dim=-1)
    delta = F.linear(dt, mixer.dt_proj.weight).transpose(1, 2)
    y = kernels.selective_scan(
        x, delta, -torch.exp(mixer.A_log.float()), B.transpose(1, 2), C.transpose(1, 2), mixer.D.float(), z,
        mixer.dt_proj.bias.float(), delta_softplus=True,
    )  # fmt: skip
    return mixer.out_proj(y.transpose(1, 2))


@pytest.mark.parametrize("bias", [False, True])
def test_mixer_equals_the_linear_formulation(bias):
    torch.manual_seed(0)
    mixer = MambaMixer(MambaConfig(d_model=8, n_layer=1, d_state=4, bias=bias))
    hidden = torch.randn(2, 11, 8, requires_grad=True)
    inputs = [hidden, *mixer.parameters()]
    out, ref = mixer(hidden), linear_mixer_forward(mixer, hidden)
    torch.testing.assert_close(out, ref)
    for got, want in zip(grads((out,), inputs), grads((ref,), inputs)):
        torch.testing.assert_close(got, want)


def test_mixer_dropout_is_active_in_training_only():
    torch.manual_seed(0)
    mixer = MambaMixer(MambaConfig(d_model=8, n_layer=1, d_state=4, mixer_dropout=0.5))
    hidden = torch.randn(2, 11, 8)
    with torch.no_grad():
        train_a, train_b = mixer(hidden), mixer(hidden)
        mixer.eval()
        evaluated = mixer(hidden)
    assert not torch.allclose(train_a, train_b), "two training passes drew the same dropout mask"
    torch.testing.assert_close(evaluated, linear_mixer_forward(mixer, hidden))
    with pytest.raises(ValueError, match="mixer_dropout"):
        MambaConfig(mixer_dropout=1.0)


def test_drop_path_drops_whole_sequences_in_training_only():
    from backbone.block import MambaBlock

    config = MambaConfig(d_model=8, n_layer=3, d_state=4, drop_path=0.5)
    assert [config.drop_path_rate(i) for i in range(3)] == [0.0, 0.25, 0.5]
    torch.manual_seed(0)
    block = MambaBlock(config, layer_idx=2)
    hidden = torch.randn(64, 5, 8)
    with torch.no_grad():
        trained, _ = block(hidden)
        block.eval()
        evaluated, _ = block(hidden)
    # Each sequence's branch is either all zeros or the eval output scaled by 1 / (1 - 0.5).
    dropped = trained.flatten(1).abs().amax(dim=1) == 0
    assert 0 < int(dropped.sum()) < 64, "expected some, not all, of 64 sequences dropped at p=0.5"
    torch.testing.assert_close(trained[~dropped], 2 * evaluated[~dropped])
    assert isinstance(MambaBlock(config, layer_idx=0).drop_path, torch.nn.Identity)
    with pytest.raises(ValueError, match="drop_path"):
        MambaConfig(drop_path=1.0)


def test_matmul_in_writes_into_out():
    a, b = torch.randn(4, 3, dtype=torch.bfloat16), torch.randn(3, 5, dtype=torch.bfloat16)
    buffer = torch.full((8, 5), float("nan"))
    returned = matmul_in(a, b, torch.float32, out=buffer[4:])
    assert returned.data_ptr() == buffer[4:].data_ptr()
    torch.testing.assert_close(buffer[4:], (a @ b).float())
    assert buffer[:4].isnan().all()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fp32_gemm_outputs_on_cuda(dtype):
    # matmul_in / add_matmul_ take cuBLAS's fp32-output path on CUDA; transposed operands as the backward passes them.
    a = torch.randn(300, 130, device="cuda", dtype=dtype)
    b = torch.randn(200, 130, device="cuda", dtype=dtype).t()
    exact = a.double() @ b.double()
    out = matmul_in(a, b, torch.float32)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), exact, rtol=1e-5, atol=1e-4)

    # Into a row block of a larger buffer (the in_proj backward writes dW's two halves this way).
    buffer = torch.full((600, 200), float("nan"), device="cuda")
    returned = matmul_in(a, b, torch.float32, out=buffer[300:])
    assert returned.data_ptr() == buffer[300:].data_ptr()
    torch.testing.assert_close(buffer[300:].double(), exact, rtol=1e-5, atol=1e-4)
    assert buffer[:300].isnan().all(), "matmul_in(out=) wrote outside its block"

    acc = torch.randn(300, 200, device="cuda")
    before = acc.clone()
    returned = add_matmul_(acc, a, b)
    assert returned.data_ptr() == acc.data_ptr()
    torch.testing.assert_close(acc.double(), before.double() + exact, rtol=1e-5, atol=1e-4)
