"""`python -m benchmarks.time_to_quality`: held-out bits per byte against minutes, per pretraining recipe.

The question a CPU user asks: how good a model do I get in N minutes? Each recipe trains on the same real
stories with the same held-out 10% (seed 42, as `make quickstart` holds them out), in its own process,
for at most `--minutes` of training (`--max_minutes`), evaluated every `--eval_steps` steps on the
held-out stories. The Trainer's clock at each evaluation (evaluations included) gives the minutes.

Rows (the real recipe files; only data, batch shape, evaluation cadence and the time box are set):

* **quickstart**: `recipes/pretrain/quickstart.yaml` as it stands (top-10K trimmed GPT-Neo vocabulary, 4 layers
  × 64, 4 heads, Llama blocks, Muon at 0.04 + AdamW at 3e-3, cosine with 30 warmup steps, 600 steps of 16 × 256
  tokens);
* **gpt-neo-adamw**: the quickstart recipe before Llama blocks and Muon won this table (GPT-Neo blocks, AdamW
  at 3e-3, 1,000 steps);
* **gpt-neo-muon**, **llama-adamw**, **llama-muon**: the quickstart recipe with each block (`--architecture`)
  and optimizer (`--optim`; Muon on the hidden matrices, AdamW on embeddings and norms);
* **stock** / **stock-muon**: `recipes/pretrain/1M.yaml` (the released 1M shape: 8 layers × 64, 16 heads, the
  full 50,257 GPT-Neo vocabulary, the paper's lr 5e-4 constant), at the same 16 × 256 tokens per step.

A row may override recipe keys for a learning-rate scan: `--recipes "llama-muon@muon_learning_rate=0.01"`
(`name@key=value;key=value`); each such row is its own run and its own line in the table. A row already run with
the same command in `--output_dir` is reused (`--reuse false` reruns it), also under a longer time box when it
ended by its steps well inside both boxes.

Output: a table on stdout (best held-out bits/byte reached by each minute mark), and
`<output_dir>/time_to_quality.json` + `time_to_quality.png`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tinystories.core import REPO_ROOT, ConfigError
from tinystories.core.config import parse_args
from tinystories.core.paths import display_path
from tinystories.core.plots import plt, save_figure
from tinystories.data.loading import load_stories

DEFAULT_DATA = "../shared/data/tinystories/TinyStories-train.sample.txt"
DEFAULT_TOKENIZER_DIR = "../shared/data/tokenizer-gpt-neo"
BATCH = ["--per_device_train_batch_size", "16", "--block_size", "256", "--gradient_accumulation_steps", "1"]
QUICKSTART, STOCK = "recipes/pretrain/quickstart.yaml", "recipes/pretrain/1M.yaml"
NEO, LLAMA = ["--architecture", "gpt_neo"], ["--architecture", "llama"]
ADAMW, MUON = ["--optim", "adamw_torch"], ["--optim", "muon"]
STOCK_ARGS = [
    *BATCH,
    "--global_batch_size",
    "16",
    "--max_steps",
    "100000",
    "--preprocessing_num_workers",
    "1",
]
RECIPES = {
    "quickstart": (QUICKSTART, []),  # the recipe file as it stands
    # the quickstart's data, vocabulary, shape (4 x 64, 4 heads) and schedule, one block and optimizer each;
    # gpt-neo-adamw at 1,000 steps is the quickstart recipe before Llama blocks and Muon won this table
    "gpt-neo-adamw": (QUICKSTART, [*NEO, *ADAMW, "--max_steps", "1000"]),
    "gpt-neo-muon": (QUICKSTART, [*NEO, *MUON]),
    "llama-adamw": (QUICKSTART, [*LLAMA, *ADAMW]),
    "llama-muon": (QUICKSTART, [*LLAMA, *MUON]),
    "stock": (STOCK, STOCK_ARGS),
    "stock-muon": (STOCK, [*STOCK_ARGS, *MUON]),
}
MARKS = (1, 2, 3, 4, 5, 7.5, 10, 15, 20)


def parse_row(row: str) -> tuple[str, list[str]]:
    """`name` or `name@key=value;key=value` -> (recipe name, extra `--key value` flags)."""
    name, _, overrides = row.partition("@")
    flags = []
    for pair in filter(None, overrides.split(";")):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--recipes row {row!r}: overrides are key=value pairs separated by ';'")
        flags += [f"--{key.strip()}", value.strip()]
    return name.strip(), flags


@dataclass
class TimeToQualityArguments:
    data: str = field(
        default=DEFAULT_DATA, metadata={"help": "real stories (.txt, .jsonl, .parquet, Hub id)"}
    )
    tokenizer: str = field(
        default=DEFAULT_TOKENIZER_DIR, metadata={"help": "GPT-Neo tokenizer dir or Hub id"}
    )
    recipes: str = field(
        default="quickstart,gpt-neo-adamw,stock",
        metadata={
            "help": f"comma-separated rows of {', '.join(RECIPES)}; a row may add @key=value;key=value"
        },
    )
    minutes: float = field(default=10.0, metadata={"help": "training minutes per recipe (the time box)"})
    eval_steps: int = field(default=100, metadata={"help": "evaluate on the held-out stories every N steps"})
    output_dir: str = field(default="outputs/bench/time_to_quality")
    reuse: bool = field(
        default=True,
        metadata={
            "help": "reuse a row already run with the same command in output_dir (false: run every row)"
        },
    )


def hold_out(data: str, out: Path) -> tuple[Path, Path, int]:
    """(train parquet, held-out parquet, held-out stories): the quickstart's 10% split, seed 42."""
    splits = load_stories(data, validation_fraction=0.1, seed=42)
    train, held_out = out / "train.parquet", out / "held_out.parquet"
    splits["train"].to_parquet(str(train))
    splits["validation"].to_parquet(str(held_out))
    return train, held_out, len(splits["validation"])


