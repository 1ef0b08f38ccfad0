"""The fused LM head + cross-entropy equals logits + `F.cross_entropy`: value, gradients, ignored targets, chunking."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tasks.lm_loss import linear_token_nll


def reference(hidden, weight, targets):
    logits = F.linear(hidden, weight)
    return F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), reduction="sum", ignore_index=-100)


@pytest.mark.parametrize("chunk_rows", [1, 5, 64])
def test_value_and_gradients_equal_the_unfused_loss(chunk_rows):
    torch.manual_seed(0)
    hidden = torch.randn(3, 7, 16, requires_grad=True)
    weight = torch.randn(40, 16, requires_grad=True)
    targets = torch.randint(0, 40, (3, 7))
    targets[0, :3] = -100  # ignored positions must add neither loss nor gradient
    nats, count = linear_token_nll(hidden, weight, targets, chunk_rows=chunk_rows)
    expected = reference(hidden, weight, targets)
    torch.testing.assert_close(nats, expected)
    assert count.item() == 18
    grads = torch.autograd.grad(2.5 * nats, (hidden, weight))
    expected_grads = torch.autograd.grad(2.5 * expected, (hidden, weight))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)
    assert grads[0][0, :3].abs().max() == 0


def test_gradient_for_the_weight_only_and_without_grad():
    torch.manual_seed(1)
    hidden, weight = torch.randn(10, 8), torch.randn(12, 8, requires_grad=True)
    targets = torch.randint(0, 12, (10,))
    nats, _ = linear_token_nll(hidden, weight, targets, chunk_rows=3)
    (dw,) = torch.autograd.grad(nats, weight)
    torch.testing.assert_close(dw, torch.autograd.grad(reference(hidden, weight, targets), weight)[0])
    with torch.no_grad():
        torch.testing.assert_close(linear_token_nll(hidden, weight, targets)[0], reference(hidden, weight, targets))


def test_follows_autocast_like_the_unfused_loss():
    torch.manual_seed(2)
    hidden = torch.randn(4, 9, 16, requires_grad=True)
    weight = torch.randn(30, 16, requires_grad=True)
    targets = torch.randint(0, 30, (4, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nats, _ = linear_token_nll(hidden, weight, targets, chunk_rows=8)
        expected = reference(hidden, weight, targets)
    torch.testing.assert_close(nats, expected, rtol=1e-3, atol=1e-3)
    grads = torch.autograd.grad(nats, (hidden, weight))
    expected_grads = torch.autograd.grad(expected, (hidden, weight))
    for got, want in zip(grads, expected_grads):
        assert got.dtype == want.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


def test_mismatched_shapes_are_named():
    with pytest.raises(ValueError, match="targets"):
        linear_token_nll(torch.randn(2, 5, 8), torch.randn(10, 8), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="weight"):
        linear_token_nll(torch.randn(2, 5, 8), torch.randn(10, 7), torch.zeros(2, 5, dtype=torch.long))


def test_mamba_lm_token_nll_equals_its_logits_loss():
    from backbone import MambaConfig
    from tasks.lm import MambaLM, MambaLMConfig

    torch.manual_seed(3)
    model = MambaLM(MambaLMConfig(MambaConfig(d_model=32, n_layer=2, d_state=8), vocab_size=50))
    ids = torch.randint(0, 50, (2, 17))
    nats, count = model.token_nll(ids[:, :-1], ids[:, 1:])
    logits = model(ids[:, :-1])
    expected = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum")
    torch.testing.assert_close(nats, expected)
    assert count.item() == 32
    params = list(model.parameters())
    for got, want in zip(torch.autograd.grad(nats, params), torch.autograd.grad(expected, params)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
