"""`tinystories lora`: LoRA / QLoRA fine-tuning of a TinyStories checkpoint with PEFT, laptop-sized.

    tinystories lora --config recipes/lora/33M.yaml --base_model roneneldan/TinyStories-33M --data my_stories.txt

Steps: recipe → data (Instruct examples → prompt/completion, or plain stories → text) → base model
(4-bit when `--load_in_4bit`) → `SFTTrainer` with a `LoraConfig` → shared tail
(`tinystories.training.finish_run`) on the adapter in `output_dir` → merged export in `output_dir/merged`.

LoRA adapters sit on GPT-Neo's attention (`q_proj k_proj v_proj out_proj`) and MLP (`c_fc c_proj`)
projections; each adds `r × (in + out)` parameters, i.e. `18·r·hidden` per layer with all six. Mixed
precision follows the hardware (bf16 on a bf16 GPU, fp16 on an older GPU, fp32 on CPU). QLoRA loads the
frozen base in 4-bit NF4 with bitsandbytes and needs a CUDA GPU.

`adapter_config.json` records the base model the adapter is loaded onto. A Hub id is recorded as is.
For a local base (e.g. the quickstart's `outputs/quickstart/pretrain`) the path relative to the
current directory is recorded (never an absolute path), so `AutoPeftModelForCausalLM` reloads it from
the repo root; pass `--adapter_base_name <hub id>` once that base is on the Hub. The merged export is a
plain `transformers` model that needs neither PEFT nor the base.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinystories.config import ConfigError
from tinystories.sft import (
    TRAINED_CONTEXT,
    FinetuneArguments,
    TinyStoriesSFTConfig,
    build_trainer,
    check_labels,
    instruct_fraction,
    load_base,
    load_example_splits,
    plain_sample_generations,
    prepare_run,
    run_info_for,
    sample_generations,
    to_prompt_completion,
)

logger = logging.getLogger(__name__)

GPT_NEO_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"]
DATA_FORMATS = ("auto", "instruct", "stories")


@dataclass
class LoraScriptArguments(FinetuneArguments):
    data_format: str = field(
        default="auto",
        metadata={
            "help": "instruct (loss on the story after the instructions), stories (plain text), or auto"
        },
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA input"})
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(GPT_NEO_TARGET_MODULES),
        metadata={
            "help": "modules to adapt (GPT-Neo: q_proj k_proj v_proj out_proj c_fc c_proj), or all-linear"
        },
    )
    use_rslora: bool = field(default=False, metadata={"help": "rank-stabilised scaling alpha / sqrt(r)"})
    load_in_4bit: bool = field(
        default=False, metadata={"help": "QLoRA: 4-bit base (bitsandbytes + CUDA GPU)"}
    )
    bnb_4bit_quant_type: str = field(default="nf4", metadata={"help": "nf4 or fp4"})
    use_bnb_nested_quant: bool = field(
        default=True, metadata={"help": "double quantization of the 4-bit constants"}
    )
    adapter_base_name: str | None = field(
        default=None,
        metadata={
            "help": "base model name written to adapter_config.json (default: the Hub id, or a relative path)"
        },
    )
    merge: bool = field(default=True, metadata={"help": "also write the merged model to <output_dir>/merged"})


@dataclass
class TinyStoriesLoraConfig(TinyStoriesSFTConfig):
    output_dir: str | None = field(default="outputs/lora", metadata={"help": "where the adapter is saved"})
    learning_rate: float = field(
        default=1e-3, metadata={"help": "LoRA tolerates a larger lr than full fine-tuning"}
    )


# ------------------------------------------------------------------------------------------- checks
def validate_lora_args(args: LoraScriptArguments) -> None:
    if args.data_format not in DATA_FORMATS:
        raise ConfigError(f"--data_format {args.data_format!r}: use one of {', '.join(DATA_FORMATS)}")
    if args.lora_r < 1 or args.lora_alpha <= 0:
        raise ConfigError(f"--lora_r ({args.lora_r}) must be >= 1 and --lora_alpha ({args.lora_alpha}) > 0")
    if not 0 <= args.lora_dropout < 1:
        raise ConfigError(f"--lora_dropout {args.lora_dropout} must be in [0, 1)")
    if not args.lora_target_modules:
        raise ConfigError("--lora_target_modules is empty: use q_proj k_proj v_proj out_proj c_fc c_proj")
    if args.load_in_4bit:
        check_qlora_available()


def check_qlora_available() -> None:
    """QLoRA needs bitsandbytes and a CUDA GPU; say so before any data is read."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            "--load_in_4bit (QLoRA) needs a CUDA GPU, and none is visible: drop --load_in_4bit "
            "(plain LoRA on a TinyStories model fits a laptop GPU or a CPU)"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            "--load_in_4bit (QLoRA) needs bitsandbytes: `pip install -e .[qlora]` (or drop --load_in_4bit)"
        )


