"""`tinystories tokenizer`: a top-K trimmed GPT-Neo tokenizer, or a byte-level BPE trained on
the stories, saved to `--output_dir`."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from tinystories.core import ConfigError
from tinystories.core.arguments import (
    DEFAULT_DATA,
    DataSource,
    OutputArguments,
    TokenizerSource,
    VocabularyArguments,
    check_min,
)
from tinystories.core.config import parse_args
from tinystories.data.loading import load_stories
from tinystories.data.tokenizer import DEFAULT_TOKENIZER, prepare_tokenizer


@dataclass
class TokenizerArguments(DataSource, TokenizerSource, VocabularyArguments, OutputArguments):
    max_train_samples: int | None = field(default=None, metadata={"help": "read only the first N stories"})

    def check(self):
        if not self.output_dir:
            raise ConfigError("tokenizer needs --output_dir DIR: where the tokenizer is saved")
        check_min("max_train_samples", self.max_train_samples, 1)


# the dataclasses of this stage's flags (`--help`, the CLI reference in the docs)
ARGUMENTS = (TokenizerArguments,)
DEFAULTS = {"data": DEFAULT_DATA, "tokenizer": DEFAULT_TOKENIZER, "vocab_size": 10000}


def main(argv: list[str] | None = None) -> int:
    """`tinystories tokenizer --data DATA --vocab_size K [--train_tokenizer true] --output_dir DIR`."""
    (args,) = parse_args(ARGUMENTS, argv, DEFAULTS)
    data = load_stories(
        args.data,
        text_column=args.text_column,
        max_train_samples=args.max_train_samples,
        on_decode_error=args.on_decode_error,
    )
    tok = prepare_tokenizer(
        args.tokenizer or DEFAULT_TOKENIZER,
        data["train"],
        args.output_dir,
        args.vocab_size,
        args.train_tokenizer,
        args.text_column,
    )
    print(f"saved a {len(tok)}-token tokenizer to {args.output_dir}", file=sys.stderr)
    return 0
