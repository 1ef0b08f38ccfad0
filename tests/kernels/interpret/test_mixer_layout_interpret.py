"""The mixer on the Triton kernels (interpreter, CPU): every sequence a kernel reads or writes is channel-major
memory (a `(batch, channels, seqlen)` view of a `[channels, batch * seqlen]` matrix), so nothing between in_proj and
out_proj is transposed or copied, forward or backward; and the values and gradients equal the reference path."""

from __future__ import annotations

import os

import pytest
import torch
from layouts import LaunchSpy

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="Triton interpreter tests: run with TRITON_INTERPRET=1"
)

import kernels  # noqa: E402
from backbone import MambaConfig  # noqa: E402
from backbone.mixer import MambaMixer  # noqa: E402
from kernels.causal_conv1d import conv  # noqa: E402
from kernels.selective_scan import scan  # noqa: E402

KERNELS = [
    (conv, "_causal_conv1d_fwd_kernel"),
    (conv, "_causal_conv1d_bwd_kernel"),  # time-major: the one-pass backward
    (scan, "_selective_scan_fwd_kernel"),
    (scan, "_selective_scan_bwd_kernel"),
]


def test_mixer_kernels_see_channel_major_sequences_and_match_the_reference(monkeypatch):
    batch, seqlen = 2, 13  # seqlen differs from every channel/state count, so sequences are recognisable
    torch.manual_seed(0)
    mixer = MambaMixer(MambaConfig(d_model=8, n_layer=1, d_state=4))
    hidden = torch.randn(batch, seqlen, 8, requires_grad=True)
    inputs = [hidden, *mixer.parameters()]
    dout = torch.randn(batch, seqlen, 8)

    with kernels.use_reference():
        expected = mixer(hidden)
        expected_grads = torch.autograd.grad(expected, inputs, dout)

    spies = []
    for module, name in KERNELS:
        spies.append(LaunchSpy(getattr(module, name)))
        monkeypatch.setattr(module, name, spies[-1])
    with kernels.use_triton():
        out = mixer(hidden)
        got_grads = torch.autograd.grad(out, inputs, dout)

    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    for got, want, name in zip(got_grads, expected_grads, ["hidden", *(n for n, _ in mixer.named_parameters())]):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=lambda m, name=name: f"d {name}: {m}")
    assert [len(s.launches) for s in spies] == [1] * len(KERNELS), "each kernel runs once, forward and backward"
    sequences = [t for s in spies for t in s.launches[0] if t.dim() == 3 and t.shape[-1] == seqlen]
    assert len(sequences) >= 14, "conv x/out/dout/dx, scan u/delta/B/C/z/out, their gradients"
    for t in sequences:
        assert t.stride() == (seqlen, batch * seqlen, 1), f"a kernel got {tuple(t.shape)} of strides {t.stride()}"
