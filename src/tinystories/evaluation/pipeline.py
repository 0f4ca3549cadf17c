"""One model's evaluation (`evaluate_model`): loss and bits per byte, completions, the judge,
Instruct metrics, `eval_results.json` and the card; `tinystories eval` and `tinystories sweep` call it."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinystories.core import ConfigError
from tinystories.core.arguments import (
    AttentionArguments,
    BatchArguments,
    ContextArguments,
    HeldOutArguments,
    InferenceArguments,
    ModelSource,
    OutputArguments,
    SamplingArguments,
    SeedArguments,
    check_choice,
    check_exists,
    check_min,
)
from tinystories.core.paths import data_name, public_name, resolve_hub_id
from tinystories.core.runtime import resolve_device, resolve_dtype
from tinystories.data.loading import EvalTexts, load_split
from tinystories.data.tokenizer import load_tokenizer
from tinystories.evaluation.features import FEATURE_RULE, dark_stories, feature_prompts, instruct_features
from tinystories.evaluation.generation import PromptSet, generate_completions
from tinystories.evaluation.instructions import (
    WORD_RULE,
    base_model_of,
    instruct_words,
    wants_instruct_eval,
    word_triples,
)
from tinystories.evaluation.judge import JudgeArguments, run_judge
from tinystories.evaluation.memorization import memorization
from tinystories.evaluation.metrics import cap_tokens, score_texts
from tinystories.evaluation.reports import (
    read_results,
    write_jsonl,
    write_results,
)
from tinystories.hub.cards import update_model_card
from tinystories.models.loading import context_limit, load_model
from tinystories.models.sizes import count_non_embedding_params

logger = logging.getLogger(__name__)


@dataclass
class EvalArguments(
    ModelSource,
    HeldOutArguments,
    InferenceArguments,
    SamplingArguments,
    AttentionArguments,
    BatchArguments,
    ContextArguments,
    SeedArguments,
    OutputArguments,
):
    # ----- models (data, split, held-out part: HeldOutArguments; device, precision: InferenceArguments)
    model: list[str] = field(
        default_factory=lambda: ["roneneldan/TinyStories-33M"],
        metadata={"help": "one or more Hub ids or local model dirs (repeat --model or list several)"},
    )
    train_data: str | None = field(
        default=None,
        metadata={
            "help": "the model's training stories: completions (and the held-out stories) are checked for "
            "8-word spans copied from them (`memorization` in eval_results.json)"
        },
    )
    # ----- loss
    stride: int | None = field(
        default=None, metadata={"help": "new tokens per window for long stories (default max_length // 2)"}
    )
    skip_loss: bool = field(default=False, metadata={"help": "skip the held-out loss"})
    max_eval_tokens: int | None = field(
        default=None,
        metadata={
            "help": "score at most this many tokens of the stories, in order (the story that crosses it is cut "
            "there); eval_results.json records what was left out"
        },
    )
    # ----- completions
    prompts: str = field(
        default="paper",
        metadata={
            "help": "paper (the paper's 44 prompts from roneneldan/TinyStories; the project's offline), "
            "project (data_generation/eval_prompts.jsonl) or a JSONL of story beginnings (field `prompt`)"
        },
    )
    generate: bool = field(default=True, metadata={"help": "complete the evaluation prompts"})
    num_prompts: int | None = field(default=None, metadata={"help": "use only the first N prompts"})
    num_completions: int = field(default=1, metadata={"help": "completions per prompt (the paper used 10)"})
    generation_batch_size: int = field(
        default=16,
        metadata={"help": "prompts sampled per generate call (left-padded; x num_completions sequences)"},
    )
    # ----- instruction following (instruct_eval.py)
    instruct_eval: str = field(
        default="auto",
        metadata={
            "help": "share of required Words: used (true/false/auto: on for an sft/lora card_info.json or "
            "'Instruct' in the name), next to the base model's"
        },
    )
    instruct_prompts: int = field(
        default=50, metadata={"help": "Words: prompts (random word triples, seeded)"}
    )
    feature_prompts: int = field(
        default=8,
        metadata={
            "help": "Features: prompts per detectable feature (Dialogue, MoralValue, BadEnding); 0: none"
        },
    )
    compare_base: str | None = field(
        default=None,
        metadata={"help": "base model for --instruct_eval (default: the adapter's / card_info.json's base)"},
    )
    # ----- outputs (--output_dir: eval_results.json, default: the model dir / outputs/eval/<org>__<name>)
    comparison_dir: str = field(default="outputs/eval", metadata={"help": "where the comparison table goes"})
    write_card: bool = field(
        default=True, metadata={"help": "re-render the model card of a trained model dir"}
    )

    def check(self):
        check_choice("instruct_eval", self.instruct_eval, ("auto", "true", "false"))
        check_min("generation_batch_size", self.generation_batch_size, 1)
        check_min("num_completions", self.num_completions, 1)
        check_min("num_prompts", self.num_prompts, 1)
        check_min("instruct_prompts", self.instruct_prompts, 0)
        check_min("feature_prompts", self.feature_prompts, 0)
        check_min("stride", self.stride, 1)
        check_min(
            "max_eval_tokens", self.max_eval_tokens, 1, "pass a positive number of tokens, or leave it unset"
        )

    def check_paths(self):
        check_exists(
            "compare_base", self.compare_base, "pass a local model folder or a Hub id, or leave it unset"
        )


def _score(model, tokenizer, texts: EvalTexts, args: EvalArguments, max_length: int, name: str) -> dict:
    start = time.perf_counter()
    stories, capped = cap_tokens(tokenizer, texts.texts, args.max_eval_tokens)
    if capped.get("capped_tokens"):
        logger.info("%s: --max_eval_tokens %d left %d tokens (of %d stories) out", name, *capped.values())
    scores = score_texts(model, tokenizer, stories, max_length, args.batch_size, args.stride)
    scores.pop("nll"), scores.pop("tokens")
    scores.update(capped)
    scores["eval_seconds"] = round(time.perf_counter() - start, 2)
    logger.info(
        "%s: loss %.4f, bpb %.4f over %d tokens",
        name,
        scores["loss"],
        scores["bits_per_byte"],
        scores["num_tokens"],
    )
    return scores


def _complete_and_judge(
    model, tokenizer, prompts: PromptSet, args, judge_args, label: str, out_dir: Path, texts: EvalTexts | None
) -> dict:
    """Completions of the evaluation prompts (`completions.jsonl`), their dark share next to the data's, and,
    with a judge, their grades."""
    rows = generate_completions(model, tokenizer, prompts.rows, args, label)
    write_jsonl(out_dir / "completions.jsonl", rows)
    results: dict[str, Any] = {
        "prompt_set": prompts.name,
        "completions_file": "completions.jsonl",
        "generation": rows[0]["sampling"] if rows else {},
        "samples": [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows[:3]],
        "dark_stories": dark_stories(rows, texts.texts if texts is not None else None, args.seed),
    }
    if args.train_data:
        results["memorization"] = _memorization(rows, texts, args)
    if judge_args.enabled:
        graded, summary = run_judge(rows, judge_args)
        write_jsonl(out_dir / "judge_results.jsonl", graded)
        results["judge"] = {**summary, "results_file": "judge_results.jsonl"}
    return results


def _memorization(rows: list[dict], texts: EvalTexts | None, args: EvalArguments) -> dict:
    """Copying and diversity of the completions, next to held-out stories', against `--train_data`."""
    train = load_split(args.train_data, "train")
    column = args.text_column if args.text_column in train.column_names else "text"
    if column not in train.column_names:
        raise ConfigError(
            f"--train_data {args.train_data!r} has no {args.text_column!r} column: pass --text_column"
        )
    completions = [r["completion"] for r in rows]
    held_out = texts.texts if texts is not None else None
    prompts = [r["prompt"] for r in rows]
    return memorization(completions, held_out, train[column], data_name(args.train_data), prompts)


