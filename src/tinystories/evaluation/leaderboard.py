"""Every public tiny story model and local runs on one split, in bits per byte (`tinystories leaderboard`).

`PUBLIC_MODELS` lists the families: the paper's 14 `roneneldan/TinyStories-*` checkpoints (base and Instruct, GPT-Neo,
GPT-Neo's BPE), llama2.c's four `karpathy/tinyllamas` models (Llama blocks; stories260K brings its 512-token
`tok512.bin`, stories15M/42M/110M use Llama 2's 32,000-token vocabulary, llama2.c's `tokenizer.bin`, which is in
the github.com/karpathy/llama2.c repository and not in the Hub repo: `--llama2c_tokenizer`) and SimpleStories V1 and
V2 (`SimpleStories/SimpleStories-*`, Llama blocks, a 4,096-token WordPiece). A llama2.c checkpoint is converted once
into `<output_dir>/pulled/<name>` (`hub.conversion`).

Each model is one `evaluation.pipeline.evaluate_model` call (the loss and bits per byte of `score_texts`, completions
of the evaluation prompts and their dark-story rate; `<output_dir>/models/<name>/eval_results.json`), summed into
one row. A model that fails gets its error in its row and the others continue. A finished row is stored under
`<output_dir>/rows/<key>.json`, the key a hash of the model, the split and every setting that changes a number
(`row_key`): the same command again reuses it without loading the model; a failed row is tried again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinystories.core import ConfigError
from tinystories.core.paths import PULL_INFO_FILE, public_name
from tinystories.core.plots import plt, save_figure
from tinystories.evaluation.pipeline import EvalArguments, evaluate_model
from tinystories.evaluation.reports import model_output_dir
from tinystories.hub.conversion import convert_llama2c
from tinystories.models.llama2c import is_llama2c_source

logger = logging.getLogger(__name__)

LEADERBOARD_FILE, TABLE_FILE, FIGURE_FILE = "leaderboard.json", "leaderboard.md", "bpb_vs_params.png"
TINYSTORIES = ("1M", "3M", "8M", "28M", "33M", "1Layer-21M", "2Layers-33M")
SIMPLESTORIES = ("1.25M", "5M", "11M", "30M", "35M")
# The Hub spells one Instruct repo "Instuct" (github.com/TransformerLensOrg/TransformerLens lists it so).
INSTRUCT = [f"roneneldan/TinyStories-Instruct-{s}" for s in TINYSTORIES if s != "1Layer-21M"]
INSTRUCT.insert(5, "roneneldan/TinyStories-Instuct-1Layer-21M")
LLAMA2C_REPO = "karpathy/tinyllamas"
LLAMA2_TOKENIZER_FIX = (
    "needs Llama 2's 32,000-token tokenizer, which karpathy/tinyllamas does not hold: pass --llama2c_tokenizer "
    "<llama2.c's tokenizer.bin (github.com/karpathy/llama2.c) or Llama 2's sentencepiece tokenizer.model>"
)


@dataclass(frozen=True)
class Entry:
    """One model of the leaderboard: what to load (`source`), its family, and the tokenizer it needs, if any."""

    source: str
    family: str
    tokenizer: str | None = None  # a llama2.c checkpoint's tokenizer file (None: the one beside it)


PUBLIC_MODELS: tuple[Entry, ...] = (
    *[Entry(f"roneneldan/TinyStories-{s}", "TinyStories") for s in TINYSTORIES],
    *[Entry(name, "TinyStories-Instruct") for name in INSTRUCT],
    Entry(f"{LLAMA2C_REPO}/stories260K", "llama2.c"),
    *[Entry(f"{LLAMA2C_REPO}/stories{s}", "llama2.c", "llama2") for s in ("15M", "42M", "110M")],
    *[Entry(f"SimpleStories/SimpleStories-{s}", "SimpleStories V1") for s in SIMPLESTORIES],
    *[Entry(f"SimpleStories/SimpleStories-V2-{s}", "SimpleStories V2") for s in SIMPLESTORIES],
)


@dataclass
class LeaderboardArguments(EvalArguments):
    """--model: local runs (or more Hub ids) added to the public models; the split: --data, --split,
    --validation_fraction, --max_samples (the recipe pins the first N stories of the validation split)."""

    public_models: bool = field(
        default=True, metadata={"help": "score the public models (roneneldan, llama2.c, SimpleStories) too"}
    )
    llama2c_tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "llama2.c's tokenizer.bin (Llama 2's 32,000 tokens) for stories15M/42M/110M: a path or "
            "owner/repo/file on the Hub (without it their rows say what is missing)"
        },
    )


# ------------------------------------------------------------------------------------------- entries
def family_of(name: str) -> str:
    """The family of a model given by name: a public one's, a pulled folder's source's, else `local`."""
    for entry in PUBLIC_MODELS:
        if name == entry.source:
            return entry.family
    info = Path(name, PULL_INFO_FILE)
    if info.is_file():
        pulled = json.loads(info.read_text())
        if str(pulled.get("format", "")).startswith("llama2.c"):
            return "llama2.c"
        return family_of(pulled.get("repo_id") or "") if pulled.get("repo_id") else "local"
    return "local"


