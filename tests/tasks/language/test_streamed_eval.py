"""Streamed evaluation: the recurrent state carried across chunks equals one full-length forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backbone import MambaConfig
from tasks.language.data import IGNORE_INDEX
from tasks.language.metrics import streamed_nll, token_nll
from tasks.lm import MambaLM, MambaLMConfig

EOS = 1


@pytest.fixture(scope="module")
def model() -> MambaLM:
    torch.manual_seed(0)
    return MambaLM(MambaLMConfig(MambaConfig(d_model=32, n_layer=2, d_state=8), vocab_size=20)).eval()


def _stream(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    tokens = rng.integers(2, 20, size=n).astype(np.uint16)
    tokens[[17, 60, n - 1]] = EOS  # three documents
    return tokens


@pytest.mark.parametrize("chunk_len", [1, 7, 64, 500])
def test_chunks_carry_the_state_exactly(model, chunk_len):
    tokens = _stream(97)
    ids = torch.from_numpy(tokens.astype(np.int64))
    targets = ids[1:].clone()
    targets[ids[:-1] == EOS] = IGNORE_INDEX
    with torch.no_grad():
        expected_nats, expected_count = token_nll(model(ids[None, :-1]), targets[None])
    nats, count = streamed_nll(model, tokens, EOS, chunk_len=chunk_len)
    assert count == int(expected_count) == 96 - 2  # targets after the two inner EOS are not scored
    assert nats == pytest.approx(float(expected_nats), rel=1e-5)


def test_more_context_differs_from_windows(model):
    """Streaming is not windowed evaluation in disguise: a short window restarts the state and scores differently."""
    tokens = _stream(97)
    full, _ = streamed_nll(model, tokens, EOS, chunk_len=96)
    ids = torch.from_numpy(tokens.astype(np.int64))
    windowed = 0.0
    with torch.no_grad():
        for start in range(0, 96, 8):
            window = ids[start : start + 9]
            targets = window[1:].clone()
            targets[window[:-1] == EOS] = IGNORE_INDEX
            windowed += float(token_nll(model(window[None, :-1]), targets[None])[0])
    assert abs(full - windowed) > 1e-3


def test_rejects_bad_chunk_len(model):
    with pytest.raises(ValueError, match="chunk_len"):
        streamed_nll(model, _stream(97), EOS, chunk_len=0)
