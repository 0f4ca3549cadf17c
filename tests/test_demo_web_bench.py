"""`python -m demo.web.bench` without a browser: its checks of the command line, its comparisons, and the results
file's table, which must be what the file's own measurements give (tests/test_demo_web.py runs it in Chromium)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from demo.web import bench
from tinystories.core import ConfigError

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "browser_inference.json"


@pytest.mark.parametrize("argv", [["--new_tokens", "0"], ["--repeats", "0"], ["--threads", "-1"]])
def test_bad_counts_are_refused(argv):
    with pytest.raises(ConfigError, match="at least"):
        bench.parse_args(argv)


def test_a_models_entry_must_be_a_model_folder(tmp_path):
    args = bench.parse_args(["--sizes", "none", "--models", str(tmp_path)])
    with pytest.raises(ConfigError, match="no config.json.*tinystories pull"):
        next(bench.models(args))


def test_no_chromium_says_how_to_install_it(monkeypatch):
    monkeypatch.delenv("CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(ConfigError, match="apt-get install chromium"):
        bench.find_chromium()


def test_agreement_counts_the_equal_prefix():
    assert bench.agreement([1, 2, 3], [1, 2, 3]) == {"same": True, "tokens_before_first_difference": 3}
    assert bench.agreement([1, 2, 4], [1, 2, 3]) == {"same": False, "tokens_before_first_difference": 2}
    assert bench.agreement([9, 2, 3], [1, 2, 3]) == {"same": False, "tokens_before_first_difference": 0}
    assert bench.agreement([1, 2], [1, 2, 3]) == {"same": False, "tokens_before_first_difference": 2}


def test_the_results_table_is_the_recorded_measurements():
    result = json.loads(RESULTS.read_text())
    assert bench.study_table(result) == result["tables"][0]
    assert bench.headline(result["tables"][0]) == result["headline"]
    for res in result["models"].values():
        for run in res["runs"].values():
            assert len(run["tokens"]) == run["new_tokens"] == res["new_tokens"]
            assert len(run["runs_ms"]) == result["repeats"] and 2 <= len(run["warmup_ms"]) <= 8
            assert run["tokens_per_second"] == pytest.approx(
                run["new_tokens"] / run["seconds"], rel=1e-3, abs=0.05
            )
        assert res["runs"]["fp32"]["pytorch"]["same"]  # fp32 in the browser is PyTorch's greedy path
