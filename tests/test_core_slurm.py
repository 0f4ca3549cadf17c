"""The Slurm launcher's decisions (`core/slurm.py`) as unit tests: what the user asked, what Slurm says.

`tests/test_scripts_slurm.py` runs the script end to end through fake sbatch/srun/scontrol.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tinystories.core import ConfigError
from tinystories.core.slurm import SlurmRequest, main, plan_sbatch, plan_slurm_job, plan_task, read_request

REPO = Path(__file__).resolve().parents[1]
SCRIPT = "scripts/slurm_train.sh"
JOB = {"SLURM_JOB_ID": "7", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node-[a-b]"}
HOSTS = ["node-a", "node-b"]
PY = "/venv/bin/python"


def request(*argv, **env):
    return read_request(SCRIPT, argv, env, root=REPO)


def job(*args, size="33M", config="deepspeed_zero2", hosts=HOSTS, **env):
    return plan_slurm_job(SlurmRequest(SCRIPT, size, config, args), {**JOB, **env}, hosts, python=PY)


def value(argv, flag):
    return argv[argv.index(flag) + 1]


# ------------------------------------------------------------------------------ size, config, arguments
def test_no_argument_trains_33M_with_zero2():
    assert request() == SlurmRequest(SCRIPT, "33M", "deepspeed_zero2", ())


def test_arguments_after_the_size_reach_train_one_by_one():
    req = request("8M", "--max_steps", "10", "--run_name", "a b")
    assert (req.size, req.config, req.args) == (
        "8M",
        "deepspeed_zero2",
        ("--max_steps", "10", "--run_name", "a b"),
    )


def test_the_config_comes_from_accelerate_or_the_second_argument():
    assert request("8M", ACCELERATE="deepspeed_zero3").config == "deepspeed_zero3"
    req = request("8M", "multi_gpu", "--max_steps", "10")  # the config-argument form
    assert (req.config, req.args) == ("multi_gpu", ("--max_steps", "10"))
    req = request("8M", "multi_gpu", "x", ACCELERATE="multi_gpu")  # both, the same: fine
    assert (req.config, req.args) == ("multi_gpu", ("x",))
    # a second argument that names no config, or starts with a dash, is the first argument for train
    assert request("8M", "stories", "--max_steps", "1").args == ("stories", "--max_steps", "1")
    assert request("8M", "", ACCELERATE="").config == "deepspeed_zero2"  # ACCELERATE= : the default


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["5M"], {}, "unknown SIZE '5M' (the first argument): valid sizes are 1L-21M, 1M, 28M, 2L-33M, 33M,"),
        (["--max_steps", "10"], {}, "unknown SIZE '--max_steps' (the first argument)"),
        (["33M"], {"ACCELERATE": "zero9"}, "unknown ACCELERATE=zero9: valid configs are cpu, cpu_ddp,"),
        (
            ["33M", "multi_gpu"],
            {"ACCELERATE": "deepspeed_zero3"},
            "ACCELERATE=deepspeed_zero3 and the config argument multi_gpu disagree: give one of them",
        ),
    ],
)
def test_bad_arguments_are_refused_with_the_fix(argv, env, message):
    with pytest.raises(ConfigError) as err:
        request(*argv, **env)
    assert message in str(err.value)


# ------------------------------------------------------------------------------------------ submission
def test_the_submission_passes_sbatch_args_then_the_script_size_config_and_arguments():
    req = SlurmRequest(SCRIPT, "33M", "deepspeed_zero3", ("--run_name", "a b"))
    assert plan_sbatch(req, {"SBATCH_ARGS": "--nodes=2 --comment='x y'"}) == [
        "sbatch", "--nodes=2", "--comment=x y", SCRIPT, "33M", "deepspeed_zero3", "--run_name", "a b",
    ]  # fmt: skip
    assert plan_sbatch(req, {}) == ["sbatch", SCRIPT, "33M", "deepspeed_zero3", "--run_name", "a b"]
    with pytest.raises(ConfigError, match="SBATCH_ARGS=--comment='x: No closing quotation; close the quote"):
        plan_sbatch(req, {"SBATCH_ARGS": "--comment='x"})


# ------------------------------------------------------------------------------------------------ the job
def test_the_job_runs_one_task_per_node_with_every_argument():
    launch = job("--max_steps", "10", "--run_name", "a b", SLURM_GPUS_ON_NODE="4")
    assert launch.argv == [
        "srun", "--kill-on-bad-exit=1",
        PY, "-m", "tinystories.core.slurm", "task", ".venv/bin/accelerate",
        "--config_file", "accelerate_configs/deepspeed_zero2.yaml",
        "--num_machines", "2", "--num_processes", "8",  # 2 nodes x the 4 GPUs Slurm gave each
        "--main_process_ip", "node-a", "--main_process_port", "29500", "--rdzv_backend", "c10d",
        "-m", "tinystories.cli", "train", "--config", "recipes/pretrain/33M.yaml",
        "--output_dir", "outputs/TinyStories-33M", "--max_steps", "10", "--run_name", "a b",
    ]  # fmt: skip
    assert launch.notes == [
        "slurm_train: 2 node(s) x 4 GPU(s) = 8 processes, accelerate_configs/deepspeed_zero2.yaml"
    ]
    assert "'a b'" in launch.line()  # the printed line quotes as the shell would


@pytest.mark.parametrize(
    ("env", "processes"),
    [
        ({}, "16"),  # 8 per node: the script's --gres=gpu:8
        ({"SLURM_GPUS_ON_NODE": "4"}, "8"),
        ({"SLURM_GPUS_ON_NODE": "4", "GPUS_PER_NODE": "2"}, "4"),  # GPUS_PER_NODE wins
        ({"SLURM_NNODES": "3", "SLURM_GPUS_ON_NODE": "1"}, "3"),
    ],
)
def test_processes_are_nodes_times_gpus_per_node(env, processes):
    argv = job(**env).argv
    assert value(argv, "--num_processes") == processes
    assert value(argv, "--num_machines") == env.get("SLURM_NNODES", "2")


def test_main_host_port_cpus_and_venv():
    argv = job(hosts=["gpu-17", *(f"gpu-{i}" for i in range(20000))]).argv
    assert value(argv, "--main_process_ip") == "gpu-17"  # the first host Slurm lists
    assert not any(a.startswith("--cpus-per-task") for a in argv)  # every CPU of each node
    argv = job(MAIN_PORT="29600", CPUS_PER_TASK="32", VENV="/opt/env").argv
    assert value(argv, "--main_process_port") == "29600"
    assert argv[:3] == ["srun", "--kill-on-bad-exit=1", "--cpus-per-task=32"]
    assert argv[argv.index("task") + 1] == "/opt/env/bin/accelerate"


@pytest.mark.parametrize(
    ("env", "hosts", "message"),
    [
        ({"SLURM_NNODES": ""}, HOSTS, "SLURM_NNODES is unset: run this inside a Slurm job"),
        ({"SLURM_NNODES": "two"}, HOSTS, "SLURM_NNODES=two: pass a whole number 1 or more"),
        ({"GPUS_PER_NODE": "0"}, HOSTS, "GPUS_PER_NODE=0: pass a whole number 1 or more"),
        ({"CPUS_PER_TASK": "-4"}, HOSTS, "CPUS_PER_TASK=-4: pass a whole number 1 or more"),
        ({"MAIN_PORT": "70000"}, HOSTS, "MAIN_PORT=70000: pass a whole number from 1 to 65535"),
        ({}, [], "scontrol lists no host in SLURM_JOB_NODELIST=node-[a-b]"),
    ],
)
def test_bad_job_settings_are_refused_with_the_fix(env, hosts, message):
    with pytest.raises(ConfigError) as err:
        job(hosts=hosts, **env)
    assert message in str(err.value)


# ----------------------------------------------------------------------------------------- the node task
def test_each_node_launches_with_its_own_rank():
    args = [
        ".venv/bin/accelerate",
        "--config_file",
        "c.yaml",
        "-m",
        "tinystories.cli",
        "train",
        "--run_name",
        "a b",
    ]
    assert plan_task(args, {"SLURM_NODEID": "3"}) == [
        ".venv/bin/accelerate", "launch", "--machine_rank", "3", *args[1:],
    ]  # fmt: skip
    assert plan_task(args, {"SLURM_NODEID": "0"})[3] == "0"
    with pytest.raises(ConfigError, match="SLURM_NODEID is unset: the task runs on each node under srun"):
        plan_task(args, {})


def test_the_entry_refuses_before_running_anything(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("ACCELERATE", "zero9")
    assert main(["train", SCRIPT, "33M"]) == 2
    assert "error: unknown ACCELERATE=zero9" in capsys.readouterr().err
    assert (
        main(["submit"]) == 2 and "usage: python -m tinystories.core.slurm train" in capsys.readouterr().err
    )
    monkeypatch.delenv("SLURM_NODEID", raising=False)
    assert main(["task", ".venv/bin/accelerate"]) == 2
    assert "error: SLURM_NODEID is unset" in capsys.readouterr().err
