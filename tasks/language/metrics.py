"""Language-model metrics: loss (nats per token), perplexity, and bits per character.

Loss and perplexity depend on the tokenizer (a token of a 50k BPE carries more text than a byte); bits per character
does not, so it compares models across tokenizers:

    bits_per_char = total nats over the text / (ln 2 * number of characters of the text)
                  = mean loss per scored token / ln 2 * (scored tokens / characters)
"""

from __future__ import annotations

import math

import numpy as np
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


@torch.no_grad()
def streamed_nll(model, tokens: np.ndarray, eos_id: int, *, chunk_len: int = 1024) -> tuple[float, int]:
    """Score a whole token stream as one sequence, carrying the recurrent state from chunk to chunk.

    Windowed evaluation (`PackedTokenDataset`) restarts every window from an empty state, so a position sees on
    average half a window of context. A recurrent model can instead predict every token from all the text before it:
    the stream is fed in chunks of `chunk_len` tokens through `model(input_ids, cache)`, the cache continuing across
    chunks, which is the text's exact log-likelihood under the model. The scored targets are the windowed ones (a
    target whose input is EOS is not scored), so `bits_per_char(nats, n_chars)` compares directly.

    Args:
        model: a `MambaLM` (anything with `allocate_cache(batch)` and `forward(input_ids [1, L], cache)`), in eval mode.
        tokens: the `doc EOS doc EOS ...` stream, `[n_tokens]` (`TokenizedText.tokens`).
        eos_id: the end-of-document id.
        chunk_len: tokens per forward pass (memory, not the result, depends on it).

    Returns:
        `(total nats, scored targets)`.
    """
    if chunk_len < 1:
        raise ValueError(f"chunk_len must be >= 1, got {chunk_len}")
    device = next(model.parameters()).device
    cache = model.allocate_cache(batch=1)
    nats, count = 0.0, 0
    for start in range(0, len(tokens) - 1, chunk_len):
        chunk = torch.from_numpy(np.asarray(tokens[start : start + chunk_len + 1], dtype=np.int64)).to(device)
        inputs, targets = chunk[:-1], chunk[1:].clone()
        targets[inputs == eos_id] = IGNORE_INDEX
        chunk_nats, chunk_count = token_nll(model(inputs[None], cache), targets[None])
        nats += float(chunk_nats)
        count += int(chunk_count)
    return nats, count
