"""Fine-tuning keeps its global batch on many processes: the LoRA recipe on 1 and 2 CPU processes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tinystories.training.pretraining import PretrainConfig, configure_batch


def _args(per_device, total, world, monkeypatch):
    args = PretrainConfig(output_dir="x", per_device_train_batch_size=per_device, use_cpu=True)
    args.global_batch_size = total
    monkeypatch.setattr(type(args), "world_size", property(lambda self: world))
    configure_batch(args)
    return args.per_device_train_batch_size, args.gradient_accumulation_steps


def test_global_batch_on_any_number_of_processes(monkeypatch):
    assert _args(16, 32, 1, monkeypatch) == (16, 2)
    assert _args(16, 32, 2, monkeypatch) == (16, 1)
    assert _args(16, 32, 8, monkeypatch) == (4, 1)  # the LoRA recipe on 8 GPUs: 32 examples, not 256
    assert _args(80, 1280, 8, monkeypatch) == (80, 2)


def _lora(out, base, data, launcher):
    cmd = [*launcher, "-m", "tinystories.cli", "lora", "--config", "recipes/lora/33M.yaml"]
    cmd += ["--base_model", str(base), "--data", str(data), "--output_dir", str(out), "--use_cpu", "true"]
    cmd += [
        "--max_steps",
        "2",
        "--max_train_samples",
        "64",
        "--max_eval_samples",
        "8",
        "--eval_strategy",
        "no",
    ]
    cmd += ["--num_samples", "0", "--merge", "false", "--max_length", "64", "--report_to", "none"]
    cmd += ["--save_strategy", "no", "--dataloader_num_workers", "0", "--logging_steps", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**__import__("os").environ})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "card_info.json").read_text())["hyperparameters"]


@pytest.mark.distributed
def test_lora_recipe_takes_as_many_examples_per_step_on_two_processes(
    tmp_path, tiny_model_dir, sample_txt, repo_root
):
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    accelerate.append(str(repo_root / "accelerate_configs" / "cpu_ddp.yaml"))
    one = _lora(tmp_path / "one", tiny_model_dir, sample_txt, [sys.executable])
    two = _lora(tmp_path / "two", tiny_model_dir, sample_txt, accelerate)
    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    assert (one["gradient_accumulation_steps"], two["gradient_accumulation_steps"]) == (2, 1)
    assert one["effective_batch_size"] == two["effective_batch_size"] == 32