def leaderboard_entries(models: list[str], public: bool = True) -> list[Entry]:
    """The public models (when `public`), then each of `models` not among them, in order."""
    entries = list(PUBLIC_MODELS) if public else []
    for name in models:
        if all(name != e.source for e in entries):
            entries.append(Entry(name, family_of(name)))
    return entries


def _local_model(entry: Entry, args: LeaderboardArguments) -> str:
    """What `evaluate_model` loads: the entry itself, or a llama2.c checkpoint's converted folder."""
    if not is_llama2c_source(entry.source) or Path(entry.source).is_dir():
        return entry.source
    folder = Path(args.output_dir, "pulled", Path(entry.source).stem)
    if not (folder / "config.json").is_file():
        tokenizer = args.llama2c_tokenizer if entry.tokenizer == "llama2" else entry.tokenizer
        if entry.tokenizer == "llama2" and not tokenizer:
            raise ConfigError(f"{entry.source} {LLAMA2_TOKENIZER_FIX}")
        convert_llama2c(entry.source, tokenizer, str(folder))
    return str(folder)


# ------------------------------------------------------------------------------------------- rows
def split_record(args: LeaderboardArguments) -> dict[str, Any]:
    """The split every row is scored on, as `leaderboard.json` records it."""
    fraction = args.validation_fraction
    return {
        "data": public_name(args.data),
        "split": args.split,
        "validation_fraction": fraction,
        "seed": args.seed if fraction else None,
        "max_samples": args.max_samples,
        "text_column": args.text_column,
    }


def _weights_stamp(source: str) -> list:
    """A local model's weight files with size and modification time: a retrained folder gets a new key."""
    folder = Path(source)
    if not folder.is_dir():
        return []
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    return [[f.name, f.stat().st_size, int(f.stat().st_mtime)] for f in files]


