"""Read the public Mamba checkpoint layouts into our parameter names, never executing code from a file.

Three layouts of a language model directory (`config.json` + weights) are understood:

* `mambalab`: ours (`save_pretrained`): `embedding.weight`, `backbone.layers.N...`, `lm_head.proj.weight`.
* `state-spaces` (mamba-ssm's `MambaLMHeadModel`): `backbone.embedding.weight`, `backbone.layers.N.mixer.*`,
  `backbone.layers.N.norm.weight`, `backbone.norm_f.weight`, `lm_head.weight`; config with `d_model`, `n_layer`,
  `vocab_size`, `ssm_cfg`, `rms_norm`, `residual_in_fp32`, `pad_vocab_size_multiple`.
* `huggingface` (transformers' `MambaForCausalLM`): `backbone.embeddings.weight`, the same layer names,
  `lm_head.weight`; config with `hidden_size`, `state_size`, `num_hidden_layers`, `conv_kernel`, ...

The mixer and norm parameter names below `backbone.layers.N` are the same in all three.
Weights load from `model.safetensors` or from `pytorch_model.bin` with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from backbone.config import MambaConfig

Layout = Literal["mambalab", "state-spaces", "huggingface"]


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model: the message names the file and key."""


@dataclass
class LMCheckpointConfig:
    backbone: MambaConfig
    vocab_size: int
    pad_vocab_size_multiple: int = 8
    tie_embeddings: bool = True


def read_config(directory: Path) -> dict:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory} has no config.json: not a model directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err


def detect_layout(config: dict) -> Layout:
    if config.get("model_type") == "mambalab":
        return "mambalab"
    if "hidden_size" in config and "state_size" in config:
        return "huggingface"
    if "d_model" in config and "n_layer" in config:
        return "state-spaces"
    raise CheckpointError(f"config.json is not a Mamba config we know (keys: {sorted(config)})")


def _require(config: dict, key: str, layout: str):
    if key not in config:
        raise CheckpointError(f"{layout} config.json lacks the key {key!r}")
    return config[key]


def parse_config(config: dict) -> tuple[Layout, LMCheckpointConfig]:
    layout = detect_layout(config)
    if layout == "mambalab":
        return layout, LMCheckpointConfig(
            backbone=MambaConfig(**config["backbone"]),
            vocab_size=config["vocab_size"],
            pad_vocab_size_multiple=config.get("pad_vocab_size_multiple", 8),
            tie_embeddings=config.get("tie_embeddings", True),
        )
    if layout == "state-spaces":
        ssm_cfg = dict(config.get("ssm_cfg") or {})
        hybrid = config.get("d_intermediate", 0) or config.get("attn_layer_idx")
        if ssm_cfg.pop("layer", "Mamba1") != "Mamba1" or hybrid:
            raise CheckpointError("only Mamba-1 checkpoints without MLP or attention layers are supported")
        known = set(MambaConfig.__dataclass_fields__)
        unknown = sorted(set(ssm_cfg) - known)
        if unknown:
            raise CheckpointError(f"state-spaces ssm_cfg has keys we do not support: {unknown}")
        backbone = MambaConfig(
            d_model=_require(config, "d_model", layout),
            n_layer=_require(config, "n_layer", layout),
            rms_norm=config.get("rms_norm", True),
            residual_in_fp32=config.get("residual_in_fp32", True),
            norm_epsilon=config.get("norm_epsilon", 1e-5),
            **ssm_cfg,
        )
        return layout, LMCheckpointConfig(
            backbone=backbone,
            vocab_size=_require(config, "vocab_size", layout),
            pad_vocab_size_multiple=config.get("pad_vocab_size_multiple", 8),
            tie_embeddings=config.get("tie_embeddings", True),
        )
    hidden = _require(config, "hidden_size", layout)
    backbone = MambaConfig(
        d_model=hidden,
        n_layer=_require(config, "num_hidden_layers", layout),
        d_state=config.get("state_size", 16),
        d_conv=config.get("conv_kernel", 4),
        expand=config.get("expand", 2),
        dt_rank=config.get("time_step_rank", "auto"),
        bias=config.get("use_bias", False),
        conv_bias=config.get("use_conv_bias", True),
        residual_in_fp32=config.get("residual_in_fp32", True),
        norm_epsilon=config.get("layer_norm_epsilon", 1e-5),
        rms_norm=True,
    )
    # The HF vocabulary is already padded; keep it as is.
    return layout, LMCheckpointConfig(
        backbone=backbone,
        vocab_size=_require(config, "vocab_size", layout),
        pad_vocab_size_multiple=1,
        tie_embeddings=config.get("tie_word_embeddings", True),
    )


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    directory = Path(directory)
    safetensors_path, bin_path = directory / "model.safetensors", directory / "pytorch_model.bin"
    if safetensors_path.is_file():
        from safetensors.torch import load_file

        return load_file(str(safetensors_path))
    if bin_path.is_file():
        try:
            return torch.load(bin_path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(f"{bin_path}: cannot be read as plain tensors (weights_only=True): {err}") from err
    raise CheckpointError(f"{directory} has neither model.safetensors nor pytorch_model.bin")


_EMBEDDING_KEYS = {"state-spaces": "backbone.embedding.weight", "huggingface": "backbone.embeddings.weight"}


def to_our_keys(state_dict: dict[str, torch.Tensor], layout: Layout) -> dict[str, torch.Tensor]:
    """Rename a state dict of `layout` to MambaLM's parameter names."""
    if layout == "mambalab":
        return dict(state_dict)
    embedding_key = _EMBEDDING_KEYS[layout]
    renamed = {}
    for key, value in state_dict.items():
        if key == embedding_key:
            renamed["embedding.weight"] = value
        elif key == "lm_head.weight":
            renamed["lm_head.proj.weight"] = value
        else:
            renamed[key] = value
    return renamed


def load_checked(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Copy `state_dict` into `module`, failing with the key and both shapes on any mismatch."""
    expected = module.state_dict()
    tied = {name for name, p in module.named_parameters(remove_duplicate=False)} - {
        name for name, p in module.named_parameters()
    }
    missing = sorted(set(expected) - set(state_dict) - tied)
    if missing:
        raise CheckpointError(f"{source}: missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    unexpected = sorted(set(state_dict) - set(expected))
    if unexpected:
        raise CheckpointError(f"{source}: unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    for key, value in state_dict.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(value.shape)} in the checkpoint but {tuple(expected[key].shape)} "
                "in the model built from its config"
            )
    module.load_state_dict(state_dict, strict=False)
