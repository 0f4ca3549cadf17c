"""The time-to-quality benchmark: real recipe runs, time-boxed, scored on the quickstart's held-out stories."""

import json

import pytest

from benchmarks.time_to_quality import best_by, format_table, main
from tinystories.core import ConfigError


def test_table_reports_the_best_reached_by_each_mark():
    runs = {
        "fast": {"evaluations": [{"step": 10, "minutes": 0.5, "bits_per_byte": 2.0}, {"step": 20, "minutes": 1.5, "bits_per_byte": 1.5}]},
        "slow": {"evaluations": [{"step": 5, "minutes": 2.5, "bits_per_byte": 3.0}]},
    }  # fmt: skip
    assert best_by(runs["fast"]["evaluations"], 1) == 2.0
    assert best_by(runs["fast"]["evaluations"], 2) == 1.5
    assert best_by(runs["slow"]["evaluations"], 2) is None
    table = format_table(runs, 3)
    assert "| 1 | 2.000 | — |" in table and "| 3 | 1.500 | 3.000 |" in table
    assert "| end of run | 1.500 (step 20, 1.5 min) | 3.000 (step 5, 2.5 min) |" in table


def test_a_time_boxed_recipe_run_scores_the_held_out_stories(
    tmp_path, sample_txt, gpt_neo_tokenizer_dir, capsys
):
    out = tmp_path / "ttq"
    argv = ["--data", str(sample_txt), "--tokenizer", str(gpt_neo_tokenizer_dir), "--recipes", "quickstart",
            "--minutes", "0.03", "--eval_steps", "4", "--output_dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "time_to_quality.json").read_text())
    run = result["runs"]["quickstart"]
    assert result["held_out_stories"] == 232  # the quickstart's 10% of the 2,316-story sample (seed 42)
    evals = run["evaluations"]
    assert evals and 0 < run["steps"] < 1000  # stopped by the time box, long before the recipe's 1,000 steps
    assert evals[-1]["step"] == run["steps"] and evals[-1]["bits_per_byte"] == pytest.approx(
        run["final_bits_per_byte"]
    )
    assert all(0 < e["bits_per_byte"] < 4 for e in evals) and evals[-1]["minutes"] > 0
    assert (out / "time_to_quality.png").stat().st_size > 0
    assert "| end of run |" in capsys.readouterr().out
    assert main(argv) == 0  # the same rows again: the finished run is reused, not retrained
    assert "quickstart: reusing the finished run" in capsys.readouterr().out
    assert json.loads((out / "time_to_quality.json").read_text())["runs"] == result["runs"]
    with pytest.raises(ConfigError, match="--recipes 'nope'"):
        main(["--recipes", "nope"])


def test_a_finished_run_is_reused_across_time_boxes_it_never_reached(tmp_path):
    """A row that ended by its steps inside both boxes is the same run; one the box stopped is not."""
    from benchmarks.time_to_quality import same_run

    done = tmp_path / "time_to_quality_run.json"
    command = ["train", "--config", "q.yaml", "--max_minutes", "5.0", "--max_steps", "600"]
    assert not same_run(done, command)
    done.write_text(json.dumps({"command": command, "wall_seconds": 200.0}))
    results = tmp_path / "all_results.json"
    results.write_text(json.dumps({"train_runtime": 3.2 * 60}))
    longer = [*command[:4], "6.5", *command[5:]]
    assert same_run(done, command) and same_run(done, longer)
    assert not same_run(done, [*command[:4], "3.0", *command[5:]])  # a box it would have hit
    assert not same_run(done, [*longer[:-1], "1000"])  # other steps: another run
    results.write_text(json.dumps({"train_runtime": 4.95 * 60}))  # stopped by its 5-minute box
    assert not same_run(done, longer) and same_run(done, command)
