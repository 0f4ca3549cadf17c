"""`tinystories tokenizer`: a top-K trimmed GPT-Neo tokenizer, or a byte-level BPE trained on
the stories, saved to `--output_dir`."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from tinystories.core.config import parse_args
from tinystories.data.loading import load_stories
from tinystories.data.tokenizer import DEFAULT_TOKENIZER, prepare_tokenizer


@dataclass
class TokenizerArguments:
    output_dir: str
    dataset_name: str = "roneneldan/TinyStories"
    tokenizer_name: str = DEFAULT_TOKENIZER
    vocab_size: int = 10000
    train_tokenizer: bool = False
    text_column: str = "text"
    max_train_samples: int | None = None


# the dataclasses of this stage's flags (`--help`, the CLI reference in the docs)
ARGUMENTS = (TokenizerArguments,)


def main(argv: list[str] | None = None) -> int:
    """`tinystories tokenizer --dataset_name DATA --vocab_size K [--train_tokenizer true] --output_dir DIR`."""
    (args,) = parse_args(ARGUMENTS, argv)
    data = load_stories(
        args.dataset_name, text_column=args.text_column, max_train_samples=args.max_train_samples
    )
    tok = prepare_tokenizer(
        args.tokenizer_name,
        data["train"],
        args.output_dir,
        args.vocab_size,
        args.train_tokenizer,
        args.text_column,
    )
    print(f"saved a {len(tok)}-token tokenizer to {args.output_dir}", file=sys.stderr)
    return 0
