"""What the stories show: the `Features:` an Instruct model is asked for (`instruct_features`), dark stories.

`instruct_features`: `--feature_prompts` prompts per detectable feature F (`data.features.FEATURES`), each
`Words: <a random verb, noun, adjective>` + `Features: F` (the words only vary the prompts). For each F, the
share of completions that show F (the detectors of `data.features`, the ones that wrote the training
records) when the prompt asks for F (`asked`) and when it asks for another feature only (`not_asked`), with
95% intervals over prompts as clusters (`judge.clustered_mean_ci`, as the judge does); `difference` =
asked − not asked: how much the instruction moves the story. The base model answers the same prompts with the
same seeds, so a difference that the base shows too is not instruction following.

`dark_stories`: the share of completions (the evaluation prompts') that are strongly negative or name death,
injury or violence (`data.features.is_dark`), with a 95% interval over prompts, next to the share of a sample
of the evaluated stories themselves: is the model darker than its data?
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from tinystories.data.features import DETECTORS, FEATURES, is_dark
from tinystories.data.instruct import build_prompt
from tinystories.data.wordforms import PARTS_OF_SPEECH, word_lists
from tinystories.evaluation.generation import generate_completions
from tinystories.evaluation.judge import clustered_mean_ci, mean_ci

FEATURE_RULE = (
    "tinystories.data.features (Dialogue: quoted speech; MoralValue: 'moral'; BadEnding: VADER <= -0.3)"
)
DARK_RULE = "tinystories.data.features.is_dark (VADER compound <= -0.5, or death/injury/violence words)"
DATA_SAMPLE = 500  # evaluated stories whose dark share is the reference


def feature_prompts(n: int, seed: int) -> list[dict[str, Any]]:
    """`n` prompts per feature, in `FEATURES` order; the same for the same seed."""
    rng = random.Random(f"{seed}-instruct-features")
    words = word_lists()
    prompts = []
    for feature in FEATURES:
        for i in range(n):
            triple = [rng.choice(words[pos]) for pos in PARTS_OF_SPEECH]
            prompts.append(
                {
                    "id": f"f{feature}{i:03d}",
                    "prompt": build_prompt(words=triple, features=[feature]),
                    "asks": feature,
                }
            )
    return prompts


def _rate(rows: Sequence[dict[str, Any]], feature: str) -> dict[str, Any]:
    values = [float(r["shows"][feature]) for r in rows]
    if not values:
        return {"rate": None, "ci95": None, "completions": 0, "prompts": 0}
    stats = clustered_mean_ci(values, [r["prompt_id"] for r in rows])
    return {
        "rate": stats["mean"],
        "ci95": stats["ci95"],
        "completions": len(values),
        "prompts": stats["n_prompts"],
    }


def feature_rates(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{feature: {asked, not_asked, difference}} over completion rows with `asks` and `shows`."""
    out = {}
    for feature in FEATURES:
        asked = _rate([r for r in rows if r["asks"] == feature], feature)
        other = _rate([r for r in rows if r["asks"] != feature], feature)
        both = asked["rate"] is not None and other["rate"] is not None
        out[feature] = {
            "asked": asked,
            "not_asked": other,
            "difference": asked["rate"] - other["rate"] if both else None,
        }
    return out


def instruct_features(model, tokenizer, prompts: list[dict], args, label: str) -> tuple[list, dict]:
    """(completion rows, {"model", "features": feature_rates, ...}) of one model on the feature prompts."""
    rows = generate_completions(model, tokenizer, prompts, args, label)
    asks = {p["id"]: p["asks"] for p in prompts}
    for row in rows:
        row["asks"] = asks[row["prompt_id"]]
        row["shows"] = {name: DETECTORS[name](row["completion"]) for name in FEATURES}
    summary = {
        "model": label,
        "features": feature_rates(rows),
        "prompts": len(prompts),
        "completions": len(rows),
    }
    return rows, summary


def dark_stories(
    rows: Sequence[dict[str, Any]], texts: Sequence[str] | None, seed: int = 0
) -> dict[str, Any]:
    """The dark share of the completions (CI over prompts) and of up to `DATA_SAMPLE` evaluated stories."""
    result: dict[str, Any] = {"rule": DARK_RULE}
    if rows:
        stats = clustered_mean_ci(
            [float(is_dark(r["completion"])) for r in rows], [r["prompt_id"] for r in rows]
        )
        result["model"] = {"rate": stats["mean"], "ci95": stats["ci95"], "completions": len(rows)}
    if texts:
        sample = random.Random(f"{seed}-dark").sample(list(texts), min(DATA_SAMPLE, len(texts)))
        stats = mean_ci([float(is_dark(t)) for t in sample])
        result["data"] = {"rate": stats["mean"], "ci95": stats.get("ci95"), "stories": len(sample)}
    return result
