"""`deduplicate`: hash every text once, then the three filters, each on what the previous kept.

1. `drop_contaminated`: stories holding at least `decontaminate_threshold` of an eval prompt's n-grams;
2. `drop_exact_duplicates`: same normalised-text hash as an earlier story;
3. `drop_near_duplicates`: LSH candidates verified by estimated Jaccard, clustered by union-find.
"""

from __future__ import annotations

import collections
import multiprocessing as mp
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from tinystories.dedup.decontamination import PromptIndex
from tinystories.dedup.minhash import (
    HashConfig,
    Hasher,
    UnionFind,
    candidate_pairs,
    estimated_jaccard,
    hash_in_worker,
    init_worker,
    lsh_params,
)


@dataclass
class DedupResult:
    keep: np.ndarray  # bool per input row
    reason: list[str | None]  # per input row: None (kept) / exact_duplicate / near_duplicate / contaminated
    duplicate_of: np.ndarray  # int64 per row, -1 when none
    similarity: np.ndarray  # float per row (1.0 exact, estimated Jaccard near, overlap contaminated)
    matched_prompt: dict[int, str]
    stats: dict[str, Any]

    @classmethod
    def all_kept(cls, num_texts: int) -> DedupResult:
        """Every row kept: what the filters start from."""
        return cls(
            keep=np.ones(num_texts, dtype=bool),
            reason=[None] * num_texts,
            duplicate_of=np.full(num_texts, -1, dtype=np.int64),
            similarity=np.zeros(num_texts, dtype=np.float64),
            matched_prompt={},
            stats={},
        )


@dataclass
class Hashes:
    """What the filters need of every text, computed in one pass."""

    exact: np.ndarray  # uint64 normalised-text hash per row
    signatures: np.ndarray  # (rows, num_perm) uint32 MinHash signatures
    num_words: np.ndarray  # int64 per row
    hits: dict[int, np.ndarray]  # row -> eval-prompt n-gram hashes it contains

    def collect(self, start: int, out: dict[str, Any]) -> int:
        """Store one hashed batch (a `Hasher` output) at rows `start...`; returns its size."""
        n = len(out["exact"])
        self.exact[start : start + n] = out["exact"]
        self.signatures[start : start + n] = out["signatures"]
        self.num_words[start : start + n] = out["num_words"]
        for i, h in out["hits"].items():
            self.hits[start + i] = h
        return n


# ------------------------------------------------------------------------------------------- hashing
def _batches(texts: Iterable[str], batch_size: int) -> Iterator[tuple[int, list[str]]]:
    batch: list[str] = []
    start = 0
    for t in texts:
        batch.append(t)
        if len(batch) == batch_size:
            yield start, batch
            start += len(batch)
            batch = []
    if batch:
        yield start, batch


