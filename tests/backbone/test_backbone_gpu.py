"""A 130M-shaped backbone on the GPU kernels against the reference path, and the whole LM under torch.compile.
Run on the device machine: `python -m pytest -m gpu tests/backbone -q`."""

from __future__ import annotations

import pytest
import torch

import kernels
from backbone import MambaBackbone, MambaConfig
from tasks.lm import MambaLM, MambaLMConfig

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm().clamp_min(1e-12)).item()


def forward_backward(model, hidden, dout):
    params = [hidden, *model.parameters()]
    out = model(hidden)
    return out, torch.autograd.grad(out, params, dout)


def test_130m_backbone_forward_backward_matches_the_reference_path():
    torch.manual_seed(0)
    model = MambaBackbone(MambaConfig(d_model=768, n_layer=24)).cuda()
    hidden = torch.randn(2, 384, 768, device="cuda", requires_grad=True)
    dout = torch.randn(2, 384, 768, device="cuda")
    with kernels.use_triton():
        out, grads = forward_backward(model, hidden, dout)
    with kernels.use_reference():
        ref_out, ref_grads = forward_backward(model, hidden, dout)
    assert relative_error(out, ref_out) < 1e-4
    names = ["hidden", *(n for n, _ in model.named_parameters())]
    errors = {name: relative_error(g, r) for name, g, r in zip(names, grads, ref_grads)}
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-3, f"gradient of {worst}: relative error {errors[worst]:.2e}"


def test_compiled_lm_matches_eager_under_bf16_autocast():
    torch.manual_seed(0)
    model = MambaLM(MambaLMConfig(MambaConfig(d_model=256, n_layer=4), vocab_size=1000)).cuda()
    ids = torch.randint(0, 1000, (2, 512), device="cuda")
    compiled = torch.compile(model, fullgraph=True)

    def loss_and_grads(fn):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(fn(ids[:, :-1]).flatten(0, 1).float(), ids[:, 1:].flatten())
        return loss, torch.autograd.grad(loss, list(model.parameters()))

    eager_loss, eager_grads = loss_and_grads(model)
    compiled_loss, compiled_grads = loss_and_grads(compiled)
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-3, atol=1e-3)
    for (name, _), g, e in zip(model.named_parameters(), compiled_grads, eager_grads):
        assert relative_error(g, e) < 2e-2, name
