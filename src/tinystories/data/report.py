"""What one story dataset is like, in numbers: the per-input half of `tinystories data-report`.

For a list of stories (and, when the records carry them, the requested words and features):

- `words_all_used`: the share of stories using all three requested words, inflections counted
  (`wordforms.uses_word` with each word's part of speech: the same rule as Instruct `Words:` and eval);
- `features`: per detectable feature (`features.DETECTORS`) the share of stories showing it when it was
  requested and when it was not (and overall, for data without requests);
- `out_of_vocabulary`: words outside the child vocabulary per story. The child vocabulary is every form of the
  ~1,500 basic words of `data_generation/` plus `FUNCTION_WORDS` (pronouns, articles, prepositions,
  auxiliaries, common adverbs, numbers, contraction pieces) and `COMMON_WORDS`; a word never written in lower case in its story is
  a name and not counted;
- `length_words` / `length_tokens`: distribution of story lengths (tokens when a tokenizer is given);
- `openings`: the share opening with "Once upon a time", distinct first sentences, the most common ones;
- `generation`: what the synthesis job's cleaning did (`shards.cleaning_counts`, from `stats.json`).

Duplicates within and across inputs are the dedup's business (`tinystories.dedup.overlap`); the stage
`tinystories.stages.data_report` puts both together.
"""

from __future__ import annotations

import collections
import json
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, load_from_disk

from tinystories.core import ConfigError
from tinystories.data.features import DETECTORS, FEATURES
from tinystories.data.loading import load_split
from tinystories.data.shards import collect_shards, is_synthesis_output, load_generated
from tinystories.data.wordforms import PARTS_OF_SPEECH, split_sentences, uses_word, word_forms, word_lists

_FUNCTION_WORDS_TEXT = """a an the this that these those some any every each all both no not none other another such
    i me my mine myself you your yours yourself he him his himself she her hers herself it its itself we us our
    ours ourselves they them their theirs themselves one ones someone something somebody anyone anything
    everyone everything everybody nobody nothing who whom whose what which where when why how
    and or but so if because than then too also as while until though although yet
    in on at to of for from with without by about into onto over under up down out off through around
    after before behind near between across along away back inside outside above below upon toward towards
    is am are was were be been being do does did done doing have has had having will would shall should
    can could may might must let lets
    very really just only even still again now here there today tomorrow yesterday soon always never
    ever often sometimes once twice much many more most less least few lot lots
    yes no oh wow hello hi bye goodbye please thank thanks okay ok
    two three four five six seven eight nine ten first second third last next
    s t ll re ve d m don didn doesn isn wasn weren aren couldn wouldn shouldn won can hasn haven hadn
    mom mommy dad daddy mama papa grandma grandpa
"""
FUNCTION_WORDS = frozenset(_FUNCTION_WORDS_TEXT.split())
# common words a 3-4 year old knows that the basic vocabulary (verbs, nouns, adjectives the prompts draw) leaves
# out: the most frequent such words of the real TinyStories sample, checked by hand
_COMMON_WORDS_TEXT = """get gets got getting gotten time times name named fun together thing things end ends way ways idea ideas
    man men woman women lady friend friends mr mrs miss sorry quickly slowly loudly softly suddenly finally"""
COMMON_WORDS = frozenset(_COMMON_WORDS_TEXT.split())
ONCE_UPON_A_TIME = re.compile(r"^\W*once upon a time\b", re.I)
_LETTERS = re.compile(r"[A-Za-z]+")


@dataclass
class ReportInput:
    """One input of the report: its stories and what its records say about them."""

    name: str
    source: str
    stories: list[str]
    words: list[list[str]] | None = None  # requested [verb, noun, adjective] per story
    features: list[list[str]] | None = None  # requested features per story
    generation: dict[str, Any] | None = None  # the synthesis job's stats.json
    dedup: dict[str, Any] | None = None  # dedup_stats.json when the input is a dedup output


# --------------------------------------------------------------------------------------------- loading
def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _generation_stats(folder: Path) -> dict[str, Any]:
    stats = _read_json(folder / "stats.json")
    return stats if stats is not None else collect_shards(folder)[2]


