"""The generate CLI on an exported model directory: streaming, batches from a file, seeds, clear errors."""

from __future__ import annotations

import pytest
import torch

from backbone import MambaConfig
from recipes import generate as generate_recipe
from tasks.language.tokenizer import TextTokenizer
from tasks.lm import MambaLM, MambaLMConfig


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("model")
    corpus = ["To be, or not to be, that is the question:\n", "Whether 'tis nobler in the mind to suffer\n"] * 20
    tokenizer = TextTokenizer.train_bpe(corpus, vocab_size=300)
    torch.manual_seed(0)
    MambaLM(MambaLMConfig(MambaConfig(d_model=32, n_layer=2), vocab_size=tokenizer.vocab_size)).save_pretrained(
        directory
    )
    tokenizer.save(directory / "tokenizer.json")
    return directory


def test_streams_one_prompt(model_dir, capsys):
    texts = generate_recipe.main(["--model", str(model_dir), "--prompt", "To be", "--max-new-tokens", "8", "--greedy"])
    out = capsys.readouterr().out
    assert out == "To be" + texts[0] + "\n"


def test_prompt_file_per_line_and_seed(model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("To be\n\nWhether 'tis nobler\n")
    argv = ["--model", str(model_dir), "--prompt-file", str(prompts), "--per-line", "--max-new-tokens", "6"]
    first = generate_recipe.main([*argv, "--seed", "3", "--top-p", "0.9", "--temperature", "0.8"])
    again = generate_recipe.main([*argv, "--seed", "3", "--top-p", "0.9", "--temperature", "0.8"])
    assert len(first) == 2 and first == again


def test_errors_are_clear(model_dir, tmp_path):
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        generate_recipe.main(["--model", str(model_dir), "--prompt", ""])
    with pytest.raises(ValueError, match="exceeds max_length=4"):
        generate_recipe.main(["--model", str(model_dir), "--prompt", "To be or not to be", "--max-length", "4"])
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((model_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="pass --tokenizer"):
        generate_recipe.main(["--model", str(bare), "--prompt", "x"])
