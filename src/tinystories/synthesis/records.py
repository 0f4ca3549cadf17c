"""What a synthesis job writes: one row per record (or failure), buffered into atomic parquet parts.

`RecordBuilder` turns a prompt and its completions into a row of `tinystories.data.shards.RECORD_SCHEMA` (or a
failure row of `FAILURE_SCHEMA`); `ShardWriter` writes them to a shard directory as `data-*` / `failed-*`
parts, each to a temporary name renamed when complete; `shard_lock` keeps a second process off the shard.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tinystories.core import ConfigError
from tinystories.data.instruct import InstructExample, format_example, randomize_fields
from tinystories.data.shards import FAILURE_SCHEMA, RECORD_SCHEMA
from tinystories.synthesis.arguments import LLM_BACKENDS, SynthesisArguments
from tinystories.synthesis.backends import Completion, GenerationFailure, Request
from tinystories.synthesis.cleaning import screen_story
from tinystories.synthesis.prompts import PromptSpec, Vocabulary, random_sentence, record_rng


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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
        self.model = args.model if backend.name in LLM_BACKENDS else getattr(backend, "model", args.model)
        if args.gguf_file and backend.name in LLM_BACKENDS:
            self.model = args.gguf_file  # the weights it ran: the GGUF, not the folder it was converted into
        self.generation_config = backend.sampling.to_json() if backend.sampling is not None else None
        # Instruct records get an LLM summary, except from the `stories` backend (no model at all)
        self.summaries = args.mode == "instruct" and backend.name != "stories"

    def story_request(self, spec: PromptSpec) -> Request:
        return Request(spec.prompt, "story", spec)

    def summary_request(self, spec: PromptSpec, story: str) -> Request:
        return Request(self.vocab.summary_prompt(story), "summary", spec, story=story)

    def screen(self, answer: Completion | GenerationFailure) -> Completion | GenerationFailure:
        """`cleaning.screen_story` (a refusal or a loop too short to trim: a `refused` / `loop` failure; a loop or
        second story cut off: finish_reason `loop` / `second_story`, the cut kept in `cuts`), then a completion
        cut off at max_new_tokens becomes a `truncated` failure (`--on_truncated drop`)."""
        if not isinstance(answer, Completion) or not answer.from_model:
            return answer
        screened = screen_story(answer.text)
        if screened.rejected:
            return GenerationFailure(f"{screened.rejected}: {answer.text[:300]!r}", screened.rejected)
        if screened.cuts:
            answer.text, answer.cuts = screened.text, screened.cuts
            answer.finish_reason = screened.cuts[0].split(":", 1)[0]  # "loop" or "second_story"
        if answer.finish_reason != "length":
            return answer
        if self.args.on_truncated == "keep":
            return answer  # kept, flagged by its finish_reason "length"
        limit = self.backend.sampling.max_new_tokens if self.backend.sampling is not None else None
        return GenerationFailure(
            f"truncated: cut off at max_new_tokens={limit} (finish_reason length): {answer.text[-200:]!r}",
            "truncated",
        )

    def record(self, spec: PromptSpec, story: Completion, summary: Completion | None) -> dict:
        a = self.args
        preambles = [
            f"{kind}: {c.preamble}"
            for kind, c in (("story", story), ("summary", summary))
            if c and c.preamble
        ]
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
            "generation_prompt": spec.prompt or None,  # None: a corpus story (`--data`)
            "summary_prompt": None,
            "preambles": preambles,
            "cuts": [
                f"{kind}: {cut}"
                for kind, c in (("story", story), ("summary", summary))
                if c
                for cut in c.cuts
            ],
            "backend": self.backend.name,
            "model": self.model,
            "generation_config": self.generation_config,
            "finish_reason": story.finish_reason,
            "completion_tokens": story.usage.get("completion_tokens"),
            "created_at": _now(),
        }
        if a.mode == "instruct":
            rng = record_rng(spec.seed, spec.index, "instruct")
            full = InstructExample(
                story=story.text,
                features=list(spec.features),
                words=spec.words,
                summary=summary.text if summary else None,
                random_sentence=random_sentence(story.text, rng),
            )
            # features read off the story are all of them: the line is always shown, so absent means absent
            always = ("features",) if getattr(spec, "features_complete", False) else ()
            shown = randomize_fields(full, rng, keep_probability=a.instruct_keep_probability, always=always)
            row.update(
                text=format_example(shown),
                summary=full.summary,
                random_sentence=full.random_sentence,
                instruction_fields=shown.order,
                summary_prompt=self.vocab.summary_prompt(story.text) if summary else None,
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
            "generation_prompt": spec.prompt or None,
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
