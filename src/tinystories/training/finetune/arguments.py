"""What `tinystories sft` and `tinystories lora` accept, and the checks that run before any data is read."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field

import torch
from trl import ModelConfig, SFTConfig

from tinystories.core import TRAINED_CONTEXT, ConfigError
from tinystories.core.arguments import (
    AttentionArguments,
    TrainingData,
    check_choice,
    check_exists,
    check_fraction,
    check_min,
    check_positive,
)
from tinystories.models.sizes import BLOCK_LINEARS
from tinystories.training.arguments import TrainingRunArguments

logger = logging.getLogger(__name__)


DEFAULT_BASE = "roneneldan/TinyStories-33M"
DEFAULT_INSTRUCT_DATA = "roneneldan/TinyStoriesInstruct"
GPT_NEO_TARGET_MODULES = BLOCK_LINEARS["gpt_neo"]
DATA_FORMATS = ("auto", "instruct", "stories")


# --------------------------------------------------------------------------------------------- configs
@dataclass
class FinetuneArguments(TrainingData):
    """Base model, data and card options of `tinystories sft` and `tinystories lora` (--data, --eval_data,
    --tokenizer (default: the base model's own), --text_column, held-out and sample limits: `TrainingData`)."""

    base_model: str = field(
        default=DEFAULT_BASE, metadata={"help": "Hub id or local dir of the model to fine-tune (BASE=)"}
    )
    base_revision: str | None = field(default=None, metadata={"help": "Hub revision of the base model"})
    data_format: str = field(
        default="instruct",
        metadata={
            "help": "instruct (loss on the story after the instructions), stories (plain text), or auto"
        },
    )
    feature_min_share: float = field(
        default=0.0,
        metadata={
            "help": "repeat training examples whose Features: line holds a rarer feature until each feature "
            "is in about this share of them (0: no repeats)"
        },
    )
    feature_absent_min_share: float = field(
        default=0.0,
        metadata={
            "help": "repeat training examples whose Features: line names other features but not F until, for "
            "every F, such lines are about this share of them, so that a feature left out of the line is "
            "seen often enough to mean 'not this feature' (0: no repeats)"
        },
    )
    feature_alone_min_share: float = field(
        default=0.0,
        metadata={
            "help": "repeat training examples whose Features: line names F alone until, for every F, such lines "
            "are about this share of them: the evaluation asks for one feature at a time (0: no repeats)"
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

    def check(self):
        check_choice("data_format", self.data_format, DATA_FORMATS)
        for flag in ("feature_min_share", "feature_absent_min_share", "feature_alone_min_share"):
            check_fraction(flag, getattr(self, flag), open_low=False)
        check_min("num_samples", self.num_samples, 0)
        check_min("sample_max_new_tokens", self.sample_max_new_tokens, 1)
        check_min("loss_chunk_size", self.loss_chunk_size, 1)

    def check_paths(self):
        check_exists("base_model", self.base_model, "pass a local model folder or a Hub id (BASE=)")


@dataclass
class FinetuneModelConfig(AttentionArguments, ModelConfig):
    """TRL's `ModelConfig` with GPT-Neo defaults: the project's SDPA attention, LoRA on all six projections.

    `--use_peft true` turns SFT into LoRA (`use_dora`, `use_rslora`, `lora_modules_to_save` ... as in TRL);
    `--load_in_4bit true` loads the frozen base in 4-bit (QLoRA: bitsandbytes and a CUDA GPU).
    """

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

    def check(self):  # TRL's LoRA numbers, refused where they are parsed
        check_min("lora_r", self.lora_r, 1, "pass a rank such as --lora_r 16")
        check_positive("lora_alpha", self.lora_alpha, "pass a positive --lora_alpha such as 32")
        check_fraction("lora_dropout", self.lora_dropout, open_low=False)


@dataclass
class TinyStoriesSFTConfig(TrainingRunArguments, SFTConfig):
    """TRL's `SFTConfig` with recipe defaults: 512-token context, wrapped packing; run, precision and batch
    options as in pretraining (`TrainingRunArguments`: TRL turns bf16 on whenever fp16 is off, also on a CPU;
    here `--precision auto` follows `core.runtime.resolve_precision`). `--optim muon` is a full fine-tune only.
    """

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

    def check_run(self) -> None:
        super().check_run()
        check_min("max_length", self.max_length, 16, "pass --max_length 16 or more (the recipes: 512)")
        check_min("dataset_num_proc", self.dataset_num_proc, 1)


# ------------------------------------------------------------------------------ LoRA's defaults (`tinystories lora`)
@dataclass
class LoraScriptArguments(FinetuneArguments):
    data_format: str = field(
        default="auto",
        metadata={
            "help": "instruct (loss on the story after the instructions), stories (plain text), or auto"
        },
    )


@dataclass
class LoraModelConfig(FinetuneModelConfig):
    use_peft: bool = field(default=True, metadata={"help": "train a LoRA adapter (false: full fine-tuning)"})


@dataclass
class TinyStoriesLoraConfig(TinyStoriesSFTConfig):
    learning_rate: float = field(
        default=1e-3, metadata={"help": "LoRA tolerates a larger lr than full fine-tuning"}
    )


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
    if model_config.model_name_or_path and model_config.model_name_or_path != args.base_model:
        raise ConfigError(  # TRL's name for the base model: the CLI routes it to --base_model
            f"model_name_or_path {model_config.model_name_or_path!r} and --base_model {args.base_model!r} name two "
            "models: pass the model to fine-tune as --base_model only"
        )
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
