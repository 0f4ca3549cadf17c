"""Dataset cards for synthesized story datasets, rendered from `templates/dataset_card.md.j2`.

`write_dataset_card(dataset_dir, info)` is called by `tinystories push --repo_type dataset`; the template
holds the prose (method, default summary and format note), this module only the data it renders.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData

from tinystories.hub.card_format import TEMPLATES, fmt, read_json, sanitize, value_rows

DATASET_CARD_TEMPLATE = TEMPLATES / "dataset_card.md.j2"
DATA_LICENSE = "cdla-sharing-1.0"

SIZE_CATEGORIES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
)
GENERATION_LABELS = (
    ("backend", "backend"),
    ("generator_model", "generator model"),
    ("num_stories", "stories generated"),
    ("vocabulary_size", "vocabulary words"),
    ("features", "story features"),
    ("sampling", "sampling"),
    ("seed", "seed"),
)
DEDUP_LABELS = (
    ("input", "input"),
    ("exact_duplicates", "exact duplicates removed"),
    ("near_duplicates", "near duplicates removed"),
    ("contaminated", "removed as overlapping evaluation prompts"),
    ("kept", "kept"),
)


def _size_category(n: Any) -> str | None:
    if not isinstance(n, int):
        return None
    return next((category for limit, category in SIZE_CATEGORIES if n < limit), "1M<n<10M")


def _dedup_settings(dedup: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The thresholds the dedup ran with: its `params`, or the older top-level `threshold` / `num_perm`."""
    params = dedup.get("params")
    extra = (
        params
        if isinstance(params, Mapping)
        else {k: v for k, v in dedup.items() if k in ("threshold", "num_perm")}
    )
    return [(k, fmt(v)) for k, v in extra.items()]


REPORT_COLUMNS = (
    "data",
    "stories",
    "all 3 words used",
    "Dialogue asked / not",
    "BadEnding asked / not",
    "words outside child vocabulary / story",
    "words (median)",
    "'Once upon a time'",
    "exact / near duplicates",
    "loops trimmed / rejected",
)


def _pair(a: Any, b: Any) -> str:
    return f"{fmt(a) if a is not None else '—'} / {fmt(b) if b is not None else '—'}"


def report_rows(report: Mapping[str, Any] | None) -> list[list[str]]:
    """One table row per input of a `data_report.json` (`tinystories data-report`), in `REPORT_COLUMNS` order."""
    rows = []
    for d in (report or {}).get("datasets") or []:
        features, dups = d.get("features") or {}, d.get("duplicates") or {}
        gen = d.get("generation") or {}
        dialogue, bad = features.get("Dialogue") or {}, features.get("BadEnding") or {}
        rows.append(
            [
                str(d.get("name")),
                fmt(d.get("stories")),
                fmt(d["words_all_used"]) if d.get("words_all_used") is not None else "—",
                _pair(dialogue.get("present_when_requested"), dialogue.get("present_when_not_requested")),
                _pair(bad.get("present_when_requested"), bad.get("present_when_not_requested")),
                fmt((d.get("out_of_vocabulary") or {}).get("mean_per_story")),
                fmt((d.get("length_words") or {}).get("median")),
                fmt((d.get("openings") or {}).get("once_upon_a_time")),
                _pair(dups.get("exact"), dups.get("near")),
                _pair(gen.get("loops_trimmed"), gen.get("loops_rejected")),
            ]
        )
    return rows


def write_dataset_card(
    dataset_dir: str | os.PathLike, info: Mapping[str, Any], repo_id: str | None = None
) -> Path:
    """Write `README.md` for a generated dataset folder.

    `info` keys (all optional): `pretty_name`, `variant` ("tinystories"|"instruct"), `backend`, `generator_model`,
    `num_stories`, `vocabulary_size`, `features`, `sampling` (dict), `prompt_template`, `dedup` (the
    `dedup_stats.json` dict: input, exact_duplicates, near_duplicates, contaminated, kept, plus thresholds),
    `splits` (dict name->rows), `format`, `license`, `tags`, `data_report` (a `data_report.json` dict; default:
    the folder's `data_report.json`, written by `tinystories data-report`).
    """
    dataset_dir = Path(dataset_dir)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    info = sanitize(dict(info))
    dedup = info.get("dedup") or read_json(dataset_dir / "dedup_stats.json") or {}
    variant = info.get("variant", "tinystories")
    pretty = info.get("pretty_name") or (
        "TinyStories-Instruct (synthetic)" if variant == "instruct" else "TinyStories (synthetic)"
    )
    n = info.get("num_stories") or dedup.get("kept")
    card_data = DatasetCardData(
        language="en",
        license=info.get("license") or DATA_LICENSE,
        pretty_name=pretty,
        task_categories=["text-generation"],
        size_categories=_size_category(n),
        tags=["tinystories", "synthetic", *(info.get("tags") or [])],
    )
    card = DatasetCard.from_template(
        card_data,
        template_path=str(DATASET_CARD_TEMPLATE),
        pretty_name=pretty,
        summary=info.get("summary"),
        num_stories=fmt(n) if n else None,
        variant=variant,
        generation_rows=value_rows(info, GENERATION_LABELS),
        dedup_rows=value_rows(dedup, DEDUP_LABELS),
        dedup_settings=_dedup_settings(dedup),
        splits=[(k, fmt(v)) for k, v in (info.get("splits") or {}).items()],
        format_note=info.get("format"),
        report_columns=REPORT_COLUMNS,
        report_rows=report_rows(info.get("data_report") or read_json(dataset_dir / "data_report.json")),
        repo_id=repo_id or info.get("repo_id") or "<your-username>/<dataset-name>",
    )
    path = dataset_dir / "README.md"
    card.save(path)
    return path