def train_recipe(row: str, args: TimeToQualityArguments, train: Path, held_out: Path, out: Path) -> dict:
    """Run one row (a recipe and its overrides) in its own process; its evaluations as (step, minutes,
    held-out bits/byte)."""
    name, overrides = parse_row(row)
    recipe, extra = RECIPES[name]
    extra = [*extra, *overrides]
    run_dir = out / row.replace("@", "_").replace(";", "_").replace("=", "-")
    argv = [
        sys.executable, "-m", "tinystories.cli", "train", "--config", str(REPO_ROOT / recipe),
        "--data", str(train), "--eval_data", str(held_out), "--text_column", "text",
        "--tokenizer", args.tokenizer, "--output_dir", str(run_dir), "--overwrite_output_dir", "true",
        "--eval_strategy", "steps", "--eval_steps", str(args.eval_steps), "--logging_steps", str(args.eval_steps),
        "--save_strategy", "no", "--report_to", "none", "--max_minutes", str(args.minutes),
        "--dataloader_num_workers", "0", *extra,
    ]  # fmt: skip
    done = run_dir / "time_to_quality_run.json"  # the command a finished row ran, and its wall time
    command = argv[1:]
    if args.reuse and same_run(done, command):
        wall = json.loads(done.read_text())["wall_seconds"]  # the same row, already measured: reused
        print(f"{row}: reusing the finished run in {display_path(run_dir)}", flush=True)
    else:
        started = time.perf_counter()
        subprocess.run(argv, check=True)
        wall = time.perf_counter() - started
        done.write_text(json.dumps({"command": command, "wall_seconds": wall}) + "\n")
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    final = json.loads((run_dir / "all_results.json").read_text())
    clock = {h["step"]: float(h["train_runtime"]) for h in history if "train_runtime" in h and "loss" in h}
    last_step = max((h["step"] for h in history), default=0)
    clock.setdefault(last_step, float(final.get("train_runtime", 0.0)))  # the stop step: the run's clock
    evals, seen = [], set()
    for h in history:
        if "eval_bits_per_byte" in h and h["step"] in clock and h["step"] not in seen:
            seen.add(h["step"])
            minutes = round(clock[h["step"]] / 60, 2)
            evals.append({"step": h["step"], "minutes": minutes, "bits_per_byte": h["eval_bits_per_byte"]})
    return {
        "recipe": recipe,
        "args": extra,
        "evaluations": evals,
        "final_bits_per_byte": final.get("eval_bits_per_byte"),
        "steps": final.get("global_step") or (evals[-1]["step"] if evals else None),
        "train_minutes": round(float(final.get("train_runtime", 0.0)) / 60, 2),
        "process_minutes": round(wall / 60, 2),  # start-up, data, training, save and card
    }


