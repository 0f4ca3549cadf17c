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
from tinystories.core.config import parse_args
from tinystories.core.paths import display_path
from tinystories.data.loading import load_split
from tinystories.data.shards import is_synthesis_output
from tinystories.dedup.decontamination import read_eval_prompts
from tinystories.dedup.pipeline import DedupResult, deduplicate

logger = logging.getLogger(__name__)


@dataclass
class DedupArguments:
    input: str | None = field(
        default=None,
        metadata={
            "help": "IN: .txt (release format), .jsonl/.json, .parquet, save_to_disk dir, a `tinystories data` output dir, or Hub id"
        },
    )
    output_dir: str | None = field(
        default=None, metadata={"help": "OUT: writes data/, dropped/, dedup_stats.json"}
    )
    text_column: str | None = field(
        default=None, metadata={"help": "column to compare (default: 'story' when present, else 'text')"}
    )
    split: str = field(default="train", metadata={"help": "split to read when the input has several"})
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
    seed: int = field(default=42, metadata={"help": "seed of the MinHash hash functions"})
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
    batch_size: int = field(default=2000, metadata={"help": "stories per hashing task"})
    write_txt: bool = field(
        default=False,
        metadata={"help": "also write data.txt in the release format (<|endoftext|> between stories)"},
    )

    def validate(self) -> None:
        if not self.input or not self.output_dir:
            raise ConfigError("dedup needs --input IN and --output_dir OUT (make dedup IN=... OUT=...)")
        if not 0 < self.threshold <= 1 or not 0 < self.decontaminate_threshold <= 1:
            raise ConfigError("threshold and decontaminate_threshold must be in (0, 1]")
        if self.ngram_size < 1 or self.decontaminate_ngram < 1 or self.num_perm < 2 or self.num_proc < 1:
            raise ConfigError(
                "ngram_size, decontaminate_ngram >= 1, num_perm >= 2 and num_proc >= 1 are required"
            )
        if self.num_bands is not None and not 1 <= self.num_bands <= self.num_perm:
            raise ConfigError(f"num_bands must be in [1, num_perm={self.num_perm}]")


def load_input(source: str, split: str = "train") -> Dataset:
    """`split` of any source training reads, by the same loader (a `.txt` Hub release as whole records, not
    lines); a file or folder without splits whole."""
    return load_split(source, split)


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
    """Deduplicate `args.input` into `args.output_dir`; returns the `dedup_stats.json` dict."""
    args.validate()
    eval_paths = _eval_prompt_files(args)
    prompts = read_eval_prompts(eval_paths) if (args.decontaminate and eval_paths) else []
    t0 = time.perf_counter()
    ds = load_input(args.input, args.split)
    t_load = time.perf_counter() - t0
    column = args.text_column or ("story" if "story" in ds.column_names else "text")
    if column not in ds.column_names:
        raise ConfigError(
            f"{args.input!r} has no {column!r} column (columns: {ds.column_names}); pass --text_column"
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
        "source": display_path(args.input, REPO_ROOT) if Path(args.input).exists() else args.input,
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
    generation = Path(args.input) / "stats.json"  # the generation record travels with the data
    if is_synthesis_output(args.input) and generation.is_file():
        shutil.copy2(generation, out / "stats.json")
    return stats


# the dataclasses of this stage's flags (`--help`, the CLI reference in the docs)
ARGUMENTS = (DedupArguments,)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    (args,) = parse_args(ARGUMENTS, argv)
    stats = run(args)
    print(json.dumps(stats, indent=2))
    print(f"kept {stats['kept']} of {stats['input']} -> {Path(args.output_dir) / 'data'}")
    return 0
