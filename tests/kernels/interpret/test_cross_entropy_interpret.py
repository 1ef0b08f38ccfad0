"""Triton softmax cross-entropy + in-place gradient against the reference, under TRITON_INTERPRET=1 on CPU."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="Triton interpreter tests: run with TRITON_INTERPRET=1"
)

import kernels  # noqa: E402
from kernels.cross_entropy import fused, ref  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("n_cols", [1, 37, 64])
def test_matches_reference_and_autograd(monkeypatch, dtype, n_cols):
    monkeypatch.setattr(fused, "BLOCK_V", 16)  # several blocks per row: the online logsumexp across blocks
    torch.manual_seed(0)
    logits = (3 * torch.randn(6, n_cols)).to(dtype)
    targets = torch.randint(0, n_cols, (6,))
    targets[2] = -100
    got_grad, want_grad = logits.clone(), logits.clone()
    with kernels.use_triton():
        nats = kernels.cross_entropy_grad_(got_grad, targets)
    want = ref.cross_entropy_grad_(want_grad, targets)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(nats, want, **tol)
    torch.testing.assert_close(got_grad, want_grad, **tol)
    # And both against autograd of F.cross_entropy.
    x = logits.float().requires_grad_()
    loss = F.cross_entropy(x, targets, reduction="none", ignore_index=-100)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    torch.testing.assert_close(nats, loss, **tol)
    torch.testing.assert_close(got_grad.float(), grad, **tol)
    assert nats[2] == 0 and got_grad[2].abs().max() == 0


def test_rejects_logits_without_unit_column_stride():
    with kernels.use_triton(), pytest.raises(ValueError, match="unit stride"):
        kernels.cross_entropy_grad_(torch.randn(8, 4).t(), torch.zeros(4, dtype=torch.long))
