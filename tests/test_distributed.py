"""Two CPU processes: DDP over gloo and DeepSpeed ZeRO-2 end with the single-process losses.

Sequential sampling makes the global batches identical: process r of 2 takes rows r, r+2, ... of the
same order a single process reads 8 at a time, so the gradients match up to float reduction order.
"""

import json
import os
import subprocess
import sys

import pytest

COMMON = [
    "--max_train_samples", "400", "--max_eval_samples", "40",
    "--train_tokenizer", "true", "--vocab_size", "384",
    "--hidden_size", "32", "--num_layers", "2", "--block_size", "64",
    "--per_device_eval_batch_size", "16", "--global_batch_size", "8", "--learning_rate", "3e-3",
    "--max_steps", "12", "--logging_steps", "4", "--eval_steps", "12", "--save_steps", "12",
    "--train_sampling_strategy", "sequential", "--report_to", "none", "--use_cpu", "true",
    "--dataloader_num_workers", "0", "--seed", "3", "--attn_implementation", "eager",
]  # fmt: skip


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env["DS_ACCELERATOR"] = "cpu"
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _train(out, sample_txt, launcher: list[str], per_device: int) -> list[dict]:
    cmd = [
        *launcher,
        "-m",
        "tinystories.cli",
        "train",
        "--dataset_name",
        str(sample_txt),
        "--output_dir",
        str(out),
    ]
    cmd += [*COMMON, "--per_device_train_batch_size", str(per_device)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads((out / "trainer_state.json").read_text())["log_history"]


def _losses(history):
    return [h["loss"] for h in history if "loss" in h], [h["eval_loss"] for h in history if "eval_loss" in h]


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, sample_txt):
    out = tmp_path_factory.mktemp("single")
    return _losses(_train(out, sample_txt, [sys.executable], per_device=8))


def _accelerate(repo_root, config):
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(repo_root / "accelerate_configs" / config),
    ]


def test_ddp_two_processes_match_single(tmp_path, sample_txt, repo_root, single_process):
    train, evals = _losses(
        _train(tmp_path / "ddp", sample_txt, _accelerate(repo_root, "cpu_ddp.yaml"), per_device=4)
    )
    ref_train, ref_evals = single_process
    assert len(train) == len(ref_train) == 3
    assert train == pytest.approx(ref_train, abs=2e-3)
    assert evals[-1] == pytest.approx(ref_evals[-1], abs=2e-3)
    assert train[-1] < train[0]  # it learned


def test_deepspeed_zero2_two_processes_match_single(tmp_path, sample_txt, repo_root, single_process):
    out = tmp_path / "ds"
    train, evals = _losses(
        _train(out, sample_txt, _accelerate(repo_root, "cpu_deepspeed_zero2.yaml"), per_device=4)
    )
    ref_train, ref_evals = single_process
    assert len(train) == len(ref_train)
    # DeepSpeed steps with its own (CPU) Adam implementation: close, not bit-equal
    assert train == pytest.approx(ref_train, abs=2e-2)
    assert evals[-1] == pytest.approx(ref_evals[-1], abs=2e-2)
    assert (out / "model.safetensors").is_file()
