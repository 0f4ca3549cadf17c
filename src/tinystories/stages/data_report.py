"""`tinystories data-report` / `make data-report IN="<dir | dataset | .txt> ..." OUT=<dir>`: story datasets
judged side by side.

For each input (a `tinystories data` output dir, a `tinystories dedup` output dir, a `.txt`/`.jsonl`/`.parquet`
file, a `save_to_disk` folder or a Hub id): requested words used (`words_all_used`), requested features present
(and present when not requested), words outside the child vocabulary, lengths in words and tokens, openings,
exact and near duplicates within it and across the other inputs (the dedup's MinHash), and what the synthesis
cleaning caught (preambles, truncations, loops, second stories, refusals) -> `data_report.json`
(`{"datasets": [{"name", "stories", "words_all_used", ...}], "overlap": [...], "settings": {...}}`) and PNGs.
A dataset folder holding `data_report.json` shows it on its dataset card (`hub/dataset_card.py`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tinystories.core import ConfigError
from tinystories.core.arguments import (
    OutputArguments,
    SeedArguments,
    SplitArguments,
    StoryColumn,
    TokenizerSource,
    check_fraction,
    check_min,
)
from tinystories.core.config import parse_args
from tinystories.data.report import child_vocabulary, dataset_numbers, load_report_input
from tinystories.data.report_figures import save_figures
from tinystories.data.tokenizer import load_tokenizer
from tinystories.dedup.overlap import duplicate_overlap

logger = logging.getLogger(__name__)
REPORT_FILE = "data_report.json"


@dataclass
class DataReportArguments(StoryColumn, SplitArguments, TokenizerSource, SeedArguments, OutputArguments):
    """--data: the inputs (IN), each a `tinystories data` / `dedup` output dir, a .txt/.jsonl/.parquet file, a
    save_to_disk folder or a Hub id; --output_dir (OUT): data_report.json and the figures; --tokenizer: for lengths
    in tokens (unreachable: lengths in words only, with a warning); --seed: of the MinHash hash functions."""

    data: list[str] = field(
        default_factory=list, metadata={"help": "IN: the datasets to compare, side by side"}
    )
    max_stories: int = field(
        default=0, metadata={"help": "read at most this many stories per input (0: all)"}
    )
    ngram_size: int = field(default=3, metadata={"help": "duplicates: words per shingle (as make dedup)"})
    num_perm: int = field(default=64, metadata={"help": "duplicates: MinHash permutations (as make dedup)"})
    threshold: float = field(default=0.7, metadata={"help": "duplicates: Jaccard for a near duplicate"})
    top: int = field(default=5, metadata={"help": "most common first sentences listed per input"})

    def check(self):
        check_min("max_stories", self.max_stories, 0)
        check_min("ngram_size", self.ngram_size, 1)
        check_min("num_perm", self.num_perm, 2)
        check_fraction("threshold", self.threshold, closed_high=True)
        check_min("top", self.top, 1)

    def validate(self) -> None:
        if not self.data:
            raise ConfigError(
                'data-report needs --data <input> [<input> ...] (make data-report IN="a b" OUT=dir)'
            )


def _tokenizer(name: str | None):
    if not name:
        return None
    try:
        return load_tokenizer(name)
    except ConfigError as err:
        logger.warning("no lengths in tokens: %s", err)
        return None


def _unique_names(items) -> None:
    seen: dict[str, int] = {}
    for item in items:
        seen[item.name] = seen.get(item.name, 0) + 1
        if seen[item.name] > 1:
            item.name = f"{item.name} ({seen[item.name]})"


def run(args: DataReportArguments) -> dict:
    """Read every input, compute its numbers and the overlaps, write `data_report.json` and the figures."""
    args.validate()
    items = [load_report_input(source, args.split, args.text_column) for source in args.data]
    for item in items:
        if args.max_stories and len(item.stories) > args.max_stories:
            item.stories = item.stories[: args.max_stories]
            item.words = item.words[: args.max_stories] if item.words is not None else None
            item.features = item.features[: args.max_stories] if item.features is not None else None
    _unique_names(items)
    vocabulary = child_vocabulary()
    tokenizer = _tokenizer(args.tokenizer)
    rows, raw = [], {}
    for item in items:
        row, raw[item.name] = dataset_numbers(item, vocabulary, tokenizer, args.top)
        rows.append(row)
    names = [item.name for item in items]
    overlap = duplicate_overlap(
        [item.stories for item in items],
        names,
        ngram_size=args.ngram_size,
        num_perm=args.num_perm,
        threshold=args.threshold,
        seed=args.seed,
    )
    for row in rows:
        row["duplicates"] = overlap["within"][row["name"]]
    settings = {**asdict(args), "tokenizer": args.tokenizer if tokenizer is not None else None}
    report = {"datasets": rows, "overlap": overlap["across"], "settings": settings}
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    report["figures"] = [str(p) for p in save_figures(rows, raw, out)]
    return report


def _table(report: dict) -> str:
    lines = ["name | stories | all 3 words | Once upon a time | OOV/story | words (median) | exact/near dups"]
    for r in report["datasets"]:
        d = r["duplicates"]
        lines.append(
            f"{r['name']} | {r['stories']} | {r['words_all_used']} | {r['openings']['once_upon_a_time']} | "
            f"{r['out_of_vocabulary']['mean_per_story']} | {r['length_words']['median'] if r['length_words'] else None}"
            f" | {d['exact']}/{d['near']}"
        )
    lines += [
        f"overlap {o['a']} -> {o['b']}: {o['exact']} exact, {o['near']} near" for o in report["overlap"]
    ]
    return "\n".join(lines)


# the dataclasses of this stage's flags (`--help`, the CLI reference in the docs)
ARGUMENTS = (DataReportArguments,)
DEFAULTS = {"output_dir": "outputs/data_report", "tokenizer": "EleutherAI/gpt-neo-125M"}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    (args,) = parse_args(ARGUMENTS, argv, DEFAULTS)
    report = run(args)
    print(_table(report))
    print(f"report: {Path(args.output_dir) / REPORT_FILE}")
    return 0
