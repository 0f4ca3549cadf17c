"""`tinystories sft`: supervised fine-tuning of the Instruct variant with TRL's `SFTTrainer`.

    tinystories sft --config recipes/instruct/sft-33M.yaml [--base_model ...] [--data ...]

Steps: recipe → Instruct data → prompt/completion columns → base model → `SFTTrainer` → shared tail
(`tinystories.training.finish_run`: weights, tokenizer, generation config, metrics, card, push).

Data is TinyStories-Instruct text: instruction lines (`Features:`, `Words:`, `Summary:`,
`Random sentence:`) then `Story:` and the story (`tinystories.instruct`). The default is the Hub
dataset `roneneldan/TinyStoriesInstruct`, whose files are official-format `.txt` (examples separated by
`<|endoftext|>`); local `.txt`/`.jsonl`/`.parquet`/`save_to_disk` data and the project's own synthesized
Instruct data (`make data ... VARIANT=instruct`) work the same way. Each example is split into a
`prompt` (the instructions up to and including `Story:\\n`) and a `completion` (the story); TRL then
masks the prompt tokens to -100 and appends EOS to the completion, so the loss is on the story and its
end only, and generation learns to stop. Packing uses TRL's `wrapped` strategy (its default `bfd` packs
padding-free, which needs per-sequence position ids that GPT-Neo's attention ignores).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl import SFTConfig

from tinystories.config import TRAINED_CONTEXT, ConfigError

logger = logging.getLogger(__name__)

DEFAULT_BASE = "roneneldan/TinyStories-33M"
DEFAULT_INSTRUCT_DATA = "roneneldan/TinyStoriesInstruct"
# Instruct prompts for the sample generations written into the model card.
SAMPLE_PROMPTS: list[dict[str, Any]] = [
    {"words": ["dog", "ball", "happy"], "features": ["Dialogue"]},
    {"summary": "A little girl finds a lost kitten and brings it home.", "features": ["Twist"]},
    {"words": ["tree", "climb", "brave"], "random_sentence": "The wind was very strong that day."},
]


# --------------------------------------------------------------------------------------------- configs
@dataclass
class FinetuneArguments:
    """Base model and data options shared by `tinystories sft` and `tinystories lora`."""

    base_model: str = field(
        default=DEFAULT_BASE, metadata={"help": "Hub id or local dir of the model to fine-tune (BASE=)"}
    )
    base_revision: str | None = field(default=None, metadata={"help": "Hub revision of the base model"})
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "tokenizer Hub id or dir (default: the base model's own)"}
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa, flex or eager"})
    data: str = field(
        default=DEFAULT_INSTRUCT_DATA,
        metadata={"help": "Hub dataset id or local .txt/.jsonl/.json/.parquet/save_to_disk path (DATA=)"},
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


@dataclass
class SFTScriptArguments(FinetuneArguments):
    pass


@dataclass
class TinyStoriesSFTConfig(SFTConfig):
    """TRL's `SFTConfig` with recipe defaults: 512-token context, wrapped packing, precision from the hardware.

    TRL turns bf16 on whenever fp16 is off, also on a CPU. Here `precision: auto` (the default) means bf16
    on a GPU that supports it, fp16 on an older CUDA GPU, fp32 on CPU/MPS; `bf16`/`fp16` set explicitly win.
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
        default="auto", metadata={"help": "auto (bf16/fp16 on a GPU, fp32 on CPU), bf16, fp16, fp32"}
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


PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def resolve_precision(precision: str = "auto", use_cpu: bool = False) -> tuple[bool, bool]:
    """(bf16, fp16) for `precision`; `auto`: bf16 on a bf16 GPU, fp16 on an older CUDA GPU, else fp32."""
    import torch

    if precision == "bf16":
        return True, False
    if precision == "fp16":
        return False, True
    if precision == "fp32" or use_cpu or not torch.cuda.is_available():
        return False, False
    return (True, False) if torch.cuda.is_bf16_supported() else (False, True)


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


# ------------------------------------------------------------------------------------------------ data
def load_example_splits(args: FinetuneArguments):
    """DatasetDict(train, validation) of raw examples in `args.text_column` from any accepted source."""
    from tinystories.data import load_stories

    return load_stories(
        args.data,
        validation_fraction=args.validation_fraction,
        text_column=args.text_column,
        eval_data=args.eval_data,
        revision=args.data_revision,
        max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples,
    )


def to_prompt_completion(dataset, text_column: str = "text"):
    """Instruct examples -> `prompt` (instructions + `Story:\\n`) and `completion` (the story) columns.

    Examples without a `Story:` line or with an empty story are dropped (and counted in the log).
    """
    from tinystories.instruct import split_prompt_completion

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


