"""`--report_to trackio`: pretraining and LoRA runs log their loss and eval metrics to a local trackio project.

Each run is a subprocess with TRACKIO_DIR set to a tmp dir (trackio reads it at import); the metrics are read
back with trackio's own CLI (`trackio get metric --json`) and compared with the run's `trainer_state.json`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiny import make_tiny_model_dir

TRACKIO = Path(sys.executable).with_name("trackio")
TINY_PRETRAIN = [
    "--max_train_samples", "600", "--max_eval_samples", "60",
    "--train_tokenizer", "true", "--vocab_size", "512",
    "--hidden_size", "32", "--num_layers", "2", "--block_size", "64",
    "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
    "--gradient_accumulation_steps", "1", "--global_batch_size", "8", "--learning_rate", "3e-3",
    "--use_cpu", "true", "--dataloader_num_workers", "0", "--seed", "7",
    "--max_steps", "20", "--logging_steps", "5", "--eval_steps", "10", "--save_steps", "20",
]  # fmt: skip


def _env(trackio_dir: Path) -> dict:
    return {
        **os.environ,
        "TRACKIO_DIR": str(trackio_dir),
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }


def _run_stage(stage: str, argv: list[str], trackio_dir: Path) -> None:
    cmd = [sys.executable, "-m", "tinystories.cli", stage, *argv, "--report_to", "trackio"]
    done = subprocess.run(cmd, env=_env(trackio_dir), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _metric(trackio_dir: Path, project: str, run: str, name: str) -> list[tuple[int, float]]:
    """(trackio step, value) of one metric, read with `trackio get metric --json`."""
    cmd = [str(TRACKIO), "get", "metric", "--project", project, "--run", run, "--metric", name, "--json"]
    done = subprocess.run(cmd, env=_env(trackio_dir), capture_output=True, text=True, timeout=60, check=True)
    return [(v["step"], v["value"]) for v in json.loads(done.stdout)["values"]]


def _by_global_step(trackio_dir: Path, project: str, run: str, name: str) -> list[tuple[int, float]]:
    """A metric against the Trainer's global step (trackio counts log calls; `train/global_step` maps them)."""
    global_step = dict(_metric(trackio_dir, project, run, "train/global_step"))
    return [(int(global_step[step]), value) for step, value in _metric(trackio_dir, project, run, name)]


def _history(out: Path, key: str) -> list[tuple[int, float]]:
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [(h["step"], h[key]) for h in log if key in h]


def _assert_same(logged: list[tuple[int, float]], history: list[tuple[int, float]]) -> None:
    assert [step for step, _ in logged] == [step for step, _ in history]
    assert [v for _, v in logged] == pytest.approx([v for _, v in history], rel=1e-6)


def test_pretraining_logs_loss_and_eval_to_trackio(tmp_path, sample_txt):
    trackio_dir, out = tmp_path / "trackio", tmp_path / "run"
    argv = ["--dataset_name", str(sample_txt), "--output_dir", str(out), *TINY_PRETRAIN]
    _run_stage("train", [*argv, "--project", "tinystories-test", "--run_name", "pretrain-1M"], trackio_dir)
    assert (trackio_dir / "tinystories-test.db").is_file()

    loss = _by_global_step(trackio_dir, "tinystories-test", "pretrain-1M", "train/loss")
    assert [step for step, _ in loss] == [5, 10, 15, 20]  # every logging_steps, up to max_steps
    _assert_same(loss, _history(out, "loss"))
    assert loss[-1][1] < loss[0][1]
    evals = _by_global_step(trackio_dir, "tinystories-test", "pretrain-1M", "eval/loss")
    # eval_steps 10 and 20, then the final evaluation of the finished model (training/tail) at 20 again
    assert [step for step, _ in evals] == [10, 20, 20]
    _assert_same(evals, _history(out, "eval_loss"))
    bpb = _by_global_step(trackio_dir, "tinystories-test", "pretrain-1M", "eval/bits_per_byte")
    _assert_same(bpb, _history(out, "eval_bits_per_byte"))

    listed = subprocess.run(
        [str(TRACKIO), "list", "runs", "--project", "tinystories-test", "--json"],
        env=_env(trackio_dir),
        capture_output=True,
        text=True,
        check=True,
    )
    assert "pretrain-1M" in json.loads(listed.stdout)["runs"]


def test_lora_logs_loss_and_eval_to_trackio(tmp_path, gpt_neo_tokenizer_dir, stories):
    trackio_dir, out = tmp_path / "trackio", tmp_path / "lora"
    base = make_tiny_model_dir(tmp_path / "base", gpt_neo_tokenizer_dir)
    data = tmp_path / "stories.txt"
    data.write_text("\n<|endoftext|>\n".join(stories[:80]) + "\n<|endoftext|>\n")
    argv = ["--base_model", str(base), "--data", str(data), "--output_dir", str(out), "--max_steps", "6"]
    argv += [
        "--lora_r",
        "4",
        "--lora_alpha",
        "8",
        "--learning_rate",
        "1e-2",
        "--per_device_train_batch_size",
        "2",
    ]
    argv += ["--max_length", "64", "--max_eval_samples", "4", "--save_strategy", "no", "--num_samples", "0"]
    argv += ["--logging_steps", "2", "--eval_strategy", "steps", "--eval_steps", "3", "--merge", "false"]
    argv += ["--use_cpu", "true", "--project", "tinystories-lora", "--run_name", "lora-r4"]
    _run_stage("lora", argv, trackio_dir)

    loss = _by_global_step(trackio_dir, "tinystories-lora", "lora-r4", "train/loss")
    assert [step for step, _ in loss] == [2, 4, 6]
    _assert_same(loss, _history(out, "loss"))
    evals = _by_global_step(trackio_dir, "tinystories-lora", "lora-r4", "eval/loss")
    assert [step for step, _ in evals] == [3, 6, 6]  # eval_steps 3, then the final evaluation
    _assert_same(evals, _history(out, "eval_loss"))
