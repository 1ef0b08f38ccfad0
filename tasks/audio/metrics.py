"""Audio metrics: bits per sample for waveform models, and the classification report (scikit-learn)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def bits_per_sample(nll_nats: float) -> float:
    """Mean negative log-likelihood per sample in nats -> bits (8.0 is a uniform guess over 256 mu-law levels)."""
    return nll_nats / math.log(2)


def classification_report(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    Returns a dict with `accuracy`, `macro_f1` (floats), `per_class` ({label: {precision, recall, f1, support}}),
    `confusion_matrix` (int `[C, C]` ndarray, rows = true class) and `text` (scikit-learn's printable report).
    """
    from sklearn import metrics

    ids = list(range(len(labels)))
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=ids, zero_division=0
    )
    return {
        "accuracy": float(metrics.accuracy_score(y_true, y_pred)),
        "macro_f1": float(metrics.f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0)),
        "per_class": {
            label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, support)
        },
        "confusion_matrix": metrics.confusion_matrix(y_true, y_pred, labels=ids),
        "text": metrics.classification_report(
            y_true, y_pred, labels=ids, target_names=list(labels), digits=4, zero_division=0
        ),
    }
