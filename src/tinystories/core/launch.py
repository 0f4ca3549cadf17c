"""How a training stage is launched on this machine: `python -m tinystories.core.launch <stage> [args]`.

`make train`, `make sft` and `make lora` call this; it picks the accelerate config from the GPUs torch sees
(CUDA_VISIBLE_DEVICES respected) unless `--accelerate` names one, counts the processes, refuses what would not
run (each message names the fix), gives a CPU run CPU-sized steps, prints the command, and runs it.

The decision is `plan_launch(request, facts)`, a pure function of what the user asked and what the machine
has (`MachineFacts`), so every device case is a unit test on a CPU.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tinystories.core import ConfigError

CONFIG_DIR = Path("accelerate_configs")
TRAINING_STAGES = ("train", "sft", "lora")
# Without a GPU a recipe's step (1280 x 512 tokens for pretraining, 128 examples for SFT) is out of reach: the
# CPU launcher applies these first (the user's own arguments still win). `--cpu_args ""` keeps the recipe's.
CPU_ARGS = (
    "--per_device_train_batch_size 8 --global_batch_size 8 --eval_steps 50 --save_steps 50 "
    "--max_eval_samples 200 --dataloader_num_workers 0"
)
CUDA_FIX = (
    "install a CUDA build of torch (https://pytorch.org/get-started/locally), fix CUDA_VISIBLE_DEVICES, or pass "
    "ACCELERATE=cpu to train on the CPU"
)


@dataclass(frozen=True)
class MachineFacts:
    """What the launch sees: the GPUs torch lists, its CUDA build, the GPUs nvidia-smi lists."""

    torch_gpus: int = 0
    torch_cuda: str | None = None  # None: a CPU-only torch build
    smi_gpus: int = 0
    visible: str | None = None  # CUDA_VISIBLE_DEVICES as set; None: unset

    @classmethod
    def probe(cls) -> MachineFacts:
        import torch  # here, not at import time: `--help` and the unit tests need no torch

        smi = 0
        if shutil.which("nvidia-smi"):
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
            smi = sum(line.startswith("GPU") for line in out.splitlines())
        return cls(torch.cuda.device_count(), torch.version.cuda, smi, os.environ.get("CUDA_VISIBLE_DEVICES"))


@dataclass(frozen=True)
class LaunchRequest:
    stage: str
    args: tuple[str, ...] = ()
    accelerate: str | None = None  # a file name in accelerate_configs/ without .yaml
    num_gpus: int | None = None
    launch_args: tuple[str, ...] = ()  # reach `accelerate launch` (multi-node: --machine_rank ...)
    cpu_args: tuple[str, ...] = tuple(CPU_ARGS.split())


@dataclass
class Launch:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (env + " " if env else "") + shlex.join(self.argv)


def read_config(name: str, config_dir: Path = CONFIG_DIR) -> dict[str, int]:
    """`num_processes` / `num_machines` of an accelerate config; an unknown name lists the valid ones."""
    path = config_dir / f"{name}.yaml"
    if not path.is_file():
        valid = ", ".join(sorted(p.stem for p in config_dir.glob("*.yaml")))
        raise ConfigError(f"unknown ACCELERATE={name}: valid configs are {valid} (files in {config_dir}/)")
    text = path.read_text()
    found = {key: re.search(rf"^{key}:\s*(\d+)", text, re.M) for key in ("num_processes", "num_machines")}
    return {key: int(m.group(1)) if m else 1 for key, m in found.items()}


def _no_cuda(facts: MachineFacts) -> str:
    said = "" if facts.visible is None else f" (CUDA_VISIBLE_DEVICES={facts.visible})"
    build = " and is a CPU-only build" if facts.torch_cuda is None else ""
    return f"torch sees no CUDA GPU{said}{build}"


def choose_config(req: LaunchRequest, facts: MachineFacts) -> tuple[str, int]:
    """(accelerate config, processes on this machine) for a request, or the refusal that names the fix."""
    gpus = facts.torch_gpus
    if req.accelerate is None:
        hidden = facts.visible is not None and not facts.visible.strip()  # CUDA_VISIBLE_DEVICES= : on purpose
        if gpus == 0 and facts.smi_gpus and not hidden:
            raise ConfigError(f"nvidia-smi lists {facts.smi_gpus} GPUs but {_no_cuda(facts)}: {CUDA_FIX}")
        wanted = req.num_gpus or max(gpus, 1)
        name = "cpu" if gpus == 0 else "single_gpu" if wanted == 1 else "multi_gpu"
    else:
        name = req.accelerate
    config = read_config(name)
    if name.startswith("cpu"):
        return name, req.num_gpus or config["num_processes"]
    if gpus == 0:
        raise ConfigError(f"ACCELERATE={name} launches on GPUs but {_no_cuda(facts)}: {CUDA_FIX}")
    if name == "single_gpu" and req.num_gpus not in (None, 1):
        raise ConfigError(
            f"ACCELERATE=single_gpu runs one process: drop NUM_GPUS={req.num_gpus}, or pass ACCELERATE=multi_gpu"
        )
    processes = 1 if name == "single_gpu" else req.num_gpus or gpus
    if config["num_machines"] == 1 and processes > gpus:
        said = "" if facts.visible is None else f" (CUDA_VISIBLE_DEVICES={facts.visible})"
        raise ConfigError(
            f"NUM_GPUS={processes} but torch sees {gpus} GPU(s){said}: pass NUM_GPUS={gpus} or fewer, or list more "
            "devices in CUDA_VISIBLE_DEVICES"
        )
    return name, processes


def plan_launch(req: LaunchRequest, facts: MachineFacts, python: str = sys.executable) -> Launch:
    """The command (and environment) that runs `req.stage` on the machine `facts` describes."""
    if req.stage not in TRAINING_STAGES:
        raise ConfigError(f"launch runs {', '.join(TRAINING_STAGES)}, not {req.stage!r}")
    name, processes = choose_config(req, facts)
    stage = ["-m", "tinystories.cli", req.stage]
    if name == "cpu":
        argv = [python, *stage, *req.cpu_args, "--use_cpu", "true", *req.args]
        notes = [
            f"no GPU launcher: CPU overrides {' '.join(req.cpu_args) or '(none)'} (CPU_ARGS= keeps the recipe's)"
        ]
        return Launch(argv, notes=notes)
    config = read_config(name)
    launcher = [
        str(Path(python).with_name("accelerate")),
        "launch",
        "--config_file",
        str(CONFIG_DIR / f"{name}.yaml"),
    ]
    if config["num_machines"] == 1:  # a multi-node config holds the total count and is launched as is
        launcher += ["--num_processes", str(processes)]
    cpu_processes = ["--use_cpu", "true"] if name.startswith("cpu") else []  # cpu_ddp, cpu_deepspeed_*
    launch = Launch([*launcher, *req.launch_args, *stage, *req.args, *cpu_processes])
    if "deepspeed" in name and cpu_processes:
        launch.env["DS_ACCELERATOR"] = "cpu"  # DeepSpeed's own accelerator must be the CPU too
    elif name == "single_gpu" and facts.torch_gpus > 1:
        first = (facts.visible or "0").split(",")[0].strip() or "0"
        launch.env["CUDA_VISIBLE_DEVICES"] = first
    launch.notes.append(f"launcher: {name} ({processes} process{'es' if processes > 1 else ''})")
    return launch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tinystories.core.launch", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("stage", choices=TRAINING_STAGES)
    parser.add_argument(
        "--accelerate", default="", help="a config in accelerate_configs/ (default: from the GPUs)"
    )
    parser.add_argument(
        "--num_gpus", default="", help="processes on this machine (default: every visible GPU)"
    )
    parser.add_argument("--launch_args", default="", help="arguments for `accelerate launch` (multi-node)")
    parser.add_argument("--cpu_args", default=CPU_ARGS, help="overrides of a CPU run (default: %(default)s)")
    parser.add_argument("--dry_run", action="store_true", help="print the command, do not run it")
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    ours, rest = parser.parse_args(argv[:split]), argv[split + 1 :]
    try:
        if (ours.num_gpus and not ours.num_gpus.isdigit()) or ours.num_gpus == "0":
            raise ConfigError(f"NUM_GPUS={ours.num_gpus}: pass a positive number of GPUs")
        req = LaunchRequest(
            ours.stage,
            tuple(rest),
            ours.accelerate or None,
            int(ours.num_gpus) if ours.num_gpus else None,
            tuple(shlex.split(ours.launch_args)),
            tuple(shlex.split(ours.cpu_args)),
        )
        launch = plan_launch(req, MachineFacts.probe())
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for note in launch.notes:
        print(note, file=sys.stderr)
    print(f"launch: {launch.line()}", file=sys.stderr)
    if ours.dry_run:
        return 0
    return subprocess.run(launch.argv, env={**os.environ, **launch.env}, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