def row_key(entry: Entry, args: LeaderboardArguments, judge_args=None) -> str:
    """A hash of what a row's numbers depend on: the model, the split, the scoring and sampling settings."""
    settings = {
        "model": entry.source,
        "weights": _weights_stamp(entry.source),
        "split": split_record(args),
        "max_length": args.max_length,
        "stride": args.stride,
        "precision": args.precision,
        "generate": args.generate,
        "prompts": [args.prompts, args.num_prompts, args.num_completions],
        "sampling": [args.max_new_tokens, args.temperature, args.top_p, args.top_k, args.seed],
        "judge": getattr(judge_args, "judge_model", None) if getattr(judge_args, "enabled", False) else None,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def make_row(entry: Entry, result: dict[str, Any]) -> dict[str, Any]:
    """One leaderboard row from an `eval_results.json`."""
    dark = (result.get("dark_stories") or {}).get("model") or {}
    return {
        "model": public_name(entry.source),
        "family": entry.family,
        "architecture": result.get("architecture"),
        "tokenizer": f"{result.get('tokenizer_type')} {result.get('tokenizer_size', 0):,}",
        "vocab_size": result.get("vocab_size"),
        "num_parameters": result.get("num_parameters"),
        "non_embedding_parameters": result.get("num_non_embedding_parameters"),
        "tied_head": result.get("tied_head"),
        "context": result.get("max_length"),
        "loss": result.get("loss"),
        "bits_per_byte": result.get("bits_per_byte"),
        "num_tokens": result.get("num_tokens"),
        "num_bytes": result.get("num_bytes"),
        "num_stories": result.get("num_stories"),
        "dark_story_rate": dark.get("rate"),
        "dark_story_ci95": dark.get("ci95"),
        "prompt_set": result.get("prompt_set"),
        "samples": result.get("samples", [])[:1],
        "judge": (result.get("judge") or {}).get("scores"),
    }


def score_entry(entry: Entry, texts, prompts, args: LeaderboardArguments, judge_args) -> dict[str, Any]:
    """The row of one model, or its error row (the others continue)."""
    start = time.perf_counter()
    try:
        name = _local_model(entry, args)
        out_dir = model_output_dir(name, str(Path(args.output_dir, "models")), True)
        out_dir.mkdir(parents=True, exist_ok=True)
        result = evaluate_model(name, texts, prompts, args, judge_args, out_dir)
    except Exception as err:  # a repo that cannot be had or read costs its row, never the board
        logger.error("%s failed: %s: %s", entry.source, type(err).__name__, err)
        message = str(err) if isinstance(err, ConfigError) else f"{type(err).__name__}: {err}"
        return {"model": public_name(entry.source), "family": entry.family, "error": message}
    row = make_row(entry, result)
    row["eval_results_file"] = str(out_dir / "eval_results.json")
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def read_row(rows_dir: Path, key: str) -> dict[str, Any] | None:
    """A finished row stored under `key` (None: none, or it failed)."""
    path = rows_dir / f"{key}.json"
    if not path.is_file():
        return None
    row = json.loads(path.read_text())
    return None if row.get("error") else row


def run_leaderboard(entries: list[Entry], load_texts, load_prompts, args, judge_args) -> dict[str, Any]:
    """Every entry's row (finished rows reused by key); the stories and prompts are loaded only when a row
    needs scoring. Writes `leaderboard.json`, `leaderboard.md` and `bpb_vs_params.png`; returns the board."""
    out = Path(args.output_dir)
    rows_dir = out / "rows"
    rows_dir.mkdir(parents=True, exist_ok=True)
    texts = prompts = None
    rows = []
    for entry in entries:
        key = row_key(entry, args, judge_args)
        row = read_row(rows_dir, key)
        if row is not None:
            logger.info("%s: reusing %s", entry.source, rows_dir / f"{key}.json")
        else:
            if texts is None:
                texts, prompts = load_texts(), load_prompts()
            row = {**score_entry(entry, texts, prompts, args, judge_args), "key": key}
            (rows_dir / f"{key}.json").write_text(json.dumps(row, indent=2) + "\n")
        rows.append(row)
    board = {"split": {**split_record(args), **_split_counts(rows)}, "rows": sort_rows(rows)}
    write_board(board, out)
    return board


def _split_counts(rows: list[dict]) -> dict[str, Any]:
    done = [r for r in rows if not r.get("error")]
    return {"num_stories": done[0]["num_stories"], "num_bytes": done[0]["num_bytes"]} if done else {}


def sort_rows(rows: list[dict]) -> list[dict]:
    """Best bits per byte first; failed rows last, in their order."""
    return sorted(rows, key=lambda r: (r.get("bits_per_byte") is None, r.get("bits_per_byte") or 0.0))


# ------------------------------------------------------------------------------------------- outputs
def _millions(n) -> str:
    return f"{n / 1e6:.2f}M" if isinstance(n, int | float) else "–"


def _number(value, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, int | float) else "–"


def leaderboard_table(board: dict[str, Any]) -> str:
    """`leaderboard.md`: the split, one line per model (best bits per byte first), a sample per model."""
    split = board["split"]
    where = f"`{split['data']}` [{split['split']}"
    where += (
        f", held-out fraction {split['validation_fraction']}]" if split.get("validation_fraction") else "]"
    )
    lines = [
        "# Tiny story models on one split",
        "",
        f"{where}: {split.get('num_stories', '–')} stories, {_number(split.get('num_bytes'), ',')} UTF-8 bytes"
        + (" (the first --max_samples)" if split.get("num_stories") == split.get("max_samples") else ""),
        "",
        "| model | family | architecture | tokenizer | params | non-emb. params | context | loss | bits/byte "
        "| dark stories | error |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in board["rows"]:
        error = " ".join(str(r.get("error") or "").split()).replace("|", "\\|")[:200]
        dark = r.get("dark_story_rate")
        cells = [
            f"`{r['model']}`",
            r.get("family", ""),
            r.get("architecture") or "–",
            r.get("tokenizer") or "–",
            _millions(r.get("num_parameters")),
            _millions(r.get("non_embedding_parameters")),
            _number(r.get("context"), "d"),
            _number(r.get("loss"), ".4f"),
            _number(r.get("bits_per_byte"), ".4f"),
            f"{dark:.0%}" if isinstance(dark, float) else "–",
            error,
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "## A sampled completion per model", ""]
    for r in board["rows"]:
        for sample in r.get("samples") or []:
            text = " ".join(f"{sample['prompt']} **{sample['completion']}**".split())
            lines.append(f"- `{r['model']}`: {text[:400]}")
    return "\n".join(lines) + "\n"


def plot_bpb_vs_params(rows: list[dict], path: Path) -> Path:
    """Bits per byte against non-embedding parameters (log axis), one marker per family."""
    markers = "osD^vP*Xh<>"
    fig, ax = plt.subplots(figsize=(8, 5))
    done = [r for r in rows if r.get("bits_per_byte") is not None and r.get("non_embedding_parameters")]
    for i, family in enumerate(dict.fromkeys(r["family"] for r in done)):
        pts = sorted(
            (r["non_embedding_parameters"], r["bits_per_byte"], r["model"])
            for r in done
            if r["family"] == family
        )
        ax.plot([p[0] for p in pts], [p[1] for p in pts], markers[i % len(markers)], ms=7, label=family)
        for x, y, name in pts:
            ax.annotate(
                name.rsplit("/", 1)[-1], (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points"
            )
    ax.set_xscale("log")
    ax.margins(x=0.2, y=0.1)  # room for the names
    ax.set_xlabel("non-embedding parameters")
    ax.set_ylabel("bits per byte (lower is better)")
    ax.set_title("held-out bits per byte against model size")
    ax.grid(alpha=0.3, which="both")
    if done:
        ax.legend()
    return save_figure(fig, path)


def write_board(board: dict[str, Any], out: Path) -> dict[str, Path]:
    """`leaderboard.json`, `leaderboard.md` and `bpb_vs_params.png` in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / LEADERBOARD_FILE).write_text(json.dumps(board, indent=2) + "\n", encoding="utf-8")
    (out / TABLE_FILE).write_text(leaderboard_table(board), encoding="utf-8")
    plot_bpb_vs_params(board["rows"], out / FIGURE_FILE)
    return {name: out / name for name in (LEADERBOARD_FILE, TABLE_FILE, FIGURE_FILE)}


__all__ = [
    "PUBLIC_MODELS",
    "Entry",
    "LeaderboardArguments",
    "leaderboard_entries",
    "leaderboard_table",
    "plot_bpb_vs_params",
    "row_key",
    "run_leaderboard",
]
