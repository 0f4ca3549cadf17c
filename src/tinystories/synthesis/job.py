"""A synthesis job: prompts -> backend -> parquet shards, resumable, shardable across machines, mergeable.

Layout of `output_dir` (see `tinystories.data.shards`)::

    shards/shard-00000-of-00004/job.json          what this shard generates (checked on resume)
    shards/shard-00000-of-00004/data-00000.parquet   generated records, written atomically
    shards/shard-00000-of-00004/failed-00000.parquet requests that failed for good, with the error
    dataset/   failed/   stats.json                the merge: one `datasets` dataset (+ failures)

Record `i` belongs to shard `i % num_shards`. A part file is written to a temporary name and renamed,
so after a kill every record is in exactly one complete part or in none; a restarted job reads the ids
already written and generates only the rest: nothing lost, nothing duplicated. A lock file stops two
processes from running the same shard at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from datasets import Dataset
from tqdm.auto import tqdm

from tinystories.core import ConfigError
from tinystories.core.paths import check_output_dir, output_lock
from tinystories.data.shards import (
    cleaning_counts,
    collect_shards,
    open_failures,
    read_shard,
    shard_dir,
)
from tinystories.models.from_gguf import convert_gguf
from tinystories.synthesis.arguments import SynthesisArguments
from tinystories.synthesis.backends import Completion, GenerationFailure, build_backend
from tinystories.synthesis.from_stories import CorpusBackend, StorySource
from tinystories.synthesis.prompts import PromptSpec, Vocabulary, record_id
from tinystories.synthesis.records import RecordBuilder, ShardWriter, shard_lock

logger = logging.getLogger(__name__)


def shard_indices(num_stories: int, num_shards: int, shard_index: int) -> range:
    return range(shard_index, num_stories, num_shards)


# ----------------------------------------------------------------------------------------- runners
def _raise_failure(answer: Completion | GenerationFailure) -> Completion:
    if isinstance(answer, GenerationFailure):
        raise answer
    return answer


async def _run_async(
    builder: RecordBuilder, specs: list[PromptSpec], writer: ShardWriter, bar, concurrency: int
):
    queue: asyncio.Queue[PromptSpec] = asyncio.Queue()
    for spec in specs:
        queue.put_nowait(spec)
    backend = builder.backend
    counts = {"generated": 0, "failed": 0}

    async def worker() -> None:
        while True:
            try:
                spec = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            stage = "story"
            try:
                story = _raise_failure(builder.screen(await backend.complete(builder.story_request(spec))))
                summary = None
                if builder.summaries:
                    stage = "summary"
                    request = builder.summary_request(spec, story.text)
                    summary = _raise_failure(builder.screen(await backend.complete(request)))
                writer.add(builder.record(spec, story, summary))
                counts["generated"] += 1
            except GenerationFailure as err:
                writer.add_failure(builder.failure(spec, stage, err))
                counts["failed"] += 1
                bar.set_postfix(failed=counts["failed"], refresh=False)
            bar.update(1)

    try:
        await asyncio.gather(*(worker() for _ in range(min(concurrency, max(1, len(specs))))))
    finally:
        await backend.aclose()
    return counts


def _run_batched(builder: RecordBuilder, specs: list[PromptSpec], writer: ShardWriter, bar, batch_size: int):
    backend = builder.backend
    counts = {"generated": 0, "failed": 0}
    for start in range(0, len(specs), batch_size):
        chunk = specs[start : start + batch_size]
        stories = [
            builder.screen(c) for c in backend.complete_batch([builder.story_request(s) for s in chunk])
        ]
        summaries: list[Any] = [None] * len(chunk)
        if builder.summaries:
            ok = [i for i, c in enumerate(stories) if isinstance(c, Completion)]
            answers = (
                backend.complete_batch([builder.summary_request(chunk[i], stories[i].text) for i in ok])
                if ok
                else []
            )
            for i, answer in zip(ok, answers, strict=True):
                summaries[i] = builder.screen(answer)
        for spec, story, summary in zip(chunk, stories, summaries, strict=True):
            if isinstance(story, GenerationFailure):
                writer.add_failure(builder.failure(spec, "story", story))
                counts["failed"] += 1
            elif isinstance(summary, GenerationFailure):
                writer.add_failure(builder.failure(spec, "summary", summary))
                counts["failed"] += 1
            else:
                writer.add(builder.record(spec, story, summary))
                counts["generated"] += 1
        bar.update(len(chunk))
        if counts["failed"]:
            bar.set_postfix(failed=counts["failed"], refresh=False)
    return counts


def _check_job_file(directory: Path, fingerprint: dict[str, Any]) -> None:
    path = directory / "job.json"
    if path.is_file():
        previous = json.loads(path.read_text())
        diff = {k: (previous.get(k), v) for k, v in fingerprint.items() if previous.get(k) != v}
        if diff:
            details = "; ".join(f"{k}: was {old!r}, now {new!r}" for k, (old, new) in diff.items())
            raise ConfigError(
                f"{str(directory)!r} holds a different job ({details}). Resume with the same settings, or "
                "pass a new --output_dir to start another dataset."
            )
    else:
        path.write_text(json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")


def _raise_on_sigterm(signum, frame):  # Slurm preemption / `kill`: flush what is done, then exit
    raise KeyboardInterrupt(f"signal {signum}")


def _shard_state(directory: Path) -> tuple[set[str], set[str]]:
    """(ids generated, ids failed and never generated) in a shard directory."""
    records, failures = read_shard(directory)
    done = set(records.column("id").to_pylist())
    return done, set(failures.column("id").to_pylist()) - done


def _pending(args: SynthesisArguments, directory: Path, indices: range) -> list[int]:
    """The record indices of this shard still to generate (failed ones too with --retry_failed)."""
    done, failed = _shard_state(directory)
    skip = done if args.retry_failed else done | failed
    todo = [i for i in indices if record_id(args.seed, i) not in skip]
    logger.info(
        "shard %d/%d: %d records, %d already generated, %d failed before, %d to do",
        args.shard_index,
        args.num_shards,
        len(indices),
        len(done),
        len(failed),
        len(todo),
    )
    return todo


def _backend_for(args: SynthesisArguments, source: StorySource | None = None):
    if source is not None:  # corpus stories; an LLM only for the summaries
        return CorpusBackend(source, None if args.backend == "stories" else _backend_for(args))
    if args.gguf_file:  # a GGUF checkpoint: converted once into the --model folder
        convert_gguf(args.gguf_file, args.model)
    return build_backend(
        args.backend,
        args.model,
        args.sampling(),
        base_url=args.base_url,
        api_key=os.environ.get(args.api_key_env),
        api=args.api,
        request_timeout=args.request_timeout,
        max_retries=args.max_retries,
        backoff_base=args.backoff_base,
        backoff_max=args.backoff_max,
        vllm_kwargs=args.engine_kwargs(),
    )


def _generate(builder: RecordBuilder, directory: Path, total: int, todo: list[PromptSpec]) -> dict[str, Any]:
    """Generate `todo` into `directory`; whatever finished is flushed on Ctrl-C / SIGTERM too."""
    args, backend = builder.args, builder.backend
    writer = ShardWriter(directory, args.flush_every, args.flush_seconds)
    previous_handler = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    bar = tqdm(
        total=total, initial=total - len(todo), unit="story", desc=f"shard {args.shard_index}", smoothing=0.05
    )
    start = time.perf_counter()
    try:
        if backend.is_async:
            counts = asyncio.run(_run_async(builder, todo, writer, bar, args.concurrency))
        else:
            counts = _run_batched(builder, todo, writer, bar, args.batch_size)
        seconds = time.perf_counter() - start
        done = counts["generated"] + counts["failed"]
        per_second = round(done / seconds, 4) if seconds > 0 else None
        return {**counts, "seconds": round(seconds, 1), "stories_per_second": per_second}
    finally:
        writer.flush()  # Ctrl-C / SIGTERM: keep every finished record
        bar.close()
        signal.signal(signal.SIGTERM, previous_handler)


def _write_summary(args: SynthesisArguments, directory: Path, expected: int, counts: dict[str, int]):
    records, failures = read_shard(directory)
    failures = open_failures(records, failures)
    done = len(set(records.column("id").to_pylist()))
    summary = {
        "shard_index": args.shard_index,
        "num_shards": args.num_shards,
        "expected": expected,
        "generated": done,
        "failed": failures.num_rows,
        "missing": expected - done - failures.num_rows,
        **cleaning_counts(records, failures),
        "this_run": counts,
    }
    (directory / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run_shard(args: SynthesisArguments, backend=None) -> dict[str, Any]:
    """Generate this process's shard (resuming whatever is already on disk). Returns its counts."""
    args.validate()
    vocab = Vocabulary(
        args.data_generation_dir, args.story_template, args.summary_template, args.features_file
    )
    source = None
    fingerprint = args.fingerprint(vocab)
    if args.data:  # Instruct records from a corpus: one per story (--num_stories 0: all of them)
        source = StorySource(args.data, args.split, args.text_column, args.on_decode_error)
        args.num_stories = min(args.num_stories or len(source), len(source))
        fingerprint = {**args.fingerprint(vocab), **source.fingerprint()}
    directory = shard_dir(args.output_dir, args.shard_index, args.num_shards)
    directory.mkdir(parents=True, exist_ok=True)
    with shard_lock(directory):
        _check_job_file(directory, fingerprint)
        indices = shard_indices(args.num_stories, args.num_shards, args.shard_index)
        todo = _pending(args, directory, indices)
        counts = {"generated": 0, "failed": 0}
        if todo:
            specs = (
                source.specs(vocab, args.seed, todo) if source else [vocab.spec(args.seed, i) for i in todo]
            )
            builder = RecordBuilder(
                args, vocab, backend if backend is not None else _backend_for(args, source)
            )
            counts = _generate(builder, directory, len(indices), specs)
        return _write_summary(args, directory, len(indices), counts)


