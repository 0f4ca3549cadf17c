"""The run record: the hyperparameters and facts of a run, written as `card_info.json` for its card."""

from __future__ import annotations

import os
from typing import Any

from transformers import Trainer, TrainingArguments

from tinystories.core import TRAINED_CONTEXT
from tinystories.core.paths import public_name, resolve_hub_id
from tinystories.core.runtime import precision_name


# ---------------------------------------------------------------------------------------- run record
def num_parameters(model) -> int:
    """The model's parameters, each once: under ZeRO-3 a rank holds only a shard of each (`numel()` is 0
    once DeepSpeed has partitioned it), and the full size is `ds_numel`."""
    return sum(int(getattr(p, "ds_numel", p.numel())) for p in model.parameters())


def throughput(trainer: Trainer) -> dict[str, Any]:
    """Tokens/s over training steps only, all processes and per GPU, and MFU (on a GPU of known peak), from
    the end-of-training log of `TokensPerSecondCallback`; `world_size` is the processes they are over."""
    summary = next((h for h in reversed(trainer.state.log_history) if "train_loss" in h), {})
    record: dict[str, Any] = {"world_size": trainer.args.world_size}
    for key, name in (
        ("train_tokens_per_second", "train_tokens_per_second"),
        ("train_tokens_per_second_per_gpu", "train_tokens_per_second_per_gpu"),
        ("train_mfu", "mfu"),
        ("train_step_runtime", "train_step_seconds"),
    ):
        if summary.get(key) is not None:
            record[name] = summary[key]
    return record


def hyperparameters(args: TrainingArguments, trainer: Trainer, **extra: Any) -> dict[str, Any]:
    """The training hyperparameters of a run, as its card and run record show them."""
    per_device, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
    muon = getattr(args, "muon", False)
    optimizer = "muon" if muon else str(getattr(args.optim, "value", args.optim))
    return {
        "optimizer": optimizer,
        **(
            {"muon_learning_rate": args.muon_learning_rate, "muon_momentum": args.muon_momentum}
            if muon
            else {}
        ),
        "learning_rate": args.learning_rate,
        "lr_scheduler_type": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "warmup_steps": args.warmup_steps,
        "weight_decay": args.weight_decay,
        "adam_betas": [args.adam_beta1, args.adam_beta2],
        "per_device_train_batch_size": per_device,
        "gradient_accumulation_steps": accumulation,
        "num_processes": args.world_size,
        "effective_batch_size": per_device * accumulation * args.world_size,
        "max_steps": trainer.state.max_steps,
        "train_tokens": trainer.state.num_input_tokens_seen,
        "precision": precision_name(args),
        "seed": args.seed,
        **extra,
    }


def run_record(
    stage: str,
    trainer: Trainer,
    *,
    datasets: list[str],
    tokenizer: str,
    model_name: str | None = None,
    base_model: str | None = None,
    context_length: int = TRAINED_CONTEXT,
    hparams: dict[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """What a run was (stage, model, data, tokenizer, hyperparameters): the card's and push's source."""
    args, model = trainer.args, trainer.model
    record = {
        "stage": stage,
        "model_name": model_name or os.path.basename(os.path.normpath(args.output_dir)),
        "base_model": (resolve_hub_id(base_model) or public_name(base_model)) if base_model else None,
        "datasets": [d for d in datasets if d],
        "tokenizer": tokenizer,
        "context_length": context_length,
        "config": model.config.to_diff_dict(),
        "num_parameters": num_parameters(model),
        "hyperparameters": hyperparameters(args, trainer, **(hparams or {})),
        "throughput": throughput(trainer),
    }
    record.update(fields)
    return record
