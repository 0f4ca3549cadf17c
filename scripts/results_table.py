"""Results as data: the tables of `docs/results/` and the README's results table, rendered from the JSON files in
`benchmarks/results/`, so a measured number lives in one place.

    python scripts/results_table.py           # rewrite every generated block from its JSON
    python scripts/results_table.py --check   # exit 1 when a block differs from its JSON (tests/test_docs.py)

A study's JSON holds `title`, `date`, `page`, `machine`, `tables` (each with `command`, `columns`, `rows`) and a
`headline` (a sentence whose `{0}`, `{1}` ... are cells of its tables). `time_to_quality.json` is what
`python -m benchmarks.time_to_quality` writes; its tables are computed from the evaluations it records.
The README block sits between `<!-- results:start -->` and `<!-- results:end -->`; a page's table between
`<!-- table:start <study> <n> -->` and `<!-- table:end -->`.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
PAGES = ROOT / "docs" / "results"
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"
TABLE_BLOCK = re.compile(r"(<!-- table:start (\w+) (\d+) -->\n)(.*?)(<!-- table:end -->)", re.S)

# The README's results table, in this order (one row per study).
STUDIES = [
    "quickstart",
    "time_to_quality",
    "cpu_pretraining",
    "words_following",
    "features_following",
    "moralvalue_vs_badending",
    "sweeps",
    "training_speed",
    "inference_speed",
    "browser_inference",
    "dedup_throughput",
]

TIME_TO_QUALITY = {
    "title": "Time to quality on 2 CPU cores",
    "date": "2026-12-07",
    "page": "docs/results/time-to-quality.md",
    "reference": "gpt-neo-adamw",  # its final bits per byte is the bar every row is timed against
    "marks": [1, 2, 3],
}


def _minus(text: str) -> str:
    return text.replace("-", "−")


def format_value(value, fmt: str | None = None) -> str:
    """One cell: a number in the column's format, an asked / not asked pair, text as it is, nothing for None."""
    if value is None:
        return ""
    if isinstance(value, dict) and "asked" in value:
        spec = fmt or ".2f"
        text = f"{value['asked']:{spec}} / {value['not_asked']:{spec}}"
        if value.get("difference") is not None:
            text += f" ({_minus(format(value['difference'], '+.2f'))})"
        return text
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value).replace("|", "\\|").replace("\n", " ")
    return _minus(format(value, fmt or ("," if isinstance(value, int) else "g")))


def render_table(table: dict) -> str:
    """A study table as Markdown; a row with `"recipe": true` is the recipe's (bold)."""
    columns = table["columns"]
    lines = [
        "| " + " | ".join(c["header"] for c in columns) + " |",
        "|" + "|".join("---:" if c.get("numeric") else "---" for c in columns) + "|",
    ]
    for row in table["rows"]:
        cells = [format_value(row.get(c["key"]), c.get("format")) for c in columns]
        if row.get("recipe"):
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _best_by(evaluations: list[dict], minutes: float) -> float | None:
    done = [e["bits_per_byte"] for e in evaluations if e["minutes"] <= minutes]
    return min(done) if done else None


