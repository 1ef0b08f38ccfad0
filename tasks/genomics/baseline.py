"""The classical baseline every DNA classifier is reported beside: k-mer frequencies + logistic regression.

Each sequence becomes the normalised counts of its overlapping k-mers for every k in `ks` (k-mers that contain
an N or a special token are skipped); a scikit-learn `LogisticRegression` is fit on the training split and scored
on the evaluation split with the same metrics as the neural model.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from sklearn.linear_model import LogisticRegression

from tasks.genomics.metrics import classification_metrics
from tasks.genomics.tokenizer import DNATokenizer


def kmer_features(sequences: list[np.ndarray], ks: tuple[int, ...] = (3, 4, 5, 6)) -> sparse.csr_matrix:
    """`N` encoded sequences (uint8 ids) -> `[N, sum(4**k)]` sparse k-mer frequencies (each k sums to 1)."""
    tok = DNATokenizer()
    base_of = np.full(256, -1, dtype=np.int64)
    for code, base_id in enumerate(tok.base_ids):
        base_of[base_id] = code
    rows, cols, vals, offset = [], [], [], 0
    for k in ks:
        for i, seq in enumerate(sequences):
            bases = base_of[np.asarray(seq, dtype=np.uint8)]
            if bases.shape[0] < k:
                continue
            windows = np.lib.stride_tricks.sliding_window_view(bases, k)  # [L - k + 1, k]
            windows = windows[(windows >= 0).all(1)]
            if windows.shape[0] == 0:
                continue
            codes = windows @ (4 ** np.arange(k - 1, -1, -1))
            uniq, counts = np.unique(codes, return_counts=True)
            rows.append(np.full(uniq.shape[0], i))
            cols.append(uniq + offset)
            vals.append(counts / counts.sum())
        offset += 4**k
    if not rows:
        return sparse.csr_matrix((len(sequences), offset))
    return sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(len(sequences), offset)
    )


def kmer_logistic_baseline(
    train: tuple[list[np.ndarray], list[int]],
    test: tuple[list[np.ndarray], list[int]],
    *,
    ks: tuple[int, ...] = (3, 4, 5, 6),
    C: float = 1.0,
    max_iter: int = 1000,
) -> dict[str, float]:
    """Fit on `train = (sequences, labels)`, return `classification_metrics` on `test`."""
    x_train, x_test = kmer_features(train[0], ks), kmer_features(test[0], ks)
    # Frequencies are small; scaling by the feature count keeps the default C meaningful across `ks`.
    scale = float(len(ks) * 100)
    model = LogisticRegression(C=C, max_iter=max_iter)
    model.fit(x_train * scale, np.asarray(train[1]))
    probs = model.predict_proba(x_test * scale)
    return classification_metrics(np.asarray(test[1]), probs)
