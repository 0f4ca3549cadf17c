"""Power-law fits of a sweep's eval loss: against non-embedding parameters N, and against compute C = 6·N·D.

Two forms per axis: `loss = a·x^(−alpha)` (least squares on log loss vs log x, from 2 points) and the
saturating `loss = c + a·x^(−alpha)` (nonlinear least squares, from 4 points; c is the irreducible loss).
The parameter fit uses the runs of the largest token budget; the compute fit (only when the grid varies the
token budget) uses the compute frontier: the runs with a lower loss than every run of less compute.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import curve_fit

MIN_SATURATING_POINTS = 4


def _r2(y: np.ndarray, predicted: np.ndarray) -> float:
    total = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - predicted) ** 2).sum()) / total if total > 0 else 1.0


def fit_power_law(x, y) -> dict[str, Any] | None:
    """`loss = a·x^(−alpha)` in log-log space; None below two distinct positive x."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = (x > 0) & (y > 0) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(np.unique(x)) < 2:
        return None
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    a, alpha = math.exp(intercept), -slope
    return {
        "form": "loss = a * x^-alpha",
        "a": a,
        "alpha": alpha,
        "r2": _r2(np.log(y), np.log(a) - alpha * np.log(x)),
        "num_points": len(x),
    }


def _saturating(log_x, c, log_a, alpha):
    return c + np.exp(log_a - alpha * log_x)


def fit_saturating_power_law(x, y) -> dict[str, Any] | None:
    """`loss = c + a·x^(−alpha)` with 0 ≤ c < min(loss); None below 4 points or when it does not converge."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = (x > 0) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(np.unique(x)) < MIN_SATURATING_POINTS:
        return None
    start = fit_power_law(x, y) or {"a": float(y.max()), "alpha": 0.1}
    p0 = (0.5 * float(y.min()), math.log(start["a"]), max(start["alpha"], 1e-3))
    bounds = ([0.0, -50.0, 0.0], [float(y.min()), 50.0, 5.0])
    try:
        (c, log_a, alpha), _ = curve_fit(_saturating, np.log(x), y, p0=p0, bounds=bounds, maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    predicted = _saturating(np.log(x), c, log_a, alpha)
    return {
        "form": "loss = c + a * x^-alpha",
        "c": float(c),
        "a": math.exp(log_a),
        "alpha": float(alpha),
        "r2": _r2(y, predicted),
        "num_points": len(x),
    }


def describe(fit: dict[str, Any] | None, x: str = "x", y: str = "loss") -> str:
    """The preferred law of a `fit_both` result (saturating when it converged) as text, `y = ...`."""
    law = (fit or {}).get("saturating") or (fit or {}).get("power_law")
    if not law:
        return "—"
    offset = f"{law['c']:.3f} + " if "c" in law else ""
    return f"{y} = {offset}{law['a']:.4g} · {x}^{-law['alpha']:.4f} (R² {law['r2']:.3f}, {law['num_points']} points)"


def fit_both(x, y) -> dict[str, Any]:
    return {"power_law": fit_power_law(x, y), "saturating": fit_saturating_power_law(x, y)}


def compute_frontier(runs: list[dict]) -> list[dict]:
    """The runs no run of less (or equal) compute beats, in order of compute."""
    frontier, best = [], math.inf
    for run in sorted(runs, key=lambda r: (r["compute"], r["eval_loss"])):
        if run["eval_loss"] < best:
            frontier.append(run)
            best = run["eval_loss"]
    return frontier


def architecture_of(run: dict) -> str:
    return run.get("architecture") or "gpt_neo"  # records from before the architecture axis are GPT-Neo


def fit_architectures(done: list[dict]) -> dict[str, Any]:
    """Per architecture, at the largest budget: loss and bits per byte vs non-embedding parameters."""
    out = {}
    for arch in dict.fromkeys(architecture_of(r) for r in done):
        runs = [r for r in done if architecture_of(r) == arch]
        budget = max(r["train_tokens"] for r in runs)
        largest = [r for r in runs if r["train_tokens"] == budget]
        params = [r["non_embedding_params"] for r in largest]
        out[arch] = {
            "train_tokens": budget,
            "loss": {"x": "non_embedding_params", **fit_both(params, [r["eval_loss"] for r in largest])},
            "bits_per_byte": {
                "x": "non_embedding_params",
                **fit_both(params, [r["bits_per_byte"] for r in largest]),
            },
        }
    return out


def fit_runs(runs: list[dict]) -> dict[str, Any]:
    """The sweep's `fit`: loss vs non-embedding parameters (largest budget), and vs compute (frontier), over
    the first architecture's runs; with several architectures also `by_architecture` (`fit_architectures`)."""
    done = [r for r in runs if r.get("eval_loss") is not None and math.isfinite(r["eval_loss"])]
    if not done:
        return {}
    architectures = list(dict.fromkeys(architecture_of(r) for r in done))
    by_architecture = fit_architectures(done) if len(architectures) > 1 else None
    done = [r for r in done if architecture_of(r) == architectures[0]]
    budget = max(r["train_tokens"] for r in done)
    largest = [r for r in done if r["train_tokens"] == budget]
    fit: dict[str, Any] = {
        "params": {
            "x": "non_embedding_params",
            "train_tokens": budget,
            **fit_both([r["non_embedding_params"] for r in largest], [r["eval_loss"] for r in largest]),
        }
    }
    if len({r["train_tokens"] for r in done}) > 1:
        frontier = compute_frontier(done)
        fit["compute"] = {
            "x": "compute (6 * non_embedding_params * train_tokens, FLOPs)",
            "frontier": [r["name"] for r in frontier],
            **fit_both([r["compute"] for r in frontier], [r["eval_loss"] for r in frontier]),
        }
    if by_architecture:
        fit["by_architecture"] = by_architecture
    return fit
