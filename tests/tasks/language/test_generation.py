"""Recurrent generation: the step path equals the full forward, batching is exact, sampling is seeded."""

from __future__ import annotations

import pytest
import torch

from backbone import MambaConfig
from tasks.language.generation import (
    SamplingConfig,
    apply_repetition_penalty,
    choose_tokens,
    generate,
    min_p_filter,
    top_k_filter,
    top_p_filter,
)
from tasks.language.stream import TextStream
from tasks.language.tokenizer import TextTokenizer
from tasks.lm import MambaLM, MambaLMConfig

VOCAB = 99
GREEDY = SamplingConfig(temperature=0.0)
PROMPTS = [[3, 14, 15, 92, 65, 35], [8, 9], [27, 18, 28, 18, 28, 45, 90, 45, 23]]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    # Untied, with a spread-out head: a random tied model mostly repeats its input, which would test little.
    lm = MambaLM(MambaLMConfig(MambaConfig(d_model=48, n_layer=3), vocab_size=VOCAB, tie_embeddings=False))
    with torch.no_grad():
        lm.lm_head.proj.weight.normal_(std=0.5)
    return lm.double().eval()


def test_greedy_steps_equal_argmax_of_the_full_forward(model):
    for prompt in PROMPTS:
        new = generate(model, [prompt], max_new_tokens=16, sampling=GREEDY).tokens[0]
        assert len(new) == 16 and len(set(new)) > 3
        # One parallel pass over prompt + continuation (padded vocabulary rows dropped, as generation does).
        logits = model(torch.tensor([prompt + new]))[0, :, :VOCAB]
        # Position i predicts token i + 1: every generated token is the argmax after its prefix.
        assert logits[len(prompt) - 1 : -1].argmax(-1).tolist() == new


def test_padded_vocabulary_rows_are_never_produced(model):
    assert model.config.padded_vocab_size > VOCAB
    saved = model.lm_head.proj.weight.detach().clone()
    with torch.no_grad():
        model.lm_head.proj.weight[VOCAB:] = 0
        model.lm_head.proj.weight[VOCAB:, 0] = 1e4  # make a padding id by far the most likely
    try:
        new = generate(model, PROMPTS, max_new_tokens=5, sampling=GREEDY).tokens
        assert all(t < VOCAB for row in new for t in row)
    finally:
        with torch.no_grad():
            model.lm_head.proj.weight.copy_(saved)


def test_batch_of_different_lengths_equals_one_at_a_time(model):
    batched = generate(model, PROMPTS, max_new_tokens=12, sampling=GREEDY).tokens
    alone = [generate(model, [p], max_new_tokens=12, sampling=GREEDY).tokens[0] for p in PROMPTS]
    assert batched == alone


