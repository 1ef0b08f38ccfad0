"""DNA metrics: bits per base and perplexity for language models; accuracy, MCC, F1, ROC-AUC for classifiers."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from sklearn import metrics as skm
from torchmetrics import Metric

IGNORE_INDEX = -100

UNIFORM_BITS_PER_BASE = 2.0  # log2(4): a model that knows nothing about DNA


def bits_per_base(loss_nats: float) -> float:
    """Mean cross-entropy in nats per base -> bits per base."""
    return loss_nats / math.log(2)


def perplexity(loss_nats: float) -> float:
    return math.exp(min(loss_nats, 50.0))


def next_base_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-base cross-entropy (nats, fp32) and the number of scored positions.

    Args:
        logits: `[B, L, V]` any float dtype; labels: `[B, L]` int64, `IGNORE_INDEX` where nothing is scored.
    """
    nats = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    return nats, (labels != IGNORE_INDEX).sum()


class NextBaseMetrics(Metric):
    """Accumulates next-base NLL over an evaluation set (summed across devices) -> loss, perplexity, bits/base."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("nats", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, nats: torch.Tensor, count: torch.Tensor) -> None:
        # Out of place: states reset under `trainer.validate` are inference tensors, which refuse in-place updates.
        self.nats = self.nats + nats.detach().double()
        self.count = self.count + count

    def compute(self) -> dict[str, float]:
        loss = (self.nats / self.count.clamp(min=1)).item()
        return {"loss": loss, "perplexity": perplexity(loss), "bits_per_base": bits_per_base(loss)}


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Scores of class probabilities `probs [N, C]` against integer `labels [N]`.

    Binary tasks report F1 of class 1 and ROC-AUC of `probs[:, 1]`; multi-class tasks macro F1 and one-vs-rest
    macro ROC-AUC. ROC-AUC is NaN when the labels hold a single class (it is undefined there).
    """
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    preds = probs.argmax(1)
    binary = probs.shape[1] == 2
    out = {
        "accuracy": float(skm.accuracy_score(labels, preds)),
        "mcc": float(skm.matthews_corrcoef(labels, preds)),
        "f1": float(skm.f1_score(labels, preds, average="binary" if binary else "macro", zero_division=0)),
    }
    if len(np.unique(labels)) < 2:
        out["roc_auc"] = float("nan")
    elif binary:
        out["roc_auc"] = float(skm.roc_auc_score(labels, probs[:, 1]))
    else:
        probs = probs / probs.sum(1, keepdims=True)
        out["roc_auc"] = float(
            skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=np.arange(probs.shape[1]))
        )
    return out


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """`[num_classes, num_classes]` counts, rows = true class."""
    return skm.confusion_matrix(labels, preds, labels=np.arange(num_classes))
