"""The devices a run uses are the devices the user gave: the device line, the DataParallel refusal, the Makefile.

The GPU cases run on a CPU: the decision functions get fake device facts, and `make -n` runs with a fake
`nvidia-smi` on PATH and a fake venv python that answers the Makefile's torch question as an 8-GPU machine
would (CUDA_VISIBLE_DEVICES applied).
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from transformers import TrainingArguments
from transformers.training_args import ParallelMode

from tinystories.core import ConfigError
from tinystories.core.runtime import DeviceFacts, check_one_process_per_gpu, describe_devices
from tinystories.stages import train as pretrain
from tinystories.training.pretraining import PretrainConfig
from tinystories.training.tail import prepare_run

REPO = Path(__file__).resolve().parents[1]
H100 = "NVIDIA H100 80GB HBM3"


# ------------------------------------------------------------------------------------- the device line
@pytest.mark.parametrize(
    ("facts", "precision", "line"),
    [
        (
            DeviceFacts((H100,) * 8, "0,1,2,3,4,5,6,7", processes=8, distributed=True),
            "bf16",
            f"devices: 8 x {H100} (CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7), 8 processes, bf16",
        ),
        (
            DeviceFacts((H100,), "3"),
            "bf16",
            f"devices: 1 x {H100} (CUDA_VISIBLE_DEVICES=3), 1 process, bf16",
        ),
        (
            DeviceFacts((H100, H100, "Tesla V100"), None, processes=3, distributed=True),
            "fp16",
            f"devices: 2 x {H100}, 1 x Tesla V100 (CUDA_VISIBLE_DEVICES unset), 3 processes, fp16",
        ),
        (
            DeviceFacts((H100,) * 8, None, processes=16, distributed=True),
            "bf16",
            f"devices: 8 x {H100} per machine (CUDA_VISIBLE_DEVICES unset), 16 processes, bf16",
        ),
        (DeviceFacts(torch_cuda="12.8"), "fp32", "devices: CPU (no CUDA device visible), 1 process, fp32"),
        (
            DeviceFacts(visible="", torch_cuda="12.8"),
            "fp32",
            "devices: CPU (no CUDA device visible; CUDA_VISIBLE_DEVICES=), 1 process, fp32",
        ),
        (
            DeviceFacts(torch_cuda=None),
            "fp32",
            f"devices: CPU (no CUDA device visible; torch {torch.__version__} is built without CUDA), 1 process, fp32",
        ),
        (
            DeviceFacts((H100,) * 8, None, processes=2, distributed=True, use_cpu=True),
            "fp32",
            "devices: CPU (--use_cpu true; 8 CUDA devices left unused), 2 processes, fp32",
        ),
        (DeviceFacts(mps=True), "fp32", "devices: Apple MPS, 1 process, fp32"),
    ],
)
def test_the_device_line_says_what_a_run_uses(facts, precision, line):
    assert describe_devices(facts, precision) == line


# ------------------------------------------------------------------------------ DataParallel is refused
def test_several_gpus_in_one_undistributed_process_are_refused_with_the_command_to_use():
    with pytest.raises(ConfigError, match="DataParallel") as err:
        check_one_process_per_gpu(DeviceFacts((H100,) * 8, None))
    message = str(err.value)
    assert "make train" in message and "CUDA_VISIBLE_DEVICES=0" in message
    assert "accelerate launch --config_file accelerate_configs/multi_gpu.yaml --num_processes 8" in message


@pytest.mark.parametrize(
    "facts",
    [
        DeviceFacts(),
        DeviceFacts((H100,)),
        DeviceFacts((H100,) * 8, processes=8, distributed=True),
        DeviceFacts((H100,) * 8, processes=1, distributed=True),  # torchrun --nproc_per_node 1: one device
        DeviceFacts((H100,) * 8, use_cpu=True),
    ],
)
def test_one_device_per_process_is_fine(facts):
    check_one_process_per_gpu(facts)


def _eight_gpus(monkeypatch):
    """torch as on an 8-GPU machine (no CUDA runtime is touched: the Trainer still runs on the CPU)."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: H100)
    for name in ("LOCAL_RANK", "WORLD_SIZE", "CUDA_VISIBLE_DEVICES", "ACCELERATE_USE_CPU"):
        monkeypatch.delenv(name, raising=False)


