"""Text generation with a Mamba LM's recurrent state: one parallel prefill, then O(1) work per new token.

    result = generate(model, [tokenizer.encode("ROMEO:")], max_new_tokens=100, temperature=0.8, top_p=0.95,
                      seed=0, tokenizer=tokenizer, stop_strings=["\\n\\n"])
    result.texts[0]

Batched prompts of different lengths are exact, not left-padded: each group of equal-length prompts is pre-filled
on its own and its final states are copied into its rows of the shared cache, so every row decodes from precisely
the state its own prompt produced. Greedy decoding of a batch therefore equals decoding each prompt alone.

The logits of each step go through, in this order (Hugging Face's): repetition penalty, temperature, top-k, top-p,
min-p; then greedy argmax (`temperature=0`) or a draw from the softmax with a seeded `torch.Generator`.
On CUDA the decode step (embedding -> every layer's state update -> LM head) is captured once in a CUDA graph
and replayed for each token (`DecodeGraph`), which removes the per-kernel launch overhead that dominates batch-1
decoding; sampling stays outside the graph.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from backbone import MambaCache
from tasks.language.stream import TextStream
from tasks.language.tokenizer import TextTokenizer
from tasks.lm import MambaLM


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty: logits of tokens already in the sequence are divided by `penalty` (multiplied when negative).

    logits `[B, V]` fp32, seen `[B, V]` bool. Returns a new tensor.
    """
    if penalty == 1.0:
        return logits
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the `k` largest logits per row (`[B, V]`), set the rest to -inf; `k <= 0` keeps all."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of tokens whose probability reaches `p` (at least the top one)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    # A token is dropped when the tokens ranked above it already hold p of the mass.
    drop_sorted = (probs.cumsum(-1) - probs) >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop tokens whose probability is below `min_p` times the most likely token's."""
    if min_p <= 0.0:
        return logits
    probs = logits.softmax(-1)
    return logits.masked_fill(probs < min_p * probs.amax(-1, keepdim=True), float("-inf"))


