"""Loss, perplexity and bits per character."""

from __future__ import annotations

import math

import pytest
import torch

from tasks.language.data import IGNORE_INDEX
from tasks.language.metrics import LanguageModelMetrics, bits_per_char, perplexity, token_nll


def test_uniform_model_costs_log_vocab():
    vocab = 64
    logits = torch.zeros(2, 10, vocab)
    targets = torch.randint(0, vocab, (2, 10))
    targets[0, :3] = IGNORE_INDEX
    nats, count = token_nll(logits, targets)
    assert count == 17
    torch.testing.assert_close(nats, torch.tensor(17 * math.log(vocab)))
    assert perplexity(math.log(vocab)) == pytest.approx(vocab)


def test_bits_per_char_is_total_nats_over_ln2_chars():
    assert bits_per_char(math.log(2) * 300, 100) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="n_chars=0"):
        bits_per_char(1.0, 0)


def test_metric_accumulates_batches_and_converts_to_bits_per_char():
    # A text of 1,000 characters scored as 400 tokens: tokens_per_char = 0.4.
    metric = LanguageModelMetrics(tokens_per_char=0.4)
    total_nats = 0.0
    for _ in range(4):
        logits, targets = torch.randn(5, 20, 32), torch.randint(0, 32, (5, 20))
        nats, count = token_nll(logits, targets)
        metric.update(nats, count)
        total_nats += nats.item()
    values = metric.compute()
    assert values["loss"].item() == pytest.approx(total_nats / 400, rel=1e-5)
    assert values["perplexity"].item() == pytest.approx(math.exp(total_nats / 400), rel=1e-5)
    assert values["bits_per_char"].item() == pytest.approx(bits_per_char(total_nats, 1000), rel=1e-5)
