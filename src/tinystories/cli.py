"""`tinystories <stage> [args]`: one console script for every stage of the pipeline.

`STAGES` is the one table that maps a stage's CLI subcommand to its Makefile target, recipe folder and
entry-point module (the README shows it). Modules are imported only when their stage runs, so
`tinystories --help` is fast and a stage's heavy imports happen only when it runs.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import NamedTuple

from tinystories.core import ConfigError, RunDone


class Stage(NamedTuple):
    make: str  # the Makefile target
    recipes: str | None  # the recipe folder under recipes/
    module: str  # the entry point: a module with `main(argv)`
    help: str


STAGES: dict[str, Stage] = {
    "data": Stage(
        "data",
        "data",
        "tinystories.stages.data",
        "synthesize stories (TinyStories / Instruct) with an LLM backend",
    ),
    "data-report": Stage(
        "data-report",
        None,
        "tinystories.stages.data_report",
        "story datasets judged side by side: words, features, vocabulary, length, openings, duplicates",
    ),
    "dedup": Stage(
        "dedup", "data", "tinystories.stages.dedup", "exact + near-duplicate removal and decontamination"
    ),
    "tokenizer": Stage(
        "tokenizer",
        None,
        "tinystories.stages.tokenizer",
        "build a trimmed (top-K) or trained byte-level BPE tokenizer",
    ),
    "train": Stage(
        "train",
        "pretrain",
        "tinystories.stages.train",
        "pretrain a model (a released size or a custom one; GPT-Neo or Llama blocks)",
    ),
    "sft": Stage(
        "sft",
        "instruct",
        "tinystories.stages.sft",
        "supervised fine-tuning of the Instruct variant with TRL SFTTrainer",
    ),
    "lora": Stage("lora", "lora", "tinystories.stages.lora", "LoRA / DoRA / QLoRA fine-tuning with PEFT"),
    "generate": Stage(
        "generate",
        None,
        "tinystories.stages.generate",
        "generate a story (plain beginning or Instruct prompt)",
    ),
    "eval": Stage(
        "eval",
        "eval",
        "tinystories.stages.eval",
        "held-out loss, perplexity, bits per byte, completions, LLM judge",
    ),
    "leaderboard": Stage(
        "leaderboard",
        "eval",
        "tinystories.stages.leaderboard",
        "every public tiny story model plus local runs on one split, in bits per byte",
    ),
    "analyze": Stage(
        "analyze",
        None,
        "tinystories.stages.analyze",
        "the paper's interpretability: attention-head distances and MLP-neuron roles",
    ),
    "sweep": Stage(
        "sweep",
        "sweep",
        "tinystories.stages.sweep",
        "the paper's width x depth grid: train, evaluate, fit loss vs parameters",
    ),
    "push": Stage(
        "push",
        None,
        "tinystories.stages.push",
        "push a model or dataset folder to the Hub (or stage it with --dry_run)",
    ),
    "pull": Stage(
        "pull",
        None,
        "tinystories.stages.pull",
        "download a released checkpoint from the Hub, or convert a llama2.c checkpoint",
    ),
    "export": Stage(
        "export",
        None,
        "tinystories.stages.export",
        "ONNX (fp32 / int8) for ONNX Runtime and transformers.js",
    ),
    "bench": Stage(
        "bench",
        None,
        "benchmarks.bench",
        "training-throughput and dedup benchmarks (from a repository checkout)",
    ),
}


def stage_table() -> str:
    """The STAGES table as Markdown (the README's copy is checked against it by the tests)."""
    lines = ["| `tinystories` | `make` | recipes | module |", "|---|---|---|---|"]
    for name, s in STAGES.items():
        recipes = f"`recipes/{s.recipes}/`" if s.recipes else "—"
        lines.append(f"| `{name}` | `make {s.make}` | {recipes} | `{s.module}` |")
    return "\n".join(lines)


def _import_stage(name: str):
    if STAGES[name].module.startswith("benchmarks.") and Path("benchmarks", "__init__.py").is_file():
        sys.path.insert(0, str(Path.cwd()))  # the benchmark harness lives in the checkout, not the package
    return importlib.import_module(STAGES[name].module)


def stage_parser(name: str):
    """The argument parser of `tinystories <name>` (its `--help`; the docs' CLI reference is built from it)."""
    from tinystories.core.config import build_parser

    module = _import_stage(name)
    return build_parser(module.ARGUMENTS, getattr(module, "DEFAULTS", None))


def _usage() -> str:
    width = max(len(s) for s in STAGES)
    lines = ["usage: tinystories <stage> [--config recipe.yaml] [--key value ...]", "", "stages:"]
    lines += [f"  {name.ljust(width)}  {stage.help}" for name, stage in STAGES.items()]
    lines += ["", "`tinystories <stage> --help` lists the options of a stage."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"error: unknown stage {stage!r}; valid stages: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    try:
        module = _import_stage(stage)
    except ModuleNotFoundError as err:
        if not err.name or not err.name.startswith("benchmarks"):
            raise
        print(f"error: `tinystories {stage}` runs from a repository checkout (make {stage})", file=sys.stderr)
        return 2
    try:
        result = module.main(rest)
    except ConfigError as err:  # bad input: the message names the fix, a traceback adds nothing
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RunDone as done:  # the same command again on a finished run
        print(f"done: {done}")
        return 0
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
