"""The one fine-tuning core under `tinystories sft` and `tinystories lora`.

Arguments (base model, data, card samples; TRL's `SFTConfig` with recipe defaults; TRL's `ModelConfig` for
attention, PEFT and quantization), data preparation (Instruct examples → `prompt`/`completion`, or plain
stories → `text`), base loading, the trainer (`SFTTrainer` + the pretraining Trainer's bits-per-byte
logging) and the label checks. SFT is this path without PEFT; LoRA/DoRA/QLoRA is the same path with the
PEFT and quantization configurations TRL builds from `ModelConfig` (`get_peft_config`,
`get_quantization_config`).

Data is TinyStories-Instruct text: instruction lines (`Features:`, `Words:`, `Summary:`,
`Random sentence:`) then `Story:` and the story (`tinystories.instruct`). Each example is split into a
`prompt` (the instructions up to and including the `Story: ` line) and a `completion` (the blank line and
the story); TRL then masks
the prompt tokens to -100 and appends EOS to the completion, so the loss is on the story and its end only,
and generation learns to stop. Packing uses TRL's `wrapped` strategy (its default `bfd` packs padding-free,
which needs per-sequence position ids that GPT-Neo's attention ignores).
"""

from tinystories.finetune.arguments import (
    DATA_FORMATS,
    DEFAULT_BASE,
    DEFAULT_INSTRUCT_DATA,
    GPT_NEO_TARGET_MODULES,
    FinetuneArguments,
    FinetuneModelConfig,
    TinyStoriesSFTConfig,
    check_quantization_available,
    validate_model_config,
    validate_training_args,
)
from tinystories.finetune.data import instruct_fraction, prepare_data, to_prompt_completion
from tinystories.finetune.pipeline import run
from tinystories.finetune.trainer import (
    TinyStoriesSFTTrainer,
    adapter_base_name,
    attach_peft,
    build_trainer,
    check_labels,
    eval_text_stats,
    load_base,
    peft_hparams,
    qlora_compute_dtype,
)

__all__ = [
    "DATA_FORMATS",
    "DEFAULT_BASE",
    "DEFAULT_INSTRUCT_DATA",
    "GPT_NEO_TARGET_MODULES",
    "FinetuneArguments",
    "FinetuneModelConfig",
    "TinyStoriesSFTConfig",
    "TinyStoriesSFTTrainer",
    "adapter_base_name",
    "attach_peft",
    "build_trainer",
    "check_labels",
    "check_quantization_available",
    "eval_text_stats",
    "instruct_fraction",
    "load_base",
    "peft_hparams",
    "prepare_data",
    "qlora_compute_dtype",
    "run",
    "to_prompt_completion",
    "validate_model_config",
    "validate_training_args",
]
