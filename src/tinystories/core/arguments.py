"""Argument groups every stage shares: one declaration per concept, one name per concept.

A stage's flags are a dataclass that inherits the groups it uses (`ModelSource`, `DataSource`, ...) plus its
own fields. A group checks its own values when it is built (`check`), so a bad number is refused where the
flag is declared, before any data is read. Where a stage wants another default than the group's, its module
says so in `DEFAULTS` (applied to the parser, so `--help` shows it).

The names (`--data`, `--tokenizer`, `--model`, `--base_model`, `--output_dir`, `--precision`, `--seed`,
`--text_column`) are the contract of the CLI; older spellings live in `core.config.ALIASES`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from tinystories.core import ConfigError
from tinystories.core.paths import looks_like_path

DEFAULT_DATA = "roneneldan/TinyStories"
DECODE_ERROR_MODES = ("fail", "skip", "replace")
SEED_MAX = 2**32 - 1  # numpy's seeds: 0 .. 2**32 - 1
ATTENTION_KERNELS = ("sdpa", "flex", "eager")
INFERENCE_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# the torch dtype names older recipes used for --precision (--dtype)
PRECISION_SYNONYMS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


# ------------------------------------------------------------------------------------------- checks
def _fail(flag: str, value, rule: str, fix: str) -> None:
    raise ConfigError(f"--{flag} {value!r}: {rule}; {fix}")


def check_min(flag: str, value, minimum, fix: str = "") -> None:
    """`value >= minimum` (None passes: unset)."""
    if value is None:
        return
    if (isinstance(value, float) and math.isnan(value)) or value < minimum:
        _fail(flag, value, f"must be at least {minimum}", fix or f"pass --{flag} {minimum} or more")


def check_positive(flag: str, value, fix: str = "") -> None:
    """`value > 0` (None passes)."""
    if value is None:
        return
    if (isinstance(value, float) and math.isnan(value)) or value <= 0:
        _fail(flag, value, "must be greater than 0", fix or f"pass a positive --{flag}")


def check_fraction(flag: str, value, *, open_low: bool = True, closed_high: bool = False) -> None:
    """A share: in (0, 1) by default; `open_low=False` admits 0, `closed_high=True` admits 1."""
    if value is None:
        return
    low_ok = value > 0 if open_low else value >= 0
    high_ok = value <= 1 if closed_high else value < 1
    if not (low_ok and high_ok):
        lo, hi = "(0" if open_low else "[0", "1]" if closed_high else "1)"
        _fail(flag, value, f"must be in {lo}, {hi}", f"pass a share such as --{flag} 0.1")


def check_range(flag: str, value, low, high, fix: str = "") -> None:
    """`low <= value <= high` (None passes)."""
    if value is None:
        return
    if (isinstance(value, float) and math.isnan(value)) or not low <= value <= high:
        _fail(flag, value, f"must be in [{low}, {high}]", fix or f"pass a --{flag} from {low} to {high}")


def check_each_min(flag: str, values, minimum, fix: str = "") -> None:
    """Every value of a list flag `>= minimum` (None passes)."""
    for value in values or []:
        check_min(flag, value, minimum, fix)


def check_choice(flag: str, value, choices) -> None:
    if value not in choices:
        _fail(flag, value, "unknown value", f"use one of {', '.join(map(str, choices))}")


def check_exists(flag: str, value, fix: str = "") -> None:
    """A local input that does not exist is refused with its flag and path (a Hub id, an URL or unset passes)."""
    for item in value if isinstance(value, list | tuple) else [value]:
        if not item or not isinstance(item, str) or not looks_like_path(item):
            continue
        if not Path(item).expanduser().exists():
            raise ConfigError(
                f"--{flag} {item!r}: does not exist"
                + (f" (from {Path.cwd()})" if not Path(item).is_absolute() else "")
                + f"; {fix or f'check the path, or pass a Hub id as --{flag}'}"
            )


def check_inputs(*parsed) -> None:
    """Run the `check_paths` of every class each parsed dataclass inherits: local inputs that are not there are
    refused before any work (`parse_args` calls it; a recipe of a pipeline can name outputs of earlier stages,
    so reading a recipe alone does not)."""
    for obj in parsed:
        for klass in reversed(type(obj).__mro__):
            check = klass.__dict__.get("check_paths")
            if check is not None:
                check(obj)


# ------------------------------------------------------------------------------------------- groups
class ArgumentGroup:
    """Runs the `check` of every group a dataclass inherits, once, when it is built (and `check_inputs` their
    `check_paths`, after parsing)."""

    # --model / --tokenizer may name a file inside a Hub repo (`owner/repo/<file>`, `tinystories pull`): the
    # stage checks its own local paths
    HUB_FILES: ClassVar[bool] = False

    def __post_init__(self):
        for klass in reversed(type(self).__mro__):
            check = klass.__dict__.get("check")
            if check is not None:
                check(self)
        parent = getattr(super(), "__post_init__", None)  # a library dataclass after the groups (TRL's)
        if parent is not None:
            parent()


@dataclass
class OutputArguments(ArgumentGroup):
    output_dir: str | None = field(default=None, metadata={"help": "where the stage writes its results"})


@dataclass
class SeedArguments(ArgumentGroup):
    seed: int = field(
        default=42,
        metadata={"help": "random seed (held-out split, sampling, hashing: the same seed, the same result)"},
    )

    def check(self):
        check_range("seed", self.seed, 0, SEED_MAX, f"pass a seed from 0 to {SEED_MAX} (2**32 - 1)")


@dataclass
class TokenizerSource(ArgumentGroup):
    tokenizer: str | None = field(
        default=None, metadata={"help": "tokenizer Hub id or local dir (default: the model's own)"}
    )

    def check_paths(self):
        if not self.HUB_FILES:
            check_exists(
                "tokenizer", self.tokenizer, "pass a local tokenizer folder or a Hub id (TOKENIZER=)"
            )


@dataclass
class ModelRef(ArgumentGroup):
    model: str | None = field(
        default=None,
        metadata={"help": "Hub id, local model dir or LoRA adapter dir (merged onto its base)"},
    )
    revision: str | None = field(
        default=None, metadata={"help": "Hub revision of --model (branch, tag or commit)"}
    )

    def check_paths(self):
        if not self.HUB_FILES and not self.model_is_written():
            check_exists("model", self.model, "pass a local model folder or a Hub id (MODEL=)")

    def model_is_written(self) -> bool:
        """True where the stage creates the --model folder itself (a GGUF converted into it the first time)."""
        return False


@dataclass
class ModelSource(ModelRef, TokenizerSource):
    """A model and the tokenizer to read it with."""


@dataclass
class DataSource(ArgumentGroup):
    data: str | None = field(
        default=None,
        metadata={"help": "Hub dataset id or local .txt/.jsonl/.json/.parquet/save_to_disk path (DATA=)"},
    )
    text_column: str = field(default="text", metadata={"help": "column holding the text"})
    on_decode_error: str = field(
        default="fail",
        metadata={
            "help": "a .txt story with bytes that are not UTF-8: fail (naming file and byte), skip, replace"
        },
    )

    def check(self):
        check_choice("on_decode_error", self.on_decode_error, DECODE_ERROR_MODES)

    def check_paths(self):
        check_exists("data", self.data, "pass a local data file or folder, or a Hub dataset id (DATA=)")


@dataclass
class StoryColumn(DataSource):
    """Data whose story column is found by name: a synthesis output's `story`, else `text`."""

    text_column: str | None = field(
        default=None,
        metadata={"help": "column holding the stories (default: 'story' when present, else 'text')"},
    )


