"""Where and in what precision a stage runs: one device rule and one mixed-precision rule for every stage."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

import torch
from transformers.training_args import ParallelMode

from tinystories.core import ConfigError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """`auto`: CUDA, else Apple MPS, else CPU. An explicit device that is not present is a ConfigError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"unknown --device {name!r}: use auto, cpu, cuda, cuda:N or mps") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA GPU is visible: use --device cpu")
    return device


def resolve_dtype(precision: str | None = "auto") -> torch.dtype:
    """The dtype a model runs inference in: `auto` and `fp32` → float32 (exact; a tiny model is fast in it),
    `bf16`, `fp16`; torch's names (`float32`, ...) are accepted as the same."""
    name = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", None: "auto"}.get(precision, precision)
    if name == "auto":
        return torch.float32
    if name not in DTYPES:
        raise ConfigError(f"--precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    return DTYPES[name]


def choose_precision(
    precision: str, use_cpu: bool, cuda_available: bool, bf16_native: bool
) -> tuple[bool, bool]:
    """(bf16, fp16) from the device facts. `auto`: bf16 on a GPU with native bf16 (Ampere and newer), fp16
    on an older CUDA GPU (Turing: T4, RTX 20xx, GTX 16xx emulate bf16, slowly, and SDPA falls back to its
    math kernel there), fp32 on a CPU / MPS or with `use_cpu`."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}: use {', '.join(PRECISIONS)}")
    if precision == "bf16":
        return True, False
    if precision == "fp16":
        return False, True
    if precision == "fp32" or use_cpu or not cuda_available:
        return False, False
    return (True, False) if bf16_native else (False, True)


def resolve_precision(precision: str = "auto", use_cpu: bool = False) -> tuple[bool, bool]:
    """(bf16, fp16) for a training run on this machine (`choose_precision` with its facts)."""
    cuda = torch.cuda.is_available()
    native = cuda and torch.cuda.is_bf16_supported(including_emulation=False)
    return choose_precision(precision, use_cpu, cuda, native)


def export_mixed_precision(bf16: bool, fp16: bool) -> str:
    """Make accelerate train in the resolved precision, whatever the accelerate config says.

    `accelerate launch` exports the config's `mixed_precision` (bf16 in the GPU configs) as
    ACCELERATE_MIXED_PRECISION, and `TrainingArguments` falls back to it when neither bf16 nor fp16 is set:
    `--precision fp32` would train in bf16 while the card says fp32. Called before `TrainingArguments`
    reads it; returns what was exported ("bf16", "fp16" or "no").
    """
    value = "bf16" if bf16 else "fp16" if fp16 else "no"
    os.environ["ACCELERATE_MIXED_PRECISION"] = value
    return value


def precision_name(args) -> str:
    """The precision a TrainingArguments instance trains in, for run records and cards."""
    return "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"


# ------------------------------------------------------------------------------- the devices of a run
@dataclass(frozen=True)
class DeviceFacts:
    """What one training process can see: the CUDA devices torch lists (CUDA_VISIBLE_DEVICES applied)."""

    cuda_names: tuple[str, ...] = ()
    visible: str | None = None  # CUDA_VISIBLE_DEVICES as set; None: unset (every GPU of the machine)
    processes: int = 1  # the run's world size, over all machines
    distributed: bool = False  # launched one process per device (accelerate launch / torchrun)
    use_cpu: bool = False
    mps: bool = False
    torch_cuda: str | None = field(default_factory=lambda: torch.version.cuda)  # None: a CPU-only torch

    @classmethod
    def of_run(cls, args) -> DeviceFacts:
        """The facts of this process for a `TrainingArguments` instance (initializes its distributed state)."""
        launched = "LOCAL_RANK" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1
        count = torch.cuda.device_count()
        env_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
        return cls(
            cuda_names=tuple(torch.cuda.get_device_name(i) for i in range(count)),
            visible=os.environ.get("CUDA_VISIBLE_DEVICES"),
            processes=args.world_size,
            distributed=launched or args.parallel_mode == ParallelMode.DISTRIBUTED,
            use_cpu=bool(args.use_cpu) or env_cpu,
            mps=count == 0
            and getattr(torch.backends, "mps", None) is not None
            and torch.backends.mps.is_available(),
        )


def check_one_process_per_gpu(facts: DeviceFacts) -> None:
    """Several CUDA devices in one process that was not launched distributed is a ConfigError.

    The Trainer would wrap the model in `torch.nn.DataParallel`, whose replicas keep the project's patched
    forward (fused loss, attention) bound to the model on cuda:0 and fail with a device mismatch.
    """
    count = len(facts.cuda_names)
    if count <= 1 or facts.distributed or facts.use_cpu:
        return
    raise ConfigError(
        f"{count} CUDA devices are visible to one process that was not launched distributed, so the Trainer "
        "would use torch.nn.DataParallel, which this project does not support. Launch one process per GPU: "
        "`make train SIZE=...` (or `make sft` / `make lora`: they count the GPUs), or `accelerate launch "
        f"--config_file accelerate_configs/multi_gpu.yaml --num_processes {count} -m tinystories.cli <stage> ...`;"
        " or train on one GPU: `CUDA_VISIBLE_DEVICES=0 tinystories <stage> ...`"
    )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 'es' if word.endswith('s') else 's'}"


def describe_devices(facts: DeviceFacts, precision: str) -> str:
    """The one line a run starts with: which devices, how many processes, which precision."""
    names = facts.cuda_names
    visible = (
        "CUDA_VISIBLE_DEVICES unset" if facts.visible is None else f"CUDA_VISIBLE_DEVICES={facts.visible}"
    )
    if facts.use_cpu:
        unused = f"; {_plural(len(names), 'CUDA device')} left unused" if names else ""
        where = f"CPU (--use_cpu true{unused})"
    elif names:
        kinds = ", ".join(f"{n} x {name}" for name, n in Counter(names).items())
        per_machine = " per machine" if facts.processes > len(names) else ""
        where = f"{kinds}{per_machine} ({visible})"
    elif facts.mps:
        where = "Apple MPS"
    else:
        why = [] if facts.visible is None else [visible]
        if facts.torch_cuda is None:
            why.append(f"torch {torch.__version__} is built without CUDA")
        where = "CPU (" + "; ".join(["no CUDA device visible", *why]) + ")"
    return f"devices: {where}, {_plural(facts.processes, 'process')}, {precision}"
