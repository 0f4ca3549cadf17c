"""The `tinystories data` command line: one dataclass of job, prompt and backend settings."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tinystories.core import ConfigError
from tinystories.core.arguments import (
    BatchArguments,
    DataSource,
    ModelRef,
    OutputArguments,
    SeedArguments,
    SplitArguments,
    check_exists,
    check_fraction,
    check_min,
    check_positive,
    check_range,
)
from tinystories.synthesis.backends import SamplingConfig
from tinystories.synthesis.prompts import Vocabulary

MODES = ("stories", "instruct")
BACKENDS = ("openai", "transformers", "vllm", "template", "stories")
LLM_BACKENDS = ("openai", "transformers", "vllm")
ON_TRUNCATED = ("drop", "keep")


@dataclass
class SynthesisArguments(
    ModelRef, DataSource, SplitArguments, BatchArguments, SeedArguments, OutputArguments
):
    """--output_dir: where shards and the merged dataset go; --seed: the prompt seed (record i's words and
    features depend only on (seed, i)); --model: the LLM that writes (served model name, Hub id or local
    dir); --data (+ --split, --text_column): a story corpus to make Instruct records from
    (DATA=): Words, Random sentence and Features derived from each story; --backend stories: no LLM, an LLM
    backend: the Summary."""

    # --- job
    mode: str = field(
        default="stories", metadata={"help": "'stories' (TinyStories) or 'instruct' (TinyStories-Instruct)"}
    )
    num_stories: int = field(
        default=1000,
        metadata={"help": "records in the whole job (all shards together); with --data 0 = every story"},
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
    # --- what is kept of a completion
    on_truncated: str = field(
        default="drop",
        metadata={
            "help": "a completion cut off at max_new_tokens (finish_reason length): 'drop' (to failed/, "
            "error_type truncated) or 'keep' (a record with finish_reason 'length')"
        },
    )
    # --- backend
    backend: str = field(
        default="openai",
        metadata={
            "help": "openai (any OpenAI-compatible server), transformers, vllm, template, "
            "stories (no model: Instruct records from --data)"
        },
    )
    gguf_file: str | None = field(
        default=None,
        metadata={
            "help": "transformers: a GGUF file (path, or package:file inside an installed package) converted "
            "once into the --model folder when that holds no model yet (models/from_gguf.py)"
        },
    )
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
        default=None,
        metadata={
            "help": "JSON object sent with every request (server-specific options); transformers: more "
            'generate() arguments, e.g. \'{"repetition_penalty": 1.1, "no_repeat_ngram_size": 4}\''
        },
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

    def model_is_written(self) -> bool:
        return bool(self.gguf_file)  # the GGUF is converted into the --model folder the first time

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

    def check(self):
        check_min("num_stories", self.num_stories, 0, "pass --num_stories 1 or more (0 with --data: all)")
        check_min("num_shards", self.num_shards, 1)
        check_range("shard_index", self.shard_index, 0, self.num_shards - 1, "count shards from 0")
        check_min("flush_every", self.flush_every, 1)
        check_positive("flush_seconds", self.flush_seconds)
        check_fraction("instruct_keep_probability", self.instruct_keep_probability, closed_high=True)
        check_min("max_new_tokens", self.max_new_tokens, 1)
        check_min("temperature", self.temperature, 0, "pass 0 (greedy) or a positive temperature")
        check_fraction("top_p", self.top_p, closed_high=True)
        check_min("concurrency", self.concurrency, 1)
        check_positive("request_timeout", self.request_timeout, "pass a positive number of seconds")
        check_min("max_retries", self.max_retries, 0)
        check_min("backoff_base", self.backoff_base, 0)
        check_min("backoff_max", self.backoff_max, 0)

    def check_paths(self):  # the templates and features file may lie in it: `Vocabulary` resolves them
        check_exists(
            "data_generation_dir", self.data_generation_dir, "pass an existing folder, or leave it unset"
        )

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.num_stories < (0 if self.data else 1):
            raise ConfigError(f"num_stories must be >= 1 (0 with --data: all), got {self.num_stories}")
        if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
            raise ConfigError(
                f"shard_index must be in [0, num_shards): got shard_index={self.shard_index}, num_shards={self.num_shards}"
            )
        self._validate_source()
        if self.revision:
            raise ConfigError(
                "--revision: the synthesis backends load --model as given; download that revision first "
                "(tinystories pull --model M --revision R --output_dir DIR) and pass --model DIR"
            )
        if self.on_truncated not in ON_TRUNCATED:
            raise ConfigError(f"on_truncated must be one of {ON_TRUNCATED}, got {self.on_truncated!r}")
        if self.backend in LLM_BACKENDS and not self.model and not self.merge_only:
            raise ConfigError(
                f"backend {self.backend!r} needs --model (served model name, Hub id or local dir)"
            )
        if self.gguf_file and self.backend != "transformers":
            raise ConfigError(
                "--gguf_file is converted for --backend transformers (serve it yourself otherwise)"
            )
        if self.push_to_hub and not self.hub_dataset_id:
            raise ConfigError("--push_to_hub needs --hub_dataset_id <user>/<name>")
        self.sampling()  # --extra_body / --vllm_kwargs parse now, not after the shards are read
        self.engine_kwargs()

    def _validate_source(self) -> None:
        if self.backend == "stories" and not self.data:
            raise ConfigError("backend 'stories' makes Instruct records from a corpus: pass --data (DATA=)")
        if self.data and (self.mode != "instruct" or self.backend == "template"):
            raise ConfigError(
                "--data makes TinyStories-Instruct records: use --mode instruct with --backend stories "
                f"(no LLM) or an LLM backend for the summaries (got mode {self.mode!r}, backend {self.backend!r})"
            )

    def fingerprint(self, vocab: Vocabulary) -> dict[str, Any]:
        """What must not change between a run and its resume (changing it would mix two datasets)."""
        return {
            "mode": self.mode,
            "num_stories": self.num_stories,
            "seed": self.seed,
            "num_shards": self.num_shards,
            "backend": self.backend,
            "model": self.model if self.backend in LLM_BACKENDS else None,
            "vocabulary": vocab.fingerprint(),
            "instruct_keep_probability": self.instruct_keep_probability if self.mode == "instruct" else None,
        } | ({"gguf_file": self.gguf_file} if self.gguf_file else {})  # the weights, not just a folder name
