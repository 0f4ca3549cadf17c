"""Pretrain a GPT-Neo TinyStories model: `tinystories train --config recipes/pretrain/33M.yaml`.

load recipe → load stories → tokenizer (base / trimmed / trained) → pack → build the released config
→ Trainer (resumes from the newest checkpoint by itself) → shared tail (save, card, push).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

import torch
from transformers import GPTNeoForCausalLM, TrainingArguments, set_seed

from tinystories.config import ConfigError, parse_args, setup_logging
from tinystories.data import PackedCollator, load_stories, pack_dataset
from tinystories.losses import use_fused_cross_entropy
from tinystories.modeling import check_attn_implementation, install_attention, load_model
from tinystories.sizes import SIZES, build_config, count_non_embedding_params, size_names
from tinystories.tokenizer import DEFAULT_TOKENIZER, prepare_tokenizer
from tinystories.training import (
    BitsPerByteTrainer,
    TokensPerSecondCallback,
    finish_run,
    print_summary,
    resolve_resume,
)

logger = logging.getLogger("tinystories.pretrain")


@dataclass
class ModelArguments:
    size: str | None = field(default="33M", metadata={"help": f"released size: {size_names()}"})
    hidden_size: int | None = field(default=None, metadata={"help": "override the width (paper's grid)"})
    num_layers: int | None = field(default=None, metadata={"help": "override the depth (paper's grid)"})
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "continue pretraining from a checkpoint (Hub id or dir) instead of a new model"},
    )
    max_position_embeddings: int | None = field(
        default=None, metadata={"help": "position table size; default: block_size (the trained context)"}
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa (default), flex (GPU) or eager"})
    fused_cross_entropy: bool = field(
        default=True,
        metadata={"help": "chunked LM-head + cross-entropy: never materialises the (tokens, vocab) logits"},
    )


@dataclass
class DataArguments:
    dataset_name: str = field(default="roneneldan/TinyStories", metadata={"help": "Hub id or local path"})
    dataset_config_name: str | None = None
    dataset_revision: str | None = None
    eval_dataset_name: str | None = field(
        default=None, metadata={"help": "separate eval data (else validation split)"}
    )
    text_column: str = "text"
    validation_fraction: float = field(
        default=0.1, metadata={"help": "held out of local data without a split"}
    )
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    block_size: int = field(default=512, metadata={"help": "tokens per training sequence (paper: 512)"})
    preprocessing_num_workers: int | None = None
    tokenizer_name: str = field(default=DEFAULT_TOKENIZER, metadata={"help": "Hub id or local dir"})
    vocab_size: int | None = field(
        default=None, metadata={"help": "trim to the K most frequent tokens (paper: 10000), or the BPE size"}
    )
    train_tokenizer: bool = field(
        default=False, metadata={"help": "train an own byte-level BPE of --vocab_size"}
    )


@dataclass
class PretrainConfig(TrainingArguments):
    """TrainingArguments with the paper's defaults (33M card) and a few recipe conveniences."""

    output_dir: str = "outputs/pretrain"
    learning_rate: float = 5e-4
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    lr_scheduler_type: str = "constant"
    per_device_train_batch_size: int = 80
    per_device_eval_batch_size: int = 80
    gradient_accumulation_steps: int = 16
    num_train_epochs: float = 1.0
    logging_steps: int = 10
    eval_strategy: str = "steps"
    eval_steps: int = 200
    save_steps: int = 200
    save_total_limit: int | None = 3
    report_to: None | str | list[str] = "tensorboard"  # noqa: RUF036 (HfArgumentParser needs None first)
    include_num_input_tokens_seen: str = "all"  # packed blocks hold no padding (and pad == eos)
    global_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "sequences per optimizer step across all processes; sets gradient_accumulation_steps"
        },
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "replace a finished run in output_dir"}
    )
    precision: str = field(
        default="auto", metadata={"help": "auto (bf16 on a bf16 GPU, else fp32), bf16, fp16, fp32"}
    )


def configure_precision(args: PretrainConfig) -> None:
    if args.precision not in ("auto", "bf16", "fp16", "fp32"):
        raise ConfigError(f"unknown precision {args.precision!r}: use auto, bf16, fp16 or fp32")
    on_gpu = torch.cuda.is_available() and not args.use_cpu
    if args.precision == "auto" and not (args.bf16 or args.fp16):
        args.bf16 = on_gpu and torch.cuda.is_bf16_supported()
    elif args.precision == "bf16":
        args.bf16 = True
    elif args.precision == "fp16":
        args.fp16 = True


def configure_batch(args: PretrainConfig) -> None:
    if not args.global_batch_size:
        return
    per_step = args.per_device_train_batch_size * args.world_size
    if args.global_batch_size % per_step:
        raise ConfigError(
            f"global_batch_size {args.global_batch_size} is not a multiple of per_device_train_batch_size × "
            f"processes = {per_step}: change one of them"
        )
    args.gradient_accumulation_steps = args.global_batch_size // per_step


def build_model(model_args: ModelArguments, data_args: DataArguments, tokenizer) -> GPTNeoForCausalLM:
    if model_args.model_name_or_path:
        model = load_model(model_args.model_name_or_path, attn_implementation=model_args.attn_implementation)
    else:
        model = GPTNeoForCausalLM(new_config(model_args, data_args, tokenizer))
        model = install_attention(model, model_args.attn_implementation)
    if model_args.fused_cross_entropy:
        use_fused_cross_entropy(model)
    return model