def test_facts_of_a_run_read_transformers_parallel_mode(monkeypatch, tmp_path):
    _eight_gpus(monkeypatch)
    facts = DeviceFacts.of_run(TrainingArguments(output_dir=str(tmp_path), report_to="none"))
    assert facts.cuda_names == (H100,) * 8 and facts.processes == 1
    assert not facts.distributed and not facts.use_cpu  # the Trainer's n_gpu is 8: DataParallel
    undistributed = SimpleNamespace(parallel_mode=ParallelMode.NOT_DISTRIBUTED, world_size=1, use_cpu=False)
    assert not DeviceFacts.of_run(undistributed).distributed
    monkeypatch.setenv("LOCAL_RANK", "0")  # torchrun / accelerate launch, whatever transformers decided
    assert DeviceFacts.of_run(undistributed).distributed
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    assert DeviceFacts.of_run(undistributed).use_cpu


def test_pretraining_refuses_dataparallel_before_reading_data(monkeypatch, tmp_path):
    _eight_gpus(monkeypatch)

    def read_data(*args, **kwargs):
        raise AssertionError("data was read before the device check")

    monkeypatch.setattr(pretrain, "prepare_data", read_data)
    argv = ["--size", "1M", "--dataset_name", str(tmp_path / "s.txt"), "--output_dir", str(tmp_path / "o")]
    with pytest.raises(ConfigError, match="DataParallel"):
        pretrain.main([*argv, "--report_to", "none"])


def test_prepare_run_logs_the_devices_once(monkeypatch, tmp_path, caplog):
    _eight_gpus(monkeypatch)
    args = PretrainConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    with caplog.at_level(logging.INFO, logger="tinystories.training.tail"):
        prepare_run(args)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("devices: ")]
    assert lines == ["devices: CPU (--use_cpu true; 8 CUDA devices left unused), 1 process, fp32"]


