"""The on-disk format of a synthesis job, and reading it back: every stage can read a `tinystories data` output.

Layout of a job's `output_dir`::

    shards/shard-00000-of-00004/job.json             what this shard generates (checked on resume)
    shards/shard-00000-of-00004/data-00000.parquet   generated records, written atomically
    shards/shard-00000-of-00004/failed-00000.parquet requests that failed for good, with the error
    dataset/   failed/   stats.json                   the merge: one `datasets` dataset (+ failures)

`tinystories.synthesis` (`records`, `job`) writes it; `tinystories.data.load_raw` reads it (merging shards
on the fly when `dataset/` is not written yet), so dedup, pretraining, SFT and eval all accept a synthesis
output dir.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset, load_from_disk

from tinystories.core import ConfigError

RECORD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("index", pa.int64()),
        ("seed", pa.int64()),
        ("mode", pa.string()),
        ("text", pa.string()),  # what a model trains on: the story, or the formatted Instruct example
        ("story", pa.string()),
        ("summary", pa.string()),
        ("random_sentence", pa.string()),
        ("words", pa.list_(pa.string())),  # [verb, noun, adjective]
        ("features", pa.list_(pa.string())),
        ("instruction_fields", pa.list_(pa.string())),  # Instruct: fields kept, in the order written
        ("generation_prompt", pa.string()),
        ("summary_prompt", pa.string()),
        ("backend", pa.string()),
        ("model", pa.string()),
        ("generation_config", pa.string()),  # JSON: max_new_tokens, temperature, top_p, seed, extra_body
        # "length": cut off at max_new_tokens (kept with --on_truncated keep); "loop" / "second_story": a repeating
        # tail or a second story was cut off (synthesis/cleaning.screen_story; the cut in `cuts`)
        ("finish_reason", pa.string()),
        ("completion_tokens", pa.int64()),
        ("created_at", pa.string()),
        (
            "preambles",
            pa.list_(pa.string()),
        ),  # what was cut: "story: Sure! Here's a story:" (older parts: null)
        # what the screen cut after the story: "story: loop: <text>", "story: second_story: <text>" (older: null)
        ("cuts", pa.list_(pa.string())),
    ]
)
FAILURE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("index", pa.int64()),
        ("seed", pa.int64()),
        ("mode", pa.string()),
        ("words", pa.list_(pa.string())),
        ("features", pa.list_(pa.string())),
        ("generation_prompt", pa.string()),
        ("stage", pa.string()),  # "story" or "summary"
        ("error", pa.string()),
        ("error_type", pa.string()),  # e.g. APIStatusError, truncated, empty_story
        ("status_code", pa.int64()),
        ("attempts", pa.int64()),
        ("backend", pa.string()),
        ("model", pa.string()),
        ("generation_config", pa.string()),
        ("created_at", pa.string()),
    ]
)


def shard_dir(output_dir: str | Path, shard_index: int, num_shards: int) -> Path:
    return Path(output_dir) / "shards" / f"shard-{shard_index:05d}-of-{num_shards:05d}"


def _read_parts(paths: list[Path], schema: pa.Schema) -> pa.Table:
    if not paths:
        return schema.empty_table()
    return pa.concat_tables([pq.read_table(p, schema=schema) for p in paths])


def read_shard(directory: Path) -> tuple[pa.Table, pa.Table]:
    """(records, failures) written so far in one shard directory."""
    records = _read_parts(sorted(directory.glob("data-*.parquet")), RECORD_SCHEMA)
    failures = _read_parts(sorted(directory.glob("failed-*.parquet")), FAILURE_SCHEMA)
    return records, failures


def cleaning_counts(records: pa.Table, failures: pa.Table) -> dict[str, int]:
    """What the cleaning did: chat preambles cut, stories cut off at max_new_tokens (dropped or kept), loops
    trimmed or rejected, second stories cut, refusals rejected."""
    preambles = sum(1 for p in records.column("preambles").to_pylist() if p)
    finish = records.column("finish_reason").to_pylist()
    errors = failures.column("error_type").to_pylist()
    kept = finish.count("length")
    return {
        "preambles_stripped": preambles,
        "truncated": errors.count("truncated") + kept,
        "truncated_kept": kept,
        "loops_trimmed": finish.count("loop"),
        "loops_rejected": errors.count("loop"),
        "second_stories_cut": finish.count("second_story"),
        "refused": errors.count("refused"),
    }


def is_synthesis_output(path: str | Path) -> bool:
    return (Path(path) / "shards").is_dir()


def collect_shards(output_dir: str | Path) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
    """All records and the failures that never succeeded, from every shard; sorted by index, no duplicates."""
    root = Path(output_dir)
    dirs = sorted((root / "shards").glob("shard-*-of-*"))
    if not dirs:
        raise ConfigError(
            f"{str(root)!r} holds no shards/: run `tinystories data` with --output_dir {root} first"
        )
    jobs = [json.loads((d / "job.json").read_text()) for d in dirs if (d / "job.json").is_file()]
    base = {k: v for k, v in jobs[0].items() if k != "num_shards"} if jobs else {}
    for job in jobs[1:]:
        if {k: v for k, v in job.items() if k != "num_shards"} != base:
            raise ConfigError(f"shards in {str(root)!r} come from different jobs: merge each job on its own")
    num_shards = {int(d.name.split("-of-")[1]) for d in dirs}
    if len(num_shards) > 1:
        raise ConfigError(
            f"{str(root)!r} mixes shard layouts {sorted(num_shards)}: keep one --num_shards per job"
        )
    tables = [read_shard(d) for d in dirs]
    records = pa.concat_tables([t[0] for t in tables]) if tables else RECORD_SCHEMA.empty_table()
    failures = pa.concat_tables([t[1] for t in tables]) if tables else FAILURE_SCHEMA.empty_table()
    records = _unique_sorted(records)
    failures = open_failures(records, failures)
    expected = base.get("num_stories")
    n_shards = num_shards.pop()
    stats = {
        "expected": expected,
        "generated": records.num_rows,
        "failed": failures.num_rows,
        "missing": (expected - records.num_rows - failures.num_rows) if expected is not None else None,
        **cleaning_counts(records, failures),
        "num_shards": n_shards,
        "shards_present": len(dirs),
        "job": base,
    }
    return records, failures, stats


def open_failures(records: pa.Table, failures: pa.Table) -> pa.Table:
    """The failures of records never generated since, the last one of each, sorted by index."""
    ok = set(records.column("id").to_pylist())
    keep = [i for i, x in enumerate(failures.column("id").to_pylist()) if x not in ok]
    return _unique_sorted(failures.take(pa.array(keep, type=pa.int64())), keep="last")


def _unique_sorted(table: pa.Table, keep: str = "first") -> pa.Table:
    ids = table.column("id").to_pylist()
    order = range(len(ids)) if keep == "first" else range(len(ids) - 1, -1, -1)
    seen: dict[str, int] = {}
    for i in order:
        seen.setdefault(ids[i], i)
    table = table.take(pa.array(sorted(seen.values()), type=pa.int64()))
    return table.sort_by([("index", "ascending")])


def load_generated(output_dir: str | Path):
    """The merged `datasets.Dataset` of a synthesis output dir (merging shards on the fly if needed)."""
    root = Path(output_dir)
    if (root / "dataset" / "state.json").is_file():
        return load_from_disk(str(root / "dataset"))
    records, _, _ = collect_shards(root)
    return Dataset(records)
