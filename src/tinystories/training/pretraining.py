"""Pretraining as a library: the recipe's arguments, the model it builds, the data it trains on.

`tinystories.stages.train` is the entry point that runs these steps; `recipes/pretrain/<SIZE>.yaml` sets them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, PreTrainedModel, TrainingArguments

from tinystories.core import ConfigError
from tinystories.core.arguments import (
    AttentionArguments,
    TrainingData,
    VocabularyArguments,
    check_exists,
    check_min,
)
from tinystories.data.loading import load_stories
from tinystories.data.packing import PackStats, cap_blocks, pack_dataset
from tinystories.data.tokenizer import DEFAULT_TOKENIZER, prepare_tokenizer
from tinystories.models.loading import check_attn_implementation, install_attention, load_model
from tinystories.models.losses import use_fused_cross_entropy
from tinystories.models.sizes import ARCHITECTURES, SIZES, build_config, size_names
from tinystories.training.arguments import TrainingRunArguments
from tinystories.training.optimizers import check_muon

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments(AttentionArguments):
    size: str | None = field(default="33M", metadata={"help": f"released size: {size_names()}"})
    architecture: str = field(
        default="gpt_neo",
        metadata={
            "help": "gpt_neo (the released models) or llama (RMSNorm, SwiGLU, RoPE, GQA; matched non-embedding "
            "parameters: models/sizes.py)"
        },
    )
    hidden_size: int | None = field(default=None, metadata={"help": "override the width (paper's grid)"})
    num_layers: int | None = field(default=None, metadata={"help": "override the depth (paper's grid)"})
    num_heads: int | None = field(
        default=None, metadata={"help": "attention heads (released: 16; fewer, wider heads suit tiny widths)"}
    )
    base_model: str | None = field(
        default=None,
        metadata={"help": "continue pretraining from this checkpoint (Hub id or dir) instead of a new model"},
    )
    max_position_embeddings: int | None = field(
        default=None, metadata={"help": "position table size; default: block_size (the trained context)"}
    )
    fused_cross_entropy: bool = field(
        default=True,
        metadata={"help": "chunked LM-head + cross-entropy: never materialises the (tokens, vocab) logits"},
    )
    loss_chunk_size: int | None = field(
        default=None,
        metadata={
            "help": "rows per chunk of the fused loss (default: per device, 256 on a CPU, 4096 on a GPU)"
        },
    )

    def check(self):
        for flag in ("hidden_size", "num_layers", "num_heads", "loss_chunk_size"):
            check_min(flag, getattr(self, flag), 1, f"pass a positive --{flag}, or leave it unset")
        check_min("max_position_embeddings", self.max_position_embeddings, 2)

    def check_paths(self):
        check_exists(
            "base_model", self.base_model, "pass a local model folder or a Hub id, or leave it unset"
        )


@dataclass
class DataArguments(TrainingData, VocabularyArguments):
    """--data, --eval_data, --tokenizer, --text_column, held-out and sample limits (`TrainingData`), the
    vocabulary (`VocabularyArguments`), and how stories become training sequences."""

    max_eval_tokens: int | None = field(
        default=None,
        metadata={
            "help": "evaluate on at most this many tokens (whole blocks): a very long story is cut there"
        },
    )
    block_size: int = field(default=512, metadata={"help": "tokens per training sequence (paper: 512)"})
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "processes that tokenize the data (default: one)"}
    )

    def check(self):
        check_min("block_size", self.block_size, 2)
        check_min("preprocessing_num_workers", self.preprocessing_num_workers, 1)
        check_min(
            "max_eval_tokens", self.max_eval_tokens, 1, "give a positive number of tokens, or leave it unset"
        )


@dataclass
class PretrainConfig(TrainingRunArguments, TrainingArguments):
    """TrainingArguments with the paper's defaults (33M card); run, precision and batch options:
    `TrainingRunArguments` (shared with fine-tuning)."""

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
    prepare_only: bool = field(
        default=False,
        metadata={"help": "download and tokenize the data into the cache, then exit (run once, unlaunched)"},
    )


def configure_batch(args: TrainingArguments) -> None:
    """`global_batch_size` (sequences per optimizer step, all processes) → gradient_accumulation_steps.

    The same recipe then takes the same optimizer steps on 1 or 8 GPUs (pretraining, SFT and LoRA). When
    the processes alone already exceed it (LoRA's 32 on 8 GPUs of 16), each takes global / processes."""
    total = getattr(args, "global_batch_size", None)
    if not total:
        return
    world = args.world_size
    if total < args.per_device_train_batch_size * world and total % world == 0:
        logger.info(
            "global_batch_size %d on %d processes: per_device_train_batch_size %d -> %d",
            total,
            world,
            args.per_device_train_batch_size,
            total // world,
        )
        args.per_device_train_batch_size = total // world
    per_step = args.per_device_train_batch_size * world
    if total % per_step:
        raise ConfigError(
            f"global_batch_size {total} is not a multiple of per_device_train_batch_size × "
            f"processes = {per_step}: change one of them"
        )
    args.gradient_accumulation_steps = total // per_step


def build_model(model_args: ModelArguments, data_args: DataArguments, tokenizer) -> PreTrainedModel:
    if model_args.base_model:
        model = load_model(model_args.base_model, attn_implementation=model_args.attn_implementation)
    else:
        config = new_config(model_args, data_args, tokenizer)
        # the class itself, not `from_config`: under ZeRO-3 `from_config` builds inside `deepspeed.zero.Init`,
        # which initialises other weights than one process does (a <=33M model needs no sharded construction)
        model = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)](config)
        model = install_attention(model, model_args.attn_implementation)
    if model_args.fused_cross_entropy:
        use_fused_cross_entropy(model, chunk_size=model_args.loss_chunk_size)
    return model