def instruct_fraction(dataset, text_column: str = "text", n: int = 200) -> float:
    """Fraction of the first `n` examples that are Instruct-formatted (have a `Story:` line)."""
    from tinystories.instruct import parse_example

    texts = dataset.select(range(min(n, len(dataset))))[text_column]
    ok = 0
    for text in texts:
        try:
            parse_example(text)
            ok += 1
        except ValueError:
            pass
    return ok / max(1, len(texts))


def prepare_instruct_data(args: FinetuneArguments):
    """DatasetDict with `prompt`/`completion` columns; raises ConfigError when DATA is not Instruct data."""
    from datasets import DatasetDict

    raw = load_example_splits(args)
    if instruct_fraction(raw["train"], args.text_column) < 0.5:
        raise ConfigError(
            f"DATA {args.data!r} does not look like TinyStories-Instruct data (most examples have no 'Story:' line): "
            "pass Instruct data (e.g. roneneldan/TinyStoriesInstruct or `make data VARIANT=instruct`), "
            "or use `make lora` with --data_format stories to fine-tune on plain stories"
        )
    out = {}
    for split in ("train", "validation"):
        out[split], _ = to_prompt_completion(raw[split], args.text_column)
        if len(out[split]) == 0:
            raise ConfigError(f"no usable Instruct examples in the {split} split of {args.data!r}")
    return DatasetDict(out)


# ----------------------------------------------------------------------------------------------- model
def load_base(args: FinetuneArguments, **model_kwargs):
    """(model, tokenizer) for the base model: safetensors only, fast attention, pad = eos."""
    from tinystories.modeling import load_model
    from tinystories.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer_name or args.base_model, revision=args.base_revision)
    if tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has no eos_token: stories could not end; use the GPT-Neo tokenizer")
    model = load_model(
        args.base_model,
        attn_implementation=args.attn_implementation,
        revision=args.base_revision,
        **model_kwargs,
    )
    if model.config.vocab_size < len(tokenizer):
        raise ConfigError(
            f"the tokenizer has {len(tokenizer)} tokens but the model only {model.config.vocab_size}: "
            "pass the tokenizer the base model was trained with (--tokenizer_name)"
        )
    return model, tokenizer


def model_context(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


# --------------------------------------------------------------------------------------- card samples
def sample_generations(model, tokenizer, n: int, max_new_tokens: int = 200, seed: int = 0) -> list[dict]:
    """A few Instruct-prompted stories for the model card ({prompt, completion})."""
    from tinystories.generate import generate_story
    from tinystories.instruct import build_prompt

    samples = []
    for i, fields in enumerate(SAMPLE_PROMPTS[: max(0, n)]):
        prompt = build_prompt(**fields)
        story = generate_story(model, tokenizer, prompt, max_new_tokens=max_new_tokens, seed=seed + i)
        samples.append({"prompt": prompt.strip(), "completion": story.strip()})
    return samples


def plain_sample_generations(
    model, tokenizer, n: int, max_new_tokens: int = 200, seed: int = 0
) -> list[dict]:
    """Story-beginning samples, for models fine-tuned on plain stories."""
    from tinystories.generate import generate_story

    beginnings = [
        "Once upon a time, there was a little girl named Lily.",
        "Tom and his dog went to the park.",
    ]
    samples = []
    for i, prompt in enumerate(beginnings[: max(0, n)]):
        story = generate_story(model, tokenizer, prompt, max_new_tokens=max_new_tokens, seed=seed + i)
        samples.append({"prompt": prompt, "completion": story.strip()})
    return samples


def hyperparameters(training_args: SFTConfig, extra: dict | None = None) -> dict[str, Any]:
    world = max(1, int(os.environ.get("WORLD_SIZE", "1")))
    hp = {
        "learning_rate": training_args.learning_rate,
        "lr_scheduler_type": str(
            getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type)
        ),
        "warmup_steps": training_args.warmup_steps,
        "weight_decay": training_args.weight_decay,
        "adam_beta1": training_args.adam_beta1,
        "adam_beta2": training_args.adam_beta2,
        "per_device_train_batch_size": training_args.per_device_train_batch_size,
        "gradient_accumulation_steps": training_args.gradient_accumulation_steps,
        "effective_batch_size": training_args.per_device_train_batch_size
        * training_args.gradient_accumulation_steps
        * world,
        "num_train_epochs": training_args.num_train_epochs,
        "max_steps": training_args.max_steps if training_args.max_steps > 0 else None,
        "max_length": training_args.max_length,
        "packing": training_args.packing,
        "completion_only_loss": True,
        "precision": "bf16" if training_args.bf16 else ("fp16" if training_args.fp16 else "fp32"),
        "seed": training_args.seed,
    }
    hp.update(extra or {})
    return hp


