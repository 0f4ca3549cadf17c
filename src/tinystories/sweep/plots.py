"""The figures of `tinystories sweep` (PNG next to `sweep_results.json`; the Agg backend is set by `plots`)."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
from matplotlib.ticker import FuncFormatter

from tinystories.core.plots import plt, save_figure
from tinystories.evaluation.judge import CATEGORIES as JUDGE_CATEGORIES
from tinystories.sweep.fit import architecture_of, describe


def _fit_line(ax, fit: dict | None, xs: list[float], x: str = "N") -> None:
    law = (fit or {}).get("saturating") or (fit or {}).get("power_law")
    if not law or not xs:
        return
    grid = np.geomspace(min(xs), max(xs), 50)
    ax.plot(grid, law.get("c", 0.0) + law["a"] * grid ** (-law["alpha"]), "k--", lw=1, label=describe(fit, x))


def _log_axes(ax) -> None:
    """Log-log axes whose loss ticks read as plain numbers (losses span less than a decade)."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:.3g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.grid(alpha=0.3, which="both")


def _lines(ax, runs: list[dict], group: str, label: str) -> None:
    for value in sorted({r[group] for r in runs}):
        pts = sorted((r["non_embedding_params"], r["eval_loss"]) for r in runs if r[group] == value)
        ax.plot(*zip(*pts, strict=True), "o-", label=f"{label} {value}")


def _first_architecture(runs: list[dict]) -> list[dict]:
    """The runs of the first architecture: the width/depth figures and `fit` are about one architecture."""
    first = architecture_of(runs[0]) if runs else None
    return [r for r in runs if architecture_of(r) == first]


def plot_loss_vs_params(runs: list[dict], fit: dict, path: Path) -> Path:
    """Eval loss vs non-embedding parameters (log-log): one line per depth, and one line per width."""
    runs = _first_architecture(runs)
    budget = fit.get("params", {}).get("train_tokens", max(r["train_tokens"] for r in runs))
    runs = [r for r in runs if r["train_tokens"] == budget and r.get("eval_loss") is not None]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, group, label, title in (
        (axes[0], "num_layers", "layers", "one line per depth (width varies)"),
        (axes[1], "hidden_size", "hidden", "one line per width (depth varies)"),
    ):
        _lines(ax, runs, group, label)
        _fit_line(ax, fit.get("params"), [r["non_embedding_params"] for r in runs])
        _log_axes(ax)
        ax.set_xlabel("non-embedding parameters")
        ax.set_title(title)
        ax.legend(fontsize=7)
    axes[0].set_ylabel(f"eval loss (nats/token), {budget:,} training tokens")
    save_figure(fig, path, dpi=110)
    return path


def plot_loss_vs_compute(runs: list[dict], fit: dict, path: Path) -> Path:
    """Eval loss vs training compute (6·N·D, log-log) for every run, with the frontier fit."""
    runs = _first_architecture(runs)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for n in sorted({r["non_embedding_params"] for r in runs}):
        pts = sorted((r["compute"], r["eval_loss"]) for r in runs if r["non_embedding_params"] == n)
        ax.plot(*zip(*pts, strict=True), "o-", label=f"N = {n:,}", alpha=0.8)
    _fit_line(ax, fit.get("compute"), [r["compute"] for r in runs], "C")
    _log_axes(ax)
    ax.set_xlabel("compute (6 · non-embedding params · tokens, FLOPs)")
    ax.set_ylabel("eval loss (nats/token)")
    ax.legend(fontsize=7)
    save_figure(fig, path, dpi=110)
    return path


def plot_architectures(runs: list[dict], fit: dict, path: Path) -> Path:
    """Eval loss and bits per byte vs non-embedding parameters, one colour per architecture, each with its
    fit (`fit["by_architecture"]`, the largest budget of each)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for arch, arch_fit in fit["by_architecture"].items():
        largest = [
            r for r in runs if architecture_of(r) == arch and r["train_tokens"] == arch_fit["train_tokens"]
        ]
        for ax, key in ((axes[0], "loss"), (axes[1], "bits_per_byte")):
            metric = "eval_loss" if key == "loss" else key
            pts = sorted((r["non_embedding_params"], r[metric]) for r in largest if r.get(metric) is not None)
            if not pts:
                continue
            (line,) = ax.plot(*zip(*pts, strict=True), "o", label=arch, alpha=0.8)
            law = arch_fit[key].get("saturating") or arch_fit[key].get("power_law")
            if law:
                grid = np.geomspace(pts[0][0], pts[-1][0], 50)
                curve = law.get("c", 0.0) + law["a"] * grid ** (-law["alpha"])
                ax.plot(
                    grid,
                    curve,
                    "--",
                    color=line.get_color(),
                    lw=1,
                    label=f"{arch}: {describe(arch_fit[key], 'N', 'loss' if key == 'loss' else 'bits/byte')}",
                )
    for ax, label in ((axes[0], "eval loss (nats/token)"), (axes[1], "bits per byte")):
        _log_axes(ax)
        ax.set_xlabel("non-embedding parameters")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    save_figure(fig, path, dpi=110)
    return path


def _category_means(runs: list[dict], axis: str, category: str) -> list[tuple[int, float]]:
    out = []
    for value in sorted({r[axis] for r in runs}):
        scores = [
            r["judge"][category] for r in runs if r[axis] == value and r["judge"].get(category) is not None
        ]
        if scores:
            out.append((value, statistics.fmean(scores)))
    return out


def plot_judge(runs: list[dict], path: Path) -> Path | None:
    """Judge scores per category vs width (mean over depths) and vs depth (mean over widths)."""
    judged = [r for r in runs if r.get("judge")]
    if not judged:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, axis, label in ((axes[0], "hidden_size", "hidden size"), (axes[1], "num_layers", "layers")):
        for category in JUDGE_CATEGORIES:
            pts = _category_means(judged, axis, category)
            if pts:
                ax.plot(*zip(*pts, strict=True), "o-", label=category)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("judge score (1-10), mean over the other axis")
    save_figure(fig, path, dpi=110)
    return path