def _name(source: str) -> str:
    path = Path(source)
    if path.name in ("data", "dataset") and path.parent.name:
        return path.parent.name
    return path.name or source


def _open(source: str, split: str) -> tuple[Dataset, dict | None, dict | None]:
    """(records, generation stats, dedup stats) of a synthesis dir, a dedup dir or any dataset source."""
    path = Path(source).expanduser()
    if path.is_dir() and is_synthesis_output(path):
        return load_generated(path), _generation_stats(path), None
    dedup = _read_json(path / "dedup_stats.json") if path.is_dir() else None
    if dedup is not None and (path / "data").is_dir():  # the generation's stats.json travels with it
        origin = Path(str(dedup.get("source", "")))
        generation = _read_json(path / "stats.json")
        if generation is None and origin.is_dir() and is_synthesis_output(origin):
            generation = _generation_stats(origin)
        return load_from_disk(str(path / "data")), generation, dedup
    return load_split(source, split), None, None


def load_report_input(source: str, split: str = "train", text_column: str | None = None) -> ReportInput:
    """A report input from a `tinystories data` dir, a `tinystories dedup` dir, a file, a folder or a Hub id."""
    ds, generation, dedup = _open(source, split)
    column = text_column or ("story" if "story" in ds.column_names else "text")
    if column not in ds.column_names:
        raise ConfigError(
            f"{source!r} has no {column!r} column (columns: {ds.column_names}); pass --text_column"
        )
    texts = ds[column]
    keep = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
    stories = [texts[i].strip() for i in keep]

    def column_of(name: str) -> list[list[str]] | None:
        if name not in ds.column_names:
            return None
        values = ds[name]
        return [list(values[i] or []) for i in keep]

    return ReportInput(
        _name(source), source, stories, column_of("words"), column_of("features"), generation, dedup
    )


# --------------------------------------------------------------------------------------------- numbers
def _share(count: int, total: int) -> float | None:
    return round(count / total, 4) if total else None


def words_used(stories: Sequence[str], words: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Share of stories using all their requested words, and each part of speech on its own."""
    rows = [(s, w) for s, w in zip(stories, words, strict=True) if len(w) == len(PARTS_OF_SPEECH)]
    used = [[uses_word(s, word, pos) for word, pos in zip(w, PARTS_OF_SPEECH, strict=True)] for s, w in rows]
    each = {pos: _share(sum(u[k] for u in used), len(used)) for k, pos in enumerate(PARTS_OF_SPEECH)}
    return {"words_all_used": _share(sum(all(u) for u in used), len(used)), "words_used": each}


def feature_rates(
    stories: Sequence[str],
    requested: Sequence[Sequence[str]] | None,
    detectors: dict[str, Callable] = DETECTORS,
) -> dict[str, dict[str, Any]]:
    """Per detectable feature: present overall, and (with requests) when requested and when not."""
    out = {}
    for name in FEATURES:
        present = [bool(detectors[name](s)) for s in stories]
        row: dict[str, Any] = {"present": _share(sum(present), len(present))}
        if requested is not None:
            asked = [name in r for r in requested]
            n_asked = sum(asked)
            row["requested"] = n_asked
            row["present_when_requested"] = _share(
                sum(p for p, a in zip(present, asked, strict=True) if a), n_asked
            )
            row["present_when_not_requested"] = _share(
                sum(p for p, a in zip(present, asked, strict=True) if not a), len(asked) - n_asked
            )
        out[name] = row
    return out


def child_vocabulary(data_dir: str | Path | None = None) -> frozenset[str]:
    """Every form of the basic vocabulary's words, plus `FUNCTION_WORDS` and `COMMON_WORDS`."""
    forms = set(FUNCTION_WORDS | COMMON_WORDS)
    for pos, words in word_lists(data_dir).items():
        for word in words:
            forms |= word_forms(word, pos)
    return frozenset(forms)


def unknown_words(story: str, vocabulary: frozenset[str]) -> list[str]:
    """The distinct words of `story` outside `vocabulary` (names, never written in lower case, left out)."""
    tokens = _LETTERS.findall(story)
    lower = {t for t in tokens if t.islower()}
    return sorted(w for w in lower if w not in vocabulary)


def out_of_vocabulary(stories: Sequence[str], vocabulary: frozenset[str], top: int = 15) -> dict[str, Any]:
    per_story = [unknown_words(s, vocabulary) for s in stories]
    counts = [len(u) for u in per_story]
    common = collections.Counter(w for u in per_story for w in u).most_common(top)
    return {
        "mean_per_story": round(statistics.fmean(counts), 2) if counts else None,
        "median_per_story": statistics.median(counts) if counts else None,
        "stories_with_none": _share(counts.count(0), len(counts)),
        "most_common": [[w, n] for w, n in common],
    }


def distribution(values: Sequence[int]) -> dict[str, Any] | None:
    """mean, median, 10th and 90th percentile (nearest rank), min, max."""
    if not values:
        return None
    ordered = sorted(values)

    def rank(q: float) -> int:
        return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]

    return {
        "mean": round(statistics.fmean(ordered), 1),
        "median": statistics.median(ordered),
        "p10": rank(0.1),
        "p90": rank(0.9),
        "min": ordered[0],
        "max": ordered[-1],
    }