def _base_instruct_eval(base: str, triples: list, asks: list, args: EvalArguments, cache: dict) -> tuple:
    """(word rows, instruct_words, feature rows, instruct_features) of the base model on the same prompts and
    seeds; `cache` (one per eval command) holds them, so an SFT model and a LoRA of one base sample it once."""
    key = json.dumps(
        [base, triples, [a["id"] for a in asks], dataclasses.asdict(args)], sort_keys=True, default=str
    )
    if key not in cache:
        device, dtype = resolve_device(args.device), resolve_dtype(args.precision)
        base_model = load_model(base, attn_implementation=args.attn_implementation, dtype=dtype).to(device)
        base_label, base_tokenizer = resolve_hub_id(base) or public_name(base), load_tokenizer(base)
        word_rows, words = instruct_words(base_model, base_tokenizer, triples, args, base_label)
        feature_rows, features = (
            instruct_features(base_model, base_tokenizer, asks, args, base_label) if asks else ([], None)
        )
        cache[key] = (word_rows, words, feature_rows, features)
    word_rows, words, feature_rows, features = cache[key]
    return list(word_rows), words, list(feature_rows), features


def _instruct_eval(
    model, tokenizer, name: str, label: str, args: EvalArguments, out_dir: Path, base_cache: dict
) -> dict:
    """`instruct_words` and `instruct_features` of an Instruct model and of its base, same prompts and seeds."""
    if not args.generate or not wants_instruct_eval(name, args.instruct_eval):
        return {}
    triples = word_triples(args.instruct_prompts, args.seed)
    asks = feature_prompts(args.feature_prompts, args.seed)
    rows, words = instruct_words(model, tokenizer, triples, args, label)
    feature_rows, features = instruct_features(model, tokenizer, asks, args, label) if asks else ([], None)
    base = base_model_of(name, args.compare_base)
    if base:
        base_rows, words["base"], base_feature_rows, base_features = _base_instruct_eval(
            base, triples, asks, args, base_cache
        )
        rows += base_rows
        if asks:
            features["base"] = base_features
            feature_rows += base_feature_rows
    write_jsonl(out_dir / "instruct_completions.jsonl", rows)
    if feature_rows:
        write_jsonl(out_dir / "feature_completions.jsonl", feature_rows)
    result = {"instruct_words": {**words, "base": words.get("base"), "rule": WORD_RULE}}
    if features is not None:
        result["instruct_features"] = {**features, "base": features.get("base"), "rule": FEATURE_RULE}
    return result


