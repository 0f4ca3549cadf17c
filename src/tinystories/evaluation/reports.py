"""Where `tinystories eval` writes, and the tables it prints: result files, JSONL rows, the comparison."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

EVAL_RESULTS_FILE = "eval_results.json"
COMPARISON_KEYS = (
    "model",
    "num_parameters",
    "max_length",
    "num_tokens",
    "num_bytes",
    "loss",
    "perplexity",
    "bits_per_byte",
    "judge",
    "data",
    "split",
    "eval_results_file",
    "error",
)
ERROR_CELL_CHARS = 200  # the table's error cell; comparison.json keeps the whole message


def model_output_dir(model: str, output_dir: str | None, multiple: bool) -> Path:
    """The model dir itself, or `outputs/eval/<org>__<name>/` for a Hub id (or under --output_dir)."""
    safe = model.strip("/").replace("/", "__") if not Path(model).is_dir() else Path(model).resolve().name
    if output_dir:
        return Path(output_dir) / safe if multiple else Path(output_dir)
    if Path(model).is_dir():
        return Path(model)
    return Path("outputs") / "eval" / safe


def read_results(out_dir: Path) -> dict[str, Any]:
    path = out_dir / EVAL_RESULTS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def write_results(out_dir: Path, results: dict[str, Any]) -> Path:
    path = out_dir / EVAL_RESULTS_FILE
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _judge_cells(judge: dict[str, Any], categories: list[str]) -> list[str]:
    cells = []
    for c in categories:
        stats = judge.get(c) or {}
        if stats.get("mean") is not None and stats.get("ci95"):
            cells.append(f"{stats['mean']:.2f} ± {(stats['ci95'][1] - stats['ci95'][0]) / 2:.2f}")
        else:
            cells.append("–")
    return cells


def _error_cell(error: Any) -> str:
    """A failed model's error on one table line: no pipes or newlines, cut to ERROR_CELL_CHARS."""
    text = " ".join(str(error or "").split()).replace("|", "\\|")
    return text if len(text) <= ERROR_CELL_CHARS else text[: ERROR_CELL_CHARS - 1] + "…"


def comparison_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of several models' results (loss, bits per byte, judge means ± CI half-width).

    A model that failed (a row with `error`) keeps its line: dashes for the numbers, its error in the last column.
    """
    cats: list[str] = []
    for r in rows:
        cats += [c for c in (r.get("judge") or {}).get("scores", {}) if c not in cats]
    extra = ["error"] if any(r.get("error") for r in rows) else []
    head = ["model", "params", "context", "tokens", "loss", "ppl", "bits/byte", *cats, *extra]
    align = ["---"] + ["---:"] * (len(head) - 1 - len(extra)) + ["---"] * len(extra)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for r in rows:

        def num(key, fmt, r=r):
            return format(r[key], fmt) if isinstance(r.get(key), int | float) else "–"

        cells = [
            f"`{r['model']}`",
            f"{r['num_parameters'] / 1e6:.2f}M" if r.get("num_parameters") else "–",
            str(r.get("max_length", "–")),
            num("num_tokens", ","),
            num("loss", ".4f"),
            num("perplexity", ".3f"),
            num("bits_per_byte", ".4f"),
            *_judge_cells((r.get("judge") or {}).get("scores", {}), cats),
            *[_error_cell(r.get("error")) or "–" for _ in extra],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_comparison(rows: list[dict[str, Any]], comparison_dir: str | Path, table: str) -> Path:
    """`comparison.md` (the table) and `comparison.json` (the key numbers of every model)."""
    comp = Path(comparison_dir)
    comp.mkdir(parents=True, exist_ok=True)
    (comp / "comparison.md").write_text(table + "\n", encoding="utf-8")
    (comp / "comparison.json").write_text(
        json.dumps([{k: r.get(k) for k in COMPARISON_KEYS} for r in rows], indent=2) + "\n"
    )
    return comp / "comparison.md"
