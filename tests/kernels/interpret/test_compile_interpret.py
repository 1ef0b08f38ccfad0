"""torch.compile sees the Triton ops as custom ops (fake functions + registered backward): a graph with all three
compiles with fullgraph=True (no graph break) and gives the eager values and gradients. Interpreter on CPU, so the
`aot_eager` backend (it exercises the fake functions and the autograd registration without generating code)."""

from __future__ import annotations

import os

import pytest
import torch
import torch._dynamo.testing
from layouts import channel_last_copy, projection_views

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="Triton interpreter tests: run with TRITON_INTERPRET=1"
)

from kernels.causal_conv1d import conv  # noqa: E402
from kernels.rms_norm import fused  # noqa: E402
from kernels.selective_scan import scan  # noqa: E402


def block(x, conv_w, norm_w, A, delta, B, C, z, channel_last=False):
    hidden, residual = fused.rms_norm(x, norm_w, None, None, eps=1e-5, prenorm=True, residual_in_fp32=True)
    hidden = hidden.transpose(1, 2)  # [b, d, l] view of [b, l, d] memory
    u = conv.causal_conv1d(hidden if channel_last else hidden.contiguous(), conv_w, None, activation="silu")
    y, last = scan.selective_scan(u, delta, A, B, C, None, z, None, delta_softplus=True, return_last_state=True)
    return (y**2).sum() + last.sum() + (residual**2).sum()


@pytest.mark.parametrize("channel_last", [False, True], ids=["time-major", "channel-last"])
def test_compiled_graph_matches_eager_without_graph_breaks(channel_last):
    batch, dim, seqlen, dstate = 2, 4, 20, 4
    params = [torch.randn(batch, seqlen, dim), torch.randn(dim, 4), torch.ones(dim), -torch.rand(dim, dstate)]
    params = [p.requires_grad_() for p in params]
    data = [
        torch.randn(batch, dim, seqlen),
        torch.randn(batch, dstate, seqlen),
        torch.randn(batch, dstate, seqlen),
        torch.randn(batch, dim, seqlen),
    ]
    if channel_last:  # delta transposed; B, C slices of one x_proj output; z half of an in_proj output
        _, data[1], data[2] = projection_views(torch.randn(batch, 2, seqlen), data[1], data[2])
        data[0], (_, data[3]) = channel_last_copy(data[0]), projection_views(torch.randn_like(data[3]), data[3])
    eager = block(*params, *data, channel_last)
    eager_grads = torch.autograd.grad(eager, params)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(block, backend=counter, fullgraph=True)(*params, *data, channel_last)
    compiled_grads = torch.autograd.grad(compiled, params)
    torch.testing.assert_close(compiled, eager)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b)
    graph = "\n".join(m.code for g in counter.graphs for _, m in g.named_modules() if hasattr(m, "code"))
    for op in ("add_norm_fwd", "causal_conv1d_fwd", "selective_scan_fwd"):
        assert op in graph, f"{op} is not in the compiled graph"


def test_fake_functions_give_the_kernels_strides_for_channel_last_inputs():
    # opcheck runs each op for real and under fake tensors / AOT tracing and compares outputs, strides included: a
    # compiled graph must see the channel-last outputs and gradients the launchers allocate.
    batch, dim, seqlen, dstate = 2, 4, 9, 4
    u, z = projection_views(torch.randn(batch, dim, seqlen), torch.randn(batch, dim, seqlen))
    delta, dout = channel_last_copy(torch.randn(batch, dim, seqlen)), channel_last_copy(torch.randn(batch, dim, seqlen))
    _, B, C = projection_views(*(torch.randn(batch, k, seqlen) for k in (3, dstate, dstate)))
    A, D, bias, init = -torch.rand(dim, dstate), torch.randn(dim), torch.randn(dim), torch.randn(batch, dim, dstate)
    fwd_args = (u, delta, A, B, C, D, z, bias, init, True, True)
    states = torch.ops.mambalab.selective_scan_fwd(*fwd_args)[2]
    _, *grouped = projection_views(*(torch.randn(batch, *k, seqlen) for k in ((3,), (2, dstate), (2, dstate))))
    conv_w, conv_init = torch.randn(dim, 4), torch.randn(batch, dim, 3)
    cases = [
        ("selective_scan_fwd", fwd_args),
        (
            "selective_scan_bwd",
            (dout, torch.randn(batch, dim, dstate), u, delta, A, B, C, D, z, bias, init, states, True),
        ),
        ("selective_scan_bwd", (dout, None, u, delta, A, *grouped, None, None, None, None, states, True)),
        ("causal_conv1d_fwd", (u, conv_w, None, conv_init, True, True)),
        ("causal_conv1d_bwd", (dout, torch.randn(batch, dim, 3), u, conv_w, None, conv_init, True)),
    ]
    for name, args in cases:
        torch.library.opcheck(getattr(torch.ops.mambalab, name), args)
