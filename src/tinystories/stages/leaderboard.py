"""`tinystories leaderboard`: every public tiny story model, plus local runs, on one split in bits per byte.

    tinystories leaderboard --config recipes/eval/leaderboard.yaml                  # the public models
    tinystories leaderboard --config recipes/eval/leaderboard.yaml --model outputs/TinyStories-8M
    tinystories leaderboard --config recipes/eval/leaderboard.yaml --llama2c_tokenizer tokenizer.bin
    tinystories leaderboard --config recipes/eval/leaderboard.yaml --public_models false \\
        --model outputs/pulled/stories260K --data stories.txt --validation_fraction 0.1   # what training held out

The public models (`tinystories.evaluation.leaderboard.PUBLIC_MODELS`: the paper's 14 roneneldan checkpoints,
llama2.c's four, SimpleStories V1 and V2) and every `--model` are scored on the same stories, read as `tinystories
eval` reads them (`--data`, `--split`, `--validation_fraction`, `--max_samples`; the recipe pins the first 1,000
stories of `roneneldan/TinyStories` validation). Bits per byte divides each model's summed loss by the same UTF-8
byte count, so models with different tokenizers compare. Each model also completes the evaluation prompts (the
paper's 44) and gets its dark-story rate. A model that cannot be loaded gets its error in its row; a finished row
is reused by the same command (keyed by model, split and settings). Writes `leaderboard.json`
(`{"split", "rows"}`), `leaderboard.md` and `bpb_vs_params.png` in `--output_dir`, and each model's
`eval_results.json` and `completions.jsonl` under `models/`.
"""

from __future__ import annotations

import logging
import sys

from tinystories.core import ConfigError
from tinystories.core.arguments import DEFAULT_DATA
from tinystories.core.config import parse_args
from tinystories.core.paths import check_output_dir, data_name, output_lock
from tinystories.core.runtime import resolve_device, resolve_dtype
from tinystories.data.loading import held_out_texts
from tinystories.evaluation.generation import load_prompt_set
from tinystories.evaluation.judge import JudgeArguments
from tinystories.evaluation.leaderboard import (
    FIGURE_FILE,
    LEADERBOARD_FILE,
    TABLE_FILE,
    LeaderboardArguments,
    leaderboard_entries,
    run_leaderboard,
)

logger = logging.getLogger(__name__)

# the dataclasses of this stage's flags (`--help`, the CLI reference in the docs)
ARGUMENTS = (LeaderboardArguments, JudgeArguments)
DEFAULTS = {
    "data": DEFAULT_DATA,
    "model": [],
    "output_dir": "outputs/leaderboard",
    "instruct_eval": "false",
    "write_card": False,
}


def main(argv: list[str] | None = None) -> int:
    args, judge_args = parse_args(ARGUMENTS, list(sys.argv[1:] if argv is None else argv), DEFAULTS)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.tokenizer or args.revision:
        raise ConfigError(
            "every model brings its own tokenizer and revision: drop --tokenizer/--revision (llama2.c's "
            "stories15M/42M/110M take --llama2c_tokenizer)"
        )
    if args.skip_loss:
        raise ConfigError("a leaderboard is bits per byte: drop --skip_loss")
    resolve_dtype(args.precision), resolve_device(args.device)  # bad values fail before any model is loaded
    if judge_args.enabled:
        judge_args.validate()
    models = [m for value in args.model for m in value.split()]  # MODEL="a b" from make arrives as one word
    entries = leaderboard_entries(models, args.public_models)
    if not entries:
        raise ConfigError("nothing to score: pass MODEL=<dirs or Hub ids>, or drop --public_models false")
    check_output_dir(args.output_dir, {"--model": models, "--data": args.data})

    def texts():
        loaded = held_out_texts(args)
        print(f"scoring on {len(loaded.texts):,} stories of {data_name(args.data)} [{loaded.split}]")
        return loaded

    def prompts():
        return load_prompt_set(args.prompts, args.num_prompts) if args.generate else None

    with output_lock(args.output_dir):
        board = run_leaderboard(entries, texts, prompts, args, judge_args)
    done = [r for r in board["rows"] if not r.get("error")]
    print(f"\n{len(done)} of {len(board['rows'])} models scored")
    for r in board["rows"]:
        if r.get("error"):
            print(f"failed: {r['model']}: {r['error']}")
    for name in (LEADERBOARD_FILE, TABLE_FILE, FIGURE_FILE):
        print(f"{args.output_dir}/{name}")
    return 0 if done else 1
