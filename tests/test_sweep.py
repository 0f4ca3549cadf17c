"""`tinystories sweep`: power-law fits on synthetic points, the grid, and a tiny sweep whose re-run skips its cells."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tinystories.core import ConfigError
from tinystories.models.sizes import non_embedding_params
from tinystories.stages import sweep
from tinystories.stages import train as pretrain
from tinystories.sweep.fit import compute_frontier, fit_power_law, fit_runs, fit_saturating_power_law
from tinystories.sweep.grid import build_grid, override_flags


def test_fit_recovers_a_known_power_law():
    n = np.geomspace(1e4, 1e8, 9)
    pure = fit_power_law(n, 7.5 * n**-0.08)
    assert pure["a"] == pytest.approx(7.5, rel=1e-9) and pure["alpha"] == pytest.approx(0.08, rel=1e-9)
    assert pure["r2"] == pytest.approx(1.0)
    saturating = fit_saturating_power_law(n, 1.2 + 40.0 * n**-0.3)
    assert saturating["c"] == pytest.approx(1.2, rel=1e-3)
    assert saturating["a"] == pytest.approx(40.0, rel=1e-2)
    assert saturating["alpha"] == pytest.approx(0.3, rel=1e-3)
    assert fit_power_law([10, 10], [1.0, 2.0]) is None and fit_saturating_power_law(n[:3], n[:3]) is None


def test_fit_against_compute_uses_the_frontier():
    runs = [
        {
            "name": f"r{i}",
            "non_embedding_params": n,
            "train_tokens": d,
            "compute": 6 * n * d,
            "eval_loss": loss,
        }
        for i, (n, d, loss) in enumerate([(1e4, 1e6, 3.0), (1e4, 4e6, 2.6), (1e5, 1e6, 2.7), (1e5, 4e6, 2.2)])
    ]
    assert [r["name"] for r in compute_frontier(runs)] == [
        "r0",
        "r1",
        "r3",
    ]  # r2: more compute than r1, worse
    fit = fit_runs(runs)
    assert fit["params"]["train_tokens"] == 4e6 and fit["params"]["power_law"]["num_points"] == 2
    assert fit["compute"]["frontier"] == ["r0", "r1", "r3"]


def test_grid_and_overrides():
    cells = build_grid([32, 64], [1, 2], [30], [], per_step=2048)
    assert [c.name for c in cells] == ["h32-l1-s30", "h64-l1-s30", "h32-l2-s30", "h64-l2-s30"]
    budget = build_grid([32], [1], [30], [100_000, 10_000], per_step=2048)
    assert [(c.max_steps, c.name) for c in budget] == [(49, "h32-l1-t100000"), (5, "h32-l1-t10000")]
    assert override_flags({"train_tokenizer": True, "eval_strategy": "no"}, ["block_size=64"]) == [
        "--train_tokenizer", "true", "--eval_strategy", "no", "--block_size", "64",
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="key=value"):
        override_flags({}, ["block_size"])


TINY = [
    "max_train_samples=120", "max_eval_samples=10", "vocab_size=300", "block_size=32",
    "per_device_train_batch_size=4", "global_batch_size=4", "save_steps=100", "use_cpu=true",
]  # fmt: skip


def test_sweep_trains_evaluates_fits_and_a_rerun_skips_finished_cells(
    tmp_path, sample_txt, monkeypatch, repo_root
):
    out = tmp_path / "sweep"
    argv = [
        "--config", str(repo_root / "recipes/sweep/quickstart.yaml"), "--data", str(sample_txt), "--output_dir", str(out),
        "--hidden_sizes", "32", "--num_layers", "1", "2", "--max_steps", "2", "--eval_samples", "8",
        "--train_args", *TINY,
    ]  # fmt: skip
    assert sweep.main(argv) == 0
    results = json.loads((out / "sweep_results.json").read_text())
    runs = results["runs"]
    assert [(r["hidden_size"], r["num_layers"]) for r in runs] == [(32, 1), (32, 2)]
    for r in runs:
        assert r["non_embedding_params"] == non_embedding_params(r["hidden_size"], r["num_layers"])
        assert r["train_tokens"] == 2 * 4 * 32 and np.isfinite(r["eval_loss"]) and r["bits_per_byte"] > 0
        assert r["train_wall_seconds"] > 0 and r["judge"] is None
        assert (out / r["name"] / "eval_results.json").is_file()
    assert results["fit"]["params"]["power_law"]["num_points"] == 2
    assert (out / "loss_vs_params.png").is_file()
    card = (out / runs[0]["name"] / "README.md").read_text()  # each cell's card links the sweep's figures
    assert "## Figures" in card and "](../loss_vs_params.png)" in card

    def no_training(argv):
        raise AssertionError("a finished cell was retrained")

    monkeypatch.setattr(pretrain, "main", no_training)
    assert sweep.main(argv) == 0
    assert json.loads((out / "sweep_results.json").read_text())["runs"] == runs
    with pytest.raises(ConfigError, match="other settings"):  # a changed setting never mixes into old cells
        sweep.main([*argv, "learning_rate=1e-3"])
