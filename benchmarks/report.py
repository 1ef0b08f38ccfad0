"""Shared by the benchmark scripts: the machine description and writing results as JSON + markdown."""

from __future__ import annotations

import json
import platform
import re
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> dict:
    import triton

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    return {"gpu": gpu, "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda}


def gpu_slug(env: dict) -> str:
    return re.sub(r"[^a-z0-9]+", "_", env["gpu"].lower()).strip("_")


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def write_results(topic: str, env: dict, rows: list[dict], columns: list[str], notes: str = "") -> Path:
    """Write `results/<topic>_<gpu>.json` and `.md`; print the table; return the markdown path."""
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"{topic}_{gpu_slug(env)}"
    stem.with_suffix(".json").write_text(json.dumps({"environment": env, "rows": rows}, indent=2) + "\n")
    header = f"# {topic}\n\n{env['gpu']}, torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}\n\n"
    table = markdown_table(rows, columns)
    stem.with_suffix(".md").write_text(header + table + ("\n\n" + notes if notes else "") + "\n")
    print(table)  # noqa: T201 - benchmark output
    return stem.with_suffix(".md")
