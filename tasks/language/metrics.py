"""Language-model metrics: loss (nats per token), perplexity, and bits per character.

Loss and perplexity depend on the tokenizer (a token of a 50k BPE carries more text than a byte); bits per character
does not, so it compares models across tokenizers:

    bits_per_char = total nats over the text / (ln 2 * number of characters of the text)
                  = mean loss per scored token / ln 2 * (scored tokens / characters)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from tasks.language.data import IGNORE_INDEX


def perplexity(loss: float) -> float:
    """`exp(loss)` of a mean loss in nats per token (inf when it overflows)."""
    return math.exp(loss) if loss < 700 else math.inf


def bits_per_char(total_nats: float, n_chars: int) -> float:
    """Total nats over a text divided by `ln 2 * n_chars`."""
    if n_chars <= 0:
        raise ValueError(f"bits per character needs a text with characters, got n_chars={n_chars}")
    return total_nats / (math.log(2) * n_chars)


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed negative log-likelihood and number of scored targets.

    Args:
        logits: `[B, L, V]` (any float dtype; the loss is computed in fp32).
        targets: `[B, L]` int64, `IGNORE_INDEX` where nothing is scored.

    Returns:
        `(nats, count)`: 0-dim fp32 sum over scored targets, 0-dim int64 count.
    """
    nats = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return nats, (targets != IGNORE_INDEX).sum()


class LanguageModelMetrics(Metric):
    """Accumulates nats and scored tokens over an evaluation set (summed across processes under DDP).

    Args:
        tokens_per_char: scored tokens per character of the whole evaluation text (`TokenizedText.tokens_per_char`);
            with it, bits per character is exact when the whole text is evaluated and a per-token-rate estimate
            when only part of it is (`limit_val_batches`).

    `compute()` returns `{"loss", "perplexity", "bits_per_char"}` as 0-dim tensors.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, tokens_per_char: float, **kwargs) -> None:
        super().__init__(**kwargs)
        if tokens_per_char <= 0:
            raise ValueError(f"tokens_per_char must be > 0, got {tokens_per_char}")
        self.tokens_per_char = tokens_per_char
        self.add_state("nats", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, nats: torch.Tensor, count: torch.Tensor) -> None:
        """Add a batch's summed nats and scored-token count (from `token_nll`)."""
        self.nats += nats.detach().to(torch.float64)
        self.count += count.detach().to(torch.long)

    def compute(self) -> dict[str, torch.Tensor]:
        loss = self.nats / self.count.clamp(min=1)
        return {
            "loss": loss.float(),
            "perplexity": torch.exp(loss.clamp(max=700)).float(),
            "bits_per_char": (loss / math.log(2) * self.tokens_per_char).float(),
        }