def _hashed_batches(
    texts: Iterable[str], num_texts: int, cfg: HashConfig, num_proc: int, batch_size: int
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(start row, `Hasher` output) per batch, in `num_proc` processes when that pays."""
    if num_proc > 1 and num_texts > batch_size:
        # fork (as `datasets.map(num_proc=...)` does on Linux): workers start at once, without re-importing
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(num_proc, initializer=init_worker, initargs=(cfg,)) as pool:
            pending: collections.deque = collections.deque()
            for task in _batches(texts, batch_size):  # at most 2 batches per worker in flight: bounded memory
                pending.append(pool.apply_async(hash_in_worker, (task,)))
                while len(pending) >= 2 * num_proc or (pending and pending[0].ready()):
                    yield pending.popleft().get()
            while pending:
                yield pending.popleft().get()
    else:
        hasher = Hasher(cfg)
        for start, batch in _batches(texts, batch_size):
            yield start, hasher(batch)


def hash_texts(
    texts: Iterable[str],
    num_texts: int,
    cfg: HashConfig,
    *,
    num_proc: int = 1,
    batch_size: int = 2000,
    progress: bool = True,
) -> Hashes:
    """Exact hashes, MinHash signatures, word counts and eval-prompt hits of all `num_texts` texts."""
    hashes = Hashes(
        exact=np.empty(num_texts, dtype=np.uint64),
        signatures=np.empty((num_texts, cfg.num_perm), dtype=np.uint32),
        num_words=np.empty(num_texts, dtype=np.int64),
        hits={},
    )
    bar = tqdm(total=num_texts, unit="story", desc="hashing", disable=not progress)
    seen = 0
    for start, out in _hashed_batches(texts, num_texts, cfg, num_proc, batch_size):
        n = hashes.collect(start, out)
        bar.update(n)
        seen += n
    bar.close()
    if seen != num_texts:
        raise ValueError(f"expected {num_texts} texts, got {seen}")
    return hashes


# ------------------------------------------------------------------------------------------- filters
def drop_contaminated(
    result: DedupResult, hits: dict[int, np.ndarray], index: PromptIndex, threshold: float
) -> int:
    """Drop the rows that hold at least `threshold` of some eval prompt's n-grams; returns how many."""
    contaminated = 0
    for i in sorted(hits):
        k, overlap = index.best_match(hits[i])
        if k >= 0 and overlap >= threshold:
            result.keep[i] = False
            result.reason[i] = "contaminated"
            result.similarity[i] = overlap
            result.matched_prompt[i] = index.prompts[k]
            contaminated += 1
    return contaminated


def drop_exact_duplicates(result: DedupResult, exact_hashes: np.ndarray) -> int:
    """Keep the first occurrence of each normalised hash among the rows still kept; returns the drops."""
    rows = np.flatnonzero(result.keep)
    order = np.argsort(exact_hashes[rows], kind="stable")
    sorted_rows = rows[order]
    sorted_h = exact_hashes[sorted_rows]
    same = np.r_[False, sorted_h[1:] == sorted_h[:-1]]
    first = sorted_rows[np.maximum.accumulate(np.where(~same, np.arange(len(same)), 0))]
    dup_rows = sorted_rows[same]
    result.keep[dup_rows] = False
    result.duplicate_of[dup_rows] = first[same]
    result.similarity[dup_rows] = 1.0
    for i in dup_rows.tolist():
        result.reason[i] = "exact_duplicate"
    return len(dup_rows)


def drop_near_duplicates(
    result: DedupResult,
    signatures: np.ndarray,
    num_words: np.ndarray,
    threshold: float,
    bands: int,
    rows_per_band: int,
    seed: int,
) -> tuple[int, int, int]:
    """Cluster the kept rows by verified LSH pairs; each cluster keeps its first row.

    Returns (near duplicates dropped, LSH candidate pairs, verified pairs).
    """
    active = result.keep & (num_words > 0)
    pairs = candidate_pairs(signatures, active, bands, rows_per_band, seed)
    num_candidates = len(pairs)
    if not len(pairs):
        return 0, num_candidates, 0
    sims = estimated_jaccard(signatures, pairs)
    ok = sims >= threshold
    pairs, sims = pairs[ok], sims[ok]
    uf = UnionFind()
    for i, j in pairs.tolist():
        uf.union(i, j)
    best: dict[int, float] = {}
    for (_, j), s in zip(pairs.tolist(), sims.tolist(), strict=True):
        best[j] = max(best.get(j, 0.0), s)
    near_dups = 0
    for node in list(uf.parent):
        root = uf.find(node)
        if root != node:
            result.keep[node] = False
            result.reason[node] = "near_duplicate"
            result.duplicate_of[node] = root
            result.similarity[node] = best.get(node, float((signatures[node] == signatures[root]).mean()))
            near_dups += 1
    return near_dups, num_candidates, len(pairs)


# --------------------------------------------------------------------------------------------- stats
def build_stats(
    keep: np.ndarray,
    counts: dict[str, int],
    params: dict[str, Any],
    pairs: tuple[int, int],
    seconds: dict[str, float],
) -> dict[str, Any]:
    """The `dedup_stats.json` numbers of one run (`counts`: contaminated, exact / near duplicates)."""
    num_texts = len(keep)
    total = seconds["total"]
    stats = {
        "input": num_texts,
        **counts,
        "kept": int(keep.sum()),
        "params": params,
        "lsh_candidate_pairs": pairs[0],
        "verified_pairs": pairs[1],
        "seconds": {name: round(value, 3) for name, value in seconds.items()},
        "stories_per_second": round(num_texts / total, 1) if total > 0 else None,
    }
    assert stats["kept"] + sum(counts.values()) == num_texts
    return stats


def deduplicate(
    texts: Iterable[str],
    num_texts: int,
    *,
    exact: bool = True,
    near: bool = True,
    ngram_size: int = 3,
    num_perm: int = 64,
    threshold: float = 0.7,
    num_bands: int | None = None,
    seed: int = 42,
    eval_prompts: Sequence[str] = (),
    decontaminate_ngram: int = 8,
    decontaminate_threshold: float = 0.5,
    num_proc: int = 1,
    batch_size: int = 2000,
    progress: bool = True,
) -> DedupResult:
    """Decide, for each of `num_texts` texts (any iterable: a list or a streamed column), keep or drop."""
    t0 = time.perf_counter()
    index = PromptIndex(eval_prompts, decontaminate_ngram) if eval_prompts else None
    cfg = HashConfig(ngram_size, num_perm, seed, decontaminate_ngram, index.all if index else None)
    hashes = hash_texts(texts, num_texts, cfg, num_proc=num_proc, batch_size=batch_size, progress=progress)
    t_hash = time.perf_counter() - t0

    result = DedupResult.all_kept(num_texts)
    contaminated = 0
    if index is not None:
        contaminated = drop_contaminated(result, hashes.hits, index, decontaminate_threshold)
    exact_dups = drop_exact_duplicates(result, hashes.exact) if exact else 0
    bands, rows_per_band = lsh_params(threshold, num_perm, num_bands)
    t1 = time.perf_counter()
    near_dups, num_candidates, num_verified = 0, 0, 0
    if near:
        near_dups, num_candidates, num_verified = drop_near_duplicates(
            result, hashes.signatures, hashes.num_words, threshold, bands, rows_per_band, seed
        )
    t_near = time.perf_counter() - t1
    total = time.perf_counter() - t0

    counts = {"contaminated": contaminated, "exact_duplicates": exact_dups, "near_duplicates": near_dups}
    params = {
        "ngram_size": ngram_size,
        "num_perm": num_perm,
        "threshold": threshold,
        "bands": bands,
        "rows_per_band": rows_per_band,
        "decontaminate_ngram": decontaminate_ngram,
        "decontaminate_threshold": decontaminate_threshold,
        "num_eval_prompts": len(eval_prompts),
        "num_proc": num_proc,
    }
    seconds = {"hashing": t_hash, "near_duplicates": t_near, "total": total}
    result.stats = build_stats(result.keep, counts, params, (num_candidates, num_verified), seconds)
    return result