def model_shape(model, tokenizer) -> dict[str, Any]:
    """What makes models of different families comparable: class, vocabulary, non-embedding parameters."""
    backend = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    return {
        "architecture": (getattr(model.config, "architectures", None) or [type(model).__name__])[0],
        "vocab_size": model.get_input_embeddings().num_embeddings,
        "num_non_embedding_parameters": count_non_embedding_params(model),
        "tied_head": bool(getattr(model.config, "tie_word_embeddings", False)),
        "tokenizer_type": type(backend).__name__ if backend is not None else type(tokenizer).__name__,
        "tokenizer_size": len(tokenizer),
    }


def evaluate_model(
    name: str,
    texts: EvalTexts | None,
    prompts: PromptSet | None,
    args: EvalArguments,
    judge_args: JudgeArguments,
    out_dir: Path,
    base_cache: dict | None = None,
):
    """Score `texts`, complete `prompts` (and judge them) with one model; write its `eval_results.json`.
    `base_cache`: shared by the models of one command, so a base they share is sampled once."""
    model = load_model(
        name,
        attn_implementation=args.attn_implementation,
        revision=args.revision,
        dtype=resolve_dtype(args.precision),
    ).to(resolve_device(args.device))
    tokenizer = load_tokenizer(args.tokenizer or name, revision=None if args.tokenizer else args.revision)
    stored = int(getattr(model.config, "max_position_embeddings", 0) or context_limit(model))
    max_length = args.max_length or context_limit(model)
    if max_length > stored:
        raise ConfigError(f"--max_length {max_length} exceeds the model's {stored} position embeddings")

    label = resolve_hub_id(name) or public_name(name)
    results: dict[str, Any] = {
        "model": label,
        "revision": args.revision,
        "data": data_name(args.data),
        "dataset": data_name(args.data),
        "max_length": max_length,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        **model_shape(model, tokenizer),
        "precision": args.precision,
    }
    existing = read_results(out_dir)
    if texts is not None:
        results.update(texts.record())  # the split, or "all" of a whole file, and how it was selected
        results.update(_score(model, tokenizer, texts, args, max_length, name))
    else:  # keep the previous loss numbers when only re-running completions / the judge
        results.update({k: v for k, v in existing.items() if k not in results and k != "judge"})
    if prompts:
        results.update(
            _complete_and_judge(model, tokenizer, prompts, args, judge_args, label, out_dir, texts)
        )
    elif existing.get("judge"):  # grades of the earlier completions, and which prompts they were
        results["judge"] = existing["judge"]
        if existing.get("prompt_set"):
            results["prompt_set"] = existing["prompt_set"]
    results.update(
        _instruct_eval(model, tokenizer, name, label, args, out_dir, {} if base_cache is None else base_cache)
    )

    write_results(out_dir, results)
    same_dir = Path(name).is_dir() and out_dir.resolve() == Path(name).resolve()
    if args.write_card and same_dir and update_model_card(out_dir):
        logger.info("model card updated: %s", out_dir / "README.md")
    return results
