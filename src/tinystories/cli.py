"""`tinystories <stage> [args]`: one console script for every stage of the pipeline.

Each stage lives in its own module with a `main(argv)` function; modules are imported lazily so
`tinystories --help` is fast and a stage's heavy imports only happen when it runs.
"""

from __future__ import annotations

import importlib
import sys

from tinystories.core import ConfigError

# stage name -> (module, one-line help)
STAGES: dict[str, tuple[str, str]] = {
    "train": ("tinystories.pretrain", "pretrain a GPT-Neo model (one of the released sizes or a custom one)"),
    "tokenizer": ("tinystories.tokenizer", "build a trimmed (top-K) or trained byte-level BPE tokenizer"),
    "sft": ("tinystories.sft", "supervised fine-tuning of the Instruct variant with TRL SFTTrainer"),
    "lora": ("tinystories.lora", "LoRA / QLoRA fine-tuning with PEFT"),
    "generate": ("tinystories.generate", "generate a story (plain beginning or Instruct prompt)"),
    "eval": ("tinystories.evaluation", "held-out loss, perplexity, bits per byte, completions, LLM judge"),
    "data": ("tinystories.synthesis", "synthesize stories (TinyStories / Instruct) with an LLM backend"),
    "dedup": ("tinystories.dedup", "exact + near-duplicate removal and decontamination"),
    "push": ("tinystories.hub", "push a model or dataset folder to the Hub (or stage it with --dry_run)"),
    "pull": ("tinystories.pull", "download a released checkpoint from the Hub"),
    "bench": ("tinystories.bench", "training-throughput and dedup benchmarks"),
}


def _usage() -> str:
    width = max(len(s) for s in STAGES)
    lines = ["usage: tinystories <stage> [--config recipe.yaml] [--key value ...]", "", "stages:"]
    lines += [f"  {name.ljust(width)}  {desc}" for name, (_, desc) in STAGES.items()]
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

    module = importlib.import_module(STAGES[stage][0])
    try:
        result = module.main(rest)
    except ConfigError as err:  # bad input: the message names the fix, a traceback adds nothing
        print(f"error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
