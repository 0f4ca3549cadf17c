"""The one fine-tuning core under `tinystories sft` and `tinystories lora`.

Arguments (base model, data, card samples; TRL's `SFTConfig` with recipe defaults; TRL's `ModelConfig` for
attention, PEFT and quantization), data preparation (Instruct examples → `prompt`/`completion`, or plain
stories → `text`), base loading, the trainer (`SFTTrainer` + the pretraining Trainer's bits-per-byte
logging) and the label checks. SFT is this path without PEFT; LoRA/DoRA/QLoRA is the same path with the
PEFT and quantization configurations TRL builds from `ModelConfig` (`get_peft_config`,
`get_quantization_config`).

Data is TinyStories-Instruct text: instruction lines (`Features:`, `Words:`, `Summary:`,
`Random sentence:`) then `Story:` and the story (`tinystories.instruct`). Each example is split into a
`prompt` (the instructions up to and including `Story:\\n`) and a `completion` (the story); TRL then masks
the prompt tokens to -100 and appends EOS to the completion, so the loss is on the story and its end only,
and generation learns to stop. Packing uses TRL's `wrapped` strategy (its default `bfd` packs padding-free,
which needs per-sequence position ids that GPT-Neo's attention ignores).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field

import torch
from datasets import DatasetDict
from peft import prepare_model_for_kbit_training
from transformers import set_seed
from trl import ModelConfig, SFTConfig, SFTTrainer, get_peft_config, get_quantization_config

from tinystories.core import TRAINED_CONTEXT, ConfigError
from tinystories.data import load_stories
from tinystories.instruct import parse_example, split_prompt_completion
from tinystories.metrics import num_utf8_bytes
from tinystories.modeling import load_model
from tinystories.paths import display_path, resolve_hub_id
from tinystories.runtime import PRECISIONS, resolve_precision
from tinystories.tokenizer import load_tokenizer
from tinystories.training import (
    BitsPerByteTrainer,
    TokensPerSecondCallback,
    finish_run,
    prepare_run,
    print_summary,
    run_record,
)

logger = logging.getLogger(__name__)

DEFAULT_BASE = "roneneldan/TinyStories-33M"
DEFAULT_INSTRUCT_DATA = "roneneldan/TinyStoriesInstruct"
GPT_NEO_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"]
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
            "help": "PEFT: base model name written to adapter_config.json (default: the Hub id, or a relative path)"
        },
    )
    merge: bool = field(
        default=True, metadata={"help": "PEFT: also write the merged model to <output_dir>/merged"}
    )


@dataclass
class FinetuneModelConfig(ModelConfig):
    """TRL's `ModelConfig` with GPT-Neo defaults: the project's SDPA attention, LoRA on all six projections.

    `--use_peft true` turns SFT into LoRA (`use_dora`, `use_rslora`, `lora_modules_to_save` ... as in TRL);
    `--load_in_4bit true` loads the frozen base in 4-bit (QLoRA: bitsandbytes and a CUDA GPU).
    """

    attn_implementation: str | None = field(default="sdpa", metadata={"help": "sdpa, flex or eager"})
    lora_target_modules: list[str] | None = field(
        default_factory=lambda: list(GPT_NEO_TARGET_MODULES),
        metadata={
            "help": "modules to adapt (GPT-Neo: q_proj k_proj v_proj out_proj c_fc c_proj), or all-linear"
        },
    )
    use_bnb_nested_quant: bool = field(
        default=True, metadata={"help": "double quantization of the 4-bit constants"}
    )


@dataclass
class TinyStoriesSFTConfig(SFTConfig):
    """TRL's `SFTConfig` with recipe defaults: 512-token context, wrapped packing, precision from the hardware.

    TRL turns bf16 on whenever fp16 is off, also on a CPU. Here `precision: auto` (the default) follows
    `tinystories.runtime.resolve_precision`; `bf16`/`fp16` set explicitly win.
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

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}: use {', '.join(PRECISIONS)}")
        if self.bf16 is None and not self.fp16:
            self.bf16, self.fp16 = resolve_precision(self.precision, use_cpu=bool(self.use_cpu))
        super().__post_init__()


