"""`--report_to trackio`: pretraining and LoRA runs log their loss and eval metrics to a local trackio project.

Each run is a subprocess with TRACKIO_DIR set to a tmp dir (trackio reads it at import); both start at once (two
cores, half the wait). The metrics are read back with trackio's own CLI (`trackio get metric --json`) and compared
with the run's `trainer_state.json`.
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
    "--max_train_samples", "300", "--max_eval_samples", "30",
    "--train_tokenizer", "true", "--vocab_size", "512",
    "--hidden_size", "32", "--num_layers", "2", "--block_size", "64",
    "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
    "--gradient_accumulation_steps", "1", "--global_batch_size", "8", "--learning_rate", "3e-3",
    "--use_cpu", "true", "--dataloader_num_workers", "0", "--seed", "7",
    "--max_steps", "12", "--logging_steps", "4", "--eval_steps", "6", "--save_steps", "12",
]  # fmt: skip
TINY_LORA = [
    "--max_steps", "6", "--lora_r", "4", "--lora_alpha", "8", "--learning_rate", "1e-2",
    "--per_device_train_batch_size", "2", "--max_length", "64", "--max_eval_samples", "4",
    "--save_strategy", "no", "--num_samples", "0", "--logging_steps", "2",
    "--eval_strategy", "steps", "--eval_steps", "3", "--merge", "false", "--use_cpu", "true",
]  # fmt: skip


def _env(trackio_dir: Path) -> dict:
    return {
        **os.environ,
        "TRACKIO_DIR": str(trackio_dir),
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }


def _start(stage: str, argv: list[str], trackio_dir: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tinystories.cli", stage, *argv, "--report_to", "trackio"]
    return subprocess.Popen(cmd, env=_env(trackio_dir), stdout=log.open("w"), stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sample_txt, gpt_neo_tokenizer_dir, stories) -> dict[str, tuple[Path, Path]]:
    """{"train" | "lora": (trackio dir, output dir)}: a tiny pretraining run and a tiny LoRA run, in parallel."""
    root = tmp_path_factory.mktemp("trackio")
    pretrain = ["--data", str(sample_txt), "--output_dir", str(root / "run"), *TINY_PRETRAIN]
    pretrain += ["--project", "tinystories-test", "--run_name", "pretrain-1M"]
    base = make_tiny_model_dir(root / "base", gpt_neo_tokenizer_dir)
    data = root / "stories.txt"
    data.write_text("\n<|endoftext|>\n".join(stories[:80]) + "\n<|endoftext|>\n")
    lora = ["--base_model", str(base), "--data", str(data), "--output_dir", str(root / "lora"), *TINY_LORA]
    lora += ["--project", "tinystories-lora", "--run_name", "lora-r4"]
    procs = {
        "train": _start("train", pretrain, root / "trackio-train", root / "train.log"),
        "lora": _start("lora", lora, root / "trackio-lora", root / "lora.log"),
    }
    for name, proc in procs.items():
        assert proc.wait(timeout=300) == 0, (root / f"{name}.log").read_text()[-3000:]
    return {"train": (root / "trackio-train", root / "run"), "lora": (root / "trackio-lora", root / "lora")}


def _trackio(trackio_dir: Path, *args: str) -> dict:
    cmd = [str(TRACKIO), "get", *args, "--json"]
    done = subprocess.run(cmd, env=_env(trackio_dir), capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)


def _by_global_step(trackio_dir: Path, project: str, run: str, *names: str) -> list[list[tuple[int, float]]]:
    """Each metric against the Trainer's global step (trackio counts log calls; `train/global_step` maps them)."""
    where = ("--project", project, "--run", run)

    def values(name: str) -> list[tuple[int, float]]:
        return [
            (v["step"], v["value"])
            for v in _trackio(trackio_dir, "metric", *where, "--metric", name)["values"]
        ]

    global_step = dict(values("train/global_step"))
    return [[(int(global_step[step]), value) for step, value in values(name)] for name in names]


def _history(out: Path, key: str) -> list[tuple[int, float]]:
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [(h["step"], h[key]) for h in log if key in h]


def _assert_same(logged: list[tuple[int, float]], history: list[tuple[int, float]]) -> None:
    assert [step for step, _ in logged] == [step for step, _ in history]
    assert [v for _, v in logged] == pytest.approx([v for _, v in history], rel=1e-6)


def test_pretraining_logs_loss_and_eval_to_trackio(runs):
    trackio_dir, out = runs["train"]
    assert (trackio_dir / "tinystories-test.db").is_file()

    run = _trackio(trackio_dir, "run", "--project", "tinystories-test", "--run", "pretrain-1M")
    assert {"train/loss", "eval/loss", "eval/bits_per_byte"} <= set(run["metrics"])
    assert run["config"]["max_steps"] == 12 and run["config"]["hidden_size"] == 32
    loss, evals, bpb = _by_global_step(
        trackio_dir, "tinystories-test", "pretrain-1M", "train/loss", "eval/loss", "eval/bits_per_byte"
    )
    assert [step for step, _ in loss] == [4, 8, 12]  # every logging_steps, up to max_steps
    _assert_same(loss, _history(out, "loss"))
    assert loss[-1][1] < loss[0][1]
    # eval_steps 6 and 12; the final evaluation of the finished model (training/tail) reuses step 12's
    assert [step for step, _ in evals] == [6, 12]
    _assert_same(evals, _history(out, "eval_loss"))
    _assert_same(bpb, _history(out, "eval_bits_per_byte"))


def test_lora_logs_loss_and_eval_to_trackio(runs):
    trackio_dir, out = runs["lora"]
    loss, evals = _by_global_step(trackio_dir, "tinystories-lora", "lora-r4", "train/loss", "eval/loss")
    assert [step for step, _ in loss] == [2, 4, 6]
    _assert_same(loss, _history(out, "loss"))
    assert [step for step, _ in evals] == [3, 6]  # eval_steps 3; the final evaluation reuses step 6's
    _assert_same(evals, _history(out, "eval_loss"))
