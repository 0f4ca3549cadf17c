"""Where `tinystories analyze` writes, and the short `analysis.md` it writes next to `analysis.json`."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

ANALYSIS_FILE = "analysis.json"
SUMMARY_FILE = "analysis.md"


def analysis_output_dir(model: str, output_dir: str | None) -> Path:
    """--output_dir, else `<model dir>/analysis`, else `outputs/analysis/<org>__<name>` for a Hub id."""
    if output_dir:
        return Path(output_dir)
    if Path(model).expanduser().is_dir():
        return Path(model).expanduser() / "analysis"
    return Path("outputs") / "analysis" / model.strip("/").replace("/", "__")


def _tokens(rows: list[dict], key: str = "token") -> str:
    return ", ".join(f"`{r[key].strip() or repr(r[key])}`" for r in rows)


def _heads_section(result: dict[str, Any]) -> list[str]:
    heads = result["heads"]
    kinds = Counter(h["kind"] for h in heads)
    lines = [
        "## Attention heads",
        "",
        f"{len(heads)} heads: {kinds['local']} local, {kinds['mixed']} mixed, {kinds['global']} global "
        f"({result['definitions']['kind']}).",
        "",
        "| layer | head | mean distance | × uniform | entropy | share ≤ 8 tokens | kind | top attended (global) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for h in heads:
        top = _tokens(h.get("top_attended", [])[:4])
        lines.append(
            f"| {h['layer']} | {h['head']} | {h['mean_attention_distance']:.2f} | {h['distance_vs_uniform']:.2f} "
            f"| {h['attention_entropy']:.2f} "
            f"| {h['local_attention_share']:.2f} | {h['kind']} | {top} |"
        )
    copying = result.get("in_context_copying")
    if copying:
        lines += [
            "",
            f"In-context copying (a random token sequence shown twice): loss {copying['first_copy_loss']:.2f} nats on "
            f"the first copy, {copying['second_copy_loss']:.2f} on the repeat (score {copying['copying_score']:.2f}; "
            "near 0: no induction heads yet).",
        ]
    return lines


def _neurons_section(result: dict[str, Any]) -> list[str]:
    summary, control = result["neuron_summary"], result.get("neuron_summary_random_init")
    versus = f" vs **{control['clear_role_share']:.1%}** in a random initialisation" if control else ""
    lines = [
        "## MLP neurons",
        "",
        f"Neurons with a clear role ({result['definitions']['role']}): **{summary['clear_role_share']:.1%}** "
        f"of {summary['num_neurons']}{versus}.",
        "",
        "| layer | neuron | selectivity | role | top tokens |",
        "|---|---|---|---|---|",
    ]
    for n in result["neurons"]:
        lines.append(
            f"| {n['layer']} | {n['neuron']} | {n['selectivity']:.2f} | {n['role'] or '—'} "
            f"| {_tokens(n['top_tokens'])} |"
        )
    return lines


def render_summary(result: dict[str, Any]) -> str:
    lines = [
        f"# Analysis of {result['model']}",
        "",
        f"{result['num_stories']} stories of {result['data']} ({result['num_tokens']:,} tokens, EOS first, "
        f"cut to {result['context']} tokens).",
        "",
        *_heads_section(result),
        "",
        *_neurons_section(result),
        "",
        "Figures: " + ", ".join(f"`{f}`" for f in result["figures"]),
        "",
    ]
    return "\n".join(lines)


def write_analysis(out_dir: Path, result: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ANALYSIS_FILE).write_text(
        json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out_dir / SUMMARY_FILE).write_text(render_summary(result), encoding="utf-8")
    return out_dir / ANALYSIS_FILE
