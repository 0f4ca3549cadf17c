"""`scripts/slurm_train.sh` without Slurm: fake `sbatch`/`srun`/`scontrol` record the argv they get.

The job side runs in a copy of the submit folder (configs, recipes, a `.venv` whose python is this one and whose
`accelerate` is a fake), so the argv that reaches `accelerate launch` on a node is checked argument by argument.
Every decision is unit-tested in `tests/test_core_slurm.py`; these runs show the script, the Python entry, srun's
per-node task and the quoting hold together.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm_train.sh"
RECORD = '#!/bin/bash\nprintf "%s\\0" "$@" > "$FAKE_DIR/{name}.args"\n'
FAKES = {
    "sbatch": RECORD.format(name="sbatch"),
    "scontrol": '#!/bin/bash\n[ "$*" = "show hostnames node-[a-b]" ] && printf "node-a\\nnode-b\\n"\n'
    'for ((i = 0; i < ${FAKE_MORE_HOSTS:-0}; i++)); do echo "node-$i"; done\n',
    # srun: record, drop its own options, run the task as the second node would
    "srun": RECORD.format(name="srun")
    + 'while [[ ${1:-} == --* ]]; do shift; done\nSLURM_NODEID=1 exec "$@"\n',
}
USER_ARGS = ["33M", "--max_steps", "10", "--run_name", "a b"]
TRAIN_TAIL = ["--max_steps", "10", "--run_name", "a b"]


def _executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def slurm(tmp_path):
    """`run(args, job=..., **env)` → (CompletedProcess, {program: argv}) in a fake submit folder."""
    submit = tmp_path / "submit"
    shutil.copytree(REPO / "accelerate_configs", submit / "accelerate_configs")
    shutil.copytree(REPO / "recipes" / "pretrain", submit / "recipes" / "pretrain")
    _executable(submit / ".venv" / "bin" / "accelerate", RECORD.format(name="accelerate"))
    _executable(submit / ".venv" / "bin" / "python", f'#!/bin/bash\nexec {sys.executable} "$@"\n')
    for name, text in FAKES.items():
        _executable(tmp_path / "bin" / name, text)

    def run(args, job=False, **extra):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
        for name in ("ACCELERATE", "VENV", "GPUS_PER_NODE", "CPUS_PER_TASK", "MAIN_PORT"):
            env.pop(name, None)
        env.update(PATH=f"{tmp_path / 'bin'}:{env['PATH']}", FAKE_DIR=str(tmp_path), **extra)
        cwd = submit
        if job:  # inside the job: Slurm starts a copy of the script, elsewhere, with these set
            env.update(
                SLURM_JOB_ID="7",
                SLURM_NNODES="2",
                SLURM_JOB_NODELIST="node-[a-b]",
                SLURM_SUBMIT_DIR=str(submit),
            )
            cwd = tmp_path
        proc = subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True)
        argv = {p.stem: p.read_text().split("\0")[:-1] for p in tmp_path.glob("*.args")}
        return proc, argv

    return run


def test_submission_keeps_every_argument_and_names_the_config(slurm, tmp_path):
    proc, argv = slurm(USER_ARGS, SBATCH_ARGS="--nodes=2 --gres=gpu:4")
    assert proc.returncode == 0, proc.stderr
    assert argv["sbatch"] == ["--nodes=2", "--gres=gpu:4", str(SCRIPT), "33M", "deepspeed_zero2", *TRAIN_TAIL]
    assert (tmp_path / "submit" / "outputs" / "slurm").is_dir()  # Slurm's --output folder


def test_each_node_launches_with_its_rank_and_the_arguments_given(slurm):
    proc, argv = slurm(
        ["33M", "deepspeed_zero3", *TRAIN_TAIL], job=True, SLURM_GPUS_ON_NODE="4", CPUS_PER_TASK="32",
        FAKE_MORE_HOSTS="20000",  # a long node list: the first host is still node-a
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert argv["accelerate"] == [
        "launch", "--machine_rank", "1",  # this node's SLURM_NODEID, read on the node
        "--config_file", "accelerate_configs/deepspeed_zero3.yaml",
        "--num_machines", "2", "--num_processes", "8",  # 2 nodes x the 4 GPUs Slurm gave each
        "--main_process_ip", "node-a", "--main_process_port", "29500", "--rdzv_backend", "c10d",
        "-m", "tinystories.cli", "train", "--config", "recipes/pretrain/33M.yaml",
        "--output_dir", "outputs/TinyStories-33M", *TRAIN_TAIL,
    ]  # fmt: skip
    assert argv["srun"][:2] == ["--kill-on-bad-exit=1", "--cpus-per-task=32"]
    assert "slurm_train: 2 node(s) x 4 GPU(s) = 8 processes" in proc.stderr


def test_bad_arguments_fail_before_submitting(slurm):
    proc, argv = slurm(["33M", "multi_gpu"], ACCELERATE="deepspeed_zero3")
    assert proc.returncode == 2 and "disagree: give one of them" in proc.stderr
    assert "sbatch" not in argv
    proc, argv = slurm(["33M"], VENV="missing")
    assert proc.returncode == 2 and "missing/bin/python not found: run `make install`" in proc.stderr
    assert "sbatch" not in argv


def test_no_fixed_cpu_count_is_requested():
    """`--cpus-per-task=64` kept the job off every node with fewer CPUs."""
    assert "--cpus-per-task" not in "".join(
        line for line in SCRIPT.read_text().splitlines() if line.startswith("#SBATCH")
    )