@dataclass
class SplitArguments(ArgumentGroup):
    split: str = field(
        default="train",
        metadata={"help": "split of a Hub dataset / saved DatasetDict (a plain file: all of it)"},
    )


@dataclass
class HeldOutArguments(DataSource, SplitArguments):
    """The stories a scoring stage reads: a split of a Hub dataset, a whole file, or a run's held-out part."""

    split: str = field(
        default="validation", metadata={"help": "split of a Hub dataset (a plain file: all of it)"}
    )
    validation_fraction: float | None = field(
        default=None,
        metadata={
            "help": "read what a training run with this held-out fraction (and --seed) held out; default: the "
            "whole of a local file, the --split of a Hub dataset"
        },
    )
    max_samples: int | None = field(default=None, metadata={"help": "use the first N stories only"})

    def check(self):
        check_fraction("validation_fraction", self.validation_fraction)
        check_min("max_samples", self.max_samples, 1)


@dataclass
class TrainingData(DataSource, TokenizerSource):
    """The data of a training run (pretraining, SFT, LoRA)."""

    eval_data: str | None = field(
        default=None,
        metadata={"help": "separate eval data (default: the data's validation split or a held-out part)"},
    )
    data_revision: str | None = field(default=None, metadata={"help": "Hub revision of --data"})
    data_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration of --data"})
    validation_fraction: float = field(
        default=0.1, metadata={"help": "held out for evaluation when the data has no validation split"}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "use only the first N train examples"}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "use only the first N eval examples"}
    )

    def check(self):
        check_fraction("validation_fraction", self.validation_fraction)
        check_min("max_train_samples", self.max_train_samples, 1)
        check_min("max_eval_samples", self.max_eval_samples, 1)

    def check_paths(self):
        check_exists("eval_data", self.eval_data, "pass a local data file or folder, or a Hub dataset id")


