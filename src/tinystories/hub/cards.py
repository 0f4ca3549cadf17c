"""Model cards rendered from `templates/model_card.md.j2` with validated Hub metadata.

`write_model_card(model_dir, run_info)` is called by the shared training tail and again by `tinystories eval`
(which re-renders the card with the new numbers): the sanitized run info is kept next to the weights in
`card_info.json`, and the latest `eval_results.json` in the folder is always merged in. The YAML header is
built with `huggingface_hub.ModelCardData` (license, datasets, language, tags, base_model, pipeline_tag,
model-index), so what we write is what the Hub parses. The template holds the prose; the section functions
below compute only the data it renders. Dataset cards live in `tinystories.dataset_card`.

Nothing local leaks into a card: base models and datasets must be Hub ids (a local path is reduced to its
basename, or dropped for `base_model`), and keys that look like secrets are removed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from tinystories.core.paths import CARD_INFO_FILE, is_hub_id, public_name, resolve_hub_id
from tinystories.hub.card_format import TEMPLATES, find_local_paths, fmt, millions, sanitize, value_rows
from tinystories.hub.card_format import read_json as _read_json
from tinystories.hub.dataset_card import write_dataset_card

__all__ = [
    "CARD_INFO_FILE",
    "build_model_card",
    "find_local_paths",
    "is_hub_id",
    "public_name",
    "resolve_hub_id",
    "sanitize_run_info",
    "update_model_card",
    "write_dataset_card",
    "write_model_card",
]

MODEL_CARD_TEMPLATE = TEMPLATES / "model_card.md.j2"
EVAL_RESULTS_FILE = "eval_results.json"

DEFAULT_LICENSE = "apache-2.0"
# The prompts of model-card samples and usage snippets: plain story beginnings, and Instruct fields.
SAMPLE_PROMPTS: dict[str, list[Any]] = {
    "stories": [
        "Once upon a time, there was a little girl named Lily. She loved to",
        "Tom and his dog went to the park.",
        "Lily and her dog went to the park. They",
    ],
    "instruct": [
        {"words": ["dog", "ball", "happy"], "features": ["Dialogue"]},
        {"summary": "A little girl finds a lost kitten and brings it home.", "features": ["Twist"]},
        {"words": ["tree", "climb", "brave"], "random_sentence": "The wind was very strong that day."},
    ],
}
DEFAULT_PROMPT = SAMPLE_PROMPTS["stories"][0]  # the usage snippet's prompt: the first card-sample prompt

JUDGE_CATEGORIES = ("grammar", "creativity", "consistency", "plot")
CONFIG_KEYS = (
    "model_type",
    "architectures",
    "hidden_size",
    "num_layers",
    "num_hidden_layers",
    "num_heads",
    "num_attention_heads",
    "vocab_size",
    "max_position_embeddings",
    "window_size",
    "attention_types",
    "intermediate_size",
    "activation_function",
)
EVAL_METRICS = (  # (key, model-index name, card row label)
    ("loss", "Held-out loss (nats/token)", "loss (nats/token)"),
    ("perplexity", "Perplexity", "perplexity"),
    ("bits_per_byte", "Bits per byte", "bits per byte"),
)
EVAL_COUNTS = (("num_tokens", "tokens"), ("num_bytes", "UTF-8 bytes"), ("num_stories", "stories"))
STAGE_TAGS = {"sft": ["sft", "trl", "instruct"], "lora": ["lora", "peft"]}


# --------------------------------------------------------------------------- sanitizing


def sanitize_run_info(run_info: Mapping[str, Any]) -> dict[str, Any]:
    """Drop secrets, reduce local paths to basenames, keep `base_model` only if it is a Hub id."""
    info = sanitize(dict(run_info))
    base = run_info.get("base_model")
    info["base_model"] = resolve_hub_id(base) if base else None
    datasets = run_info.get("datasets") or []
    if isinstance(datasets, str):
        datasets = [datasets]
    info["datasets"] = [public_name(str(d)) for d in datasets if d]
    if info.get("tokenizer"):
        info["tokenizer"] = public_name(str(run_info["tokenizer"]))
    return info


def _config_from_dir(model_dir: Path) -> dict[str, Any]:
    """Architecture fields from config.json (or the base model's, for an adapter folder)."""
    config = _read_json(model_dir / "config.json") or {}
    return {k: config[k] for k in CONFIG_KEYS if k in config}


def _size_name(info: Mapping[str, Any]) -> str | None:
    if info.get("size"):
        return str(info["size"])
    if info.get("num_parameters"):
        return millions(int(info["num_parameters"]))
    return None


def _parameters(info: Mapping[str, Any], key: str = "num_parameters") -> str | None:
    return millions(int(info[key])) if info.get(key) else None


# --------------------------------------------------------------------------- metadata


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _eval_metadata(eval_results: Mapping[str, Any] | None) -> list[EvalResult]:
    """model-index entries: the held-out metrics, then one per LLM-judge category."""
    if not eval_results:
        return []
    dataset = public_name(str(eval_results.get("dataset") or eval_results.get("data") or "unknown"))
    common = {
        "task_type": "text-generation",
        "task_name": "Text Generation",
        "dataset_type": dataset,
        "dataset_name": dataset.split("/")[-1],
        "dataset_split": eval_results.get("split", "validation"),
    }
    results = [
        EvalResult(
            metric_type=key, metric_name=name, metric_value=round(float(eval_results[key]), 4), **common
        )
        for key, name, _ in EVAL_METRICS
        if _finite(eval_results.get(key))
    ]
    judge = eval_results.get("judge") or {}
    for category, stats in (judge.get("scores") or {}).items():
        mean = stats.get("mean") if isinstance(stats, Mapping) else None
        if _finite(mean):
            results.append(
                EvalResult(
                    metric_type=f"llm_judge_{category}",
                    metric_name=f"LLM judge {category} (1-10)",
                    metric_value=round(float(mean), 3),
                    task_type="text-generation",
                    task_name="Story completion graded by an LLM judge",
                    dataset_type="tinystories-eval-prompts",
                    dataset_name="TinyStories evaluation prompts",
                    metric_config=public_name(str(judge.get("model", ""))) or None,
                )
            )
    return results


def _card_data(
    info: Mapping[str, Any], stage: str, model_name: str, eval_results: Mapping[str, Any] | None
) -> ModelCardData:
    """The YAML header: license, tags, datasets (Hub ids only), base model and model-index."""
    model_type = (info.get("config") or {}).get("model_type") or "gpt_neo"
    tags = ["tinystories", model_type, "text-generation", "story-generation", *STAGE_TAGS.get(stage, [])]
    tags += [t for t in (info.get("tags") or []) if t not in tags]
    hub_datasets = [d for d in info.get("datasets") or [] if is_hub_id(d)]
    return ModelCardData(
        language="en",
        license=info.get("license") or DEFAULT_LICENSE,
        library_name="peft" if stage == "lora" else "transformers",
        pipeline_tag="text-generation",
        tags=tags,
        datasets=hub_datasets or None,
        base_model=info.get("base_model") or None,
        model_name=model_name,
        eval_results=_eval_metadata(eval_results) or None,
    )


# --------------------------------------------------------------------------- sections


def _context_length(
    info: Mapping[str, Any], config: Mapping[str, Any], eval_results: Mapping[str, Any] | None
) -> int:
    stored_positions = config.get("max_position_embeddings")
    return int(
        info.get("context_length")
        or (min(stored_positions, 512) if stored_positions else None)
        or (eval_results or {}).get("max_length")
        or 512
    )


FAMILIES = {"gpt_neo": "GPT-Neo", "llama": "Llama-architecture"}  # the card's words for a model_type


def _model_rows(
    info: Mapping[str, Any], config: Mapping[str, Any], size: str | None, context_length: int
) -> list[tuple[str, str]]:
    """The "Model details" table after the architecture row."""
    counts = [
        ("size", size),
        ("parameters", _parameters(info)),
        ("non-embedding parameters", _parameters(info, "num_non_embedding_parameters")),
    ]
    rows = [(label, value) for label, value in counts if value]
    for label, value in (
        ("hidden size", config.get("hidden_size")),
        ("layers", config.get("num_layers", config.get("num_hidden_layers"))),
        ("attention heads", config.get("num_heads", config.get("num_attention_heads"))),
        ("key/value heads", config.get("num_key_value_heads")),
        ("MLP width", config.get("intermediate_size")),
        ("attention types", config.get("attention_types")),
        ("local attention window", config.get("window_size")),
        ("vocabulary", config.get("vocab_size")),
        ("trained context (tokens)", context_length),
        ("tokenizer", info.get("tokenizer")),
        ("training stage", info.get("stage", "pretrain")),
    ):
        if value is not None:
            rows.append((label, fmt(value)))
    return rows


def _model_section(
    info: Mapping[str, Any], config: Mapping[str, Any], size: str | None, context_length: int
) -> dict[str, Any]:
    """Architecture rows, training hyperparameters and the context the card quotes."""
    return {
        "architecture": (config.get("architectures") or ["GPTNeoForCausalLM"])[0],
        "family": FAMILIES.get(config.get("model_type") or "gpt_neo", "GPT-Neo"),
        "model_rows": _model_rows(info, config, size, context_length),
        "hyperparameters": [
            (k, fmt(v)) for k, v in (info.get("hyperparameters") or {}).items() if v is not None
        ],
        "context_length": context_length,
        "stored_positions": config.get("max_position_embeddings"),
    }


def _eval_section(eval_results: Mapping[str, Any] | None, context_length: int) -> dict[str, Any]:
    """The held-out evaluation table and what it was measured on."""
    results = eval_results or {}
    labels = [(key, label) for key, _, label in EVAL_METRICS] + list(EVAL_COUNTS)
    return {
        "eval_rows": value_rows(results, labels),
        "eval_dataset": public_name(str(results.get("dataset") or results.get("data") or "")),
        "eval_split": results.get("split", "validation"),
        "eval_context": results.get("max_length") or context_length,
        "eval_prompt_set": results.get("prompt_set"),  # "paper", "project" or a prompts file's name
        "instruct_words": _instruct_words(results.get("instruct_words")),
        "feature_rows": _feature_rows(results.get("instruct_features")),
        "dark": _dark(results.get("dark_stories")),
        "memorization": _memorization(results.get("memorization")),
    }


def _memorization(memo: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Copying and diversity of the completions and of held-out stories, as the card writes them."""
    if not isinstance(memo, Mapping) or not isinstance(memo.get("completions"), Mapping):
        return None

    def side(numbers: Mapping[str, Any] | None) -> dict[str, str] | None:
        if not isinstance(numbers, Mapping) or numbers.get("share_with_shared_span") is None:
            return None
        return {
            "shared": f"{numbers['share_with_shared_span']:.0%}",
            "longest": fmt(numbers.get("longest_shared_span")),
            "distinct_2": fmt(numbers.get("distinct_2")),
            "openings": f"{numbers['repeated_openings']:.0%}"
            if numbers.get("repeated_openings") is not None
            else "–",
        }

    return {
        "train_data": public_name(str(memo.get("train_data") or "")),
        "span": memo.get("span_words"),
        "model": side(memo["completions"]),
        "held_out": side(memo.get("held_out")),
    }


def _instruct_words(words: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The share of required `Words:` the stories use (and the base model's), as the card writes them."""
    if not isinstance(words, Mapping) or words.get("rate") is None:
        return None
    base = words.get("base") if isinstance(words.get("base"), Mapping) else {}
    return {
        "rate": f"{words['rate']:.1%}",
        "prompts": words.get("prompts"),
        "completions": words.get("completions"),
        "base_model": public_name(str(base.get("model") or "")) or None,
        "base_rate": f"{base['rate']:.1%}" if base.get("rate") is not None else None,
    }


def _pct(stats: Mapping[str, Any] | None) -> str:
    """`62% [48–76%]`: a rate with its 95% interval, as the card writes it."""
    if not isinstance(stats, Mapping) or stats.get("rate") is None:
        return "–"
    lo, hi = (stats.get("ci95") or [None, None])[:2]
    interval = f" [{max(lo, 0):.0%}–{min(hi, 1):.0%}]" if lo is not None and hi is not None else ""
    return f"{stats['rate']:.0%}{interval}"


def _feature_rows(features: Mapping[str, Any] | None) -> list[tuple[str, ...]] | None:
    """(feature, asked, not asked, base asked, base not asked) for the card's instruction-following table."""
    if not isinstance(features, Mapping) or not isinstance(features.get("features"), Mapping):
        return None
    base = features.get("base") if isinstance(features.get("base"), Mapping) else {}
    rows = []
    for name, rates in features["features"].items():
        theirs = (base.get("features") or {}).get(name) or {}
        cells = (rates.get("asked"), rates.get("not_asked"), theirs.get("asked"), theirs.get("not_asked"))
        rows.append((name, *(_pct(c) for c in cells)))
    return rows


def _dark(dark: Mapping[str, Any] | None) -> dict[str, str] | None:
    if not isinstance(dark, Mapping) or not dark.get("model"):
        return None
    return {"model": _pct(dark["model"]), "data": _pct(dark.get("data")) if dark.get("data") else None}


def _judge_rows(judge: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(category, mean, CI low, CI high) for each graded category."""
    rows = []
    for category, stats in (judge.get("scores") or {}).items():
        if isinstance(stats, Mapping) and stats.get("mean") is not None:
            lo, hi = (stats.get("ci95") or [None, None])[:2]
            rows.append(
                (
                    category,
                    f"{stats['mean']:.2f}",
                    f"{lo:.2f}" if lo is not None else "–",
                    f"{hi:.2f}" if hi is not None else "–",
                )
            )
    return rows


def _judge_section(eval_results: Mapping[str, Any] | None) -> dict[str, Any]:
    judge = (eval_results or {}).get("judge") or {}
    age = judge.get("age_groups") or {}
    return {
        "judge_rows": _judge_rows(judge),
        "judge_model": public_name(str(judge.get("model", ""))),
        "judge_n": judge.get("graded", 0),
        "judge_malformed": judge.get("malformed", 0),
        "judge_failed": judge.get("failed", 0),
        "judge_age": ", ".join(f"{k}: {v}" for k, v in sorted(age.items()) if v),
    }


def _data_section(info: Mapping[str, Any]) -> dict[str, Any]:
    """The datasets (name, is a Hub id), whether they include TinyStories, and the per-split sizes."""
    datasets = list(info.get("datasets") or [])
    data_rows = []
    for split, stats in (info.get("data_stats") or {}).items():
        if isinstance(stats, Mapping):
            parts = [
                f"{stats[k]:,} {label}"
                for k, label in (("stories", "stories"), ("tokens", "tokens"), ("bytes", "UTF-8 bytes"))
                if isinstance(stats.get(k), int)
            ]
            if parts:
                data_rows.append((split, ", ".join(parts)))
    return {
        "datasets": [(d, is_hub_id(d)) for d in datasets],
        "tinystories_data": not datasets or any("TinyStories" in d for d in datasets),
        "data_rows": data_rows,
    }


def _samples(info: Mapping[str, Any], eval_results: Mapping[str, Any] | None) -> list[dict[str, str]]:
    """Up to five prompt/completion pairs, whitespace collapsed."""
    samples = []
    for s in (info.get("samples") or (eval_results or {}).get("samples") or [])[:5]:
        if isinstance(s, Mapping) and s.get("completion") is not None:
            completion = " ".join(str(s["completion"]).split())
            samples.append({"prompt": " ".join(str(s.get("prompt", "")).split()), "completion": completion})
    return samples


# --------------------------------------------------------------------------- model card


def build_model_card(
    info: Mapping[str, Any], eval_results: Mapping[str, Any] | None = None, repo_id=None
) -> ModelCard:
    """Render the model card for already-sanitized `info` (see `sanitize_run_info`)."""
    stage = info.get("stage", "pretrain")
    config = dict(info.get("config") or {})
    size = _size_name(info)
    model_name = (
        info.get("model_name")
        or (repo_id.split("/")[-1] if repo_id else None)
        or (f"TinyStories-{size}" if size else "TinyStories model")
    )
    context_length = _context_length(info, config, eval_results)
    return ModelCard.from_template(
        _card_data(info, stage, model_name, eval_results),
        template_path=str(MODEL_CARD_TEMPLATE),
        model_name=model_name,
        repo_id=repo_id or info.get("repo_id") or f"<your-username>/{model_name}",
        stage=stage,
        size=size,
        parameters=_parameters(info),
        base_model=info.get("base_model"),
        code_url=info.get("code_url"),
        usage_prompt=DEFAULT_PROMPT,
        samples=_samples(info, eval_results),
        figures=info.get("figures") or {},
        **_model_section(info, config, size, context_length),
        **_data_section(info),
        **_eval_section(eval_results, context_length),
        **_judge_section(eval_results),
    )


def write_model_card(
    model_dir: str | os.PathLike, run_info: Mapping[str, Any] | None = None, repo_id=None
) -> Path:
    """Write `README.md` (and `card_info.json`) in `model_dir`; returns the README path.

    `run_info` is merged over an existing `card_info.json`, so `tinystories eval` can call this with `{}` to
    re-render the card with the newest `eval_results.json`.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    stored = _read_json(model_dir / CARD_INFO_FILE) or {}
    info = {**stored, **sanitize_run_info({**stored, **dict(run_info or {})})}
    info["config"] = {**_config_from_dir(model_dir), **(info.get("config") or {})}
    if repo_id:
        info["repo_id"] = repo_id
        info["model_name"] = repo_id.split("/")[-1]  # the published name, also in model-index
    eval_results = _read_json(model_dir / EVAL_RESULTS_FILE) or info.get("eval_results")
    persisted = {k: v for k, v in info.items() if k != "eval_results"}
    (model_dir / CARD_INFO_FILE).write_text(
        json.dumps(persisted, indent=2, default=str) + "\n", encoding="utf-8"
    )
    card = build_model_card(info, eval_results, repo_id=info.get("repo_id"))
    path = model_dir / "README.md"
    card.save(path)
    return path


def link_figures(
    model_dir: str | os.PathLike, title: str, figures_dir: str | os.PathLike, files: list[str]
) -> Path | None:
    """Add a figure set (e.g. `make analyze`'s or a sweep's PNGs) to the card of a folder we wrote; None otherwise.

    Links are relative to the model folder, so they work where the folder and the figures sit side by side.
    """
    model_dir = Path(model_dir)
    if not (model_dir / CARD_INFO_FILE).is_file():
        return None
    stored = _read_json(model_dir / CARD_INFO_FILE) or {}
    rel = Path(os.path.relpath(Path(figures_dir).resolve(), model_dir.resolve())).as_posix()
    figures = {**(stored.get("figures") or {}), title: {"dir": rel, "files": list(files)}}
    return write_model_card(model_dir, {"figures": figures})


def update_model_card(model_dir: str | os.PathLike, repo_id: str | None = None) -> Path | None:
    """Re-render the card of a folder we wrote (has `card_info.json`); None for folders we did not write."""
    model_dir = Path(model_dir)
    if not (model_dir / CARD_INFO_FILE).is_file():
        return None
    return write_model_card(model_dir, {}, repo_id=repo_id)
