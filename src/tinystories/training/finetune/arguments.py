"""What `tinystories sft` and `tinystories lora` accept, and the checks that run before any data is read."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field

import torch
from trl import ModelConfig, SFTConfig

from tinystories.core import TRAINED_CONTEXT, ConfigError
from tinystories.core.runtime import PRECISIONS, export_mixed_precision, resolve_precision
from tinystories.models.sizes import BLOCK_LINEARS
from tinystories.training.optimizers import MuonArguments

logger = logging.getLogger(__name__)


DEFAULT_BASE = "roneneldan/TinyStories-33M"
DEFAULT_INSTRUCT_DATA = "roneneldan/TinyStoriesInstruct"
GPT_NEO_TARGET_MODULES = BLOCK_LINEARS["gpt_neo"]
DATA_FORMATS = ("auto", "instruct", "stories")


# --------------------------------------------------------------------------------------------- configs
@dataclass
class FinetuneArguments:
    """Base model, data and card options of `tinystories sft` and `tinystories lora`."""

    base_model: str = field(
        default=DEFAULT_BASE, metadata={"help": "Hub id or local dir of the model to fine-tune (BASE=)"}
    )
    base_revision: str | None = field(default=None, metadata={"help": "Hub revision of the base model"})
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "tokenizer Hub id or dir (default: the base model's own)"}
    )
    data: str = field(
        default=DEFAULT_INSTRUCT_DATA,
        metadata={"help": "Hub dataset id or local .txt/.jsonl/.json/.parquet/save_to_disk path (DATA=)"},
    )
    data_format: str = field(
        default="instruct",
        metadata={
            "help": "instruct (loss on the story after the instructions), stories (plain text), or auto"
        },
    )
    eval_data: str | None = field(
        default=None,
        metadata={"help": "separate eval data (default: the data's validation split or a held-out part)"},
    )
    data_revision: str | None = field(default=None, metadata={"help": "Hub revision of the dataset"})
    text_column: str = field(default="text", metadata={"help": "column holding the formatted examples"})
    validation_fraction: float = field(
        default=0.1, metadata={"help": "held out for eval when the data has no validation split"}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "use only the first N train examples"}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "use only the first N eval examples"}
    )
    feature_min_share: float = field(
        default=0.0,
        metadata={
            "help": "repeat training examples whose Features: line holds a rarer feature until each feature "
            "is in about this share of them (MoralValue is in 3.5% of TinyStories; 0: no repeats)"
        },
    )
    feature_absent_min_share: float = field(
        default=0.0,
        metadata={
            "help": "repeat training examples whose Features: line names other features but not F until, for "
            "every F, such lines are about this share of them: a prompt asking for MoralValue is then seen "
            "without Dialogue often enough to mean 'no dialogue' (in the quickstart's records 93% of the "
            "Features: lines list Dialogue; 0: no repeats)"
        },
    )
    feature_alone_min_share: float = field(
        default=0.0,
        metadata={
            "help": "repeat training examples whose Features: line names F alone until, for every F, such lines "
            "are about this share of them: the evaluation asks for one feature at a time, and in the quickstart's "
            "records MoralValue alone is 16 lines (0: no repeats)"
        },
    )
    drop_long_examples: bool = field(
        default=False,
        metadata={
            "help": "drop Instruct training examples longer than max_length instead of truncating them: a "
            "truncated story loses its ending, where a moral or a bad ending is, and then contradicts its "
            "Features: line"
        },
    )
    model_name: str | None = field(
        default=None, metadata={"help": "name for the model card / Hub repo (default: the output dir name)"}
    )
    num_samples: int = field(
        default=3, metadata={"help": "sample generations written into the model card (0 = none)"}
    )
    sample_max_new_tokens: int = field(default=200, metadata={"help": "length cap of each card sample"})
    adapter_base_name: str | None = field(
        default=None,
        metadata={
            "help": "PEFT: base model name written to adapter_config.json (default: the Hub id, or the base folder's absolute path)"
        },
    )
    merge: bool = field(
        default=True, metadata={"help": "PEFT: also write the merged model to <output_dir>/merged"}
    )
    fused_cross_entropy: bool = field(
        default=True,
        metadata={
            "help": "pretraining's chunked LM-head + cross-entropy for the training loss (false: TRL's loss)"
        },
    )
    loss_chunk_size: int | None = field(
        default=None,
        metadata={
            "help": "rows per chunk of the fused loss (default: per device, 256 on a CPU, 4096 on a GPU)"
        },
    )


@dataclass
class FinetuneModelConfig(ModelConfig):
    """TRL's `ModelConfig` with GPT-Neo defaults: the project's SDPA attention, LoRA on all six projections.

    `--use_peft true` turns SFT into LoRA (`use_dora`, `use_rslora`, `lora_modules_to_save` ... as in TRL);
    `--load_in_4bit true` loads the frozen base in 4-bit (QLoRA: bitsandbytes and a CUDA GPU).
    """

    attn_implementation: str | None = field(default="sdpa", metadata={"help": "sdpa, flex or eager"})
    lora_target_modules: list[str] | None = field(
        default_factory=lambda: ["auto"],
        metadata={
            "help": "modules to adapt: auto (every Linear of a block, by the base's architecture: GPT-Neo "
            "q_proj k_proj v_proj out_proj c_fc c_proj; Llama q_proj k_proj v_proj o_proj gate_proj up_proj "
            "down_proj), names, or all-linear"
        },
    )
    use_bnb_nested_quant: bool = field(
        default=True, metadata={"help": "double quantization of the 4-bit constants"}
    )


@dataclass
class TinyStoriesSFTConfig(MuonArguments, SFTConfig):
    """TRL's `SFTConfig` with recipe defaults: 512-token context, wrapped packing, precision from the hardware.

    TRL turns bf16 on whenever fp16 is off, also on a CPU. Here `precision: auto` (the default) follows
    `tinystories.core.runtime.resolve_precision`; `bf16`/`fp16` set explicitly win. `--optim muon` as in
    pretraining (a full fine-tune only).
    """

    output_dir: str | None = field(default="outputs/sft", metadata={"help": "where the run is saved"})
    max_length: int | None = field(default=TRAINED_CONTEXT, metadata={"help": "tokens per training sequence"})
    packing_strategy: str = field(
        default="wrapped", metadata={"help": "'wrapped' (GPT-Neo cannot pack padding-free)"}
    )
    # TRL defaults the deprecated alias `gradient_checkpointing` to True; unset, `activation_checkpointing`
    # (transformers' new name, off by default) decides. `--activation_checkpointing true` trades compute for memory.
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "deprecated alias of activation_checkpointing"}
    )
    include_num_input_tokens_seen: str = field(
        default="non_padding", metadata={"help": "count trained tokens (for tokens/s and the card)"}
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "auto (bf16 on a bf16 GPU, fp16 on an older CUDA GPU, fp32 on CPU/MPS), bf16, fp16, fp32"
        },
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "replace a finished run in output_dir"}
    )
    global_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "examples per optimizer step across all processes; sets gradient_accumulation_steps"
        },
    )
    data_cache_shared: bool = field(
        default=True,
        metadata={"help": "the datasets cache is shared by all nodes (false: node-local caches)"},
    )
    # DDP: every trainable parameter gets a gradient; the constant attention-mask buffers are not broadcast
    ddp_find_unused_parameters: bool | None = False
    ddp_broadcast_buffers: bool | None = False
    ddp_timeout: int = 10800  # the other ranks wait while the main process prepares the data

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}: use {', '.join(PRECISIONS)}")
        if self.bf16 is None and not self.fp16:
            self.bf16, self.fp16 = resolve_precision(self.precision, use_cpu=bool(self.use_cpu))
        export_mixed_precision(bool(self.bf16), bool(self.fp16))
        self.resolve_muon()
        super().__post_init__()


# ---------------------------------------------------------------------------------------------- checks
def validate_training_args(training_args: SFTConfig, model_context: int | None = None) -> None:
    """Errors that would otherwise surface after loading data (or as wrong numbers)."""
    if training_args.max_length is None or training_args.max_length < 16:
        raise ConfigError("--max_length must be set (at least 16; the recipes use 512, the trained context)")
    if model_context is not None and training_args.max_length > model_context:
        logger.warning(
            "max_length %d is longer than the base model's %d position embeddings: training at %d",
            training_args.max_length,
            model_context,
            model_context,
        )
        training_args.max_length = model_context
    if training_args.max_length > TRAINED_CONTEXT:
        logger.warning(
            "max_length %d is past the %d-token context the TinyStories models were trained at",
            training_args.max_length,
            TRAINED_CONTEXT,
        )
    if training_args.packing and training_args.packing_strategy != "wrapped":
        raise ConfigError(
            f"--packing_strategy {training_args.packing_strategy!r} packs padding-free, which GPT-Neo's attention "
            "does not support (sequences would attend across each other): use --packing_strategy wrapped"
        )
    if training_args.padding_free:
        raise ConfigError("--padding_free is not supported by GPT-Neo's attention: remove it")


def validate_model_config(model_config: FinetuneModelConfig, args: FinetuneArguments) -> None:
    """PEFT / quantization settings that cannot run here, named before any data is read."""
    if args.data_format not in DATA_FORMATS:
        raise ConfigError(f"--data_format {args.data_format!r}: use one of {', '.join(DATA_FORMATS)}")
    if model_config.model_name_or_path:  # TRL's name for the base model
        args.base_model = model_config.model_name_or_path
    if model_config.use_peft:
        if model_config.lora_r < 1 or model_config.lora_alpha <= 0:
            raise ConfigError(
                f"--lora_r ({model_config.lora_r}) must be >= 1 and --lora_alpha ({model_config.lora_alpha}) > 0"
            )
        if not 0 <= model_config.lora_dropout < 1:
            raise ConfigError(f"--lora_dropout {model_config.lora_dropout} must be in [0, 1)")
        if not model_config.lora_target_modules:
            raise ConfigError(
                "--lora_target_modules is empty: use auto, or module names such as q_proj v_proj"
            )
    if model_config.load_in_4bit or model_config.load_in_8bit:
        check_quantization_available()


def resolve_target_modules(model_config: FinetuneModelConfig, model_type: str | None) -> None:
    """`auto` → every Linear of a block of the base's architecture (`models.sizes.BLOCK_LINEARS`), in place."""
    targets = model_config.lora_target_modules
    if targets not in (["auto"], "auto"):
        return
    if model_type not in BLOCK_LINEARS:
        raise ConfigError(
            f"--lora_target_modules auto knows {', '.join(BLOCK_LINEARS)} blocks, not {model_type!r}: name the "
            "modules to adapt (or all-linear)"
        )
    model_config.lora_target_modules = list(BLOCK_LINEARS[model_type])


def check_quantization_available() -> None:
    """QLoRA needs bitsandbytes and a CUDA GPU; say so before any data is read."""
    if not torch.cuda.is_available():
        raise ConfigError(
            "--load_in_4bit (QLoRA) needs a CUDA GPU, and none is visible: drop --load_in_4bit "
            "(plain LoRA on a TinyStories model fits a laptop GPU or a CPU)"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            "--load_in_4bit (QLoRA) needs bitsandbytes: `pip install -e .[qlora]` (or drop --load_in_4bit)"
        )
