"""The devices a run uses are the devices the user gave: the device line, the DataParallel refusal, the Makefile.

The GPU cases run on a CPU: the decision functions get fake device facts, and `make -n` runs with a fake
`nvidia-smi` on PATH and a fake venv python that answers the Makefile's torch question as an 8-GPU machine
would (CUDA_VISIBLE_DEVICES applied).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from transformers import TrainingArguments
from transformers.training_args import ParallelMode

from tinystories.core import ConfigError
from tinystories.core.launch import LaunchRequest, MachineFacts, plan_launch
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
    (tmp_path / "s.txt").write_text(
        "Once upon a time.<|endoftext|>The end."
    )  # exists: only the devices are wrong
    argv = ["--size", "1M", "--data", str(tmp_path / "s.txt"), "--output_dir", str(tmp_path / "o")]
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


# ------------------------------------------------------------------ the launcher (core/launch.plan_launch)
def _plan(
    stage="train", *, gpus=8, smi=None, cuda="12.8", visible=None, accelerate=None, num_gpus=None, args=()
):
    facts = MachineFacts(gpus, None if cuda == "None" else cuda, gpus if smi is None else smi, visible)
    req = LaunchRequest(stage, tuple(args), accelerate, num_gpus)
    return plan_launch(req, facts, python="/venv/bin/python")


def _line(launch) -> str:
    return launch.line()


def test_cuda_visible_devices_is_what_is_launched(monkeypatch):
    """CUDA_VISIBLE_DEVICES=3 on an 8-GPU machine: one process on GPU 3, not 8 processes that see one GPU."""
    monkeypatch.chdir(REPO)
    one = _plan(gpus=1, visible="3")
    assert "--config_file accelerate_configs/single_gpu.yaml --num_processes 1 " in _line(one)
    assert "CUDA_VISIBLE_DEVICES" not in one.env  # left as given; the config does not rewrite it either
    two = _plan(gpus=2, visible="2,5")
    assert "--config_file accelerate_configs/multi_gpu.yaml --num_processes 2 " in _line(two)


def test_all_visible_gpus_get_a_process_each(monkeypatch):
    monkeypatch.chdir(REPO)
    line = _line(_plan(gpus=8))
    assert (
        "/venv/bin/accelerate launch --config_file accelerate_configs/multi_gpu.yaml --num_processes 8 "
        in line
    )


def test_num_gpus_1_runs_on_the_first_gpu_given(monkeypatch):
    """NUM_GPUS=1 with CUDA_VISIBLE_DEVICES=4,6: GPU 4 (accelerate's gpu_ids "0" used to move it to GPU 0)."""
    monkeypatch.chdir(REPO)
    launch = _plan(gpus=2, visible="4,6", num_gpus=1)
    assert launch.env == {"CUDA_VISIBLE_DEVICES": "4"}
    assert _line(launch).startswith("CUDA_VISIBLE_DEVICES=4 ")
    assert "--config_file accelerate_configs/single_gpu.yaml --num_processes 1 " in _line(launch)


def test_gpus_without_nvidia_smi_are_still_used(monkeypatch):
    monkeypatch.chdir(REPO)
    line = _line(_plan("sft", gpus=2, smi=0))
    assert "--config_file accelerate_configs/multi_gpu.yaml --num_processes 2 " in line


def test_a_cpu_torch_on_a_gpu_machine_is_an_error_not_a_cpu_run(monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError) as err:
        _plan(gpus=0, smi=8, cuda="None")
    assert "nvidia-smi lists 8 GPUs but torch" in str(err.value) and "CPU-only build" in str(err.value)
    assert "ACCELERATE=cpu" in str(err.value)  # the way to train on the CPU anyway
    launch = _plan(gpus=0, smi=8, cuda="None", accelerate="cpu")
    assert launch.argv[0] == "/venv/bin/python" and "accelerate" not in _line(launch)


def test_gpus_hidden_on_purpose_are_the_cpu_launcher(monkeypatch):
    monkeypatch.chdir(REPO)
    launch = _plan(gpus=0, smi=8, visible="")  # CUDA_VISIBLE_DEVICES= : no GPU
    assert launch.argv[0] == "/venv/bin/python" and "--use_cpu true" in _line(launch)


@pytest.mark.parametrize("stage", ["train", "sft", "lora"])
def test_a_cpu_run_gets_cpu_sized_steps_and_says_so(monkeypatch, stage):
    """No GPU: every training stage gets the CPU overrides first; the user's own arguments come after and win."""
    monkeypatch.chdir(REPO)
    launch = _plan(stage, gpus=0, smi=0, cuda="None", args=("--per_device_train_batch_size", "4"))
    argv = launch.argv
    assert argv[:4] == ["/venv/bin/python", "-m", "tinystories.cli", stage]
    assert argv.index("--global_batch_size") < argv.index("4") and argv[-2:] == [
        "--per_device_train_batch_size",
        "4",
    ]
    assert "--use_cpu" in argv and any(
        "CPU overrides --per_device_train_batch_size 8" in n for n in launch.notes
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"gpus": 1, "visible": "3", "num_gpus": 4},
            "NUM_GPUS=4 but torch sees 1 GPU(s) (CUDA_VISIBLE_DEVICES=3)",
        ),
        ({"accelerate": "single_gpu", "num_gpus": 8}, "ACCELERATE=single_gpu runs one process"),
        (
            {"gpus": 0, "visible": "", "accelerate": "deepspeed_zero2"},
            "ACCELERATE=deepspeed_zero2 launches on GPUs but torch",
        ),
        ({"accelerate": "zero9"}, "unknown ACCELERATE=zero9: valid configs are cpu, cpu_ddp"),
    ],
)
def test_launches_that_would_not_run_name_the_fix(monkeypatch, kwargs, message):
    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError, match=re.escape(message)):
        _plan(**kwargs)