def expected_trainable_parameters(config, r: int, target_modules: list[str] | None = None) -> int:
    """LoRA parameters on a GPT-Neo: r × (in + out) per adapted Linear (18·r·hidden per layer with all six)."""
    h, layers = config.hidden_size, config.num_layers
    inner = config.intermediate_size or 4 * h
    shapes = {
        "q_proj": (h, h),
        "k_proj": (h, h),
        "v_proj": (h, h),
        "out_proj": (h, h),
        "c_fc": (h, inner),
        "c_proj": (inner, h),
    }
    targets = (
        GPT_NEO_TARGET_MODULES if target_modules in (None, ["all-linear"], "all-linear") else target_modules
    )
    return layers * sum(r * sum(shapes[t]) for t in targets)


# ------------------------------------------------------------------------------------------- pieces
def lora_config(args: LoraScriptArguments):
    from peft import LoraConfig

    targets = args.lora_target_modules
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules="all-linear" if targets == ["all-linear"] else list(targets),
        bias="none",
        use_rslora=args.use_rslora,
    )


def quantization_kwargs(args: LoraScriptArguments) -> dict[str, Any]:
    """`from_pretrained` kwargs for a 4-bit NF4 base (QLoRA), or {}."""
    if not args.load_in_4bit:
        return {}
    import torch
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=args.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=args.use_bnb_nested_quant,
            bnb_4bit_compute_dtype=compute,
        ),
        "device_map": {"": int(os.environ.get("LOCAL_RANK", "0"))},
    }


def adapter_base_name(args: LoraScriptArguments) -> str:
    """What `adapter_config.json` records as the base: a Hub id, else a relative path, never an absolute one."""
    from tinystories.cards import resolve_hub_id

    if args.adapter_base_name:
        return args.adapter_base_name
    hub_id = resolve_hub_id(args.base_model)
    if hub_id:
        return hub_id
    path = Path(args.base_model).expanduser().resolve()
    try:
        name = path.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        name = path.name
    logger.warning(
        "the base model is a local folder: adapter_config.json records %r (relative to the current directory). "
        "Reload the adapter from here, or pass --adapter_base_name <hub id> once the base is on the Hub.",
        name,
    )
    return name


def prepare_data(args: LoraScriptArguments):
    """DatasetDict with prompt/completion (Instruct) or text (plain stories) columns, and the format used."""
    from datasets import DatasetDict

    raw = load_example_splits(args)
    fmt = args.data_format
    if fmt == "auto":
        fmt = "instruct" if instruct_fraction(raw["train"], args.text_column) >= 0.5 else "stories"
        logger.info("data format detected: %s", fmt)
    if fmt == "instruct":
        out = {
            split: to_prompt_completion(raw[split], args.text_column)[0] for split in ("train", "validation")
        }
        if len(out["train"]) == 0:
            raise ConfigError(
                f"no Instruct examples (with a 'Story:' line) in {args.data!r}: use --data_format stories"
            )
    else:
        out = {}
        for split in ("train", "validation"):
            ds = raw[split]
            if args.text_column != "text":
                ds = ds.rename_column(args.text_column, "text")
            out[split] = ds.select_columns(["text"])
    return DatasetDict(out), fmt