@dataclass
class SamplingConfig:
    """How a token is chosen from the logits. `temperature=0` is greedy (argmax); the filters then do nothing."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")


def choose_tokens(
    logits: torch.Tensor, config: SamplingConfig, seen: torch.Tensor | None, generator: torch.Generator | None
) -> torch.Tensor:
    """Next token per row: logits `[B, V]` (any float dtype) -> ids `[B]` int64."""
    if config.temperature == 0 and seen is None:
        # Greedy on the logits as they come: widening bf16 to fp32 is exact, so the argmax is the same, and at batch
        # 64 a copy of the [B, V] logits costs more than the argmax itself.
        return logits.argmax(-1)
    logits = logits.float()
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, config.repetition_penalty)
    if config.temperature == 0:
        return logits.argmax(-1)
    logits = logits / config.temperature
    logits = min_p_filter(top_p_filter(top_k_filter(logits, config.top_k), config.top_p), config.min_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


class DecodeGraph:
    """`model.step` captured in a CUDA graph on fixed buffers: `__call__(ids [B]) -> logits [B, V]`.

    The graph reads and writes `cache`'s tensors in place, so the cache must stay the same object (fill it with
    `copy_`, clear it with `reset()`). Capturing runs the step a few times, which changes the cache: build the graph
    before pre-filling. The returned logits tensor is overwritten by the next call. The graph also holds each mixer's
    decode constants (`-exp(A_log)`, D, dt bias) as computed at capture: build a new graph after changing weights.
    """

    def __init__(self, model: MambaLM, cache: MambaCache, warmup: int = 3) -> None:
        device = next(model.parameters()).device
        self.cache = cache
        self.input_ids = torch.zeros(cache.batch_size, dtype=torch.long, device=device)
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):  # warm-up off the default stream, as torch.cuda.graphs asks (autotuning too)
            for _ in range(warmup):
                model.step(self.input_ids, cache)
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = model.step(self.input_ids, cache)
        cache.reset()

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        self.input_ids.copy_(input_ids)
        self.graph.replay()
        self.cache.seqlen_offset += 1
        return self.logits


@dataclass
class GenerationResult:
    """Per prompt: the new token ids (without the EOS that ended them), and why generation stopped.

    `texts` (with a tokenizer) is the decoded new text, cut before a stop string. `prefill_s` and `decode_s` are
    wall-clock seconds (CUDA-synchronized) of the parallel prefill and of the `decode_steps` O(1) steps after it.
    """

    tokens: list[list[int]]
    finish_reasons: list[str]
    texts: list[str] | None = None
    prefill_s: float = 0.0
    decode_s: float = 0.0
    decode_steps: int = 0
    cuda_graph: bool = False
    extra: dict = field(default_factory=dict)


def _check_prompts(prompts: Sequence[Sequence[int]], vocab_size: int, max_length: int | None, max_new: int):
    if len(prompts) == 0:
        raise ValueError("generate needs at least one prompt")
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {i} is empty: a Mamba LM needs at least one token to condition on")
        if max_length is not None and len(prompt) + max_new > max_length:
            raise ValueError(
                f"prompt {i} has {len(prompt)} tokens; with max_new_tokens={max_new} that exceeds "
                f"max_length={max_length} (shorten the prompt or raise the limit)"
            )
        bad = [t for t in prompt if not 0 <= int(t) < vocab_size]
        if bad:
            raise ValueError(f"prompt {i} holds token ids outside [0, {vocab_size}): {bad[:5]}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def generate(
    model: MambaLM,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    sampling: SamplingConfig | None = None,
    eos_id: int | None = None,
    seed: int | None = None,
    max_length: int | None = None,
    tokenizer: TextTokenizer | None = None,
    stop_strings: Sequence[str] = (),
    on_text: Callable[[int, str], None] | None = None,
    cuda_graph: bool | None = None,
) -> GenerationResult:
    """Continue each prompt by up to `max_new_tokens` tokens.

    Args:
        model: the LM (in eval mode; its dtype and device are used as they are).
        prompts: token ids per prompt (lengths may differ; none may be empty).
        sampling: temperature / top-k / top-p / min-p / repetition penalty (default: plain sampling at T=1).
        eos_id: a row stops after producing it (it is not included in the result).
        seed: seeds the sampling generator, so a run is reproducible (same prompts, same batch, same device).
        max_length: optional limit on prompt + new tokens; a longer request raises ValueError.
        tokenizer: needed for `stop_strings`, `on_text` and `texts`.
        stop_strings: a row stops once its new text contains one of them.
        on_text: called as `on_text(row, piece)` with each newly decodable piece of text (streaming).
        cuda_graph: capture the decode step in a CUDA graph (default: when the model is on CUDA).
    """
    sampling = sampling or SamplingConfig()
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    _check_prompts(prompts, vocab, max_length, max_new_tokens)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if (stop_strings or on_text) and tokenizer is None:
        raise ValueError("stop_strings and on_text need a tokenizer")
    batch = len(prompts)
    use_graph = device.type == "cuda" if cuda_graph is None else cuda_graph
    if use_graph and device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs the model on CUDA, it is on {device}")
    generator = None
    if seed is not None:
        generator = torch.Generator(device).manual_seed(seed)

    cache = model.allocate_cache(batch)
    graph = DecodeGraph(model, cache) if use_graph and max_new_tokens > 1 else None
    padded_vocab = model.config.padded_vocab_size
    seen = None
    if sampling.repetition_penalty != 1.0:
        seen = torch.zeros(batch, vocab, dtype=torch.bool, device=device)
        for row, prompt in enumerate(prompts):
            seen[row, torch.as_tensor(prompt, device=device)] = True

    _sync(device)
    start = time.perf_counter()
    next_logits = torch.empty(batch, padded_vocab, device=device)
    by_length: dict[int, list[int]] = {}
    for row, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(row)
    for rows in by_length.values():
        ids = torch.tensor([list(map(int, prompts[r])) for r in rows], dtype=torch.long, device=device)
        group_cache = model.allocate_cache(len(rows))
        next_logits[rows] = model(ids, group_cache)[:, -1].float()
        index = torch.tensor(rows, device=device)
        for layer, group_layer in zip(cache.layers, group_cache.layers):
            layer.conv_state.index_copy_(0, index, group_layer.conv_state)
            layer.ssm_state.index_copy_(0, index, group_layer.ssm_state)
    _sync(device)
    prefill_s = time.perf_counter() - start

    streams = [TextStream(tokenizer, stop_strings) for _ in range(batch)] if tokenizer is not None else None
    out = torch.full((batch, max_new_tokens), -1, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    reasons = ["length"] * batch
    start = time.perf_counter()
    steps = 0
    tokens = torch.zeros(batch, dtype=torch.long, device=device)
    for t in range(max_new_tokens):
        if t > 0:
            next_logits = graph(tokens) if graph is not None else model.step(tokens, cache)
            steps += 1
        # Only real tokens: the vocabulary's padding columns (to a multiple of 8) are sliced off, never produced.
        tokens = choose_tokens(next_logits[:, :vocab], sampling, seen, generator)
        out[:, t] = torch.where(finished, -1, tokens)
        if seen is not None:
            seen[torch.arange(batch, device=device), tokens] = True
        if eos_id is not None:
            finished |= tokens == eos_id
        if streams is not None:
            finished = _advance_streams(streams, out[:, t].tolist(), eos_id, reasons, finished, on_text)
        # Checking for the end costs a device sync: every token when streaming, otherwise every 16 steps.
        if (streams is not None or t % 16 == 15) and bool(finished.all()):
            break
    _sync(device)
    decode_s = time.perf_counter() - start
    for row, stream in enumerate(streams or ()):
        piece = stream.finish()
        if piece and on_text is not None:
            on_text(row, piece)

    tokens_out, final_out = [], out.tolist()
    for row in range(batch):
        ids = [t for t in final_out[row] if t >= 0]
        if eos_id is not None and eos_id in ids:
            ids = ids[: ids.index(eos_id)]
            if reasons[row] == "length":
                reasons[row] = "eos"
        tokens_out.append(ids)
    texts = [s.text for s in streams] if streams is not None else None
    return GenerationResult(tokens_out, reasons, texts, prefill_s, decode_s, steps, graph is not None)


def _advance_streams(streams, new_tokens, eos_id, reasons, finished, on_text) -> torch.Tensor:
    """Feed one step's tokens (`-1` for rows already done) to the per-row text streams; mark stopped rows."""
    done = finished.tolist()
    for row, (stream, token) in enumerate(zip(streams, new_tokens)):
        if token < 0 or stream.stopped:
            continue
        if token == eos_id:
            piece = stream.finish()
            reasons[row] = "eos"
        else:
            piece = stream.push(token)
            if stream.stopped:
                reasons[row], done[row] = "stop", True
        if piece and on_text is not None:
            on_text(row, piece)
    return torch.tensor(done, dtype=torch.bool, device=finished.device)