def new_config(model_args: ModelArguments, data_args: DataArguments, tokenizer):
    return build_config(
        size=model_args.size if not (model_args.hidden_size and model_args.num_layers) else None,
        hidden_size=model_args.hidden_size,
        num_layers=model_args.num_layers,
        vocab_size=len(tokenizer),
        max_position_embeddings=model_args.max_position_embeddings or data_args.block_size,
        eos_token_id=tokenizer.eos_token_id,
    )


def validate(model_args: ModelArguments, data_args: DataArguments, args: PretrainConfig) -> None:
    """Everything that can be checked before data is read or a model is built."""
    if model_args.size is not None and model_args.size not in SIZES and not model_args.model_name_or_path:
        raise ConfigError(f"unknown size {model_args.size!r}: valid sizes are {size_names()}")
    check_attn_implementation(model_args.attn_implementation)
    limit = model_args.max_position_embeddings
    if limit and data_args.block_size > limit:
        raise ConfigError(f"block_size {data_args.block_size} exceeds max_position_embeddings {limit}")
    if args.push_to_hub:
        from tinystories.hub import check_push_ready

        check_push_ready(args.hub_model_id)


def main(argv: list[str] | None = None) -> int:
    model_args, data_args, args = parse_args((ModelArguments, DataArguments, PretrainConfig), argv)
    setup_logging()
    validate(model_args, data_args, args)
    configure_precision(args)
    configure_batch(args)
    resume = resolve_resume(args.output_dir, args.resume_from_checkpoint, args.overwrite_output_dir)
    push, args.push_to_hub = args.push_to_hub, False  # the shared tail pushes the final folder only
    set_seed(args.seed)

    with args.main_process_first(desc="data"):
        stories = load_stories(
            data_args.dataset_name,
            validation_fraction=data_args.validation_fraction,
            seed=args.seed,
            text_column=data_args.text_column,
            eval_data=data_args.eval_dataset_name,
            revision=data_args.dataset_revision,
            config_name=data_args.dataset_config_name,
            max_train_samples=data_args.max_train_samples,
            max_eval_samples=data_args.max_eval_samples,
            num_proc=data_args.preprocessing_num_workers,
        )
        tokenizer = prepare_tokenizer(
            data_args.tokenizer_name,
            stories["train"],
            args.output_dir,
            vocab_size=data_args.vocab_size,
            train_tokenizer=data_args.train_tokenizer,
            text_column=data_args.text_column,
            num_proc=data_args.preprocessing_num_workers,
        )
        pack = dict(
            block_size=data_args.block_size, num_proc=data_args.preprocessing_num_workers, return_stats=True
        )
        train_set, train_stats = pack_dataset(
            stories["train"], tokenizer, text_column=data_args.text_column, **pack
        )
        eval_set, eval_stats = pack_dataset(
            stories["validation"], tokenizer, text_column=data_args.text_column, **pack
        )
    if len(train_set) == 0:
        raise ConfigError(
            f"the training data holds {train_stats.tokens} tokens, less than one block of {data_args.block_size}: "
            "add data or lower --block_size"
        )
    if len(eval_set) == 0:
        logger.warning("validation data is shorter than one block: evaluation is skipped")
        eval_set, args.eval_strategy = None, "no"
    logger.info("train: %s", train_stats.to_dict())

    model = build_model(model_args, data_args, tokenizer)
    n_params, n_non_emb = model.num_parameters(), count_non_embedding_params(model)
    logger.info("model: %.2fM parameters, %.2fM non-embedding", n_params / 1e6, n_non_emb / 1e6)

    trainer = BitsPerByteTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=PackedCollator(),
        processing_class=tokenizer,
        callbacks=[TokensPerSecondCallback()],
        eval_bytes_per_token=eval_stats.bytes_per_token,
    )
    trainer.train(resume_from_checkpoint=resume)

    run_info = {
        "stage": "pretrain",
        "model_name": os.path.basename(os.path.normpath(args.output_dir)),
        "size": model_args.size if not (model_args.hidden_size and model_args.num_layers) else "custom",
        "config": model.config.to_diff_dict(),
        "num_parameters": n_params,
        "num_non_embedding_parameters": n_non_emb,
        "datasets": [data_args.dataset_name],
        "tokenizer": data_args.tokenizer_name
        if not data_args.vocab_size
        else f"{data_args.tokenizer_name} trimmed to {len(tokenizer)}",
        "hyperparameters": {
            "learning_rate": args.learning_rate,
            "lr_scheduler_type": getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type),
            "weight_decay": args.weight_decay,
            "adam_betas": [args.adam_beta1, args.adam_beta2],
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "num_processes": args.world_size,
            "block_size": data_args.block_size,
            "max_steps": trainer.state.max_steps,
            "train_tokens": trainer.state.num_input_tokens_seen,
            "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
            "seed": args.seed,
        },
        "data_stats": {"train": train_stats.to_dict(), "validation": eval_stats.to_dict()},
    }
    results = finish_run(
        trainer,
        tokenizer,
        args.output_dir,
        run_info,
        push=push,
        hub_model_id=args.hub_model_id,
        hub_private=bool(args.hub_private_repo),
        sample_prompts=["Once upon a time", "Lily and her dog went to the park. They"],
    )
    print_summary(results, args.output_dir, trainer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
