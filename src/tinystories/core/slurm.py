"""Multi-node pretraining on Slurm: what `scripts/slurm_train.sh` runs.

`python -m tinystories.core.slurm train SCRIPT [SIZE [CONFIG]] [ARGS...]` outside a job (no SLURM_JOB_ID)
makes the log folder and submits SCRIPT with sbatch (SBATCH_ARGS first); inside the job it starts one task per
node with srun, and each task, `python -m tinystories.core.slurm task ACCELERATE [ARGS...]`, runs
`accelerate launch --machine_rank $SLURM_NODEID` with the SLURM_NODEID of its own node.

The decisions are pure functions of what the user asked and what Slurm says (`read_request`, `plan_sbatch`,
`plan_slurm_job`, `plan_task`; the environment is a dict), so every case is a unit test without Slurm.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tinystories.core import ConfigError
from tinystories.core.launch import CONFIG_DIR, Launch, read_config

RECIPES = Path("recipes/pretrain")
LOG_DIR = Path(
    "outputs/slurm"
)  # the script's `#SBATCH --output`: Slurm fails a job whose log folder is missing
DEFAULT_SIZE = "33M"
DEFAULT_CONFIG = "deepspeed_zero2"
DEFAULT_GPUS = 8  # the script's `#SBATCH --gres=gpu:8`, when Slurm does not say SLURM_GPUS_ON_NODE
DEFAULT_PORT = 29500
USAGE = (
    "usage: python -m tinystories.core.slurm train SCRIPT [SIZE [CONFIG]] [ARGS...]\n"
    "       python -m tinystories.core.slurm task ACCELERATE [ARGS...]  (srun's task on each node)"
)


@dataclass(frozen=True)
class SlurmRequest:
    """What `bash scripts/slurm_train.sh SIZE [CONFIG] [ARGS...]` asks for, checked."""

    script: str  # the sbatch script: submitted from outside a job
    size: str  # a recipe in recipes/pretrain/
    config: str  # a config in accelerate_configs/
    args: tuple[str, ...] = ()  # for `tinystories train`, each one argument


def _names(folder: Path) -> str:
    return ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))


def read_request(
    script: str, argv: Sequence[str], env: Mapping[str, str], root: Path = Path(".")
) -> SlurmRequest:
    """The size (first argument, default 33M), the accelerate config (ACCELERATE, or a second argument that
    names a file in accelerate_configs/, default deepspeed_zero2) and the arguments for `tinystories train`."""
    rest = list(argv)
    size = rest.pop(0) if rest else DEFAULT_SIZE
    config = env.get("ACCELERATE") or None
    if rest and not rest[0].startswith("-") and (root / CONFIG_DIR / f"{rest[0]}.yaml").is_file():
        if config not in (None, rest[0]):
            raise ConfigError(
                f"ACCELERATE={config} and the config argument {rest[0]} disagree: give one of them"
            )
        config = rest.pop(0)
    if not (root / RECIPES / f"{size}.yaml").is_file():
        raise ConfigError(
            f"unknown SIZE {size!r} (the first argument): valid sizes are {_names(root / RECIPES)} "
            f"(files in {RECIPES}/; run from the repository root)"
        )
    config = config or DEFAULT_CONFIG
    read_config(config, root / CONFIG_DIR)  # an unknown name lists the valid ones
    return SlurmRequest(script, size, config, tuple(rest))


def _number(env: Mapping[str, str], name: str, low: int = 1, high: int | None = None) -> int | None:
    """An integer setting of the environment, None when unset or empty; a bad one is refused."""
    value = env.get(name, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < low or (high is not None and int(value) > high):
        span = f"from {low} to {high}" if high is not None else f"{low} or more"
        raise ConfigError(f"{name}={value}: pass a whole number {span}")
    return int(value)


def plan_sbatch(req: SlurmRequest, env: Mapping[str, str]) -> list[str]:
    """The submission: sbatch, the words of SBATCH_ARGS, the script, then the size, the config, every argument."""
    try:
        sbatch_args = shlex.split(env.get("SBATCH_ARGS", ""))
    except ValueError as err:
        raise ConfigError(f"SBATCH_ARGS={env['SBATCH_ARGS']}: {err}; close the quote") from None
    return ["sbatch", *sbatch_args, req.script, req.size, req.config, *req.args]


def plan_slurm_job(
    req: SlurmRequest, env: Mapping[str, str], hosts: Sequence[str], python: str = sys.executable
) -> Launch:
    """The job's one line: srun starts one task per node, each task an `accelerate launch` of every GPU there.

    GPUs per node: GPUS_PER_NODE, else SLURM_GPUS_ON_NODE, else 8; processes = nodes x GPUs per node; the main
    process runs on the first host, port MAIN_PORT (29500); CPUS_PER_TASK passes `srun --cpus-per-task`.
    """
    nodes = _number(env, "SLURM_NNODES")
    if nodes is None:
        raise ConfigError("SLURM_NNODES is unset: run this inside a Slurm job (sbatch submits it)")
    if not hosts:
        raise ConfigError(f"scontrol lists no host in SLURM_JOB_NODELIST={env.get('SLURM_JOB_NODELIST', '')}")
    gpus = _number(env, "GPUS_PER_NODE") or _number(env, "SLURM_GPUS_ON_NODE") or DEFAULT_GPUS
    port = _number(env, "MAIN_PORT", 1, 65535) or DEFAULT_PORT
    cpus = _number(env, "CPUS_PER_TASK")
    srun = ["srun", "--kill-on-bad-exit=1", *([f"--cpus-per-task={cpus}"] if cpus else [])]
    accelerate = str(Path(env.get("VENV") or ".venv") / "bin" / "accelerate")
    launch = [
        "--config_file", str(CONFIG_DIR / f"{req.config}.yaml"),
        "--num_machines", str(nodes), "--num_processes", str(nodes * gpus),
        "--main_process_ip", hosts[0], "--main_process_port", str(port), "--rdzv_backend", "c10d",
    ]  # fmt: skip
    train = [
        "-m", "tinystories.cli", "train", "--config", str(RECIPES / f"{req.size}.yaml"),
        "--output_dir", f"outputs/TinyStories-{req.size}", *req.args,
    ]  # fmt: skip
    task = [python, "-m", "tinystories.core.slurm", "task", accelerate]
    note = f"slurm_train: {nodes} node(s) x {gpus} GPU(s) = {nodes * gpus} processes, {launch[1]}"
    return Launch([*srun, *task, *launch, *train], notes=[note])


def plan_task(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """One node's command: `ACCELERATE launch --machine_rank <this node's SLURM_NODEID> ARGS...`."""
    if not argv:
        raise ConfigError(f"task needs the accelerate program to run\n{USAGE}")
    rank = _number(env, "SLURM_NODEID", low=0)
    if rank is None:
        raise ConfigError("SLURM_NODEID is unset: the task runs on each node under srun, not by hand")
    return [argv[0], "launch", "--machine_rank", str(rank), *argv[1:]]


def hostnames(nodelist: str) -> list[str]:
    """The job's hosts in Slurm's order, from `scontrol show hostnames`."""
    if not nodelist:
        raise ConfigError("SLURM_JOB_NODELIST is unset: run this inside a Slurm job (sbatch submits it)")
    command = ["scontrol", "show", "hostnames", nodelist]
    try:
        out = subprocess.run(command, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as err:
        said = getattr(err, "stderr", None) or err
        raise ConfigError(
            f"`{shlex.join(command)}` failed ({str(said).strip()}): run this inside a Slurm job"
        ) from None
    return out.stdout.split()


def _exec(argv: list[str], fix: str) -> None:
    """Replace this process by argv (signals from Slurm reach the program itself)."""
    try:
        os.execvp(argv[0], argv)
    except FileNotFoundError:
        raise ConfigError(f"{argv[0]} not found: {fix}") from None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    env = dict(os.environ)
    if not argv or argv[0] not in ("train", "task") or (argv[0] == "train" and len(argv) < 2):
        print(__doc__.split("\n\n")[0] + "\n" + USAGE, file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    try:
        if argv[0] == "task":
            _exec(plan_task(argv[1:], env), "run `make install` in the submit folder, or set VENV")
            return 0  # not reached
        req = read_request(argv[1], argv[2:], env)
        if not env.get("SLURM_JOB_ID"):  # outside Slurm: submit the script, which comes back here in the job
            LOG_DIR.mkdir(parents=True, exist_ok=True)
            submit = plan_sbatch(req, env)
            print(f"slurm_train: {shlex.join(submit)}", file=sys.stderr)
            _exec(submit, "run this on a Slurm login node")
        launch = plan_slurm_job(req, env, hostnames(env.get("SLURM_JOB_NODELIST", "")))
        print(*launch.notes, f"slurm_train: {launch.line()}", sep="\n", file=sys.stderr)
        _exec(launch.argv, "run this inside a Slurm job")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0  # not reached: _exec replaced this process


if __name__ == "__main__":
    sys.exit(main())