def _split_box(command: list[str]) -> tuple[list[str], float]:
    """(a `tinystories train` command line without its `--max_minutes` flags, its time box: the last one)."""
    boxes = [i for i, a in enumerate(command) if a == "--max_minutes"]
    rest = [a for i, a in enumerate(command) if i not in boxes and i - 1 not in boxes]
    return rest, float(command[boxes[-1] + 1])


def same_run(done: Path, command: list[str]) -> bool:
    """Whether the finished run recorded in `done` is what `command` would run: the same command, or one that
    differs only in its time box when the run ended by its steps well inside both boxes."""
    if not done.is_file():
        return False
    before = json.loads(done.read_text())["command"]
    if before == command:
        return True
    (rest, box), (rest_before, box_before) = _split_box(command), _split_box(before)
    results = done.parent / "all_results.json"
    if rest != rest_before or not results.is_file():
        return False
    minutes = float(json.loads(results.read_text()).get("train_runtime", 1e9)) / 60
    return minutes < min(box, box_before) - 0.1  # not stopped by either box


def best_by(evals: list[dict], minutes: float) -> float | None:
    """The best held-out bits/byte of the evaluations done within `minutes`."""
    done = [e["bits_per_byte"] for e in evals if e["minutes"] <= minutes]
    return min(done) if done else None


def format_table(runs: dict[str, dict], minutes: float) -> str:
    """Best held-out bits/byte by each minute mark, then where each run ended."""
    names = list(runs)
    marks = [m for m in MARKS if m <= minutes] + ([minutes] if minutes not in MARKS else [])
    lines = ["| minutes of training | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    for mark in marks:
        cells = [best_by(runs[n]["evaluations"], mark) for n in names]
        lines.append(f"| {mark:g} | " + " | ".join("—" if c is None else f"{c:.3f}" for c in cells) + " |")
    ends = [runs[n]["evaluations"][-1] if runs[n]["evaluations"] else None for n in names]
    cells = [
        "—" if e is None else f"{e['bits_per_byte']:.3f} (step {e['step']}, {e['minutes']:g} min)"
        for e in ends
    ]
    lines.append("| end of run | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs: dict[str, dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, run in runs.items():
        evals = run["evaluations"]
        ax.plot([e["minutes"] for e in evals], [e["bits_per_byte"] for e in evals], marker="o", label=name)
    ax.set_xlabel("minutes of training (2 CPU cores)")
    ax.set_ylabel("held-out bits per byte")
    ax.set_title("time to quality")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    (args,) = parse_args([TimeToQualityArguments], argv)
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    unknown = [n for n in names if parse_row(n)[0] not in RECIPES]
    if unknown or not names:
        raise ConfigError(f"--recipes {args.recipes!r}: use a comma-separated subset of {', '.join(RECIPES)}")
    if REPO_ROOT is None:
        raise ConfigError("run the time-to-quality benchmark from a checkout (it reads recipes/pretrain/)")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, held_out, n_held_out = hold_out(args.data, out)
    runs = {name: train_recipe(name, args, train, held_out, out) for name in names}
    result = {
        "data": display_path(args.data),
        "held_out_stories": n_held_out,
        "minutes": args.minutes,
        "eval_steps": args.eval_steps,
        "runs": runs,
    }
    (out / "time_to_quality.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(runs, out / "time_to_quality.png")
    print(f"\nheld-out bits per byte ({n_held_out} stories never trained on), best reached by each mark:\n")
    print(format_table(runs, args.minutes))
    for name, run in runs.items():
        print(
            f"{name}: {run['steps']} steps, {run['train_minutes']} min training, {run['process_minutes']} min total"
        )
    print(f"\nwritten: {out / 'time_to_quality.json'}, {out / 'time_to_quality.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