def test_a_given_config_gets_the_visible_gpu_count(monkeypatch):
    monkeypatch.chdir(REPO)
    line = _line(_plan(gpus=4, visible="0,1,2,3", accelerate="deepspeed_zero3"))
    assert "--config_file accelerate_configs/deepspeed_zero3.yaml --num_processes 4 " in line


def test_cpu_process_configs_keep_their_process_count(monkeypatch):
    monkeypatch.chdir(REPO)
    launch = _plan(gpus=0, accelerate="cpu_deepspeed_zero2")
    assert "--config_file accelerate_configs/cpu_deepspeed_zero2.yaml --num_processes 2 " in _line(launch)
    assert launch.argv[-2:] == ["--use_cpu", "true"] and launch.env == {"DS_ACCELERATOR": "cpu"}


def test_a_multi_node_config_is_launched_with_its_total_count(monkeypatch):
    monkeypatch.chdir(REPO)
    launch = plan_launch(
        LaunchRequest("train", ("--config", "x"), "multi_node", launch_args=("--machine_rank", "1")),
        MachineFacts(8, "12.8", 8),
        python="/venv/bin/python",
    )
    assert "--num_processes" not in launch.argv and "accelerate_configs/multi_node.yaml" in launch.argv
    assert launch.argv[launch.argv.index("--machine_rank") + 1] == "1"


def test_the_makefile_passes_the_make_variables_to_the_launcher():
    """`make -n` shows the one launcher line per training target, with the variables users set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    out = subprocess.run(
        ["make", "-n", "sft", "BASE=b", "DATA=d", "ACCELERATE=cpu_ddp", "NUM_GPUS=2", "ARGS=--max_steps 3"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.replace("\\\n", " ")
    line = next(x for x in out.splitlines() if "tinystories.core.launch" in x)
    assert '--accelerate "cpu_ddp" --num_gpus "2"' in line
    assert "sft -- --config recipes/instruct/sft-33M.yaml --base_model b --data d" in " ".join(line.split())
    assert line.rstrip().endswith("--max_steps 3")
