"""`tinystories sft`: supervised fine-tuning of the Instruct variant with TRL's `SFTTrainer`.

    tinystories sft --config recipes/instruct/sft-33M.yaml [--base_model ...] [--data ...]

recipe → Instruct data → prompt/completion columns (loss on the story and its EOS only) → base model →
`SFTTrainer` → shared tail (weights, tokenizer, generation config, metrics, card, push). The steps are the
fine-tuning pipeline `tinystories.training.finetune.run`, shared with `tinystories lora` (`--use_peft true` here is
LoRA too). The default data is the Hub dataset `roneneldan/TinyStoriesInstruct` (official `.txt` files,
examples separated by `<|endoftext|>`); local files and the project's own synthesized Instruct data work the
same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from tinystories.core.config import parse_args, setup_logging
from tinystories.training.finetune.arguments import (
    DEFAULT_INSTRUCT_DATA,
    FinetuneArguments,
    FinetuneModelConfig,
    TinyStoriesSFTConfig,
)
from tinystories.training.finetune.pipeline import run

__all__ = ["DEFAULT_INSTRUCT_DATA", "SFTScriptArguments", "TinyStoriesSFTConfig", "main", "run"]


@dataclass
class SFTScriptArguments(FinetuneArguments):
    """`tinystories sft`: Instruct data (`--data_format instruct`), a full fine-tune unless `--use_peft true`."""


# the dataclasses of this stage's flags (`--help`, the CLI reference in the docs)
ARGUMENTS = (SFTScriptArguments, TinyStoriesSFTConfig, FinetuneModelConfig)
DEFAULTS = {"data": DEFAULT_INSTRUCT_DATA, "output_dir": "outputs/sft"}


def main(argv: list[str] | None = None) -> int:
    args, training_args, model_config = parse_args(ARGUMENTS, argv, DEFAULTS)
    setup_logging()
    run(args, training_args, model_config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