@dataclass
class VocabularyArguments(ArgumentGroup):
    vocab_size: int | None = field(
        default=None, metadata={"help": "trim to the K most frequent tokens (paper: 10000), or the BPE size"}
    )
    train_tokenizer: bool = field(
        default=False, metadata={"help": "train an own byte-level BPE of --vocab_size"}
    )

    def check(self):
        check_min("vocab_size", self.vocab_size, 2)
        if self.train_tokenizer and not self.vocab_size:
            raise ConfigError(
                "--train_tokenizer true needs --vocab_size (e.g. 4096): the size of the BPE to train"
            )


@dataclass
class BatchArguments(ArgumentGroup):
    batch_size: int = field(default=16, metadata={"help": "items per batch (stories, windows or prompts)"})

    def check(self):
        check_min("batch_size", self.batch_size, 1)


@dataclass
class ContextArguments(ArgumentGroup):
    max_length: int | None = field(
        default=None, metadata={"help": "tokens per window (default: min(the model's positions, 512))"}
    )

    def check(self):
        check_min("max_length", self.max_length, 2, "pass --max_length 2 or more (the models: 512)")


@dataclass
class AttentionArguments(ArgumentGroup):
    attn_implementation: str | None = field(
        default="sdpa", metadata={"help": "sdpa (default), flex (a GPU) or eager"}
    )

    def check(self):
        if self.attn_implementation is not None:
            check_choice("attn_implementation", self.attn_implementation, ATTENTION_KERNELS)


@dataclass
class InferenceArguments(ArgumentGroup):
    device: str = field(
        default="auto", metadata={"help": "auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:1, mps"}
    )
    precision: str = field(
        default="auto",
        metadata={"help": "auto (fp32: exact, and tiny models are fast in it), fp32, bf16, fp16"},
    )

    def check(self):
        self.precision = PRECISION_SYNONYMS.get(self.precision, self.precision)
        check_choice("precision", self.precision, INFERENCE_PRECISIONS)


@dataclass
class SamplingArguments(ArgumentGroup):
    max_new_tokens: int = field(
        default=200, metadata={"help": "tokens per story (capped by the trained context)"}
    )
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature; 0 = greedy"})
    top_p: float | None = field(default=0.95, metadata={"help": "nucleus sampling (1.0 or unset = off)"})
    top_k: int | None = field(
        default=None, metadata={"help": "sample among the k most likely tokens (unset = off)"}
    )

    def check(self):
        check_min("max_new_tokens", self.max_new_tokens, 1)
        check_min("temperature", self.temperature, 0, "pass 0 (greedy) or a positive temperature")
        check_fraction("top_p", self.top_p, closed_high=True)
        check_min("top_k", self.top_k, 1, "pass a positive top_k, or leave it unset")


__all__ = [
    "ATTENTION_KERNELS",
    "DECODE_ERROR_MODES",
    "DEFAULT_DATA",
    "ArgumentGroup",
    "AttentionArguments",
    "BatchArguments",
    "ContextArguments",
    "DataSource",
    "HeldOutArguments",
    "InferenceArguments",
    "ModelRef",
    "ModelSource",
    "OutputArguments",
    "SamplingArguments",
    "SeedArguments",
    "SplitArguments",
    "StoryColumn",
    "TokenizerSource",
    "TrainingData",
    "VocabularyArguments",
    "check_choice",
    "check_each_min",
    "check_exists",
    "check_fraction",
    "check_inputs",
    "check_min",
    "check_positive",
    "check_range",
]
