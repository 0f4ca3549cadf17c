"""A sweep's grid: its cells, the pretraining command line of each, and the record a finished cell leaves.

A cell is one width × depth × token budget (× architecture: GPT-Neo, or its Llama twin of matched
non-embedding parameters, `models.sizes`). It trains as a normal pretraining run (`tinystories train`
with the sweep's base recipe, its overrides and `--hidden_size/--num_layers/--max_steps`) in
`<output_dir>/<cell name>/`, is evaluated there by `tinystories eval`'s path, and ends with
`sweep_cell.json`. A cell whose record matches its command line (and holds judge scores when a judge is
asked for) is finished: running the sweep again skips it. A cell whose record names another command line
is an error rather than a silent mix of two settings.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tinystories.core import REPO_ROOT, ConfigError
from tinystories.evaluation.judge import CATEGORIES as JUDGE_CATEGORIES
from tinystories.models.sizes import ARCHITECTURES

CELL_RECORD = "sweep_cell.json"
DEFAULT_ARCHITECTURE = ARCHITECTURES[0]  # gpt_neo: its cells keep the names (and command lines) they had


@dataclass(frozen=True)
class Cell:
    hidden_size: int
    num_layers: int
    max_steps: int
    train_tokens_budget: int | None = None  # the requested token budget (None: the budget is max_steps)
    architecture: str = DEFAULT_ARCHITECTURE

    @property
    def name(self) -> str:
        budget = f"t{self.train_tokens_budget}" if self.train_tokens_budget else f"s{self.max_steps}"
        prefix = "" if self.architecture == DEFAULT_ARCHITECTURE else f"{self.architecture}-"
        return f"{prefix}h{self.hidden_size}-l{self.num_layers}-{budget}"


def build_grid(
    hidden_sizes: list[int],
    num_layers: list[int],
    max_steps: list[int],
    train_tokens: list[int],
    per_step: int,
    architectures: list[str] | None = None,
) -> list[Cell]:
    """Every architecture × width × depth × budget; a token budget becomes max_steps = ceil(tokens / tokens
    per step)."""
    architectures = architectures or [DEFAULT_ARCHITECTURE]
    if not hidden_sizes or not num_layers or not (max_steps or train_tokens):
        raise ConfigError("the grid needs --hidden_sizes, --num_layers and --max_steps (or --train_tokens)")
    unknown = [a for a in architectures if a not in ARCHITECTURES]
    if unknown:
        raise ConfigError(f"--architectures {' '.join(unknown)}: use {' and/or '.join(ARCHITECTURES)}")
    if any(v < 1 for v in [*hidden_sizes, *num_layers, *max_steps, *train_tokens]):
        raise ConfigError("grid values must be positive")
    if train_tokens:
        budgets = [(math.ceil(t / per_step), t) for t in train_tokens]
    else:
        budgets = [(s, None) for s in max_steps]
    return [
        Cell(h, layers, steps, tokens, arch)
        for arch in dict.fromkeys(architectures)
        for steps, tokens in dict.fromkeys(budgets)
        for layers in dict.fromkeys(num_layers)
        for h in dict.fromkeys(hidden_sizes)
    ]


def resolve_recipe(path: str) -> str:
    """A pretraining recipe path as given, else relative to the checkout (recipes are not package data)."""
    if Path(path).is_file():
        return path
    if REPO_ROOT is not None and (REPO_ROOT / path).is_file():
        return str(REPO_ROOT / path)
    raise ConfigError(
        f"pretraining recipe {path!r} not found: pass --train_config recipes/pretrain/<SIZE>.yaml"
    )


def _flag_values(value: Any) -> list[str]:
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return [str(value)]


def override_flags(overrides: dict[str, Any], pairs: list[str]) -> list[str]:
    """`--key value` flags from the recipe's `train_overrides` mapping, then the `key=value` pairs of the CLI."""
    merged = dict(overrides or {})
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--train_args takes key=value pairs (e.g. block_size=256), got {pair!r}")
        merged[key.strip().lstrip("-")] = value
    flags = []
    for key, value in merged.items():
        if value is not None:
            flags += [f"--{key}", *_flag_values(value)]
    return flags


def cell_argv(base: list[str], cell: Cell, cell_dir: Path) -> list[str]:
    architecture = [] if cell.architecture == DEFAULT_ARCHITECTURE else ["--architecture", cell.architecture]
    return [
        *base,
        *architecture,
        "--hidden_size", str(cell.hidden_size),
        "--num_layers", str(cell.num_layers),
        "--max_steps", str(cell.max_steps),
        "--output_dir", str(cell_dir),
    ]  # fmt: skip


def read_record(cell_dir: Path) -> dict[str, Any] | None:
    path = cell_dir / CELL_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def is_finished(record: dict[str, Any] | None, argv: list[str], cell_dir: Path, judge: bool) -> bool:
    """Whether a cell's record covers this run; a record of other settings is an error."""
    if record is None:
        return False
    if record.get("train_argv") != argv:
        raise ConfigError(
            f"{cell_dir} was trained with other settings ({' '.join(record.get('train_argv', []))}): "
            "choose another --output_dir, or delete that cell to retrain it"
        )
    return not judge or bool(record.get("judge"))


def is_trained(cell_dir: Path) -> bool:
    """The pretraining run finished (final weights and results written by the tail)."""
    return (cell_dir / "model.safetensors").is_file() and (cell_dir / "all_results.json").is_file()


def judge_means(eval_results: dict[str, Any]) -> dict[str, float] | None:
    scores = (eval_results.get("judge") or {}).get("scores") or {}
    means = {c: (scores.get(c) or {}).get("mean") for c in JUDGE_CATEGORIES}
    return means if any(v is not None for v in means.values()) else None


def cell_record(
    cell: Cell, argv: list[str], non_embedding: int, eval_results: dict, timing: dict[str, float]
) -> dict[str, Any]:
    """One row of `sweep_results.json` (also the cell's `sweep_cell.json`)."""
    trained = json.loads(Path(argv[argv.index("--output_dir") + 1], "all_results.json").read_text())
    tokens = int(trained.get("num_input_tokens_seen") or trained.get("train_tokens") or 0)
    return {
        "name": cell.name,
        **asdict(cell),
        "non_embedding_params": non_embedding,
        "num_parameters": eval_results.get("num_parameters"),
        "train_tokens": tokens,
        "compute": 6 * non_embedding * tokens,
        "eval_loss": eval_results.get("loss"),
        "bits_per_byte": eval_results.get("bits_per_byte"),
        "perplexity": eval_results.get("perplexity"),
        "eval_num_stories": eval_results.get("num_stories"),
        "eval_num_tokens": eval_results.get("num_tokens"),
        "train_loss": trained.get("train_loss"),
        **timing,
        "judge": judge_means(eval_results),
        "train_argv": argv,
    }


def write_record(cell_dir: Path, record: dict[str, Any]) -> None:
    (cell_dir / CELL_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
