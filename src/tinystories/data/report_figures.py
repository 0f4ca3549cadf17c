"""Figures of `data_report.json` (PNG): instructions followed, story lengths, vocabulary and openings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tinystories.core.plots import plt, save_figure
from tinystories.data.features import FEATURES


def _bars(ax, labels: Sequence[str], series: dict[str, list[float | None]], ylabel: str) -> None:
    width = 0.8 / max(1, len(series))
    x = np.arange(len(labels))
    for k, (name, values) in enumerate(series.items()):
        heights = [np.nan if v is None else v for v in values]
        ax.bar(x + (k - (len(series) - 1) / 2) * width, heights, width, label=name)
    ax.set_xticks(x, labels, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)


def instructions_figure(rows: list[dict[str, Any]], path: Path) -> Path:
    """Share of stories using all three words, and each feature's presence (requested / not requested)."""
    labels = ["all 3 words"]
    for feature in FEATURES:
        labels += [f"{feature} asked", f"{feature} not asked"]
    series = {}
    for row in rows:
        values = [row.get("words_all_used")]
        for feature in FEATURES:
            f = row["features"][feature]
            values += [f.get("present_when_requested"), f.get("present_when_not_requested", f.get("present"))]
        series[row["name"]] = values
    fig, ax = plt.subplots(figsize=(9, 4.5))
    _bars(ax, labels, series, "share of stories")
    ax.set_ylim(0, 1)
    ax.set_title("instructions followed (no request recorded: overall presence under 'not asked')")
    return save_figure(fig, path)


def lengths_figure(rows: list[dict[str, Any]], raw: dict[str, dict[str, Any]], path: Path) -> Path:
    """Histogram of story lengths in words, one outline per input."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    every = [w for r in rows for w in raw[r["name"]]["words"]]
    bins = np.linspace(0, max(every) if every else 1, 40)
    for row in rows:
        ax.hist(
            raw[row["name"]]["words"], bins=bins, histtype="step", density=True, lw=1.5, label=row["name"]
        )
    ax.set_xlabel("words per story")
    ax.set_ylabel("density")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def quality_figure(rows: list[dict[str, Any]], path: Path) -> Path:
    """Openings, duplicates and words outside the child vocabulary, side by side."""
    labels = ["'Once upon a time'", "distinct first sentences", "exact duplicates", "near duplicates"]
    series = {
        r["name"]: [
            r["openings"]["once_upon_a_time"],
            r["openings"]["distinct_first_sentences"],
            (r.get("duplicates") or {}).get("exact_share"),
            (r.get("duplicates") or {}).get("near_share"),
        ]
        for r in rows
    }
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [3, 1]})
    _bars(left, labels, series, "share of stories")
    left.set_ylim(0, 1)
    names = [r["name"] for r in rows]
    right.bar(names, [r["out_of_vocabulary"]["mean_per_story"] or 0 for r in rows], color="tab:gray")
    right.set_ylabel("words outside the child vocabulary per story")
    right.tick_params(axis="x", rotation=20)
    right.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def save_figures(rows: list[dict[str, Any]], raw: dict[str, dict[str, Any]], output_dir: Path) -> list[Path]:
    return [
        instructions_figure(rows, output_dir / "instructions.png"),
        lengths_figure(rows, raw, output_dir / "lengths.png"),
        quality_figure(rows, output_dir / "quality.png"),
    ]
