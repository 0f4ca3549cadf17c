"""Pretraining as a library: the recipe's arguments, the model it builds, the data it trains on.

`tinystories.stages.train` is the entry point that runs these steps; `recipes/pretrain/<SIZE>.yaml` sets them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, PreTrainedModel, TrainingArguments

from tinystories.core import ConfigError
from tinystories.core.runtime import export_mixed_precision, resolve_precision
from tinystories.data.loading import load_stories
from tinystories.data.packing import PackStats, cap_blocks, pack_dataset
from tinystories.data.tokenizer import DEFAULT_TOKENIZER, prepare_tokenizer
from tinystories.models.loading import check_attn_implementation, install_attention, load_model
from tinystories.models.losses import use_fused_cross_entropy
from tinystories.models.sizes import ARCHITECTURES, SIZES, build_config, size_names
from tinystories.training.optimizers import MuonArguments, check_muon

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
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
    loss_chunk_size: int | None = field(
        default=None,
        metadata={
            "help": "rows per chunk of the fused loss (default: per device, 256 on a CPU, 4096 on a GPU)"
        },
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
    max_eval_tokens: int | None = field(
        default=None,
        metadata={
            "help": "evaluate on at most this many tokens (whole blocks): a very long story is cut there"
        },
    )
    on_decode_error: str = field(
        default="fail",
        metadata={
            "help": "a .txt story with bytes that are not UTF-8: fail (naming file and byte), skip, replace"
        },
    )
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
class PretrainConfig(MuonArguments, TrainingArguments):
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
    # DDP: every parameter gets a gradient (no unused-parameter search), and the attention `bias` buffers
    # (constant masks, 16 MB for a released checkpoint) are not broadcast every forward
    ddp_find_unused_parameters: bool | None = False
    ddp_broadcast_buffers: bool | None = False
    # the other ranks wait at a barrier while the main process downloads and tokenizes the data (2.12M
    # stories the first time): 3 hours instead of 30 minutes (or pre-tokenize: --prepare_only true)
    ddp_timeout: int = 10800
    global_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "sequences per optimizer step across all processes; sets gradient_accumulation_steps"
        },
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "replace a finished run in output_dir"}
    )
    max_minutes: float | None = field(
        default=None,
        metadata={
            "help": "stop after this many minutes of training (then evaluate, save, card as at max_steps)"
        },
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "auto (bf16 on a native-bf16 GPU, fp16 on an older CUDA GPU, else fp32), bf16, fp16, fp32"
        },
    )
    data_cache_shared: bool = field(
        default=True,
        metadata={
            "help": "the datasets cache is shared by all nodes: only the global main process tokenizes "
            "(false: node-local caches, one tokenization per node)"
        },
    )
    prepare_only: bool = field(
        default=False,
        metadata={"help": "download and tokenize the data into the cache, then exit (run once, unlaunched)"},
    )

    def __post_init__(self):
        self.resolve_muon()  # `--optim muon`: the Trainer is told AdamW, `create_optimizer` builds Muon + AdamW
        if not (self.bf16 or self.fp16):  # explicit --bf16/--fp16 win over --precision
            self.bf16, self.fp16 = resolve_precision(self.precision, use_cpu=bool(self.use_cpu))
        export_mixed_precision(self.bf16, self.fp16)
        super().__post_init__()


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
    if model_args.model_name_or_path:
        model = load_model(model_args.model_name_or_path, attn_implementation=model_args.attn_implementation)
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
    if model_args.size is not None and model_args.size not in SIZES and not model_args.model_name_or_path:
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
    if data_args.max_eval_tokens is not None and data_args.max_eval_tokens < 1:
        raise ConfigError(f"--max_eval_tokens {data_args.max_eval_tokens}: give a positive number of tokens")
    if args.max_minutes is not None and args.max_minutes <= 0:
        raise ConfigError(
            f"--max_minutes {args.max_minutes}: give a positive number of minutes, or leave it unset"
        )


def prepare_data(data_args: DataArguments, args: PretrainConfig):
    """(tokenizer, train blocks, eval blocks or None, train stats, eval stats): stories → tokenizer → packing."""
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
        on_decode_error=data_args.on_decode_error,
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
        return f"{data_args.tokenizer_name} trimmed to {len(tokenizer)}"
    return data_args.tokenizer_name


__all__ = ["DataArguments", "ModelArguments", "PackStats", "PretrainConfig", "build_model", "prepare_data"]
