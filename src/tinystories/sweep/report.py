"""What `tinystories sweep` writes and prints: `sweep_results.json` ({"runs", "fit"}) and the runs table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tinystories.evaluation.judge import CATEGORIES as JUDGE_CATEGORIES
from tinystories.sweep.fit import describe

RESULTS_FILE = "sweep_results.json"


def write_results(
    out_dir: Path, runs: list[dict], fit: dict, figures: list[str], eval_data: dict[str, Any]
) -> Path:
    path = out_dir / RESULTS_FILE
    payload = {"runs": runs, "fit": fit, "eval_data": eval_data, "figures": figures}
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def runs_table(runs: list[dict]) -> str:
    judged = any(r.get("judge") for r in runs)
    header = ["cell", "hidden", "layers", "non-emb params", "tokens", "eval loss", "bits/byte", "train s"]
    header += list(JUDGE_CATEGORIES) if judged else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in runs:
        cells = [
            r["name"],
            str(r["hidden_size"]),
            str(r["num_layers"]),
            f"{r['non_embedding_params']:,}",
            f"{r['train_tokens']:,}",
            f"{r['eval_loss']:.4f}",
            f"{r['bits_per_byte']:.4f}",
            f"{r['train_wall_seconds']:.0f}" if r.get("train_wall_seconds") is not None else "—",
        ]
        if judged:
            scores = r.get("judge") or {}
            cells += [f"{scores[c]:.2f}" if scores.get(c) is not None else "—" for c in JUDGE_CATEGORIES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_table(runs: list[dict], fit: dict) -> None:
    print()
    print(runs_table(runs))
    print(f"\nfit vs non-embedding parameters: {describe(fit.get('params'), 'N')}")
    if "compute" in fit:
        print(f"fit vs compute (frontier): {describe(fit['compute'], 'C')}")
    for arch, arch_fit in (fit.get("by_architecture") or {}).items():
        print(
            f"{arch}: {describe(arch_fit['loss'], 'N')}; {describe(arch_fit['bits_per_byte'], 'N', 'bits/byte')}"
        )