def new_config(model_args: ModelArguments, data_args: DataArguments, tokenizer):
    return build_config(
        size=None if size_label(model_args) == "custom" else model_args.size,
        hidden_size=model_args.hidden_size,
        num_layers=model_args.num_layers,
        vocab_size=len(tokenizer),
        max_position_embeddings=model_args.max_position_embeddings or data_args.block_size,
        eos_token_id=tokenizer.eos_token_id,
        architecture=model_args.architecture,
        **({"num_heads": model_args.num_heads} if model_args.num_heads else {}),
    )


def validate(model_args: ModelArguments, data_args: DataArguments, args: PretrainConfig) -> None:
    """Everything that can be checked before data is read or a model is built."""
    if model_args.size is not None and model_args.size not in SIZES and not model_args.base_model:
        raise ConfigError(f"unknown size {model_args.size!r}: valid sizes are {size_names()}")
    check_attn_implementation(model_args.attn_implementation)
    if model_args.architecture not in ARCHITECTURES:
        raise ConfigError(
            f"unknown --architecture {model_args.architecture!r}: use one of {', '.join(ARCHITECTURES)}"
        )
    if model_args.loss_chunk_size is not None and model_args.loss_chunk_size < 1:
        raise ConfigError(f"--loss_chunk_size {model_args.loss_chunk_size}: give a positive row count")
    limit = model_args.max_position_embeddings
    if limit and data_args.block_size > limit:
        raise ConfigError(f"block_size {data_args.block_size} exceeds max_position_embeddings {limit}")
    check_muon(args)


def prepare_data(data_args: DataArguments, args: PretrainConfig):
    """(tokenizer, train blocks, eval blocks or None, train stats, eval stats): stories → tokenizer → packing."""
    stories = load_stories(
        data_args.data,
        validation_fraction=data_args.validation_fraction,
        seed=args.seed,
        text_column=data_args.text_column,
        eval_data=data_args.eval_data,
        revision=data_args.data_revision,
        config_name=data_args.data_config,
        max_train_samples=data_args.max_train_samples,
        max_eval_samples=data_args.max_eval_samples,
        num_proc=data_args.preprocessing_num_workers,
        on_decode_error=data_args.on_decode_error,
    )
    tokenizer = prepare_tokenizer(
        data_args.tokenizer or DEFAULT_TOKENIZER,
        stories["train"],
        args.output_dir,
        vocab_size=data_args.vocab_size,
        train_tokenizer=data_args.train_tokenizer,
        text_column=data_args.text_column,
        num_proc=data_args.preprocessing_num_workers,
    )
    pack = dict(
        block_size=data_args.block_size,
        num_proc=data_args.preprocessing_num_workers,
        text_column=data_args.text_column,
        return_stats=True,
    )
    train_set, train_stats = pack_dataset(stories["train"], tokenizer, **pack)
    eval_set, eval_stats = pack_dataset(stories["validation"], tokenizer, **pack)
    eval_set = cap_blocks(eval_set, eval_stats, data_args.max_eval_tokens)
    if len(train_set) == 0:
        raise ConfigError(
            f"the training data holds {train_stats.tokens} tokens, less than one block of {data_args.block_size}: "
            "add data or lower --block_size"
        )
    if len(eval_set) == 0:
        logger.warning("validation data is shorter than one block: evaluation is skipped")
        eval_set, args.eval_strategy = None, "no"
    logger.info("train: %s", train_stats.to_dict())
    return tokenizer, train_set, eval_set, train_stats, eval_stats


def size_label(model_args: ModelArguments) -> str | None:
    """The released size a run reproduces, or "custom" for a width/depth of the paper's grid."""
    return model_args.size if not (model_args.hidden_size and model_args.num_layers) else "custom"


def tokenizer_label(data_args: DataArguments, tokenizer) -> str:
    if data_args.train_tokenizer:
        return f"own byte-level BPE of {len(tokenizer)} tokens"
    if data_args.vocab_size:
        return f"{data_args.tokenizer or DEFAULT_TOKENIZER} trimmed to {len(tokenizer)}"
    return data_args.tokenizer or DEFAULT_TOKENIZER


__all__ = ["DataArguments", "ModelArguments", "PackStats", "PretrainConfig", "build_model", "prepare_data"]
