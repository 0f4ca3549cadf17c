"""Do the models copy their data? Overlap of sampled completions with the training stories, and diversity.

`copying(texts, index)`: the share of texts that share a `SPAN_WORDS`-word span (8 lowercase words in a row,
punctuation ignored) with some training story, the mean share of each text's spans found in training, and the
longest span (in words) any text shares with a training story. `diversity(texts)`: distinct-n (unique word
n-grams / all word n-grams, pooled over the texts, n = 1, 2, 3) and repeated openings (the share of texts
whose first `OPENING_WORDS` words open another text of the set too).

The same numbers for held-out real stories against the same training set are the yardstick: the share of real
text that shares an 8-word span with other real stories is not zero ("Once upon a time, there was a little").
`memorization` cuts each held-out story to the stretch the completion beside it covers (from the prompt's
length in words, as many words as the completion), so both sides have the same number of spans and neither
side's count is inflated by a formulaic opening ("Once upon a time, there was a little girl named Lily").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import xxhash

SPAN_WORDS = 8
OPENING_WORDS = 5
_WORD = re.compile(r"[a-z0-9']+")
MEMORIZATION_RULE = (
    f"a completion copies when {SPAN_WORDS} words in a row (lower case, punctuation ignored) also occur in a "
    "training story; held-out real stories, cut to the stretch each completion covers (after its prompt's "
    "length, as many words), are scored the same way"
)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def span_hashes(tokens: Sequence[str], n: int = SPAN_WORDS) -> np.ndarray:
    """64-bit hashes of every run of `n` words, in order (empty when the text is shorter)."""
    return np.fromiter(
        (xxhash.xxh3_64_intdigest(" ".join(tokens[i : i + n]).encode()) for i in range(len(tokens) - n + 1)),
        dtype=np.uint64,
    )


class SpanIndex:
    """The sorted unique span hashes of a training set (8 bytes per distinct span)."""

    def __init__(self, stories: Iterable[str], n: int = SPAN_WORDS):
        self.n = n
        parts = [span_hashes(words(s), n) for s in stories]
        self.hashes = np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype=np.uint64)

    def hits(self, tokens: Sequence[str]) -> np.ndarray:
        """Per span of `tokens`: is it in the training set?"""
        return np.isin(span_hashes(tokens, self.n), self.hashes)


def _longest_run(hits: np.ndarray) -> int:
    best = run = 0
    for hit in hits.tolist():
        run = run + 1 if hit else 0
        best = max(best, run)
    return best


def copying(texts: Sequence[str], index: SpanIndex) -> dict[str, Any]:
    """Share of texts sharing a span with training, mean share of spans shared, longest shared span (words)."""
    shared, fractions, longest = 0, [], 0
    for text in texts:
        hits = index.hits(words(text))
        if not len(hits):
            continue
        shared += bool(hits.any())
        fractions.append(float(hits.mean()))
        run = _longest_run(hits)
        longest = max(longest, run + index.n - 1 if run else 0)
    scored = len(fractions)
    return {
        "texts": len(texts),
        "scored": scored,  # texts with at least one span (>= n words)
        "share_with_shared_span": round(shared / scored, 4) if scored else None,
        "mean_share_of_spans": round(float(np.mean(fractions)), 4) if scored else None,
        "longest_shared_span": longest,
    }


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    grams = [tuple(t[i : i + n]) for t in map(words, texts) for i in range(len(t) - n + 1)]
    return round(len(set(grams)) / len(grams), 4) if grams else None


def repeated_openings(texts: Sequence[str], k: int = OPENING_WORDS) -> float | None:
    """Share of texts whose first `k` words are also the first `k` words of another text."""
    openings = [tuple(words(t)[:k]) for t in texts]
    openings = [o for o in openings if len(o) == k]
    if not openings:
        return None
    counts: dict[tuple, int] = {}
    for o in openings:
        counts[o] = counts.get(o, 0) + 1
    return round(sum(1 for o in openings if counts[o] > 1) / len(openings), 4)


def diversity(texts: Sequence[str]) -> dict[str, Any]:
    return {
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "distinct_3": distinct_n(texts, 3),
        "repeated_openings": repeated_openings(texts),
    }


def same_lengths(
    references: Sequence[str], texts: Sequence[str], skips: Sequence[int] | None = None
) -> list[str]:
    """The references (in turn, cycling) as the stretch a completion stands for: `skips[k]` words in (the prompt's
    length: a completion continues a story beginning), then as many words as `texts[k]` has."""
    if not references:
        return []
    out = []
    for k, text in enumerate(texts):
        n, skip = max(1, len(text.split())), skips[k] if skips else 0
        out.append(" ".join(references[k % len(references)].split()[skip : skip + n]))
    return out


def memorization(
    completions: Sequence[str],
    held_out: Sequence[str] | None,
    train: Iterable[str],
    train_name: str,
    prompts: Sequence[str] | None = None,
) -> dict[str, Any]:
    """`eval_results.json`'s `memorization`: copying and diversity of the completions and of held-out stories
    (each cut to the stretch a completion covers: after its prompt's length in words, as long as it)."""
    index = SpanIndex(train)
    result: dict[str, Any] = {
        "train_data": train_name,
        "span_words": SPAN_WORDS,
        "rule": MEMORIZATION_RULE,
        "completions": {**copying(completions, index), **diversity(completions)},
        "held_out": None,
    }
    if held_out:
        skips = [len(p.split()) for p in prompts] if prompts is not None else None
        real = same_lengths(held_out, completions, skips)
        result["held_out"] = {**copying(real, index), **diversity(real)}
    return result
