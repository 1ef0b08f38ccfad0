"""Generate text with a Mamba language model, streaming it as it is produced.

The model is a directory: an `lm_pretrain` export (`runs/lm_pretrain/<time>/model`, or the run directory itself),
or a public Mamba checkpoint in the state-spaces (`config.json` + `pytorch_model.bin`) or Hugging Face
(`MambaForCausalLM`) layout. The tokenizer is the directory's `tokenizer.json` unless `--tokenizer` names one (the
public Mamba checkpoints use GPT-NeoX-20B's).

    python -m recipes.generate --model runs/lm_pretrain/<time>/model --prompt "ROMEO:" --max-new-tokens 200
    python -m recipes.generate --model path/to/mamba-130m --tokenizer path/to/gpt-neox-20b/tokenizer.json \\
        --prompt "The capital of France is" --greedy
    python -m recipes.generate --model DIR --prompt-file prompts.txt --per-line --temperature 0.8 --top-p 0.95 \\
        --stop '\\n\\n' --seed 0                                          # one prompt per line, decoded as a batch

Decoding pre-fills each prompt in one parallel pass, then spends O(1) per token on the recurrent state; on CUDA the
decode step runs as a CUDA graph. Speed (prefill ms, decode tokens/s and ms/token) is printed to stderr.
"""

from __future__ import annotations

import argparse
import codecs
import logging
import sys
from pathlib import Path

import torch

from tasks.language.generation import SamplingConfig, generate
from tasks.language.tokenizer import TextTokenizer
from tasks.lm import MambaLM

log = logging.getLogger("recipes.generate")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m recipes.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model directory (ours, state-spaces or Hugging Face layout)")
    parser.add_argument("--tokenizer", help="tokenizer.json (default: the one in --model)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", action="append", help="prompt text; repeat for a batch")
    source.add_argument("--prompt-file", help="a UTF-8 file holding the prompt (or one per line with --per-line)")
    parser.add_argument("--per-line", action="store_true", help="each non-empty line of --prompt-file is a prompt")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--max-length", type=int, default=None, help="limit on prompt + new tokens")
    parser.add_argument("--greedy", action="store_true", help="argmax decoding (same as --temperature 0)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    parser.add_argument("--min-p", type=float, default=0.0, help="0 = off")
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off")
    parser.add_argument("--stop", action="append", default=[], help="stop string (backslash escapes allowed)")
    parser.add_argument("--no-eos-stop", action="store_true", help="keep going past the end-of-text token")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="auto: bfloat16 on CUDA")
    parser.add_argument("--no-cuda-graph", action="store_true", help="decode without capturing a CUDA graph")
    parser.add_argument("--no-stream", action="store_true", help="print each text when it is complete")
    return parser


def load_model_dir(path: str | Path) -> Path:
    """The model directory: `path` itself, or `path/model` for an `lm_pretrain` run directory."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"--model {path}: not a directory")
    if not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
        return path / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"--model {path}: no config.json (expected a save_pretrained or Mamba checkpoint dir)")
    return path


def load_tokenizer(model_dir: Path, explicit: str | None) -> TextTokenizer:
    path = Path(explicit) if explicit else model_dir / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no tokenizer: {path} does not exist; pass --tokenizer PATH/tokenizer.json (the public Mamba "
            "checkpoints use GPT-NeoX-20B's)"
        )
    return TextTokenizer.from_file(path)


def read_prompts(args: argparse.Namespace) -> list[str]:
    if args.prompt is not None:
        return list(args.prompt)
    path = Path(args.prompt_file)
    if not path.is_file():
        raise FileNotFoundError(f"--prompt-file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if args.per_line:
        return [line for line in text.splitlines() if line.strip()] or [""]
    return [text.rstrip("\n")]


def main(argv: list[str] | None = None) -> list[str]:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    device = torch.device(device)
    dtype = DTYPES.get(args.dtype) or (torch.bfloat16 if device.type == "cuda" else torch.float32)

    model_dir = load_model_dir(args.model)
    tokenizer = load_tokenizer(model_dir, args.tokenizer)
    model = MambaLM.from_pretrained(model_dir, device=device).to(dtype).eval()
    if tokenizer.vocab_size > model.config.padded_vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} ids but the model's embedding only "
            f"{model.config.padded_vocab_size}: wrong --tokenizer for {model_dir}?"
        )
    prompts = read_prompts(args)
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise ValueError(f"prompt {i} is empty: give some text to continue")
    prompt_ids = tokenizer.encode_batch(prompts)
    sampling = SamplingConfig(
        temperature=0.0 if args.greedy else args.temperature, top_k=args.top_k, top_p=args.top_p,
        min_p=args.min_p, repetition_penalty=args.repetition_penalty,
    )  # fmt: skip
    stream = len(prompts) == 1 and not args.no_stream
    if stream:
        sys.stdout.write(prompts[0])
        sys.stdout.flush()

    def on_text(row: int, piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    result = generate(
        model, prompt_ids, max_new_tokens=args.max_new_tokens, sampling=sampling,
        eos_id=None if args.no_eos_stop else tokenizer.eos_id, seed=args.seed, max_length=args.max_length,
        tokenizer=tokenizer, stop_strings=[codecs.decode(s, "unicode_escape") for s in args.stop],
        on_text=on_text if stream else None, cuda_graph=False if args.no_cuda_graph else None,
    )  # fmt: skip
    texts = result.texts or []
    if stream:
        sys.stdout.write("\n")
    else:
        for i, (prompt, text) in enumerate(zip(prompts, texts)):
            sys.stdout.write(f"=== {i} ({result.finish_reasons[i]}) ===\n{prompt}{text}\n")
    n_new = sum(len(t) for t in result.tokens)
    per_token = result.decode_s / max(1, result.decode_steps)
    log.info(
        "%d prompt(s), %d new tokens; prefill %.1f ms; decode %.2f ms/step, %.0f tokens/s (%s, %s, CUDA graph %s)",
        len(prompts), n_new, result.prefill_s * 1e3, per_token * 1e3,
        len(prompts) * result.decode_steps / max(result.decode_s, 1e-9), device, str(dtype).removeprefix("torch."),
        "on" if result.cuda_graph else "off",
    )  # fmt: skip
    return texts


if __name__ == "__main__":
    main()