# ------------------------------------------------------------------------------------- accelerate configs
def test_every_gpu_config_keeps_the_devices_given():
    """`gpu_ids: "0"` makes accelerate rewrite CUDA_VISIBLE_DEVICES to 0: another job's GPU."""
    for path in sorted((REPO / "accelerate_configs").glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        if not config.get("use_cpu"):
            assert config.get("gpu_ids") == "all", path.name


# ------------------------------------------------------------------------------------ the Makefile (make -n)
FAKE_PYTHON = """#!/bin/bash
# the Makefile's question `print(torch.cuda.device_count(), torch.version.cuda)` on a fake machine
echo "$*" >> "$FAKE_LOG"
n=$FAKE_GPUS
if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
  n=$(printf '%s' "$CUDA_VISIBLE_DEVICES" | tr ',' '\\n' | grep -c .)
fi
[ "$FAKE_TORCH_CUDA" = None ] && n=0
echo "$n $FAKE_TORCH_CUDA"
"""
FAKE_NVIDIA_SMI = """#!/bin/bash
[ "$FAKE_SMI_GPUS" = missing ] && exit 127
for ((i = 0; i < FAKE_SMI_GPUS; i++)); do echo "GPU $i: NVIDIA H100 80GB HBM3 (UUID: GPU-$i)"; done
"""


def _executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def fake_machine(tmp_path):
    """`make(...)` → (returncode, the launch command `make -n` prints, stderr, fake python calls)."""
    venv, log = tmp_path / "venv", tmp_path / "python.log"
    _executable(venv / "bin" / "python", FAKE_PYTHON)
    (venv / ".installed").touch()  # newer than pyproject.toml: no install lines
    _executable(tmp_path / "bin" / "nvidia-smi", FAKE_NVIDIA_SMI)

    def make(*targets, gpus=8, smi=None, torch_cuda="12.8", visible=None, makefile="Makefile"):
        env = {
            k: v for k, v in os.environ.items() if k not in ("ACCELERATE", "NUM_GPUS", "CUDA_VISIBLE_DEVICES")
        }
        env = {k: v for k, v in env.items() if not k.startswith("MAKE")}
        env.update(
            PATH=f"{tmp_path / 'bin'}:{env['PATH']}",
            FAKE_LOG=str(log),
            FAKE_GPUS=str(gpus),
            FAKE_SMI_GPUS=str(gpus if smi is None else smi),
            FAKE_TORCH_CUDA=torch_cuda,
        )
        if visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = visible
        argv = ["make", "-n", "-f", makefile, *targets, f"VENV={venv}"]
        proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        commands = proc.stdout.replace("\\\n", " ").splitlines()  # a recipe line continued with `\`
        launch = next((line for line in commands if "-m tinystories.cli" in line), "")
        calls = log.read_text().splitlines() if log.exists() else []
        return proc.returncode, " ".join(launch.split()), proc.stderr, calls

    return make


def test_cuda_visible_devices_is_what_is_launched(fake_machine):
    """CUDA_VISIBLE_DEVICES=3 on an 8-GPU machine: one process on GPU 3, not 8 processes that see one GPU."""
    rc, launch, err, _ = fake_machine("train", "SIZE=1M", visible="3")
    assert rc == 0, err
    assert "--config_file accelerate_configs/single_gpu.yaml --num_processes 1 " in launch
    assert "CUDA_VISIBLE_DEVICES=" not in launch  # left as given; the config does not rewrite it either

    rc, launch, err, _ = fake_machine("train", "SIZE=1M", visible="2,5")
    assert rc == 0, err
    assert "--config_file accelerate_configs/multi_gpu.yaml --num_processes 2 " in launch


def test_all_visible_gpus_get_a_process_each(fake_machine):
    rc, launch, err, calls = fake_machine("train", "SIZE=1M")
    assert rc == 0, err
    assert "accelerate launch --config_file accelerate_configs/multi_gpu.yaml --num_processes 8 " in launch
    assert len(calls) == 1  # torch is asked once per make run


def test_num_gpus_1_runs_on_the_first_gpu_given(fake_machine):
    """NUM_GPUS=1 with CUDA_VISIBLE_DEVICES=4,6: GPU 4 (accelerate's gpu_ids "0" used to move it to GPU 0)."""
    rc, launch, err, _ = fake_machine("train", "SIZE=1M", "NUM_GPUS=1", visible="4,6")
    assert rc == 0, err
    assert launch.startswith("CUDA_VISIBLE_DEVICES=4 ")
    assert "--config_file accelerate_configs/single_gpu.yaml --num_processes 1 " in launch


def test_gpus_without_nvidia_smi_are_still_used(fake_machine):
    rc, launch, err, _ = fake_machine("sft", smi="missing", gpus=2)
    assert rc == 0, err
    assert "--config_file accelerate_configs/multi_gpu.yaml --num_processes 2 " in launch


def test_a_cpu_torch_on_a_gpu_machine_is_an_error_not_a_cpu_run(fake_machine):
    rc, launch, err, _ = fake_machine("train", "SIZE=1M", torch_cuda="None")
    assert rc != 0 and launch == ""
    assert "nvidia-smi lists 8 GPUs but torch" in err and "CPU-only build" in err
    assert "ACCELERATE=cpu" in err  # the way to train on the CPU anyway
    rc, launch, err, _ = fake_machine("train", "SIZE=1M", "ACCELERATE=cpu", torch_cuda="None")
    assert rc == 0, err
    assert launch.split()[0].endswith("venv/bin/python") and "accelerate" not in launch


def test_gpus_hidden_on_purpose_are_the_cpu_launcher(fake_machine):
    rc, launch, err, _ = fake_machine("train", "SIZE=1M", visible="")  # CUDA_VISIBLE_DEVICES= : no GPU
    assert rc == 0, err
    assert launch.split()[0].endswith("venv/bin/python") and "--use_cpu true" in launch


def test_no_gpu_anywhere_is_the_cpu_launcher(fake_machine):
    rc, launch, err, _ = fake_machine("lora", gpus=0, smi="missing", torch_cuda="None")
    assert rc == 0, err
    assert "bin/python -m tinystories.cli lora" in launch and "--use_cpu true" in launch


@pytest.mark.parametrize(
    ("args", "visible", "message"),
    [
        (["NUM_GPUS=4"], "3", "NUM_GPUS=4 but torch sees 1 GPU(s) (CUDA_VISIBLE_DEVICES=3)"),
        (["ACCELERATE=single_gpu", "NUM_GPUS=8"], None, "ACCELERATE=single_gpu runs one process"),
        (["ACCELERATE=deepspeed_zero2"], "", "ACCELERATE=deepspeed_zero2 launches on GPUs but torch"),
    ],
)
def test_launches_that_would_not_run_name_the_fix(fake_machine, args, visible, message):
    rc, launch, err, _ = fake_machine("train", "SIZE=1M", *args, visible=visible)
    assert rc != 0 and launch == ""
    assert message in err


def test_a_given_config_gets_the_visible_gpu_count(fake_machine):
    rc, launch, err, _ = fake_machine("train", "SIZE=1M", "ACCELERATE=deepspeed_zero3", visible="0,1,2,3")
    assert rc == 0, err
    assert "--config_file accelerate_configs/deepspeed_zero3.yaml --num_processes 4 " in launch


def test_cpu_process_configs_keep_their_process_count(fake_machine):
    rc, launch, err, calls = fake_machine("train", "SIZE=1M", "ACCELERATE=cpu_ddp")
    assert rc == 0, err
    assert "--config_file accelerate_configs/cpu_ddp.yaml --num_processes 2 " in launch
    assert calls == []  # a CPU launcher given: torch is not asked


def test_help_and_test_do_not_ask_torch(fake_machine):
    for target in ("help", "test"):
        rc, _, err, calls = fake_machine(target)
        assert rc == 0, err
        assert calls == [], target