# ---------------------------------------------------------------------------------------------- checks
def validate_training_args(training_args: SFTConfig, model_context: int | None = None) -> None:
    """Errors that would otherwise surface after loading data (or as wrong numbers)."""
    if training_args.max_length is None or training_args.max_length < 16:
        raise ConfigError("--max_length must be set (at least 16; the recipes use 512, the trained context)")
    if model_context is not None and training_args.max_length > model_context:
        raise ConfigError(
            f"--max_length {training_args.max_length} is longer than the base model's "
            f"{model_context} position embeddings: use --max_length {min(model_context, TRAINED_CONTEXT)}"
        )
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
            raise ConfigError("--lora_target_modules is empty: use q_proj k_proj v_proj out_proj c_fc c_proj")
    if model_config.load_in_4bit or model_config.load_in_8bit:
        check_quantization_available()


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


# ------------------------------------------------------------------------------------------------ data
def instruct_fraction(dataset, text_column: str = "text", n: int = 200) -> float:
    """Fraction of the first `n` examples that are Instruct-formatted (have a `Story:` line)."""
    texts = dataset.select(range(min(n, len(dataset))))[text_column]
    ok = 0
    for text in texts:
        try:
            parse_example(text)
            ok += 1
        except ValueError:
            pass
    return ok / max(1, len(texts))


def to_prompt_completion(dataset, text_column: str = "text"):
    """Instruct examples -> `prompt` (instructions + `Story:\\n`) and `completion` (the story) columns.

    Examples without a `Story:` line or with an empty story are dropped (and counted in the log).
    """

    def convert(batch):
        prompts, completions = [], []
        for text in batch[text_column]:
            try:
                prompt, story = split_prompt_completion(text)
            except ValueError:
                continue
            if story.strip():
                prompts.append(prompt)
                completions.append(story.strip())
        return {"prompt": prompts, "completion": completions}

    converted = dataset.map(
        convert, batched=True, remove_columns=dataset.column_names, desc="splitting prompt / story"
    )
    dropped = len(dataset) - len(converted)
    if dropped:
        logger.warning("dropped %d of %d examples without a 'Story:' line or story", dropped, len(dataset))
    return converted, dropped


def _as_text(dataset, text_column: str):
    if text_column != "text":
        dataset = dataset.rename_column(text_column, "text")
    return dataset.select_columns(["text"])


def prepare_data(args: FinetuneArguments) -> tuple[DatasetDict, str]:
    """(DatasetDict with prompt/completion (Instruct) or text (plain stories) columns, the format used)."""
    raw = load_stories(
        args.data,
        validation_fraction=args.validation_fraction,
        text_column=args.text_column,
        eval_data=args.eval_data,
        revision=args.data_revision,
        max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples,
    )
    instruct_share = instruct_fraction(raw["train"], args.text_column)
    fmt = args.data_format
    if fmt == "auto":
        fmt = "instruct" if instruct_share >= 0.5 else "stories"
        logger.info("data format detected: %s", fmt)
    elif fmt == "instruct" and instruct_share < 0.5:
        raise ConfigError(
            f"DATA {args.data!r} does not look like TinyStories-Instruct data (most examples have no 'Story:' line): "
            "pass Instruct data (e.g. roneneldan/TinyStoriesInstruct or `make data DATA_RECIPE=instruct`), "
            "or use `make lora` with --data_format stories to fine-tune on plain stories"
        )
    if fmt == "stories":
        return DatasetDict({s: _as_text(raw[s], args.text_column) for s in ("train", "validation")}), fmt
    out = {split: to_prompt_completion(raw[split], args.text_column)[0] for split in ("train", "validation")}
    for split, ds in out.items():
        if len(ds) == 0:
            raise ConfigError(f"no usable Instruct examples in the {split} split of {args.data!r}")
    return DatasetDict(out), fmt


