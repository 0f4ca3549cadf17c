"""The run record: the hyperparameters and facts of a run, written as `card_info.json` for its card."""

from __future__ import annotations

import os
from typing import Any

from transformers import Trainer, TrainingArguments

from tinystories.core import TRAINED_CONTEXT
from tinystories.core.paths import public_name, resolve_hub_id
from tinystories.core.runtime import precision_name


# ---------------------------------------------------------------------------------------- run record
def hyperparameters(args: TrainingArguments, trainer: Trainer, **extra: Any) -> dict[str, Any]:
    """The training hyperparameters of a run, as its card and run record show them."""
    per_device, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
    return {
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
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "hyperparameters": hyperparameters(args, trainer, **(hparams or {})),
    }
    record.update(fields)
    return record
