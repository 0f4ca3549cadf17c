"""`tinystories data`: synthesize TinyStories / Instruct records with an LLM backend (a resumable,
shardable job; `tinystories.synthesis.job`), then merge the shards into one dataset."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tinystories.core.config import parse_args
from tinystories.synthesis.arguments import SynthesisArguments
from tinystories.synthesis.job import run

# the dataclasses of this stage's flags (`--help`, the CLI reference in the docs)
ARGUMENTS = (SynthesisArguments,)
DEFAULTS = {"output_dir": "outputs/data/tinystories", "batch_size": 32}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    (args,) = parse_args(ARGUMENTS, argv, DEFAULTS)
    result = run(args)
    print(json.dumps(result, indent=2, default=str))
    shard = result.get("shard", {})
    merged = result.get("merge")
    if merged:
        print(
            f"dataset: {Path(args.output_dir) / 'dataset'} ({merged['generated']} records, {merged['failed']} failed)"
        )
    return 0 if not shard.get("missing") else 1
