"""`tinystories train --config recipes/pretrain/33M.yaml`: pretrain a GPT-Neo TinyStories model.

recipe → stories → tokenizer (base / trimmed / trained) → packed blocks → the released config → Trainer
(resumes from the newest checkpoint by itself) → shared tail (save, card, push). The pieces live in
`tinystories.training.pretraining` (arguments, data, model) and `tinystories.training` (Trainer, run record, tail).
"""

from __future__ import annotations

import logging
import sys

from transformers import set_seed

from tinystories.core.arguments import DEFAULT_DATA
from tinystories.core.config import parse_args, setup_logging
from tinystories.data.packing import PackedCollator
from tinystories.data.tokenizer import DEFAULT_TOKENIZER
from tinystories.models.sizes import count_non_embedding_params
from tinystories.training.pretraining import (
    DataArguments,
    ModelArguments,
    PretrainConfig,
    build_model,
    configure_batch,
    prepare_data,
    size_label,
    tokenizer_label,
    validate,
)
from tinystories.training.record import run_record
from tinystories.training.tail import finish_run, output_guard, prepare_run, print_summary
from tinystories.training.trainer import BitsPerByteTrainer, TimeLimitCallback, TokensPerSecondCallback

logger = logging.getLogger("tinystories.stages.train")


# the dataclasses of this stage's flags (`--help`, the CLI reference in the docs)
ARGUMENTS = (ModelArguments, DataArguments, PretrainConfig)
DEFAULTS = {"data": DEFAULT_DATA, "output_dir": "outputs/pretrain", "tokenizer": DEFAULT_TOKENIZER}


def main(argv: list[str] | None = None) -> int:
    model_args, data_args, args = parse_args(ARGUMENTS, argv, DEFAULTS)
    setup_logging()
    validate(model_args, data_args, args)
    configure_batch(args)
    inputs = {
        "--data": data_args.data,
        "--eval_data": data_args.eval_data,
        "--tokenizer": data_args.tokenizer,
        "--base_model": model_args.base_model,
    }
    with output_guard(args, inputs):
        return pretrain(model_args, data_args, args)


def pretrain(model_args: ModelArguments, data_args: DataArguments, args: PretrainConfig) -> int:
    """The run, in its locked --output_dir: resume or start, data, model, Trainer, the shared tail."""
    resume, tail = prepare_run(
        args,
        {"model": model_args, "data": data_args},
        samples="stories",
        num_samples=2,
        sample_max_new_tokens=120,
    )
    set_seed(args.seed)

    # one tokenization per shared cache: the global main process first, the others then read its cache
    with args.main_process_first(desc="data", local=not args.data_cache_shared):
        tokenizer, train_set, eval_set, train_stats, eval_stats = prepare_data(data_args, args)
    if args.prepare_only:
        print(f"data prepared: {len(train_set):,} train blocks of {data_args.block_size} tokens (cached)")
        return 0

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
        callbacks=[TokensPerSecondCallback(seq_len=data_args.block_size)]
        + ([TimeLimitCallback(args.max_minutes)] if args.max_minutes else []),
        eval_text_stats=(eval_stats.tokens, eval_stats.bytes),
    )
    trainer.train(resume_from_checkpoint=resume)

    run_info = run_record(
        "pretrain",
        trainer,
        datasets=[data_args.data],
        tokenizer=tokenizer_label(data_args, tokenizer),
        context_length=data_args.block_size,
        hparams={"block_size": data_args.block_size},
        size=size_label(model_args),
        num_non_embedding_parameters=n_non_emb,
        data_stats={"train": train_stats.to_dict(), "validation": eval_stats.to_dict()},
    )
    results = finish_run(trainer, tokenizer, run_info, tail)
    print_summary(results, trainer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
