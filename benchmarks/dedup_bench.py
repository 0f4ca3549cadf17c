"""Dedup benchmark: throughput and precision / recall on a corpus with planted exact / near duplicates.

`run_benchmark` replicates the shared TinyStories sample (or offline template stories) with edits and runs
`tinystories.dedup.deduplicate` on it; `python -m benchmarks.bench --suite dedup` prints its numbers.
"""

from __future__ import annotations

import os
import random
import resource
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tinystories.core import EVAL_PROMPTS_FILE, REPO_ROOT
from tinystories.data.loading import iter_txt_stories
from tinystories.dedup.decontamination import read_eval_prompts
from tinystories.dedup.pipeline import DedupResult, deduplicate
from tinystories.synthesis.backends import TemplateBackend
from tinystories.synthesis.prompts import Vocabulary


def _default_sample() -> Path:
    return REPO_ROOT.parent / "shared" / "data" / "tinystories" / "TinyStories-train.sample.txt"


def make_benchmark_corpus(
    base: Sequence[str],
    num_stories: int,
    seed: int = 0,
    near_fraction: float = 0.1,
    exact_fraction: float = 0.05,
    edits: int = 3,
) -> tuple[list[str], dict[int, int], dict[int, int]]:
    """Replicate `base` to `num_stories` texts with known duplicates.

    Every replica is rewritten (35% of its words replaced) so it is a distinct story; then a
    `near_fraction` of the corpus is appended as copies with `edits` word edits (near duplicates) and an
    `exact_fraction` as copies differing only in case / spacing (exact after normalisation).
    Returns (texts, {near copy -> original}, {exact copy -> original}).
    """
    rng = random.Random(seed)
    vocab = sorted({w for t in base[:500] for w in t.split()})
    n_near = int(num_stories * near_fraction)
    n_exact = int(num_stories * exact_fraction)
    n_unique = num_stories - n_near - n_exact
    texts: list[str] = []
    for i in range(n_unique):
        story = base[i % len(base)]
        if i >= len(base):  # a rewritten replica: far below any sensible threshold from its original
            words = story.split(" ")
            story = " ".join(rng.choice(vocab) if rng.random() < 0.35 else w for w in words)
        texts.append(story)
    near_of: dict[int, int] = {}
    for _ in range(n_near):
        src = rng.randrange(n_unique)
        words = texts[src].split(" ")
        for _ in range(edits):
            op, pos = rng.random(), rng.randrange(len(words))
            if op < 0.4:
                words[pos] = rng.choice(vocab)
            elif op < 0.7:
                words.insert(pos, rng.choice(vocab))
            elif len(words) > 1:
                del words[pos]
        near_of[len(texts)] = src
        texts.append(" ".join(words))
    exact_of: dict[int, int] = {}
    for _ in range(n_exact):
        src = rng.randrange(n_unique)
        exact_of[len(texts)] = src
        texts.append("  " + texts[src].upper().replace(". ", " . "))
    order = list(range(len(texts)))
    rng.shuffle(order)  # copies may come before their originals
    position = {old: new for new, old in enumerate(order)}
    shuffled = [texts[old] for old in order]
    near_of = {position[k]: position[v] for k, v in near_of.items()}
    exact_of = {position[k]: position[v] for k, v in exact_of.items()}
    return shuffled, near_of, exact_of


def score(result: DedupResult, near_of: dict[int, int], exact_of: dict[int, int]) -> dict[str, float]:
    """Precision / recall of the dropped set against the planted duplicates (one of each pair must go)."""
    dropped = set(np.flatnonzero(~result.keep).tolist())
    planted_pairs = list(near_of.items()) + list(exact_of.items())
    caught = sum(1 for a, b in planted_pairs if a in dropped or b in dropped)
    # groups of planted copies of one original: at most (group size - 1) drops are right
    groups: dict[int, set[int]] = {}
    for a, b in planted_pairs:
        groups.setdefault(b, {b}).add(a)
    allowed = sum(len(g) - 1 for g in groups.values())
    correct = sum(min(len(g & dropped), len(g) - 1) for g in groups.values())
    precision = correct / len(dropped) if dropped else 1.0
    recall = caught / len(planted_pairs) if planted_pairs else 1.0
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "planted": allowed,
        "dropped": len(dropped),
    }


def _base_stories(sample_path: str | None) -> tuple[list[str], str]:
    """(stories, source name): the shared sample when present, else offline template stories."""
    path = Path(sample_path) if sample_path else _default_sample()
    if path.is_file():
        return [s.strip() for s in iter_txt_stories(path) if s.strip()], "TinyStories-train.sample.txt"
    vocab, backend = Vocabulary(), TemplateBackend()
    return [backend.story(vocab.spec(0, i)) for i in range(2000)], "template backend stories"


def _cpu_seconds() -> float:
    """CPU time of this process and its exited children (workers count once the pool has exited)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_benchmark(
    num_stories: int = 20000, num_proc: int = 2, sample_path: str | None = None, **kwargs
) -> dict:
    """Dedup throughput on the shared sample replicated with edits (planted exact/near duplicates)."""
    base, source = _base_stories(sample_path)
    texts, near_of, exact_of = make_benchmark_corpus(base, num_stories)
    eval_prompts = read_eval_prompts([EVAL_PROMPTS_FILE]) if EVAL_PROMPTS_FILE.is_file() else []

    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    result = deduplicate(
        texts, len(texts), num_proc=num_proc, eval_prompts=eval_prompts, progress=False, **kwargs
    )
    seconds = time.perf_counter() - t0
    cpu_seconds = _cpu_seconds() - cpu0
    rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "benchmark": "dedup",
        "source": source,
        "num_stories": len(texts),
        "num_proc": num_proc,
        "seconds": round(seconds, 3),
        "stories_per_second": round(len(texts) / seconds, 1),
        "goal_stories_per_second": 5000,
        "cpu_seconds": round(cpu_seconds, 3),
        "stories_per_cpu_second": round(len(texts) / cpu_seconds, 1) if cpu_seconds > 0 else None,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "peak_rss_mb_main": round(rss_self, 1),
        "peak_rss_mb_worker": round(rss_children, 1),
        "mean_words_per_story": round(float(np.mean([len(t.split()) for t in texts])), 1),
        **{k: result.stats[k] for k in ("contaminated", "exact_duplicates", "near_duplicates", "kept")},
        **score(result, near_of, exact_of),
        "params": result.stats["params"],
        "phase_seconds": result.stats["seconds"],
    }