def export_merged(
    args: LoraScriptArguments,
    adapter_dir: str | Path,
    tokenizer,
    run_info: dict[str, Any],
    context: int = TRAINED_CONTEXT,
) -> Path:
    """Reload the saved adapter onto a full-precision base, merge it, and save a plain model in `merged/`.

    Uses the tail's own pieces (generation config, model card) so the export is saved like any other run.
    Reloading from disk (rather than merging the in-memory model) also works after QLoRA, whose in-memory
    base is 4-bit, and proves the saved adapter is complete.
    """
    import torch
    from peft import PeftModel

    from tinystories.cards import write_model_card
    from tinystories.modeling import load_model
    from tinystories.training import generation_config_for

    merged_dir = Path(adapter_dir) / "merged"
    base = load_model(
        args.base_model,
        attn_implementation=args.attn_implementation,
        revision=args.base_revision,
        dtype=torch.float32,
    )
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(merged_dir)  # safetensors
    tokenizer.save_pretrained(merged_dir)
    generation_config_for(tokenizer, context).save_pretrained(merged_dir)
    info = {
        **run_info,
        "stage": "lora-merged",
        "model_name": f"{run_info.get('model_name', 'lora')}-merged",
        "num_parameters": merged.num_parameters(),
        "config": merged.config.to_diff_dict(),
        "tags": ["lora", "peft", "merged"],
    }
    write_model_card(merged_dir, info)
    logger.info("merged model saved to %s", merged_dir)
    return merged_dir


# ---------------------------------------------------------------------------------------------- main
def run(args: LoraScriptArguments, training_args: TinyStoriesLoraConfig) -> dict[str, Any]:
    """data → base (+4-bit) → SFTTrainer(peft_config=LoRA) → train → shared tail → merged export."""
    from transformers import set_seed

    from tinystories.training import finish_run, print_summary

    validate_lora_args(args)
    resume, push = prepare_run(training_args)
    set_seed(training_args.seed)
    with training_args.main_process_first(desc="data"):
        data, fmt = prepare_data(args)
    logger.info(
        "LoRA data (%s): %d train / %d eval examples", fmt, len(data["train"]), len(data["validation"])
    )

    model, tokenizer = load_base(args, **quantization_kwargs(args))
    if args.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=training_args.gradient_checkpointing
        )
    base_config = model.config.to_diff_dict()
    trainer = build_trainer(args, training_args, model, tokenizer, data, peft_config=lora_config(args))
    trainer.model.peft_config["default"].base_model_name_or_path = adapter_base_name(args)
    trainable, total = trainer.model.get_nb_trainable_parameters()
    logger.info("LoRA: %d trainable of %d parameters (%.3f%%)", trainable, total, 100 * trainable / total)
    if fmt == "instruct":
        logger.info("labels of the first examples: %s", check_labels(trainer))
    trainer.train(resume_from_checkpoint=resume)

    samples = []
    if args.num_samples and trainer.is_world_process_zero():
        sampler = sample_generations if fmt == "instruct" else plain_sample_generations
        samples = sampler(trainer.model, tokenizer, args.num_samples, args.sample_max_new_tokens)
    extra = {
        "lora_r": args.lora_r,
        "lora_alpha": args.lora_alpha,
        "lora_dropout": args.lora_dropout,
        "lora_target_modules": " ".join(args.lora_target_modules),
        "trainable_parameters": trainable,
        "quantization": f"4-bit {args.bnb_4bit_quant_type}" if args.load_in_4bit else None,
        "data_format": fmt,
        "completion_only_loss": fmt == "instruct",
    }
    run_info = run_info_for("lora", args, training_args, trainer.model, tokenizer, samples, extra)
    run_info.update({"config": base_config, "num_parameters": total, "trainable_parameters": trainable})
    context = min(training_args.max_length, TRAINED_CONTEXT)
    results = finish_run(
        trainer,
        tokenizer,
        training_args.output_dir,
        run_info,
        push=push,
        hub_model_id=training_args.hub_model_id,
        hub_private=bool(training_args.hub_private_repo),
        context=context,
    )
    if args.merge and trainer.is_world_process_zero():
        export_merged(args, training_args.output_dir, tokenizer, run_info, context)
    print_summary(results, training_args.output_dir, trainer, label="eval loss (stories)")
    return results


def main(argv: list[str] | None = None) -> int:
    from tinystories.config import parse_args, setup_logging

    args, training_args = parse_args([LoraScriptArguments, TinyStoriesLoraConfig], argv)
    setup_logging()
    run(args, training_args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