# ----------------------------------------------------------------------------------------------- model
def load_base(args: FinetuneArguments, model_config: FinetuneModelConfig):
    """(model, tokenizer) for the base model: safetensors only, fast attention, pad = eos; 4-bit for QLoRA."""
    tokenizer = load_tokenizer(args.tokenizer_name or args.base_model, revision=args.base_revision)
    if tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has no eos_token: stories could not end; use the GPT-Neo tokenizer")
    kwargs = {}
    quantization = get_quantization_config(model_config)
    if quantization is not None:
        kwargs = {
            "quantization_config": quantization,
            "device_map": {"": int(os.environ.get("LOCAL_RANK", "0"))},
        }
    model = load_model(
        args.base_model,
        attn_implementation=model_config.attn_implementation or "sdpa",
        revision=args.base_revision,
        **kwargs,
    )
    if model.config.vocab_size < len(tokenizer):
        raise ConfigError(
            f"the tokenizer has {len(tokenizer)} tokens but the model only {model.config.vocab_size}: "
            "pass the tokenizer the base model was trained with (--tokenizer_name)"
        )
    return model, tokenizer


def qlora_compute_dtype(model_config: FinetuneModelConfig) -> None:
    """QLoRA computes in bf16 where the GPU has it, else fp16 (the 4-bit weights are dequantized to it)."""
    if model_config.load_in_4bit and model_config.dtype in (None, "auto", "float32"):
        bf16, _ = resolve_precision("auto")  # the one precision rule: bf16 where the GPU has it, else fp16
        model_config.dtype = "bfloat16" if bf16 else "float16"


# --------------------------------------------------------------------------------------------- trainer
class TinyStoriesSFTTrainer(BitsPerByteTrainer, SFTTrainer):
    """`SFTTrainer` whose eval logs also carry perplexity and bits per byte (the pretraining trainer's logging)."""


def eval_text_stats(dataset, tokenizer) -> tuple[int, int] | None:
    """(loss tokens, UTF-8 bytes) of the eval stories: story tokens + one EOS each, for bits per byte."""
    if dataset is None or len(dataset) == 0:
        return None
    texts = list(dataset["completion" if "completion" in dataset.column_names else "text"])
    tokens = sum(len(ids) + 1 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    return tokens, num_utf8_bytes(texts)


def build_trainer(training_args: SFTConfig, model, tokenizer, data, **kwargs) -> TinyStoriesSFTTrainer:
    """An `SFTTrainer` on `data` (prompt/completion or text columns); `peft_config=` makes it LoRA."""
    validate_training_args(training_args, getattr(model.config, "max_position_embeddings", None))
    eval_set = data["validation"] if "validation" in data and len(data["validation"]) > 0 else None
    if eval_set is None and training_args.eval_strategy != "no":
        logger.warning("no validation data: evaluation is skipped")
        training_args.eval_strategy = "no"
    return TinyStoriesSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=eval_set,
        processing_class=tokenizer,
        callbacks=[TokensPerSecondCallback()],
        eval_text_stats=eval_text_stats(eval_set, tokenizer),
        **kwargs,
    )


def check_labels(trainer, n: int = 8) -> dict[str, int]:
    """Sanity check on the first prepared examples: some tokens are trained, sequences end in EOS."""
    ds = trainer.train_dataset
    eos = trainer.processing_class.eos_token_id
    masked = trained = ends_with_eos = 0
    for row in ds.select(range(min(n, len(ds)))):
        labels = row["labels"]
        masked += sum(1 for t in labels if t == -100)
        trained += sum(1 for t in labels if t != -100)
        ends_with_eos += int(labels[-1] == eos)
    if trained == 0:
        raise ConfigError("every label is masked: the prompts fill max_length; raise --max_length")
    return {"masked": masked, "trained": trained, "ends_with_eos": ends_with_eos}


