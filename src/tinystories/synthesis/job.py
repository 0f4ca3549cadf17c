"""A synthesis job: prompts -> backend -> parquet shards, resumable, shardable across machines, mergeable.

Layout of `output_dir`::

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
import contextlib
import fcntl
import json
import logging
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from tinystories.core import ConfigError
from tinystories.instruct import InstructExample, format_example, randomize_fields
from tinystories.shards import (
    FAILURE_SCHEMA,
    RECORD_SCHEMA,
    collect_shards,
    load_generated,
    read_shard,
    shard_dir,
)
from tinystories.synthesis.backends import (
    Completion,
    GenerationFailure,
    Request,
    SamplingConfig,
    build_backend,
)
from tinystories.synthesis.prompts import PromptSpec, Vocabulary, random_sentence, record_rng

logger = logging.getLogger(__name__)

MODES = ("stories", "instruct")
BACKENDS = ("openai", "transformers", "vllm", "template")


@dataclass
class SynthesisArguments:
    # --- job
    output_dir: str = field(
        default="outputs/data/tinystories", metadata={"help": "where shards and the merged dataset go"}
    )
    mode: str = field(
        default="stories", metadata={"help": "'stories' (TinyStories) or 'instruct' (TinyStories-Instruct)"}
    )
    num_stories: int = field(
        default=1000, metadata={"help": "records in the whole job (all shards together)"}
    )
    seed: int = field(
        default=42, metadata={"help": "prompt seed: record i's words/features depend only on (seed, i)"}
    )
    num_shards: int = field(
        default=1, metadata={"help": "split the job across this many machines / array tasks"}
    )
    shard_index: int = field(default=0, metadata={"help": "which shard this process generates (0-based)"})
    flush_every: int = field(default=1000, metadata={"help": "write a parquet part every N finished records"})
    flush_seconds: float = field(default=120.0, metadata={"help": "...or at least this often (seconds)"})
    retry_failed: bool = field(
        default=False, metadata={"help": "on resume, retry records recorded as failed"}
    )
    merge: bool = field(
        default=True, metadata={"help": "merge all shards into dataset/ when every shard is done"}
    )
    merge_only: bool = field(
        default=False, metadata={"help": "only merge existing shards (after a Slurm array)"}
    )
    push_to_hub: bool = field(default=False, metadata={"help": "push the merged dataset with push_to_hub"})
    hub_dataset_id: str | None = field(default=None, metadata={"help": "Hub dataset repo for --push_to_hub"})
    hub_private: bool = field(default=False, metadata={"help": "create the Hub dataset as private"})
    # --- prompts
    data_generation_dir: str | None = field(
        default=None,
        metadata={"help": "word lists, features.yaml, templates (default: the repo's data_generation/)"},
    )
    story_template: str | None = field(
        default=None, metadata={"help": "Jinja story prompt (default templates/story.jinja)"}
    )
    summary_template: str | None = field(
        default=None, metadata={"help": "Jinja summary prompt (default templates/summary.jinja)"}
    )
    features_file: str | None = field(
        default=None, metadata={"help": "features YAML (default features.yaml)"}
    )
    instruct_keep_probability: float = field(
        default=0.75, metadata={"help": "Instruct: chance each instruction field is kept"}
    )
    # --- backend
    backend: str = field(
        default="openai",
        metadata={"help": "openai (any OpenAI-compatible server), transformers, vllm, template"},
    )
    model: str | None = field(default=None, metadata={"help": "served model name / Hub id / local dir"})
    base_url: str | None = field(
        default=None,
        metadata={
            "help": "OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (default: OPENAI_BASE_URL or api.openai.com)"
        },
    )
    api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "environment variable holding the API key"}
    )
    api: str = field(
        default="chat", metadata={"help": "'chat' (chat/completions) or 'completions' (plain text prompt)"}
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "optional system message for chat models"}
    )
    max_new_tokens: int = field(default=512)
    temperature: float = field(default=1.0)
    top_p: float = field(default=1.0)
    extra_body: str | None = field(
        default=None, metadata={"help": "JSON object sent with every request (server-specific options)"}
    )
    concurrency: int = field(default=64, metadata={"help": "openai: requests in flight at once"})
    request_timeout: float = field(
        default=120.0, metadata={"help": "openai: seconds before one attempt is abandoned"}
    )
    max_retries: int = field(
        default=5, metadata={"help": "openai: retries on 429/5xx/timeouts/dropped connections/bad bodies"}
    )
    backoff_base: float = field(
        default=1.0, metadata={"help": "openai: first retry delay (s), doubled per retry, jittered"}
    )
    backoff_max: float = field(default=60.0)
    vllm_kwargs: str | None = field(
        default=None,
        metadata={
            "help": "vllm backend: JSON of extra vllm.LLM(...) arguments, e.g. '{\"tensor_parallel_size\": 8}'"
        },
    )
    batch_size: int = field(
        default=32, metadata={"help": "transformers / vllm / template: prompts per batch"}
    )

    def sampling(self) -> SamplingConfig:
        extra = {}
        if self.extra_body:
            try:
                extra = json.loads(self.extra_body)
            except json.JSONDecodeError as err:
                raise ConfigError(f"--extra_body must be a JSON object: {err}") from err
            if not isinstance(extra, dict):
                raise ConfigError("--extra_body must be a JSON object, e.g. '{\"top_k\": 50}'")
        return SamplingConfig(
            self.max_new_tokens, self.temperature, self.top_p, self.seed, extra, self.system_prompt
        )

    def engine_kwargs(self) -> dict[str, Any]:
        if not self.vllm_kwargs:
            return {}
        try:
            kwargs = json.loads(self.vllm_kwargs)
        except json.JSONDecodeError as err:
            raise ConfigError(f"--vllm_kwargs must be a JSON object: {err}") from err
        if not isinstance(kwargs, dict):
            raise ConfigError("--vllm_kwargs must be a JSON object, e.g. '{\"tensor_parallel_size\": 2}'")
        return kwargs

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.num_stories < 1:
            raise ConfigError(f"num_stories must be >= 1, got {self.num_stories}")
        if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
            raise ConfigError(
                f"shard_index must be in [0, num_shards): got shard_index={self.shard_index}, num_shards={self.num_shards}"
            )
        if self.backend != "template" and not self.model and not self.merge_only:
            raise ConfigError(
                f"backend {self.backend!r} needs --model (served model name, Hub id or local dir)"
            )
        if self.concurrency < 1 or self.batch_size < 1 or self.flush_every < 1:
            raise ConfigError("concurrency, batch_size and flush_every must be >= 1")
        if self.push_to_hub and not self.hub_dataset_id:
            raise ConfigError("--push_to_hub needs --hub_dataset_id <user>/<name>")
        if not 0 < self.instruct_keep_probability <= 1:
            raise ConfigError("instruct_keep_probability must be in (0, 1]")
        self.sampling()  # --extra_body / --vllm_kwargs parse now, not after the shards are read
        self.engine_kwargs()

    def fingerprint(self, vocab: Vocabulary) -> dict[str, Any]:
        """What must not change between a run and its resume (changing it would mix two datasets)."""
        return {
            "mode": self.mode,
            "num_stories": self.num_stories,
            "seed": self.seed,
            "num_shards": self.num_shards,
            "backend": self.backend,
            "model": self.model if self.backend != "template" else None,
            "vocabulary": vocab.fingerprint(),
            "instruct_keep_probability": self.instruct_keep_probability if self.mode == "instruct" else None,
        }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def shard_indices(num_stories: int, num_shards: int, shard_index: int) -> range:
    return range(shard_index, num_stories, num_shards)


# ------------------------------------------------------------------------------------------ writer
class ShardWriter:
    """Buffers finished records and writes them as atomic parquet parts (`data-*` and `failed-*`)."""

    def __init__(self, directory: Path, flush_every: int = 1000, flush_seconds: float = 120.0):
        self.directory = directory
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self.records: list[dict] = []
        self.failures: list[dict] = []
        self._last_flush = time.monotonic()
        for stale in directory.glob("*.parquet.tmp"):  # a part that a killed run never finished
            stale.unlink()

    def _next_path(self, prefix: str) -> Path:
        numbers = [int(p.stem.split("-")[1]) for p in self.directory.glob(f"{prefix}-*.parquet")]
        return self.directory / f"{prefix}-{(max(numbers) + 1) if numbers else 0:05d}.parquet"

    def add(self, record: dict) -> None:
        self.records.append(record)
        self._maybe_flush()

    def add_failure(self, failure: dict) -> None:
        self.failures.append(failure)
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        pending = len(self.records) + len(self.failures)
        if pending >= self.flush_every or (
            pending and time.monotonic() - self._last_flush >= self.flush_seconds
        ):
            self.flush()

    def _write(self, rows: list[dict], schema: pa.Schema, prefix: str) -> None:
        table = pa.Table.from_pylist(rows, schema=schema)
        path = self._next_path(prefix)
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: the part exists complete or not at all

    def flush(self) -> None:
        if self.records:
            self._write(self.records, RECORD_SCHEMA, "data")
            self.records = []
        if self.failures:
            self._write(self.failures, FAILURE_SCHEMA, "failed")
            self.failures = []
        self._last_flush = time.monotonic()


@contextlib.contextmanager
def shard_lock(directory: Path) -> Iterator[None]:
    with open(directory / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise ConfigError(
                f"another process is already generating {str(directory)!r}; wait for it or stop it "
                "(two processes on one shard would duplicate records)"
            ) from err
        yield


# ---------------------------------------------------------------------------------------- records
class RecordBuilder:
    def __init__(self, args: SynthesisArguments, vocab: Vocabulary, backend):
        self.args = args
        self.vocab = vocab
        self.backend = backend
        self.model = backend.model if backend.name == "template" else args.model
        self.generation_config = backend.sampling.to_json()

    def story_request(self, spec: PromptSpec) -> Request:
        return Request(spec.prompt, "story", spec)

    def summary_request(self, spec: PromptSpec, story: str) -> Request:
        return Request(self.vocab.summary_prompt(story), "summary", spec, story=story)

    def record(self, spec: PromptSpec, story: Completion, summary: Completion | None) -> dict:
        a = self.args
        row: dict[str, Any] = {
            "id": spec.id,
            "index": spec.index,
            "seed": spec.seed,
            "mode": a.mode,
            "text": story.text,
            "story": story.text,
            "summary": None,
            "random_sentence": None,
            "words": spec.words,
            "features": spec.features,
            "instruction_fields": None,
            "generation_prompt": spec.prompt,
            "summary_prompt": None,
            "backend": self.backend.name,
            "model": self.model,
            "generation_config": self.generation_config,
            "finish_reason": story.finish_reason,
            "completion_tokens": story.usage.get("completion_tokens"),
            "created_at": _now(),
        }
        if a.mode == "instruct":
            assert summary is not None
            rng = record_rng(spec.seed, spec.index, "instruct")
            full = InstructExample(
                story=story.text,
                features=list(spec.features),
                words=spec.words,
                summary=summary.text,
                random_sentence=random_sentence(story.text, rng),
            )
            shown = randomize_fields(full, rng, keep_probability=a.instruct_keep_probability)
            row.update(
                text=format_example(shown),
                summary=summary.text,
                random_sentence=full.random_sentence,
                instruction_fields=shown.order,
                summary_prompt=self.vocab.summary_prompt(story.text),
            )
        return row

    def failure(self, spec: PromptSpec, stage: str, err: GenerationFailure) -> dict:
        return {
            "id": spec.id,
            "index": spec.index,
            "seed": spec.seed,
            "mode": self.args.mode,
            "words": spec.words,
            "features": spec.features,
            "generation_prompt": spec.prompt,
            "stage": stage,
            "error": err.error,
            "error_type": err.error_type,
            "status_code": err.status_code,
            "attempts": err.attempts,
            "backend": self.backend.name,
            "model": self.model,
            "generation_config": self.generation_config,
            "created_at": _now(),
        }


# ----------------------------------------------------------------------------------------- runners
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
                story = await backend.complete(builder.story_request(spec))
                summary = None
                if builder.args.mode == "instruct":
                    stage = "summary"
                    summary = await backend.complete(builder.summary_request(spec, story.text))
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
        stories = backend.complete_batch([builder.story_request(s) for s in chunk])
        summaries: list[Any] = [None] * len(chunk)
        if builder.args.mode == "instruct":
            ok = [i for i, c in enumerate(stories) if isinstance(c, Completion)]
            answers = (
                backend.complete_batch([builder.summary_request(chunk[i], stories[i].text) for i in ok])
                if ok
                else []
            )
            for i, answer in zip(ok, answers, strict=True):
                summaries[i] = answer
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


def run_shard(args: SynthesisArguments, backend=None) -> dict[str, Any]:
    """Generate this process's shard (resuming whatever is already on disk). Returns its counts."""
    args.validate()
    vocab = Vocabulary(
        args.data_generation_dir, args.story_template, args.summary_template, args.features_file
    )
    directory = shard_dir(args.output_dir, args.shard_index, args.num_shards)
    directory.mkdir(parents=True, exist_ok=True)
    with shard_lock(directory):
        _check_job_file(directory, args.fingerprint(vocab))
        indices = shard_indices(args.num_stories, args.num_shards, args.shard_index)
        records, failures = read_shard(directory)
        done = set(records.column("id").to_pylist())
        failed = set(failures.column("id").to_pylist()) - done
        skip = done if args.retry_failed else done | failed
        specs = [vocab.spec(args.seed, i) for i in indices]
        todo = [s for s in specs if s.id not in skip]
        logger.info(
            "shard %d/%d: %d records, %d already generated, %d failed before, %d to do",
            args.shard_index,
            args.num_shards,
            len(specs),
            len(done),
            len(failed),
            len(todo),
        )
        counts = {"generated": 0, "failed": 0}
        if todo:
            if backend is None:
                backend = build_backend(
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
            builder = RecordBuilder(args, vocab, backend)
            writer = ShardWriter(directory, args.flush_every, args.flush_seconds)
            previous_handler = signal.signal(signal.SIGTERM, _raise_on_sigterm)
            bar = tqdm(
                total=len(specs),
                initial=len(specs) - len(todo),
                unit="story",
                desc=f"shard {args.shard_index}",
                smoothing=0.05,
            )
            try:
                if backend.is_async:
                    counts = asyncio.run(_run_async(builder, todo, writer, bar, args.concurrency))
                else:
                    counts = _run_batched(builder, todo, writer, bar, args.batch_size)
            finally:
                writer.flush()  # Ctrl-C / SIGTERM: keep every finished record
                bar.close()
                signal.signal(signal.SIGTERM, previous_handler)
        records, failures = read_shard(directory)
        done = set(records.column("id").to_pylist())
        failed = set(failures.column("id").to_pylist()) - done
        summary = {
            "shard_index": args.shard_index,
            "num_shards": args.num_shards,
            "expected": len(specs),
            "generated": len(done),
            "failed": len(failed),
            "missing": len(specs) - len(done) - len(failed),
            "this_run": counts,
        }
        (directory / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary


# ------------------------------------------------------------------------------------------- merge
def merge(args: SynthesisArguments) -> dict[str, Any]:
    from datasets import Dataset

    records, failures, stats = collect_shards(args.output_dir)
    root = Path(args.output_dir)
    dataset = Dataset(records)
    dataset.save_to_disk(str(root / "dataset"))
    Dataset(failures).save_to_disk(str(root / "failed"))
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


def run(args: SynthesisArguments) -> dict[str, Any]:
    args.validate()
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
            result["merge"] = merge(args)
    return result


def main(argv: list[str] | None = None) -> int:
    from tinystories.config import parse_args

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    (args,) = parse_args([SynthesisArguments], argv)
    result = run(args)
    print(json.dumps(result, indent=2, default=str))
    shard = result.get("shard", {})
    merged = result.get("merge")
    if merged:
        print(
            f"dataset: {Path(args.output_dir) / 'dataset'} ({merged['generated']} records, {merged['failed']} failed)"
        )
    return 0 if not shard.get("missing") else 1


__all__ = ["SynthesisArguments", "load_generated", "main", "merge", "run", "run_shard"]