def lengths(stories: Sequence[str], tokenizer=None) -> dict[str, Any]:
    """Story lengths in words (whitespace-separated) and, with a tokenizer, in tokens."""
    words = [len(s.split()) for s in stories]
    tokens = None
    if tokenizer is not None and stories:
        tokens = [len(ids) for ids in tokenizer(list(stories), add_special_tokens=False)["input_ids"]]
    return {
        "length_words": distribution(words),
        "length_tokens": distribution(tokens) if tokens is not None else None,
        "words": words,
        "tokens": tokens,
    }


def openings(stories: Sequence[str], top: int = 5) -> dict[str, Any]:
    """The "Once upon a time" share, distinct first sentences, and the most common first sentences."""
    firsts = [(split_sentences(s) or [""])[0] for s in stories]
    common = collections.Counter(firsts).most_common(top)
    return {
        "once_upon_a_time": _share(sum(bool(ONCE_UPON_A_TIME.match(s)) for s in stories), len(stories)),
        "distinct_first_sentences": _share(len(set(firsts)), len(firsts)),
        "most_common_first_sentences": [[s, n] for s, n in common],
    }


GENERATION_KEYS = (
    "expected",
    "generated",
    "failed",
    "preambles_stripped",
    "truncated",
    "truncated_kept",
    "loops_trimmed",
    "loops_rejected",
    "second_stories_cut",
    "refused",
)


def generation_summary(stats: dict[str, Any] | None) -> dict[str, Any] | None:
    """The cleaning counts of a synthesis job's stats (None for data not made by `tinystories data`)."""
    if not stats:
        return None
    summary = {k: stats.get(k) for k in GENERATION_KEYS}
    job = stats.get("job") or {}
    summary.update(backend=job.get("backend"), model=job.get("gguf_file") or job.get("model"))
    return summary


def dataset_numbers(
    item: ReportInput, vocabulary: frozenset[str], tokenizer=None, top: int = 5
) -> tuple[dict[str, Any], dict[str, list[int] | None]]:
    """(the report row of one input, its raw lengths for the figures)."""
    stories = item.stories
    size = lengths(stories, tokenizer)
    row: dict[str, Any] = {"name": item.name, "source": item.source, "stories": len(stories)}
    row.update(
        words_used(stories, item.words)
        if item.words is not None
        else {"words_all_used": None, "words_used": None}
    )
    row["features"] = feature_rates(stories, item.features)
    row["out_of_vocabulary"] = out_of_vocabulary(stories, vocabulary)
    row["length_words"], row["length_tokens"] = size["length_words"], size["length_tokens"]
    row["openings"] = openings(stories, top)
    row["generation"] = generation_summary(item.generation)
    if item.dedup is not None:
        row["dedup"] = {
            k: item.dedup.get(k) for k in ("input", "exact_duplicates", "near_duplicates", "kept")
        }
    return row, {"words": size["words"], "tokens": size["tokens"]}
