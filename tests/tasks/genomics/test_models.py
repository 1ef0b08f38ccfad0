"""DNA classifier: pooling, bidirectional pass, and exact reverse-complement invariance when conjoined."""

from __future__ import annotations

import pytest
import torch

from backbone import MambaConfig
from tasks.genomics.heads import DNAClassifier
from tasks.genomics.tokenizer import DNATokenizer
from tasks.lm import MambaLM, MambaLMConfig

TOK = DNATokenizer()


def _lm() -> MambaLM:
    return MambaLM(MambaLMConfig(MambaConfig(d_model=16, n_layer=2), vocab_size=TOK.vocab_size))


@pytest.mark.parametrize("direction", ["causal", "bidirectional"])
def test_rc_invariant_classifier_gives_the_same_prediction_on_both_strands(direction):
    model = DNAClassifier(_lm(), 3, pooling="mean", direction=direction, rc_invariant=True).eval()
    ids = torch.randint(7, 12, (4, 37))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 30:] = mask[3, 5:] = False
    ids[~mask] = TOK.pad_id
    rc = TOK.reverse_complement(ids, mask)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask), model(rc, mask))
    plain = DNAClassifier(_lm(), 3).eval()
    with torch.no_grad():
        assert not torch.allclose(plain(ids, mask), plain(rc, mask))  # without conjoining, strands differ


def test_padding_does_not_change_logits():
    model = DNAClassifier(_lm(), 2, pooling="last").eval()
    ids = torch.randint(7, 11, (1, 20))
    padded = torch.cat([ids, torch.full((1, 5), TOK.pad_id)], 1)
    mask = torch.arange(25)[None] < 20
    with torch.no_grad():
        torch.testing.assert_close(model(ids), model(padded, mask))


def test_classifier_shares_the_pretrained_body_and_trains():
    lm = _lm()
    model = DNAClassifier(lm, 2, direction="bidirectional")
    assert model.embedding is lm.embedding and model.backbone is lm.backbone
    logits = model(torch.randint(7, 11, (3, 12)))
    assert logits.shape == (3, 2)
    logits.sum().backward()
    assert lm.embedding.weight.grad is not None
    with pytest.raises(ValueError, match="direction"):
        DNAClassifier(lm, 2, direction="both")