def adapter_base_name(args: FinetuneArguments) -> str:
    """What `adapter_config.json` records as the base: a Hub id, else a relative path, never an absolute one."""
    if args.adapter_base_name:
        return args.adapter_base_name
    hub_id = resolve_hub_id(args.base_model)
    if hub_id:
        return hub_id
    name = display_path(args.base_model)
    logger.warning(
        "the base model is a local folder: adapter_config.json records %r (relative to the current directory). "
        "Reload the adapter from here, or pass --adapter_base_name <hub id> once the base is on the Hub.",
        name,
    )
    return name


def attach_peft(trainer, args: FinetuneArguments) -> dict[str, int]:
    """Name the adapter's base (Hub id or relative path) and count its parameters."""
    trainer.model.peft_config["default"].base_model_name_or_path = adapter_base_name(args)
    trainable, total = trainer.model.get_nb_trainable_parameters()
    logger.info("LoRA: %d trainable of %d parameters (%.3f%%)", trainable, total, 100 * trainable / total)
    return {"trainable_parameters": trainable, "num_parameters": total}


def peft_hparams(model_config: FinetuneModelConfig) -> dict:
    targets = model_config.lora_target_modules
    return {
        "lora_r": model_config.lora_r,
        "lora_alpha": model_config.lora_alpha,
        "lora_dropout": model_config.lora_dropout,
        "lora_target_modules": targets if isinstance(targets, str) else " ".join(targets),
        "use_dora": model_config.use_dora,
        "use_rslora": model_config.use_rslora,
        "quantization": f"4-bit {model_config.bnb_4bit_quant_type}" if model_config.load_in_4bit else None,
    }


# ---------------------------------------------------------------------------------------------- the run
def run(args: FinetuneArguments, training_args: SFTConfig, model_config: FinetuneModelConfig) -> dict:
    """The fine-tuning pipeline of `tinystories sft` and `tinystories lora` (LoRA: `model_config.use_peft`).

    checks → data → base model (4-bit for QLoRA) → SFTTrainer (+ PEFT) → train → run record → shared tail
    (weights or adapter, card, merged export for an adapter, push). Returns the final metrics.
    """
    validate_model_config(model_config, args)
    validate_training_args(training_args)
    peft, context = model_config.use_peft, min(training_args.max_length, TRAINED_CONTEXT)
    resume, tail = prepare_run(
        training_args,
        num_samples=args.num_samples,
        sample_max_new_tokens=args.sample_max_new_tokens,
        context=context,
        merge_onto=args.base_model if peft and args.merge else None,
        merge_revision=args.base_revision,
        attn_implementation=model_config.attn_implementation or "sdpa",
    )
    set_seed(training_args.seed)
    with training_args.main_process_first(desc="data"):
        data, tail.samples = prepare_data(args)
    logger.info(
        "data (%s): %d train / %d eval examples", tail.samples, len(data["train"]), len(data["validation"])
    )

    qlora_compute_dtype(model_config)
    model, tokenizer = load_base(args, model_config)
    if model_config.load_in_4bit or model_config.load_in_8bit:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=training_args.gradient_checkpointing
        )
    base_config = model.config.to_diff_dict()
    trainer = build_trainer(training_args, model, tokenizer, data, peft_config=get_peft_config(model_config))
    peft_fields = attach_peft(trainer, args) if peft else {}
    if tail.samples == "instruct":
        logger.info("labels of the first examples: %s", check_labels(trainer))
    trainer.train(resume_from_checkpoint=resume)

    run_info = run_record(
        "lora" if peft else "sft",
        trainer,
        model_name=args.model_name,
        base_model=args.base_model,
        datasets=[args.data, args.eval_data],
        tokenizer=args.tokenizer_name or args.base_model,
        context_length=context,
        hparams={
            "max_length": training_args.max_length,
            "packing": training_args.packing,
            "completion_only_loss": tail.samples == "instruct",
            "data_format": tail.samples,
            **(peft_hparams(model_config) if peft else {}),
        },
        data_stats={"train_examples": len(data["train"]), "eval_examples": len(data["validation"])},
        **({"config": base_config, **peft_fields} if peft else {}),
    )
    results = finish_run(trainer, tokenizer, run_info, tail)
    print_summary(results, trainer, label="eval loss (stories)")
    return results