def run_info_for(
    stage: str,
    args: FinetuneArguments,
    training_args: SFTConfig,
    model,
    tokenizer,
    samples: list[dict],
    extra_hparams: dict | None = None,
) -> dict[str, Any]:
    from tinystories.cards import public_name, resolve_hub_id

    base_hub_id = resolve_hub_id(args.base_model)
    datasets = [args.data] + ([args.eval_data] if args.eval_data else [])
    return {
        "stage": stage,
        "model_name": args.model_name or Path(training_args.output_dir).name,
        "base_model": base_hub_id or public_name(args.base_model),
        "datasets": datasets,
        "tokenizer": args.tokenizer_name or args.base_model,
        "context_length": min(training_args.max_length or TRAINED_CONTEXT, TRAINED_CONTEXT),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "hyperparameters": hyperparameters(training_args, extra_hparams),
        "samples": samples,
    }


# ------------------------------------------------------------------------------------------- trainer
def _trainer_class():
    """`SFTTrainer` whose eval logs also carry perplexity and bits per byte (the pretraining trainer's logging)."""
    from trl import SFTTrainer

    from tinystories.training import BitsPerByteTrainer

    class TinyStoriesSFTTrainer(BitsPerByteTrainer, SFTTrainer):
        pass

    return TinyStoriesSFTTrainer


def completion_bytes_per_token(dataset, tokenizer) -> float | None:
    """UTF-8 bytes per loss token of the stories (story tokens + one EOS each), for bits per byte."""
    if dataset is None or "completion" not in dataset.column_names or len(dataset) == 0:
        return None
    texts = list(dataset["completion"])
    n_tokens = sum(len(ids) + 1 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    return sum(len(t.encode("utf-8")) for t in texts) / n_tokens


def build_trainer(args: FinetuneArguments, training_args: SFTConfig, model, tokenizer, data, **kwargs):
    """An `SFTTrainer` on `data` (prompt/completion or text columns); `model` may be a PEFT model."""
    from tinystories.training import TokensPerSecondCallback

    validate_training_args(training_args, model_context(model))
    eval_set = data["validation"] if "validation" in data and len(data["validation"]) > 0 else None
    if eval_set is None and training_args.eval_strategy != "no":
        logger.warning("no validation data: evaluation is skipped")
        training_args.eval_strategy = "no"
    return _trainer_class()(
        model=model,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=eval_set,
        processing_class=tokenizer,
        callbacks=[TokensPerSecondCallback()],
        eval_bytes_per_token=completion_bytes_per_token(eval_set, tokenizer),
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


def prepare_run(training_args: SFTConfig) -> tuple[str | None, bool]:
    """(checkpoint to resume from, push?) — checked before any data is read. Turns Trainer's own push off:
    the shared tail pushes the finished folder (weights, card, metrics) once."""
    from tinystories.training import resolve_resume

    validate_training_args(training_args)
    push = bool(training_args.push_to_hub)
    if push:  # token and repo are checked before any data is read
        from tinystories.hub import check_push_ready

        check_push_ready(training_args.hub_model_id)
    training_args.push_to_hub = False
    resume = resolve_resume(
        training_args.output_dir, training_args.resume_from_checkpoint, training_args.overwrite_output_dir
    )
    return resume, push


# ---------------------------------------------------------------------------------------------- main
def run(args: SFTScriptArguments, training_args: TinyStoriesSFTConfig) -> dict[str, Any]:
    """load data → base model → SFTTrainer → train → shared tail. Returns the final metrics."""
    from transformers import set_seed

    from tinystories.training import finish_run, print_summary

    resume, push = prepare_run(training_args)
    set_seed(training_args.seed)
    with training_args.main_process_first(desc="data"):
        data = prepare_instruct_data(args)
    logger.info("SFT data: %d train / %d eval examples", len(data["train"]), len(data["validation"]))
    model, tokenizer = load_base(args)
    trainer = build_trainer(args, training_args, model, tokenizer, data)
    logger.info("labels of the first examples: %s", check_labels(trainer))
    trainer.train(resume_from_checkpoint=resume)

    samples = []
    if args.num_samples and trainer.is_world_process_zero():
        samples = sample_generations(trainer.model, tokenizer, args.num_samples, args.sample_max_new_tokens)
    run_info = run_info_for("sft", args, training_args, trainer.model, tokenizer, samples)
    run_info["data_stats"] = {"train_examples": len(data["train"]), "eval_examples": len(data["validation"])}
    results = finish_run(
        trainer,
        tokenizer,
        training_args.output_dir,
        run_info,
        push=push,
        hub_model_id=training_args.hub_model_id,
        hub_private=bool(training_args.hub_private_repo),
        context=min(training_args.max_length, TRAINED_CONTEXT),
    )
    print_summary(results, training_args.output_dir, trainer, label="eval loss (stories)")
    return results


def main(argv: list[str] | None = None) -> int:
    from tinystories.config import parse_args, setup_logging

    args, training_args = parse_args([SFTScriptArguments, TinyStoriesSFTConfig], argv)
    setup_logging()
    run(args, training_args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