def test_sampling_is_reproducible_with_a_seed(model):
    config = SamplingConfig(temperature=0.9, top_k=40, top_p=0.95, min_p=0.01, repetition_penalty=1.3)
    runs = [generate(model, PROMPTS, max_new_tokens=20, sampling=config, seed=s).tokens for s in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_eos_ends_a_row(model):
    first = generate(model, PROMPTS, max_new_tokens=10, sampling=GREEDY).tokens
    eos = first[0][3]
    result = generate(model, PROMPTS, max_new_tokens=10, sampling=GREEDY, eos_id=eos)
    assert result.tokens[0] == first[0][: first[0].index(eos)]
    assert result.finish_reasons[0] == "eos"


def test_bad_prompts_raise_clearly(model):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(model, [[1, 2], []], max_new_tokens=4)
    with pytest.raises(ValueError, match=r"prompt 0 has 9 tokens; with max_new_tokens=4 that exceeds max_length=10"):
        generate(model, [list(range(9))], max_new_tokens=4, max_length=10)
    with pytest.raises(ValueError, match=r"outside \[0, 99\)"):
        generate(model, [[5, 120]], max_new_tokens=4)
    with pytest.raises(ValueError, match="at least one prompt"):
        generate(model, [], max_new_tokens=4)
    with pytest.raises(ValueError, match="top_p must be in"):
        SamplingConfig(top_p=0.0)


def test_logit_processors():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    assert torch.isinf(top_k_filter(logits, 2)[0, 2:]).all() and top_k_filter(logits, 2)[0, :2].tolist() == [2, 1]
    probs = logits.softmax(-1)[0]  # 0.64, 0.24, 0.09, 0.03
    kept = ~torch.isinf(top_p_filter(logits, 0.8))[0]
    assert kept.tolist() == [True, True, False, False] and probs[:2].sum() >= 0.8
    assert (~torch.isinf(top_p_filter(logits, 0.1))[0]).tolist() == [True, False, False, False]
    assert (~torch.isinf(min_p_filter(logits, 0.2))[0]).tolist() == [True, True, False, False]
    seen = torch.tensor([[True, False, False, True]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, 1.0, 0.0, -2.0]]


def test_text_stream_holds_back_partial_characters_and_stop_strings():
    tokenizer = TextTokenizer.train_bpe(["x"], vocab_size=258)  # bytes: "🙂" is four tokens
    stream = TextStream(tokenizer, stop_strings=["END"])
    pieces = [stream.push(t) for t in tokenizer.encode("ab🙂cdEN")]
    assert "".join(pieces) == "ab🙂cd" and "\ufffd" not in "".join(pieces)
    assert stream.push(tokenizer.encode("D")[0]) == "" and stream.stopped and stream.text == "ab🙂cd"
    plain = TextStream(tokenizer)
    assert "".join(plain.push(t) for t in tokenizer.encode("fin")) + plain.finish() == "fin"


def test_stop_strings_end_generation(model):
    tokenizer = TextTokenizer.train_bpe(["x"], vocab_size=258)  # ids < 99 decode to single bytes
    free = generate(model, [PROMPTS[0]], max_new_tokens=12, sampling=GREEDY, tokenizer=tokenizer)
    stop = free.texts[0][4:6]
    pieces: list[str] = []
    stopped = generate(
        model, [PROMPTS[0]], max_new_tokens=12, sampling=GREEDY, tokenizer=tokenizer, stop_strings=[stop],
        on_text=lambda row, piece: pieces.append(piece),
    )  # fmt: skip
    assert stopped.finish_reasons == ["stop"]
    assert stopped.texts[0] == free.texts[0][: free.texts[0].index(stop)] == "".join(pieces)


@pytest.mark.gpu
def test_cuda_graph_decoding_equals_eager(model):
    cuda = model.float().cuda()
    try:
        with_graph = generate(cuda, PROMPTS, max_new_tokens=24, sampling=GREEDY, cuda_graph=True)
        eager = generate(cuda, PROMPTS, max_new_tokens=24, sampling=GREEDY, cuda_graph=False)
        assert with_graph.cuda_graph and not eager.cuda_graph
        assert with_graph.tokens == eager.tokens
    finally:
        model.double().cpu()


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 64])  # GEMV projections at 1 row, the tensor-core matmul at 64
def test_decoding_with_programmatic_dependent_launch_equals_without(monkeypatch, batch):
    # With PDL each decode kernel starts while the one before it still runs (`kernels._triton_utils.pdl`); a read or
    # write before its wait would race, which shows as other tokens. The kernels are deterministic, so a CUDA-graph
    # decode must give the same tokens with and without it.
    torch.manual_seed(0)
    config = MambaLMConfig(MambaConfig(d_model=768, n_layer=4), vocab_size=1000, tie_embeddings=False)
    lm = MambaLM(config).cuda().to(torch.bfloat16).eval()
    with torch.no_grad():
        lm.lm_head.proj.weight.normal_(std=0.5)
    prompts = torch.randint(0, 1000, (batch, 16)).tolist()
    tokens = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("MAMBALAB_PDL", flag)
        tokens[flag] = generate(lm, prompts, max_new_tokens=64, sampling=GREEDY, cuda_graph=True).tokens
    assert len({t for row in tokens["1"] for t in row}) > 20
    assert tokens["1"] == tokens["0"]


def test_greedy_choice_takes_bf16_logits_as_they_are():
    # Greedy decoding skips the fp32 copy of the [B, V] logits; widening is exact, so the choice is the same, and a
    # strided view (the vocabulary's padding sliced off) works too.
    logits = torch.randn(5, 112, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    view = logits[:, :VOCAB]
    assert torch.equal(choose_tokens(view, GREEDY, None, None), view.float().argmax(-1))
    seen = torch.zeros(5, VOCAB, dtype=torch.bool)
    seen[torch.arange(5), view.float().argmax(-1)] = True  # with a penalty the top token can change; still fp32
    penalized = apply_repetition_penalty(view.float(), seen, 100.0)
    penalty = SamplingConfig(temperature=0.0, repetition_penalty=100.0)
    assert torch.equal(choose_tokens(view, penalty, seen, None), penalized.argmax(-1))
