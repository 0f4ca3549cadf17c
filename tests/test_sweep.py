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


# ---------------------------------------------------------------- the architecture axis (issue 22)
def test_grid_with_two_architectures_names_and_argv(tmp_path):
    from tinystories.sweep.grid import cell_argv

    cells = build_grid([32, 64], [1], [30], [], per_step=2048, architectures=["gpt_neo", "llama"])
    assert [c.name for c in cells] == ["h32-l1-s30", "h64-l1-s30", "llama-h32-l1-s30", "llama-h64-l1-s30"]
    assert [c.architecture for c in cells] == ["gpt_neo", "gpt_neo", "llama", "llama"]
    # GPT-Neo cells keep the names and command lines they had before the axis (old sweeps stay finished)
    assert build_grid([32, 64], [1], [30], [], per_step=2048) == cells[:2]
    base = ["--config", "recipes/pretrain/1M.yaml"]
    neo = cell_argv(base, cells[0], tmp_path / cells[0].name)
    assert neo == [*base, "--hidden_size", "32", "--num_layers", "1", "--max_steps", "30",
                   "--output_dir", str(tmp_path / "h32-l1-s30")]  # fmt: skip
    llama = cell_argv(base, cells[3], tmp_path / cells[3].name)
    assert llama == [*base, "--architecture", "llama", "--hidden_size", "64", "--num_layers", "1",
                     "--max_steps", "30", "--output_dir", str(tmp_path / "llama-h64-l1-s30")]  # fmt: skip
    budget = build_grid([32], [2], [], [100_000], per_step=2048, architectures=["llama"])
    assert [(c.name, c.max_steps) for c in budget] == [("llama-h32-l2-t100000", 49)]
    assert (
        len(build_grid([32], [1], [5], [], per_step=1, architectures=["llama", "llama"])) == 1
    )  # deduplicated
    with pytest.raises(ConfigError, match="--architectures mamba: use gpt_neo and/or llama"):
        build_grid([32], [1], [5], [], per_step=1, architectures=["gpt_neo", "mamba"])


def _run_record(arch, n, tokens, loss, bpb):
    prefix = "" if arch == "gpt_neo" else "llama-"
    return {
        "name": f"{prefix}n{n}-t{tokens}", "non_embedding_params": n, "train_tokens": tokens,
        "compute": 6 * n * tokens, "eval_loss": loss, "bits_per_byte": bpb,
        **({} if arch == "gpt_neo" and n == 1e4 else {"architecture": arch}),  # an old record has no field
    }  # fmt: skip


def _mixed_runs():
    """GPT-Neo on loss = 10 N^-0.1 (bpb = loss / 3), Llama on 8 N^-0.1 (bpb = loss / 4); a small budget too."""
    runs = []
    for arch, a, ratio in (("gpt_neo", 10.0, 3.0), ("llama", 8.0, 4.0)):
        for n in (1e4, 1e5, 1e6):
            runs.append(_run_record(arch, n, 4e6, a * n**-0.1, a * n**-0.1 / ratio))
        runs.append(_run_record(arch, 1e4, 1e6, a * 1e4**-0.1 + 0.5, 1.0))
    runs.append({**_run_record("llama", 1e7, 4e6, float("nan"), 1.0)})  # an unfinished cell is left out
    return runs


def test_fit_runs_with_two_architectures():
    fit = fit_runs(_mixed_runs())
    # top level: GPT-Neo only (the first architecture), as before the axis
    assert fit["params"]["train_tokens"] == 4e6 and fit["params"]["power_law"]["num_points"] == 3
    assert fit["params"]["power_law"]["a"] == pytest.approx(10.0, rel=1e-6)
    assert fit["params"]["power_law"]["alpha"] == pytest.approx(0.1, rel=1e-6)
    assert all(not name.startswith("llama-") for name in fit["compute"]["frontier"])
    by_arch = fit["by_architecture"]
    assert list(by_arch) == ["gpt_neo", "llama"]
    for arch, a, ratio in (("gpt_neo", 10.0, 3.0), ("llama", 8.0, 4.0)):
        assert by_arch[arch]["train_tokens"] == 4e6
        loss, bpb = by_arch[arch]["loss"], by_arch[arch]["bits_per_byte"]
        assert loss["x"] == bpb["x"] == "non_embedding_params" and loss["power_law"]["num_points"] == 3
        assert loss["power_law"]["a"] == pytest.approx(a, rel=1e-6)
        assert bpb["power_law"]["a"] == pytest.approx(a / ratio, rel=1e-6)
        assert bpb["power_law"]["alpha"] == pytest.approx(0.1, rel=1e-6)
    single = fit_runs([r for r in _mixed_runs() if r.get("architecture", "gpt_neo") == "gpt_neo"])
    assert "by_architecture" not in single and single["params"] == fit["params"]


def test_plot_architectures_writes_a_png(tmp_path):
    from PIL import Image

    from tinystories.sweep.plots import plot_architectures

    runs = _mixed_runs()
    path = plot_architectures(runs, fit_runs(runs), tmp_path / "architectures_vs_params.png")
    assert path == tmp_path / "architectures_vs_params.png"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 2 * image.size[1] * 0.9  # two panels side by side


def test_sweep_over_two_architectures_trains_both_and_draws_them(tmp_path, sample_txt, repo_root):
    from tinystories.models.sizes import build_config, llama_non_embedding_params

    out = tmp_path / "arch-sweep"
    argv = [
        "--config", str(repo_root / "recipes/sweep/quickstart.yaml"), "--data", str(sample_txt), "--output_dir", str(out),
        "--architectures", "gpt_neo", "llama", "--hidden_sizes", "32", "--num_layers", "1", "--max_steps", "2",
        "--eval_samples", "8", "--train_args", *TINY,
    ]  # fmt: skip
    assert sweep.main(argv) == 0
    results = json.loads((out / "sweep_results.json").read_text())
    runs = results["runs"]
    assert [(r["name"], r["architecture"]) for r in runs] == [
        ("h32-l1-s2", "gpt_neo"),
        ("llama-h32-l1-s2", "llama"),
    ]
    config = json.loads((out / "llama-h32-l1-s2" / "config.json").read_text())
    assert config["model_type"] == "llama" and "--architecture" in runs[1]["train_argv"]
    assert "--architecture" not in runs[0]["train_argv"]
    inner = build_config(hidden_size=32, num_layers=1, architecture="llama").intermediate_size
    assert runs[1]["non_embedding_params"] == llama_non_embedding_params(32, 1, 16, inner)
    assert runs[0]["non_embedding_params"] == non_embedding_params(32, 1)
    assert all(np.isfinite(r["eval_loss"]) and r["bits_per_byte"] > 0 for r in runs)
    assert set(results["fit"]["by_architecture"]) == {"gpt_neo", "llama"}
    assert (out / "architectures_vs_params.png").is_file()
