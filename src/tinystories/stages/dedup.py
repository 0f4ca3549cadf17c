"""`tinystories dedup` / `make dedup IN=... OUT=...`: arguments, input, outputs.

Outputs in `output_dir`: `data/` (kept records, a `save_to_disk` dataset with every input column),
`dropped/` (dropped records + `reason`, `duplicate_of`, `similarity`, `matched_prompt`, `input_index`),
`dedup_stats.json`, and for a `tinystories data` input its `stats.json` (what the generation did).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset

from tinystories.core import EVAL_PROMPTS_FILE, REPO_ROOT, ConfigError
from tinystories.core.arguments import (
    BatchArguments,
    OutputArguments,
    SeedArguments,
    SplitArguments,
    StoryColumn,
    check_exists,
    check_fraction,
    check_min,
    check_range,
)
from tinystories.core.config import parse_args
from tinystories.core.paths import check_output_dir, display_path, output_lock
from tinystories.data.loading import load_split
from tinystories.data.shards import is_synthesis_output
from tinystories.dedup.decontamination import read_eval_prompts
from tinystories.dedup.pipeline import DedupResult, deduplicate

logger = logging.getLogger(__name__)


@dataclass
class DedupArguments(StoryColumn, SplitArguments, BatchArguments, SeedArguments, OutputArguments):
    """--data (IN): .txt (release format), .jsonl/.json, .parquet, save_to_disk dir, a `tinystories data` output
    dir, or Hub id; --output_dir (OUT): writes data/, dropped/, dedup_stats.json; --text_column: the column to
    compare; --seed: of the MinHash hash functions."""

    # exact + near duplicates
    exact: bool = field(default=True, metadata={"help": "drop exact duplicates (normalised text hash)"})
    near: bool = field(default=True, metadata={"help": "drop near duplicates (MinHash + LSH)"})
    ngram_size: int = field(default=3, metadata={"help": "words per shingle"})
    num_perm: int = field(default=64, metadata={"help": "MinHash permutations"})
    threshold: float = field(
        default=0.7, metadata={"help": "Jaccard similarity above which two stories are near duplicates"}
    )
    num_bands: int | None = field(
        default=None, metadata={"help": "LSH bands (default: optimised for threshold)"}
    )
    # decontamination
    decontaminate: bool = field(
        default=True, metadata={"help": "drop stories that contain an evaluation prompt"}
    )
    decontaminate_against: list[str] | None = field(
        default=None,
        metadata={
            "help": "text/jsonl files of eval prompts ('prompt' or 'text' column); default data_generation/eval_prompts.jsonl"
        },
    )
    decontaminate_ngram: int = field(default=8, metadata={"help": "words per n-gram for the overlap test"})
    decontaminate_threshold: float = field(
        default=0.5, metadata={"help": "fraction of a prompt's n-grams a story must contain to be dropped"}
    )
    # execution
    num_proc: int = field(
        default_factory=lambda: max(1, min(8, os.cpu_count() or 1)), metadata={"help": "hashing processes"}
    )
    write_txt: bool = field(
        default=False,
        metadata={"help": "also write data.txt in the release format (<|endoftext|> between stories)"},
    )

    def check(self):
        check_min("ngram_size", self.ngram_size, 1)
        check_min("num_perm", self.num_perm, 2, "pass --num_perm 2 or more (the default: 64)")
        check_fraction("threshold", self.threshold, closed_high=True)
        check_range(
            "num_bands", self.num_bands, 1, self.num_perm, "pass a --num_bands up to --num_perm, or unset"
        )
        check_min("decontaminate_ngram", self.decontaminate_ngram, 1)
        check_fraction("decontaminate_threshold", self.decontaminate_threshold, closed_high=True)
        check_min("num_proc", self.num_proc, 1)

    def check_paths(self):
        check_exists("decontaminate_against", self.decontaminate_against, "pass existing prompt files")

    def validate(self) -> None:
        if not self.data or not self.output_dir:
            raise ConfigError("dedup needs --data IN and --output_dir OUT (make dedup IN=... OUT=...)")


def load_input(source: str, split: str = "train", on_decode_error: str = "fail") -> Dataset:
    """`split` of any source training reads, by the same loader (a `.txt` Hub release as whole records, not
    lines); a file or folder without splits whole."""
    return load_split(source, split, on_decode_error=on_decode_error)


def _iter_column(ds: Dataset, column: str, batch_size: int = 10_000) -> Iterator[str]:
    table = ds.with_format("arrow")
    for start in range(0, len(ds), batch_size):
        yield from table[start : start + batch_size][column].to_pylist()


def _eval_prompt_files(args: DedupArguments) -> list[str] | None:
    """The prompt files to decontaminate against: the given ones, else the default file when present."""
    eval_paths = args.decontaminate_against
    if args.decontaminate and not eval_paths:
        eval_paths = [str(EVAL_PROMPTS_FILE)] if EVAL_PROMPTS_FILE.is_file() else []
        if not eval_paths:
            logger.warning("no evaluation prompts found (%s): decontamination skipped", EVAL_PROMPTS_FILE)
    return eval_paths


def _write_outputs(ds: Dataset, column: str, result: DedupResult, out: Path, write_txt: bool) -> None:
    """`data/` (kept rows), `dropped/` (dropped rows + why) and, with `write_txt`, `data.txt`."""
    kept_idx = np.flatnonzero(result.keep)
    dropped_idx = np.flatnonzero(~result.keep)
    ds.select(kept_idx).save_to_disk(str(out / "data"))
    dropped = ds.select(dropped_idx)
    dropped = dropped.add_column("reason", [result.reason[i] for i in dropped_idx.tolist()])
    dropped = dropped.add_column("duplicate_of", result.duplicate_of[dropped_idx].tolist())
    dropped = dropped.add_column("similarity", result.similarity[dropped_idx].tolist())
    dropped = dropped.add_column(
        "matched_prompt", [result.matched_prompt.get(i) for i in dropped_idx.tolist()]
    )
    dropped = dropped.add_column("input_index", dropped_idx.tolist())
    dropped.save_to_disk(str(out / "dropped"))
    if write_txt:
        with open(out / "data.txt", "w", encoding="utf-8") as f:
            for i, text in enumerate(_iter_column(ds.select(kept_idx), column)):
                f.write(("<|endoftext|>\n" if i else "") + text.strip() + "\n")


def run(args: DedupArguments) -> dict[str, Any]:
    """Deduplicate `args.data` into `args.output_dir`; returns the `dedup_stats.json` dict.

    OUT may not be, contain or lie inside IN (or a prompt file), and one dedup at a time writes it."""
    args.validate()
    eval_paths = _eval_prompt_files(args)
    prompts = read_eval_prompts(eval_paths) if (args.decontaminate and eval_paths) else []
    inputs = {"--data (IN)": args.data, "--decontaminate_against": eval_paths}
    check_output_dir(args.output_dir, inputs, flag="--output_dir (OUT)")
    with output_lock(args.output_dir, flag="--output_dir (OUT)"):
        return _run(args, eval_paths, prompts)


def _run(args: DedupArguments, eval_paths: list[str] | None, prompts: list) -> dict[str, Any]:
    t0 = time.perf_counter()
    ds = load_input(args.data, args.split, args.on_decode_error)
    t_load = time.perf_counter() - t0
    column = args.text_column or ("story" if "story" in ds.column_names else "text")
    if column not in ds.column_names:
        raise ConfigError(
            f"{args.data!r} has no {column!r} column (columns: {ds.column_names}); pass --text_column"
        )
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    result = deduplicate(
        _iter_column(ds, column),
        len(ds),
        exact=args.exact,
        near=args.near,
        ngram_size=args.ngram_size,
        num_perm=args.num_perm,
        threshold=args.threshold,
        num_bands=args.num_bands,
        seed=args.seed,
        eval_prompts=prompts,
        decontaminate_ngram=args.decontaminate_ngram,
        decontaminate_threshold=args.decontaminate_threshold,
        num_proc=args.num_proc,
        batch_size=args.batch_size,
    )
    t1 = time.perf_counter()
    _write_outputs(ds, column, result, out, args.write_txt)
    stats = {  # no absolute local paths in shared outputs
        "source": display_path(args.data, REPO_ROOT) if Path(args.data).exists() else args.data,
        "text_column": column,
        **result.stats,
        "eval_prompts_files": [display_path(p, REPO_ROOT) for p in eval_paths or []],
    }
    stats["seconds"] = {
        "load": round(t_load, 3),
        **result.stats["seconds"],
        "write": round(time.perf_counter() - t1, 3),
        "end_to_end": round(time.perf_counter() - t0, 3),
    }
    (out / "dedup_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    generation = Path(args.data) / "stats.json"  # the generation record travels with the data
    if is_synthesis_output(args.data) and generation.is_file():
        shutil.copy2(generation, out / "stats.json")
    return stats


# the dataclasses of this stage's flags (`--help`, the CLI reference in the docs)
ARGUMENTS = (DedupArguments,)
DEFAULTS = {"data": None, "batch_size": 2000}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    (args,) = parse_args(ARGUMENTS, argv, DEFAULTS)
    stats = run(args)
    print(json.dumps(stats, indent=2))
    print(f"kept {stats['kept']} of {stats['input']} -> {Path(args.output_dir) / 'data'}")
    return 0
