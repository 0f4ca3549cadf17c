"""Instruction following, measured: the share of required `Words:` that an Instruct model's stories use.

The paper's check (Eldan & Li 2023): give the model `Words: <verb>, <noun>, <adjective>` and count the words
its story contains. Here `--instruct_prompts` prompts (50) each ask for a random verb, noun and adjective of
the project's word lists (`data_generation/`), drawn from `random.Random(f"{seed}-instruct-words")`; the
prompt is `instruct.build_prompt(words=...)`, the stories come from `generation.generate_completions`
(`generate_batch` with the eval's sampling settings, `--num_completions` per prompt, `--generation_batch_size`
prompts per call seeded `seed + batch number`). A word counts as used when the story contains it or an inflection of it as a whole word,
case-insensitively (`tinystories.data.wordforms`: `run` matches `runs`, `ran`, `running`; `happy` matches
`happier`). `rate` = words used / words required over all completions; `all_words_rate` = the share of
completions that use all three.

The base model (`--compare_base`, else the adapter's base, else `card_info.json`'s `base_model` when it is a
Hub id) answers the same prompts with the same seeds, so the two rates differ only by the fine-tuning.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tinystories.core.paths import CARD_INFO_FILE, is_hub_id
from tinystories.data.instruct import build_prompt
from tinystories.data.wordforms import PARTS_OF_SPEECH, text_words, uses_word, word_lists
from tinystories.evaluation.generation import generate_completions
from tinystories.hub.card_format import read_json
from tinystories.models.loading import is_adapter_dir

logger = logging.getLogger(__name__)

INSTRUCT_STAGES = ("sft", "lora", "lora-merged")
WORD_RULE = "whole word, case-insensitive, the word or an inflection (tinystories.data.wordforms)"


def word_triples(n: int, seed: int, vocab=None) -> list[dict[str, str]]:
    """`n` random {verb, noun, adjective} of the project's word lists; the same for the same seed."""
    words = vocab.words if vocab is not None else word_lists()  # vocab: a `synthesis` Vocabulary
    rng = random.Random(f"{seed}-instruct-words")
    return [{pos: rng.choice(words[pos]) for pos in PARTS_OF_SPEECH} for _ in range(n)]


def words_used(completion: str, words: dict[str, str]) -> dict[str, bool]:
    """{word: whether `completion` uses it (or an inflection of it, for its part of speech)}."""
    tokens = text_words(completion)
    return {word: uses_word(tokens, word, pos) for pos, word in words.items()}


def words_used_rate(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Rate of required words used over rows with `words` ({pos: word}) and `completion`."""
    used = required = complete = 0
    for row in rows:
        hits = words_used(row["completion"], row["words"])
        used, required = used + sum(hits.values()), required + len(hits)
        complete += all(hits.values())
    return {
        "rate": used / required if required else None,
        "words_used": used,
        "words_required": required,
        "all_words_rate": complete / len(rows) if rows else None,
        "completions": len(rows),
    }


def complete_word_prompts(model, tokenizer, triples: list[dict[str, str]], args, label: str) -> list[dict]:
    """`generation.generate_completions` of the word prompts, each row with its words and which it used."""
    prompts = [
        {"id": f"w{i:03d}", "prompt": build_prompt(words=list(w.values()))} for i, w in enumerate(triples)
    ]
    rows = generate_completions(model, tokenizer, prompts, args, label)
    words_of = {p["id"]: words for p, words in zip(prompts, triples, strict=True)}
    for row in rows:
        row["words"] = words_of[row["prompt_id"]]
        row["used"] = words_used(row["completion"], row["words"])
    return rows


def instruct_words(model, tokenizer, triples: list[dict[str, str]], args, label: str) -> tuple[list, dict]:
    """(completion rows, {"rate", "prompts", "completions", ...}) of one model on the word prompts."""
    rows = complete_word_prompts(model, tokenizer, triples, args, label)
    summary = {"model": label, **words_used_rate(rows), "prompts": len(triples)}
    logger.info("%s uses %s of the required words", label, summary["rate"])
    return rows, summary


def wants_instruct_eval(name: str, setting: str = "auto") -> bool:
    """`--instruct_eval`: true/false, or auto: a fine-tuned (sft/lora) Instruct folder, or "instruct" in the name."""
    if setting != "auto":
        return setting == "true"
    path = Path(str(name)).expanduser()
    info = (read_json(path / CARD_INFO_FILE) or {}) if path.is_dir() else {}
    data_format = (info.get("hyperparameters") or {}).get("data_format")
    if info.get("stage") in INSTRUCT_STAGES and data_format != "stories":
        return True
    return "instruct" in path.name.lower()


def base_model_of(name: str, compare_base: str | None = None) -> str | None:
    """The model to compare with: `--compare_base`, an adapter's base, or the card's Hub-id `base_model`."""
    if compare_base:
        return compare_base
    path = Path(str(name)).expanduser()
    if is_adapter_dir(str(path)):
        try:
            base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        except (OSError, ValueError):
            base = None
        if base:
            return base
    base = (read_json(path / CARD_INFO_FILE) or {}).get("base_model") if path.is_dir() else None
    if base and not is_hub_id(base):
        logger.warning(
            "base model %r is not a Hub id: pass --compare_base <its dir> to compare with it", base
        )
        return None
    return base