def time_to_quality_study(data: dict) -> dict:
    """`time_to_quality.json` as a study: best held-out bits/byte by each minute, the end, the first time under the
    reference row's final value."""
    runs = data["runs"]
    bar = runs[TIME_TO_QUALITY["reference"]]["final_bits_per_byte"]
    rows = []
    for name, run in runs.items():
        evals = run["evaluations"]
        row = {"row": f"`{name}`", "steps": run["steps"]}
        for mark in TIME_TO_QUALITY["marks"]:
            row[f"m{mark}"] = _best_by(evals, mark)
        row["end"] = run["final_bits_per_byte"]
        row["end_minutes"] = evals[-1]["minutes"] if evals else run["train_minutes"]
        first = next((e["minutes"] for e in evals if e["bits_per_byte"] <= bar), None)
        row["first"] = first
        row["recipe"] = name == "quickstart"
        rows.append(row)
    columns = [
        {"key": "row", "header": "row (`--recipes`)"},
        {"key": "steps", "header": "steps", "numeric": True},
    ]
    columns += [
        {"key": f"m{m}", "header": f"{m} min", "format": ".3f", "numeric": True}
        for m in TIME_TO_QUALITY["marks"]
    ]
    columns += [
        {"key": "end", "header": "end of run", "format": ".3f", "numeric": True},
        {"key": "end_minutes", "header": "at minute", "format": ".2f", "numeric": True},
        {"key": "first", "header": f"first ≤ {bar:.3f} (minutes)", "format": ".2f", "numeric": True},
    ]
    quickstart = next(i for i, r in enumerate(rows) if r["recipe"])
    reference = list(runs).index(TIME_TO_QUALITY["reference"])
    return {
        **TIME_TO_QUALITY,
        "machine": data.get("measured", ""),
        "tables": [{"columns": columns, "rows": rows}],
        "headline": {
            "text": "the quickstart recipe: {0} held-out bits/byte after 600 steps; GPT-Neo + AdamW's final value "
            "reached in {1} min, not {2}",
            "values": [
                {"row": quickstart, "key": "end"},
                {"row": quickstart, "key": "first"},
                {"row": reference, "key": "first"},
            ],
        },
    }


def load_study(name: str) -> dict:
    data = json.loads((RESULTS / f"{name}.json").read_text())
    return time_to_quality_study(data) if name == "time_to_quality" else data


def headline(study: dict, link: str) -> str:
    """The study's headline sentence, each number a link to its page."""
    numbers = []
    for ref in study["headline"]["values"]:
        table = study["tables"][ref.get("table", 0)]
        column = next(c for c in table["columns"] if c["key"] == ref["key"])
        value = table["rows"][ref["row"]][ref["key"]]
        if "field" in ref:
            value = value[ref["field"]]
            fmt = "+.2f" if ref["field"] == "difference" else column.get("format")
        else:
            fmt = column.get("format")
        numbers.append(f"[{format_value(value, fmt)}]({link})")
    return study["headline"]["text"].format(*numbers)


def readme_block() -> str:
    lines = ["| study | headline | measured | data |", "|---|---|---|---|"]
    for name in STUDIES:
        study = load_study(name)
        page = study["page"]
        lines.append(
            f"| [{study['title']}]({page}) | {headline(study, page)} | {study['date']} | "
            f"[`{name}.json`](benchmarks/results/{name}.json) |"
        )
    return "\n".join(lines)


def _replace_readme(text: str) -> str:
    start, end = text.index(README_START) + len(README_START), text.index(README_END)
    return text[:start] + "\n" + readme_block() + "\n" + text[end:]


def _replace_tables(text: str) -> str:
    def table(m: re.Match) -> str:
        study = load_study(m.group(2))
        return m.group(1) + render_table(study["tables"][int(m.group(3))]) + "\n" + m.group(5)

    return TABLE_BLOCK.sub(table, text)


def rendered() -> dict[Path, tuple[str, str]]:
    """Every file with generated blocks: (its text, its text with the blocks rendered from the JSON)."""
    out = {}
    text = README.read_text()
    out[README] = (text, _replace_readme(text))
    for page in sorted(PAGES.glob("*.md")):
        text = page.read_text()
        out[page] = (text, _replace_tables(text))
    return out


def main(argv: list[str] | None = None) -> int:
    check = "--check" in (sys.argv[1:] if argv is None else argv)
    stale = []
    for path, (old, new) in rendered().items():
        if old != new:
            stale.append(str(path.relative_to(ROOT)))
            if not check:
                path.write_text(new)
    if stale:
        verb = "differ from" if check else "rewritten from"
        print(f"{', '.join(stale)}: generated blocks {verb} benchmarks/results/*.json", file=sys.stderr)
        if check:
            print("run: python scripts/results_table.py", file=sys.stderr)
    return 1 if check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
