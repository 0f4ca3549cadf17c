"""Model and dataset cards rendered from Jinja templates with validated Hub metadata.

`write_model_card(model_dir, run_info)` is called by the shared training tail and again by `tinystories eval`
(which re-renders the card with the new numbers): the sanitized run info is kept next to the weights in
`card_info.json`, and the latest `eval_results.json` in the folder is always merged in. The YAML header is
built with `huggingface_hub.ModelCardData` (license, datasets, language, tags, base_model, pipeline_tag,
model-index), so what we write is what the Hub parses.

Nothing local leaks into a card: base models and datasets must be Hub ids (a local path is reduced to its
basename, or dropped for `base_model`), and keys that look like secrets are removed.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, ModelCard, ModelCardData

from tinystories.paths import CARD_INFO_FILE, is_hub_id, looks_like_path, public_name, resolve_hub_id

TEMPLATES = Path(__file__).parent / "templates"
MODEL_CARD_TEMPLATE = TEMPLATES / "model_card.md.j2"
DATASET_CARD_TEMPLATE = TEMPLATES / "dataset_card.md.j2"
EVAL_RESULTS_FILE = "eval_results.json"

DEFAULT_LICENSE = "apache-2.0"
DATA_LICENSE = "cdla-sharing-1.0"
DEFAULT_PROMPT = "Once upon a time, there was a little girl named Lily. She loved to"

_SECRET_KEY = re.compile(r"(^|_)(token|secret|api_?key|password|credentials?)($|_)", re.IGNORECASE)
_ENUM_STR = re.compile(r"^[A-Z]\w*\.([A-Z][A-Z0-9_]*)$")  # str(SchedulerType.CONSTANT) -> "constant"
# What a local path looks like inside text we are about to publish.
_ABS_PATH = re.compile(
    r"(?<![\w:/.])(/(?:home|root|tmp|work|Users|mnt|data|scratch|var|private)/[^\s\"'`|)]+)"
)
_WIN_PATH = re.compile(r"\b[A-Za-z]:\\[^\s\"'`|]+")

JUDGE_CATEGORIES = ("grammar", "creativity", "consistency", "plot")


# --------------------------------------------------------------------------- sanitizing


def _sanitize(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _sanitize(v) for k, v in value.items() if not _SECRET_KEY.search(str(k))}
    if isinstance(value, list | tuple):
        return [_sanitize(v) for v in value]
    if isinstance(value, str) and (
        looks_like_path(value) or _ABS_PATH.search(value) or _WIN_PATH.search(value)
    ):
        return public_name(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Path):
        return value.name
    return value


def sanitize_run_info(run_info: Mapping[str, Any]) -> dict[str, Any]:
    """Drop secrets, reduce local paths to basenames, keep `base_model` only if it is a Hub id."""
    info = _sanitize(dict(run_info))
    base = run_info.get("base_model")
    info["base_model"] = resolve_hub_id(base) if base else None
    datasets = run_info.get("datasets") or []
    if isinstance(datasets, str):
        datasets = [datasets]
    info["datasets"] = [public_name(str(d)) for d in datasets if d]
    if info.get("tokenizer"):
        info["tokenizer"] = public_name(str(run_info["tokenizer"]))
    return info


def find_local_paths(text: str) -> list[str]:
    """Absolute local paths found in `text` (used to refuse publishing them)."""
    return sorted(set(_ABS_PATH.findall(text)) | set(_WIN_PATH.findall(text)))


# --------------------------------------------------------------------------- formatting helpers


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0 or (1e-6 <= abs(value) < 1):
            return f"{value:.4g}"
        if 1 <= abs(value) < 1e6:
            return f"{value:,.4f}".rstrip("0").rstrip(".")
        return f"{value:.3e}"
    if isinstance(value, list | tuple | dict):
        return f"`{json.dumps(value)}`"
    text = str(getattr(value, "value", value))
    match = _ENUM_STR.match(text)
    if match:
        text = match.group(1).lower()
    return text.replace("|", "\\|").replace("\n", " ")


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def _size_name(info: Mapping[str, Any]) -> str | None:
    if info.get("size"):
        return str(info["size"])
    if info.get("num_parameters"):
        return _millions(int(info["num_parameters"]))
    return None


def _size_phrase(size: str | None, info: Mapping[str, Any]) -> str:
    if info.get("stage") == "lora" or not size:
        return ""
    n = info.get("num_parameters")
    count = f", {_millions(int(n))} parameters" if n else ""
    return (
        f" (TinyStories-{size} configuration{count})"
        if size != "custom"
        else (f" ({_millions(int(n))} parameters)" if n else "")
    )


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _config_from_dir(model_dir: Path) -> dict[str, Any]:
    """Architecture fields from config.json (or the base model's, for an adapter folder)."""
    config = _read_json(model_dir / "config.json") or {}
    keys = (
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
    return {k: config[k] for k in keys if k in config}


# --------------------------------------------------------------------------- model card


def _eval_metadata(model_name: str, eval_results: Mapping[str, Any] | None) -> list[EvalResult]:
    if not eval_results:
        return []
    dataset = public_name(str(eval_results.get("dataset") or eval_results.get("data") or "unknown"))
    split = eval_results.get("split", "validation")
    common = {
        "task_type": "text-generation",
        "task_name": "Text Generation",
        "dataset_type": dataset,
        "dataset_name": dataset.split("/")[-1],
        "dataset_split": split,
    }
    results = []
    for key, pretty in (
        ("loss", "Held-out loss (nats/token)"),
        ("perplexity", "Perplexity"),
        ("bits_per_byte", "Bits per byte"),
    ):
        value = eval_results.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            results.append(
                EvalResult(metric_type=key, metric_name=pretty, metric_value=round(float(value), 4), **common)
            )
    judge = eval_results.get("judge") or {}
    for category, stats in (judge.get("scores") or {}).items():
        mean = stats.get("mean") if isinstance(stats, Mapping) else None
        if isinstance(mean, int | float) and math.isfinite(mean):
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
    repo_id = repo_id or info.get("repo_id") or f"<your-username>/{model_name}"
    datasets = list(info.get("datasets") or [])
    hub_datasets = [d for d in datasets if is_hub_id(d)]
    base_model = info.get("base_model")
    tags = ["tinystories", "gpt_neo", "text-generation", "story-generation"]
    tags += {"sft": ["sft", "trl", "instruct"], "lora": ["lora", "peft"]}.get(stage, [])
    tags += [t for t in (info.get("tags") or []) if t not in tags]

    eval_list = _eval_metadata(model_name, eval_results)
    card_data = ModelCardData(
        language="en",
        license=info.get("license") or DEFAULT_LICENSE,
        library_name="peft" if stage == "lora" else "transformers",
        pipeline_tag="text-generation",
        tags=tags,
        datasets=hub_datasets or None,
        base_model=base_model or None,
        model_name=model_name,
        eval_results=eval_list or None,
    )

    kind = {
        "pretrain": "a GPT-Neo causal language model pretrained from scratch",
        "sft": "an Instruct GPT-Neo model, supervised fine-tuned with TRL's `SFTTrainer`",
        "lora": "a LoRA adapter (PEFT)",
    }.get(stage, "a GPT-Neo causal language model")
    summary = (
        f"**{model_name}** is {kind}{_size_phrase(size, info)} "
        "that writes short, simple stories in the vocabulary of a 3–4 year old."
    )
    if stage == "sft":
        summary += (
            " It follows TinyStories-Instruct prompts: `Features:`, `Words:`, `Summary:` and `Random sentence:` "
            "lines, then `Story:`."
        )

    n_layers = config.get("num_layers", config.get("num_hidden_layers"))
    n_heads = config.get("num_heads", config.get("num_attention_heads"))
    stored_positions = config.get("max_position_embeddings")
    context_length = int(
        info.get("context_length")
        or (min(stored_positions, 512) if stored_positions else None)
        or (eval_results or {}).get("max_length")
        or 512
    )
    rows: list[tuple[str, str]] = []
    if size:
        rows.append(("size", size))
    if info.get("num_parameters"):
        rows.append(("parameters", _millions(int(info["num_parameters"]))))
    if info.get("num_non_embedding_parameters"):
        rows.append(("non-embedding parameters", _millions(int(info["num_non_embedding_parameters"]))))
    for label, value in (
        ("hidden size", config.get("hidden_size")),
        ("layers", n_layers),
        ("attention heads", n_heads),
        ("attention types", config.get("attention_types")),
        ("local attention window", config.get("window_size")),
        ("vocabulary", config.get("vocab_size")),
        ("trained context (tokens)", context_length),
        ("tokenizer", info.get("tokenizer")),
        ("training stage", stage),
    ):
        if value is not None:
            rows.append((label, _fmt(value)))

    hyper = [(k, _fmt(v)) for k, v in (info.get("hyperparameters") or {}).items() if v is not None]

    eval_rows: list[tuple[str, str]] = []
    judge_rows: list[tuple[str, str, str, str]] = []
    judge = {}
    if eval_results:
        for key, label in (
            ("loss", "loss (nats/token)"),
            ("perplexity", "perplexity"),
            ("bits_per_byte", "bits per byte"),
            ("num_tokens", "tokens"),
            ("num_bytes", "UTF-8 bytes"),
            ("num_stories", "stories"),
        ):
            if eval_results.get(key) is not None:
                eval_rows.append((label, _fmt(eval_results[key])))
        judge = eval_results.get("judge") or {}
        for category, stats in (judge.get("scores") or {}).items():
            if isinstance(stats, Mapping) and stats.get("mean") is not None:
                lo, hi = (stats.get("ci95") or [None, None])[:2]
                judge_rows.append(
                    (
                        category,
                        f"{stats['mean']:.2f}",
                        f"{lo:.2f}" if lo is not None else "–",
                        f"{hi:.2f}" if hi is not None else "–",
                    )
                )
    age = judge.get("age_groups") or {}
    judge_age = ", ".join(f"{k}: {v}" for k, v in sorted(age.items()) if v) if age else ""

    data_note = ""
    if not datasets or any("TinyStories" in d for d in datasets):
        data_note = (
            "TinyStories (`roneneldan/TinyStories`, CDLA-Sharing-1.0): ~2.1M synthetic stories written by "
            "GPT-3.5/GPT-4 for 3–4 year olds."
        )

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

    samples = []
    for s in (info.get("samples") or (eval_results or {}).get("samples") or [])[:5]:
        if isinstance(s, Mapping) and s.get("completion") is not None:
            completion = " ".join(str(s["completion"]).split())
            samples.append({"prompt": " ".join(str(s.get("prompt", "")).split()), "completion": completion})

    eval_ctx = (eval_results or {}).get("max_length") or context_length
    return ModelCard.from_template(
        card_data,
        template_path=str(MODEL_CARD_TEMPLATE),
        model_name=model_name,
        repo_id=repo_id,
        summary=summary,
        stage=stage,
        base_model=base_model,
        code_url=info.get("code_url"),
        usage_prompt=DEFAULT_PROMPT,
        architecture=(config.get("architectures") or ["GPTNeoForCausalLM"])[0],
        model_rows=rows,
        hyperparameters=hyper,
        datasets=[
            f"[`{d}`](https://huggingface.co/datasets/{d})" if is_hub_id(d) else f"`{d}`" for d in datasets
        ],
        data_note=data_note,
        data_rows=data_rows,
        eval_rows=eval_rows,
        eval_dataset=public_name(
            str((eval_results or {}).get("dataset") or (eval_results or {}).get("data") or "")
        ),
        eval_split=(eval_results or {}).get("split", "validation"),
        eval_context=eval_ctx,
        judge_rows=judge_rows,
        judge_model=public_name(str(judge.get("model", ""))),
        judge_n=judge.get("graded", 0),
        judge_malformed=judge.get("malformed", 0),
        judge_failed=judge.get("failed", 0),
        judge_age=judge_age,
        samples=samples,
        context_length=context_length,
        stored_positions=stored_positions,
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


def update_model_card(model_dir: str | os.PathLike, repo_id: str | None = None) -> Path | None:
    """Re-render the card of a folder we wrote (has `card_info.json`); None for folders we did not write."""
    model_dir = Path(model_dir)
    if not (model_dir / CARD_INFO_FILE).is_file():
        return None
    return write_model_card(model_dir, {}, repo_id=repo_id)


# --------------------------------------------------------------------------- dataset card


def write_dataset_card(
    dataset_dir: str | os.PathLike, info: Mapping[str, Any], repo_id: str | None = None
) -> Path:
    """Write `README.md` for a generated dataset folder.

    `info` keys (all optional): `pretty_name`, `variant` ("tinystories"|"instruct"), `backend`, `generator_model`,
    `num_stories`, `vocabulary_size`, `features`, `sampling` (dict), `prompt_template`, `dedup` (the
    `dedup_stats.json` dict: input, exact_duplicates, near_duplicates, contaminated, kept, plus thresholds),
    `splits` (dict name->rows), `format`, `license`, `tags`.
    """
    dataset_dir = Path(dataset_dir)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    info = _sanitize(dict(info))
    if not info.get("dedup"):
        info["dedup"] = _read_json(dataset_dir / "dedup_stats.json") or {}
    repo_id = repo_id or info.get("repo_id") or "<your-username>/<dataset-name>"
    variant = info.get("variant", "tinystories")
    pretty = info.get("pretty_name") or (
        "TinyStories-Instruct (synthetic)" if variant == "instruct" else "TinyStories (synthetic)"
    )
    n = info.get("num_stories") or (info.get("dedup") or {}).get("kept")
    size_cat = None
    if isinstance(n, int):
        size_cat = next(
            (
                c
                for lim, c in (
                    (1_000, "n<1K"),
                    (10_000, "1K<n<10K"),
                    (100_000, "10K<n<100K"),
                    (1_000_000, "100K<n<1M"),
                )
                if n < lim
            ),
            "1M<n<10M",
        )
    card_data = DatasetCardData(
        language="en",
        license=info.get("license") or DATA_LICENSE,
        pretty_name=pretty,
        task_categories=["text-generation"],
        size_categories=size_cat,
        tags=["tinystories", "synthetic", *(info.get("tags") or [])],
    )
    method = (
        "Each story comes from one LLM request asking for a short story a 3–4 year old would understand, "
        "using one random verb, one random noun and one random adjective from a ~1,500-word basic vocabulary, "
        "and a random subset of story features (dialogue, plot twist, bad ending, moral value, foreshadowing, "
        "conflict)."
    )
    if variant == "instruct":
        method += (
            " Each story is paired with its instructions (`Features:`, `Words:`, `Summary:`, `Random sentence:`) "
            "in the TinyStories-Instruct format."
        )
    gen_rows = []
    for key, label in (
        ("backend", "backend"),
        ("generator_model", "generator model"),
        ("num_stories", "stories generated"),
        ("vocabulary_size", "vocabulary words"),
        ("features", "story features"),
        ("sampling", "sampling"),
        ("seed", "seed"),
    ):
        if info.get(key) is not None:
            gen_rows.append((label, _fmt(info[key])))
    dedup = info.get("dedup") or {}
    dedup_rows = []
    for key, label in (
        ("input", "input"),
        ("exact_duplicates", "exact duplicates removed"),
        ("near_duplicates", "near duplicates removed"),
        ("contaminated", "removed as overlapping evaluation prompts"),
        ("kept", "kept"),
    ):
        if dedup.get(key) is not None:
            dedup_rows.append((label, _fmt(dedup[key])))
    params = dedup.get("params")
    extra = (
        params
        if isinstance(params, Mapping)
        else {k: v for k, v in dedup.items() if k in ("threshold", "num_perm")}
    )
    dedup_note = ("Settings: " + ", ".join(f"`{k}`={_fmt(v)}" for k, v in extra.items())) if extra else ""
    splits = [(k, _fmt(v)) for k, v in (info.get("splits") or {}).items()]
    card = DatasetCard.from_template(
        card_data,
        template_path=str(DATASET_CARD_TEMPLATE),
        pretty_name=pretty,
        summary=info.get("summary")
        or f"{_fmt(n) if n else 'Synthetic'} short stories for training tiny language models.",
        method=method,
        generation_rows=gen_rows,
        dedup_rows=dedup_rows,
        dedup_note=dedup_note,
        splits=splits,
        format_note=info.get("format") or "One story per row in the `text` column.",
        repo_id=repo_id,
    )
    path = dataset_dir / "README.md"
    card.save(path)
    return path