# ------------------------------------------------------------------------------------------- merge
def merge(args: SynthesisArguments) -> dict[str, Any]:
    records, failures, stats = collect_shards(args.output_dir)
    root = Path(args.output_dir)
    dataset = Dataset(records)
    dataset.save_to_disk(str(root / "dataset"))
    # one shard even when empty: a 0-shard save of an empty dataset does not load back
    Dataset(failures).save_to_disk(str(root / "failed"), num_shards=1 if not failures.num_rows else None)
    (root / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    if stats["missing"]:
        logger.warning(
            "%d records are neither generated nor failed: some shard is unfinished; rerun it (same command) "
            "and merge again",
            stats["missing"],
        )
    if args.push_to_hub:
        dataset.push_to_hub(args.hub_dataset_id, private=args.hub_private)
        stats["pushed_to"] = args.hub_dataset_id
    return stats


MERGE_LOCK_FILE = ".merge.lock"


def run(args: SynthesisArguments) -> dict[str, Any]:
    args.validate()
    inputs = {
        "--data": args.data,
        "--features_file": args.features_file,
        "--story_template": args.story_template,
        "--summary_template": args.summary_template,
        "--data_generation_dir": args.data_generation_dir,
    }
    check_output_dir(args.output_dir, inputs)
    result: dict[str, Any] = {}
    if not args.merge_only:
        result["shard"] = run_shard(args)
    if args.merge_only or args.merge:
        dirs = list((Path(args.output_dir) / "shards").glob("shard-*-of-*"))
        summaries = [
            json.loads((d / "summary.json").read_text()) for d in dirs if (d / "summary.json").is_file()
        ]
        all_done = len(summaries) == args.num_shards and all(s["missing"] == 0 for s in summaries)
        if args.merge_only or all_done:
            with output_lock(
                args.output_dir, name=MERGE_LOCK_FILE
            ):  # shards write under shards/, each locked
                result["merge"] = merge(args)
    return result
