"""The Mamba backbone: shapes, recurrent decoding against the full forward, initialization, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from backbone import MambaBackbone, MambaConfig
from backbone.init import inverse_softplus


def small_config(**overrides) -> MambaConfig:
    return MambaConfig(**{"d_model": 32, "n_layer": 3, "d_state": 8, **overrides})


@pytest.mark.parametrize("rms_norm", [True, False])
@pytest.mark.parametrize("seqlen", [1, 7, 65])
def test_forward_shape_and_gradients(rms_norm, seqlen):
    model = MambaBackbone(small_config(rms_norm=rms_norm))
    hidden = torch.randn(2, seqlen, 32, requires_grad=True)
    out = model(hidden)
    assert out.shape == (2, seqlen, 32)
    out.square().mean().backward()
    assert hidden.grad is not None and torch.isfinite(hidden.grad).all()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


@pytest.mark.parametrize("d_conv", [2, 4, 5])
def test_prefill_then_step_equals_full_forward(d_conv):
    model = MambaBackbone(small_config(d_conv=d_conv)).eval()
    hidden = torch.randn(3, 40, 32)
    with torch.no_grad():
        full = model(hidden)
        cache = model.allocate_cache(batch=3)
        prefix = model(hidden[:, :17], cache)
        steps = [model.step(hidden[:, t], cache) for t in range(17, 40)]
    stepped = torch.cat([prefix, torch.stack(steps, dim=1)], dim=1)
    torch.testing.assert_close(stepped, full, rtol=1e-5, atol=1e-5)
    assert cache.seqlen_offset == 40


def test_decoding_from_empty_cache_equals_full_forward():
    model = MambaBackbone(small_config()).eval()
    hidden = torch.randn(2, 12, 32)
    with torch.no_grad():
        full = model(hidden)
        cache = model.allocate_cache(batch=2)
        stepped = torch.stack([model.step(hidden[:, t], cache) for t in range(12)], dim=1)
    torch.testing.assert_close(stepped, full, rtol=1e-5, atol=1e-5)


def test_chunked_prefill_continues_from_cache():
    model = MambaBackbone(small_config()).eval()
    hidden = torch.randn(2, 50, 32)
    with torch.no_grad():
        full = model(hidden)
        cache = model.allocate_cache(batch=2)
        pieces = [model(hidden[:, a:b], cache) for a, b in ((0, 9), (9, 10), (10, 50))]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)


def test_cache_shapes_and_dtypes():
    config = small_config()
    cache = MambaBackbone(config).allocate_cache(batch=4, dtype=torch.bfloat16)
    assert len(cache.layers) == config.n_layer
    assert cache.layers[0].conv_state.shape == (4, config.d_inner, config.d_conv)
    assert cache.layers[0].conv_state.dtype == torch.bfloat16
    assert cache.layers[0].ssm_state.shape == (4, config.d_inner, config.d_state)
    assert cache.layers[0].ssm_state.dtype == torch.float32


def test_bf16_forward_close_to_fp32():
    model = MambaBackbone(small_config())
    hidden = torch.randn(2, 33, 32)
    reference = model(hidden)
    low = model.to(torch.bfloat16)(hidden.bfloat16()).float()
    assert (low - reference).norm() / reference.norm() < 3e-2


def test_initialization_follows_the_paper():
    config = small_config(n_layer=4, d_model=64, dt_min=0.001, dt_max=0.1)
    model = MambaBackbone(config)
    mixer = model.layers[0].mixer
    assert config.dt_rank_value == math.ceil(64 / 16)
    expected_A_log = torch.log(torch.arange(1, config.d_state + 1, dtype=torch.float32)).expand(config.d_inner, -1)
    torch.testing.assert_close(mixer.A_log.detach(), expected_A_log)
    torch.testing.assert_close(mixer.D.detach(), torch.ones(config.d_inner))
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias.detach())
    assert dt.min() >= config.dt_init_floor - 1e-7 and dt.max() <= config.dt_max * (1 + 1e-4)
    torch.testing.assert_close(inverse_softplus(dt), mixer.dt_proj.bias.detach(), rtol=1e-4, atol=1e-5)
    bound = config.dt_rank_value**-0.5
    assert mixer.dt_proj.weight.abs().max() <= bound
    # kaiming_uniform(a=sqrt(5)) bound is 1/sqrt(fan_in); the residual rescale divides it by sqrt(n_layer).
    out_bound = 1 / math.sqrt(config.d_inner) / math.sqrt(config.n_layer)
    assert mixer.out_proj.weight.abs().max() <= out_bound + 1e-6
    assert mixer.out_proj.weight.abs().max() > 0.8 * out_bound


def test_residual_in_fp32_under_bf16_weights():
    model = MambaBackbone(small_config(residual_in_fp32=True)).to(torch.bfloat16)
    block = model.layers[0]
    _, residual = block(torch.randn(1, 5, 32, dtype=torch.bfloat16))
    assert residual.dtype == torch.float32


def test_bad_hidden_shape_names_the_expected_layout():
    model = MambaBackbone(small_config())
    with pytest.raises(ValueError, match="d_model=32"):
        model(torch.randn(2, 5, 31))


@pytest.mark.parametrize(
    ("overrides", "field"), [({"d_conv": 1}, "d_conv"), ({"dt_rank": "big"}, "dt_rank"), ({"d_model": 0}, "d_model")]
)
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        small_config(**overrides)


def test_decode_constants_follow_parameter_updates():
    # The mixer keeps -exp(A_log), D and the dt bias for decoding; changing a parameter in place must refresh them.
    model = MambaBackbone(small_config()).eval()
    hidden = torch.randn(2, 6, 32)
    with torch.no_grad():
        cache = model.allocate_cache(batch=2)
        first = [model.step(hidden[:, t], cache) for t in range(6)]
        for layer in model.layers:
            layer.mixer.A_log.mul_(0.5)
            layer.mixer.D.add_(1.0)
            layer.mixer.dt_proj.bias.sub_(0.3)
        full = model(hidden)
        cache = model.allocate_cache(batch=2)
        stepped = torch.stack([model.step(hidden[:, t], cache) for t in range(6)], dim=1)
    torch.testing.assert_close(stepped, full, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(torch.stack(first, dim=1), stepped)


def test_decoding_a_model_built_under_inference_mode():
    # Parameters created under torch.inference_mode have no version counter; decoding must still work (and match).
    with torch.inference_mode():
        model = MambaBackbone(small_config()).eval()
        hidden = torch.randn(2, 5, 32)
        full = model(hidden)
        cache = model.allocate_cache(batch=2)
        stepped = torch.stack([model.step(hidden[:, t], cache) for t in range(5)], dim=1)
    torch.testing.assert_close(stepped, full, rtol=1e-5, atol=1e-5)
