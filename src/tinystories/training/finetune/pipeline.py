"""The fine-tuning pipeline of `tinystories sft` and `tinystories lora`."""

from __future__ import annotations

import logging

from peft import prepare_model_for_kbit_training
from transformers import set_seed
from trl import SFTConfig, get_peft_config

from tinystories.core import TRAINED_CONTEXT
from tinystories.training.finetune.arguments import (
    FinetuneArguments,
    FinetuneModelConfig,
    resolve_target_modules,
    validate_model_config,
    validate_training_args,
)
from tinystories.training.finetune.data import prepare_data
from tinystories.training.finetune.trainer import (
    attach_peft,
    build_trainer,
    check_labels,
    load_base,
    load_base_tokenizer,
    peft_hparams,
    qlora_compute_dtype,
)
from tinystories.training.optimizers import check_muon
from tinystories.training.pretraining import configure_batch
from tinystories.training.record import run_record
from tinystories.training.tail import finish_run, output_guard, prepare_run, print_summary

logger = logging.getLogger(__name__)


def run(args: FinetuneArguments, training_args: SFTConfig, model_config: FinetuneModelConfig) -> dict:
    """The fine-tuning pipeline of `tinystories sft` and `tinystories lora` (LoRA: `model_config.use_peft`).

    checks → data → base model (4-bit for QLoRA) → SFTTrainer (+ PEFT) → train → run record → shared tail
    (weights or adapter, card, merged export for an adapter, push). Returns the final metrics.
    """
    validate_model_config(model_config, args)
    validate_training_args(training_args)
    check_muon(training_args, peft=model_config.use_peft)
    configure_batch(training_args)  # the recipe's examples per optimizer step, on any number of processes
    inputs = {
        "--data": args.data,
        "--eval_data": args.eval_data,
        "--tokenizer": args.tokenizer,
        "--base_model": args.base_model,
    }
    with output_guard(training_args, inputs):  # never on an input; one writer at a time
        peft, context = model_config.use_peft, min(training_args.max_length, TRAINED_CONTEXT)
        resume, tail = prepare_run(
            training_args,
            {"model": model_config, "data": args},
            num_samples=args.num_samples,
            sample_max_new_tokens=args.sample_max_new_tokens,
            context=context,
            merge_onto=args.base_model if peft and args.merge else None,
            merge_revision=args.base_revision,
            attn_implementation=model_config.attn_implementation or "sdpa",
        )
        set_seed(training_args.seed)
        tokenizer = load_base_tokenizer(
            args
        )  # the data step counts tokens (drop_long_examples); the model waits
        with training_args.main_process_first(desc="data", local=not training_args.data_cache_shared):
            data, tail.samples = prepare_data(args, tokenizer, training_args.max_length)
        logger.info(
            "data (%s): %d train / %d eval examples",
            tail.samples,
            len(data["train"]),
            len(data["validation"]),
        )

        qlora_compute_dtype(model_config)
        model, tokenizer = load_base(args, model_config, tokenizer)
        if model_config.load_in_4bit or model_config.load_in_8bit:
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=training_args.gradient_checkpointing
            )
        base_config = model.config.to_diff_dict()
        if peft:
            resolve_target_modules(model_config, getattr(model.config, "model_type", None))
        peft_config = get_peft_config(model_config)
        trainer = build_trainer(
            training_args, model, tokenizer, data, args.fused_cross_entropy, peft_config=peft_config
        )
        tail.context = context = min(
            training_args.max_length, TRAINED_CONTEXT
        )  # clamped to the base's context
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
            tokenizer=args.tokenizer or args.base_model,
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
