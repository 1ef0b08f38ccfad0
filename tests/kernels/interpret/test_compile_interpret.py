"""torch.compile sees the Triton ops as custom ops (fake functions + registered backward): a graph with all three
compiles with fullgraph=True (no graph break) and gives the eager values and gradients. Interpreter on CPU, so the
`aot_eager` backend (it exercises the fake functions and the autograd registration without generating code)."""

from __future__ import annotations

import os

import pytest
import torch
import torch._dynamo.testing

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="Triton interpreter tests: run with TRITON_INTERPRET=1"
)

from kernels.causal_conv1d import conv  # noqa: E402
from kernels.rms_norm import fused  # noqa: E402
from kernels.selective_scan import scan  # noqa: E402


def block(x, conv_w, norm_w, A, delta, B, C, z):
    hidden, residual = fused.rms_norm(x, norm_w, None, None, eps=1e-5, prenorm=True, residual_in_fp32=True)
    u = conv.causal_conv1d(hidden.transpose(1, 2).contiguous(), conv_w, None, activation="silu")
    y, last = scan.selective_scan(u, delta, A, B, C, None, z, None, delta_softplus=True, return_last_state=True)
    return (y**2).sum() + last.sum() + (residual**2).sum()


def test_compiled_graph_matches_eager_without_graph_breaks():
    batch, dim, seqlen, dstate = 2, 4, 20, 4
    params = [torch.randn(batch, seqlen, dim), torch.randn(dim, 4), torch.ones(dim), -torch.rand(dim, dstate)]
    params = [p.requires_grad_() for p in params]
    data = [
        torch.randn(batch, dim, seqlen),
        torch.randn(batch, dstate, seqlen),
        torch.randn(batch, dstate, seqlen),
        torch.randn(batch, dim, seqlen),
    ]
    eager = block(*params, *data)
    eager_grads = torch.autograd.grad(eager, params)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(block, backend=counter, fullgraph=True)(*params, *data)
    compiled_grads = torch.autograd.grad(compiled, params)
    torch.testing.assert_close(compiled, eager)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b)
    graph = "\n".join(m.code for g in counter.graphs for _, m in g.named_modules() if hasattr(m, "code"))
    for op in ("add_norm_fwd", "causal_conv1d_fwd", "selective_scan_fwd"):
        assert op in graph, f"{op} is not in the compiled graph"
