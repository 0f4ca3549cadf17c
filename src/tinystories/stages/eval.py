"""`tinystories eval`: held-out loss, perplexity and bits per byte; story completions; the LLM judge.

    tinystories eval --model outputs/tinystories-8M --data roneneldan/TinyStories   # its validation split
    tinystories eval --model outputs/tinystories-8M --data stories.txt               # every story of the file
    tinystories eval --model outputs/tinystories-8M --data stories.txt --validation_fraction 0.1  # as training held out
    tinystories eval --model roneneldan/TinyStories-1M roneneldan/TinyStories-33M --max_samples 2000
    tinystories eval --model outputs/tinystories-8M --judge_base_url http://localhost:8000/v1 \
        --judge_model Qwen/Qwen2.5-72B-Instruct            # key from $OPENAI_API_KEY (--judge_api_key_env)

Loss is computed per story, not on packed blocks: each story is tokenized, the end-of-text token is
prepended as context (the models saw it before every story) and appended as a target, and every target
token is scored once within the model's trained context (512 tokens for the released checkpoints, whose
stored 2048 position embeddings were never trained); longer stories are scored in overlapping windows.
The token NLLs are summed over the whole split, so the loss is token-weighted; bits per byte divides the
same sum by ln 2 × the UTF-8 bytes of the stories, which makes models with different tokenizers comparable.

The stories come through the loader training uses (`data.load_eval_texts`): the `--split` of a Hub dataset, the
whole of a local file, or with `--validation_fraction` what a training run with that fraction and `--seed`
held out; `eval_results.json` records the choice (`selected`, `split`, `held_out_fraction`) and the counts.

Each model's `eval_results.json` lands in its own folder (for a Hub id: `outputs/eval/<org>__<name>/`),
with `completions.jsonl` (story beginnings of `--prompts`: by default the paper's 44, `Evaluation prompts.yaml`
of `roneneldan/TinyStories`, or the project's 50 offline; recorded as `prompt_set`; the completions and the
sampling parameters) and, when a judge ran, `judge_results.jsonl`. The model card of a folder trained
with these recipes is re-rendered with the new numbers. Several `--model` values give one comparison table
(`outputs/eval/comparison.md` / `.json`). An Instruct model (`--instruct_eval`, auto: an sft/lora folder or
"Instruct" in the name) also gets `instruct_words`: the share of required `Words:` its stories use, and its
base model's on the same prompts (`tinystories.evaluation.instructions`; completions in `instruct_completions.jsonl`).
"""

from __future__ import annotations

import logging
import sys

from tinystories.core import ConfigError
from tinystories.core.arguments import DEFAULT_DATA
from tinystories.core.config import parse_args
from tinystories.core.paths import data_name, public_name
from tinystories.core.runtime import resolve_device, resolve_dtype
from tinystories.data.loading import held_out_texts
from tinystories.evaluation.generation import load_prompt_set
from tinystories.evaluation.judge import JudgeArguments
from tinystories.evaluation.pipeline import EvalArguments, evaluate_model
from tinystories.evaluation.reports import (
    comparison_table,
    model_output_dir,
    write_comparison,
)
from tinystories.models.loading import check_model_source

logger = logging.getLogger(__name__)


def _merge_model_flags(argv: list[str]) -> list[str]:
    """`--model a --model b c` -> `--model a b c` (argparse keeps only the last occurrence)."""
    models, rest, i = [], [], 0
    while i < len(argv):
        if argv[i] == "--model" or argv[i].startswith("--model="):
            if "=" in argv[i]:
                models.append(argv[i].split("=", 1)[1])
                i += 1
            else:
                i += 1
                while i < len(argv) and not argv[i].startswith("--"):
                    models.append(argv[i])
                    i += 1
        else:
            rest.append(argv[i])
            i += 1
    models = [m for value in models for m in value.split()]  # MODEL="a b" from make arrives as one word
    return (["--model", *models] if models else []) + rest


# the dataclasses of this stage's flags (`--help`, the CLI reference in the docs)
ARGUMENTS = (EvalArguments, JudgeArguments)
DEFAULTS = {"data": DEFAULT_DATA}


def main(argv: list[str] | None = None) -> int:
    argv = _merge_model_flags(list(sys.argv[1:] if argv is None else argv))
    args, judge_args = parse_args(ARGUMENTS, argv, DEFAULTS)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    models = [m for value in args.model for m in value.split()]
    if not models:
        raise ConfigError("no --model given: pass MODEL=<Hub id or dir> (several separated by spaces)")
    resolve_dtype(args.precision), resolve_device(args.device)  # bad values fail before any model is loaded
    for name in models:  # a local folder that is not a model fails now, not after the others ran
        check_model_source(name)
    if judge_args.enabled:
        judge_args.validate()  # a missing key fails here, before any model is loaded
        if not args.generate:
            raise ConfigError("the judge grades completions: drop --generate false")
    prompts = load_prompt_set(args.prompts, args.num_prompts) if args.generate else None
    texts = None
    if not args.skip_loss:
        texts = held_out_texts(args)
        selected = texts.selected.replace("_", " ")
        print(
            f"evaluating {len(models)} model(s) on {len(texts.texts):,} stories of {data_name(args.data)} "
            f"[{texts.split}: {selected}]"
        )

    rows, base_cache = [], {}  # a base model shared by several evaluated models is sampled once
    for name in models:
        out_dir = model_output_dir(name, args.output_dir, len(models) > 1)
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            result = evaluate_model(name, texts, prompts, args, judge_args, out_dir, base_cache)
        except ConfigError as err:  # one broken repo costs its row (error in the table), not the comparison
            if len(models) == 1:
                raise
            logger.error("%s failed: %s", name, err)
            rows.append({"model": public_name(name), "error": str(err)})
            continue
        result["eval_results_file"] = str(out_dir / "eval_results.json")
        rows.append(result)

    table = comparison_table(rows)
    print()
    print(table)
    if len(rows) > 1:
        print(f"\ncomparison written to {write_comparison(rows, args.comparison_dir, table)}")
    for r in rows:
        print(
            f"failed: {r['model']}: {r['error']}" if r.get("error") else f"results: {r['eval_results_file']}"
        )
    return 1 if any(r.get("error") for r in rows) else 0
