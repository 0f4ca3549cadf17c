"""Where and in what precision a stage runs: one device rule and one mixed-precision rule for every stage."""

from __future__ import annotations

import torch

from tinystories.core import ConfigError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def resolve_dtype(name: str | None) -> torch.dtype | None:
    """`float32` / `bfloat16` / `float16` (None: the checkpoint's own)."""
    if name is None:
        return None
    if name not in DTYPES:
        raise ConfigError(f"--dtype {name!r}: use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_precision(precision: str = "auto", use_cpu: bool = False) -> tuple[bool, bool]:
    """(bf16, fp16) for a training run. `auto`: bf16 on a bf16 GPU, fp16 on an older CUDA GPU, else fp32."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}: use {', '.join(PRECISIONS)}")
    if precision == "bf16":
        return True, False
    if precision == "fp16":
        return False, True
    if precision == "fp32" or use_cpu or not torch.cuda.is_available():
        return False, False
    return (True, False) if torch.cuda.is_bf16_supported() else (False, True)


def precision_name(args) -> str:
    """The precision a TrainingArguments instance trains in, for run records and cards."""
    return "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
