"""Bits per base, classification metrics and the k-mer baseline."""

from __future__ import annotations

import math

import numpy as np
import torch

from tasks.genomics.baseline import kmer_features, kmer_logistic_baseline
from tasks.genomics.metrics import NextBaseMetrics, bits_per_base, classification_metrics, next_base_nll
from tasks.genomics.tokenizer import DNATokenizer

TOK = DNATokenizer()


def test_uniform_model_scores_two_bits_per_base():
    logits = torch.full((2, 10, 16), -1e4)
    logits[..., 7:11] = 0.0  # uniform over A, C, G, T
    labels = torch.randint(7, 11, (2, 10))
    labels[0, :3] = -100
    metric = NextBaseMetrics()
    metric.update(*next_base_nll(logits, labels))
    values = metric.compute()
    assert math.isclose(values["bits_per_base"], 2.0, rel_tol=1e-5) and math.isclose(
        values["perplexity"], 4.0, rel_tol=1e-5
    )
    assert bits_per_base(math.log(4)) == 2.0


def test_classification_metrics_binary_and_multiclass():
    labels = np.array([0, 1, 1, 0])
    perfect = classification_metrics(labels, np.eye(2)[labels])
    assert perfect == {"accuracy": 1.0, "mcc": 1.0, "f1": 1.0, "roc_auc": 1.0}
    multi = classification_metrics(np.array([0, 1, 2, 2]), np.array([[.8, .1, .1], [.1, .8, .1], [.1, .1, .8],
                                                                       [.6, .2, .2]]))  # fmt: skip
    assert multi["accuracy"] == 0.75 and 0 < multi["roc_auc"] <= 1


def test_kmer_features_and_baseline_separate_gc_rich_sequences():
    feats = kmer_features([TOK.encode("ACGTN"), TOK.encode("AC")], ks=(1, 2))
    assert feats.shape == (2, 4 + 16)
    assert np.allclose(feats[0, :4].toarray(), 0.25) and feats[0, 4:].sum() == 1.0  # AC, CG, GT; the N breaks none
    rng = np.random.default_rng(0)

    def sample(gc: float, n: int) -> list[np.ndarray]:
        p = [(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2]
        return [TOK.encode("".join(rng.choice(list("ACGT"), 80, p=p))) for _ in range(n)]

    train = (sample(0.3, 100) + sample(0.7, 100), [0] * 100 + [1] * 100)
    test = (sample(0.3, 50) + sample(0.7, 50), [0] * 50 + [1] * 50)
    assert kmer_logistic_baseline(train, test, ks=(1, 2))["accuracy"] > 0.9
