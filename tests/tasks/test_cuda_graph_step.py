"""CUDAGraphTrainStep: replayed steps train exactly as eager steps do; its input checks say what was wrong."""

from __future__ import annotations

import pytest
import torch

from backbone import MambaConfig
from tasks.cuda_graph_step import CUDAGraphTrainStep
from tasks.lm import MambaLM, MambaLMConfig

VOCAB = 97


def test_rejects_an_optimizer_that_cannot_be_captured():
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(ValueError, match="capturable=True"):
        CUDAGraphTrainStep(lambda x: model(x).sum(), optimizer, (torch.zeros(2, 4),))


def _lm_and_loss(seed: int):
    torch.manual_seed(seed)
    config = MambaLMConfig(MambaConfig(d_model=64, n_layer=2, d_state=16), vocab_size=VOCAB)
    model = MambaLM(config).cuda()

    def loss_fn(ids):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            nats, count = model.token_nll(ids[:, :-1], ids[:, 1:])
        return nats / count

    return model, loss_fn


@pytest.mark.gpu
def test_replayed_steps_match_eager_steps():
    first, second = (torch.randint(0, VOCAB, (2, 65), device="cuda") for _ in range(2))
    batches = [first, second, first.clone(), second.clone()]

    eager, eager_loss = _lm_and_loss(0)
    eager_opt = torch.optim.AdamW(eager.parameters(), lr=torch.tensor(1e-3, device="cuda"), fused=True, capturable=True)
    eager_losses = []
    for ids in batches:
        loss = eager_loss(ids)
        loss.backward()
        eager_opt.step()
        eager_opt.zero_grad(set_to_none=True)
        eager_losses.append(loss.item())

    graphed, graphed_loss = _lm_and_loss(0)
    start = {k: v.clone() for k, v in graphed.state_dict().items()}
    # lr a tensor, so that a schedule can change it between replays
    graphed_opt = torch.optim.AdamW(graphed.parameters(), lr=torch.tensor(1e-3, device="cuda"), fused=True,
                                    capturable=True)  # fmt: skip
    step = CUDAGraphTrainStep(graphed_loss, graphed_opt, (batches[0],))
    for k, v in graphed.state_dict().items():  # warm-up and capture left the model as it was
        torch.testing.assert_close(v, start[k], rtol=0, atol=0, msg=f"capture changed {k}")
    graphed_losses = [step(ids).item() for ids in batches]

    # Not bit-equal: the scan's backward sums dB/dC with atomics, in whatever order the blocks finish, and Adam
    # turns tiny gradient differences into update differences of up to lr (1e-3) per step.
    torch.testing.assert_close(torch.tensor(graphed_losses), torch.tensor(eager_losses), rtol=1e-4, atol=1e-4)
    assert graphed_losses[2] < graphed_losses[0] and graphed_losses[3] < graphed_losses[1], "the steps did not train"
    for (name, p_graph), p_eager in zip(graphed.named_parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p_graph, p_eager, rtol=1e-3, atol=4e-3, msg=f"parameter {name} differs")

    # The replayed step reads the learning rate from its tensor, set in place as torch's LR schedulers do: a zero
    # rate leaves the weights alone.
    graphed_opt.param_groups[0]["lr"].fill_(0.0)
    before = [p.clone() for p in graphed.parameters()]
    step(batches[0])
    for p, b in zip(graphed.parameters(), before, strict=True):
        torch.testing.assert_close(p, b, rtol=0, atol=0)

    with pytest.raises(ValueError, match=r"batch\[0\].*shape \(2, 33\).*captured for.*\(2, 65\)"):
        step(torch.zeros(2, 33, dtype=torch.long, device="cuda"))
