"""Checkpoint import: transformers' MambaForCausalLM and the state-spaces layout give the same logits as ours."""

from __future__ import annotations

import json

import pytest
import torch

from backbone.checkpoints import CheckpointError
from tasks.lm import MambaLM

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_model_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.MambaConfig(
        vocab_size=104, hidden_size=64, state_size=8, num_hidden_layers=3, conv_kernel=4, expand=2
    )
    model = transformers.MambaForCausalLM(config).eval()
    # Random init leaves dt/A near their defaults; perturb everything so the comparison exercises every weight.
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    directory = tmp_path_factory.mktemp("hf_mamba")
    model.save_pretrained(directory)
    return directory, model


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_huggingface_layout_matches_transformers(hf_model_dir):
    directory, hf_model = hf_model_dir
    ours = MambaLM.from_pretrained(directory).eval()
    ids = torch.randint(0, 104, (2, 37))
    with torch.no_grad():
        expected = hf_model(ids).logits
        got = ours(ids)
    assert got.shape == expected.shape
    assert _relative_error(got, expected) < 1e-4


def _write_state_spaces_copy(hf_dir, target):
    """Re-key a transformers checkpoint into mamba-ssm's `MambaLMHeadModel` layout (config.json + .bin)."""
    from safetensors.torch import load_file

    hf_config = json.loads((hf_dir / "config.json").read_text())
    weights = load_file(str(hf_dir / "model.safetensors"))
    state = {}
    for key, value in weights.items():
        state["backbone.embedding.weight" if key == "backbone.embeddings.weight" else key] = value
    state.setdefault("lm_head.weight", state["backbone.embedding.weight"])
    target.mkdir()
    torch.save(state, target / "pytorch_model.bin")
    config = {
        "d_model": hf_config["hidden_size"],
        "n_layer": hf_config["num_hidden_layers"],
        "vocab_size": hf_config["vocab_size"],
        "ssm_cfg": {"d_state": hf_config["state_size"], "d_conv": hf_config["conv_kernel"]},
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": 8,
    }
    (target / "config.json").write_text(json.dumps(config))
    return target


def test_state_spaces_layout_matches_transformers(hf_model_dir, tmp_path):
    directory, hf_model = hf_model_dir
    ours = MambaLM.from_pretrained(_write_state_spaces_copy(directory, tmp_path / "ss")).eval()
    ids = torch.randint(0, 104, (1, 50))
    with torch.no_grad():
        assert _relative_error(ours(ids), hf_model(ids).logits) < 1e-4


def test_save_pretrained_round_trip(hf_model_dir, tmp_path):
    directory, _ = hf_model_dir
    model = MambaLM.from_pretrained(directory).eval()
    reloaded = MambaLM.from_pretrained(model.save_pretrained(tmp_path / "ours")).eval()
    ids = torch.randint(0, 104, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids), model(ids))


def test_shape_mismatch_names_key_and_both_shapes(hf_model_dir, tmp_path):
    directory, _ = hf_model_dir
    target = _write_state_spaces_copy(directory, tmp_path / "bad")
    config = json.loads((target / "config.json").read_text())
    config["ssm_cfg"]["d_state"] = 16  # the weights were trained with 8
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"A_log has shape \(128, 8\) in the checkpoint but \(128, 16\)"):
        MambaLM.from_pretrained(target)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"d_model": 8, "n_layer": 1, "vocab_size": 10}))
    with pytest.raises(CheckpointError, match="neither model.safetensors nor pytorch_model.bin"):
        MambaLM.from_pretrained(tmp_path)


def test_unknown_config_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden": 3}))
    with pytest.raises(CheckpointError, match="not a Mamba config"):
        MambaLM.from_pretrained(tmp_path)
