"""Deduplication and decontamination (`tinystories dedup` / `make dedup IN=... OUT=...`).

Three filters, in this order, each on what the previous kept:

1. **Decontamination**: a story is dropped when it contains at least `decontaminate_threshold` of the
   word `decontaminate_ngram`-grams of some evaluation prompt (default: `data_generation/eval_prompts.jsonl`).
2. **Exact duplicates**: same text after normalisation (lower case, punctuation and whitespace removed),
   compared by a 64-bit xxhash; the first occurrence is kept.
3. **Near duplicates**: MinHash over word `ngram_size`-grams (`num_perm` multiply-shift hash functions),
   LSH banding with the (bands, rows) that minimise false positives + negatives at `threshold`
   (datasketch's optimiser), then every candidate pair is verified (estimated Jaccard >= `threshold`)
   before it joins a cluster (union-find); each cluster keeps its first story.

Hashing runs in `num_proc` processes over batches of texts; banding, verification and clustering are
vectorised numpy in the main process. Outputs in `output_dir`: `data/` (kept records, a `save_to_disk`
dataset with every input column), `dropped/` (dropped records + `reason`, `duplicate_of`,
`similarity`, `matched_prompt`, `input_index`), `dedup_stats.json`.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import multiprocessing as mp
import os
import string
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

logger = logging.getLogger(__name__)


def _config_error(message: str) -> Exception:
    # imported lazily: tinystories.config pulls in TRL, which would slow every hashing worker's start
    from tinystories.config import ConfigError

    return ConfigError(message)


REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_EVAL_PROMPTS = REPO_ROOT / "data_generation" / "eval_prompts.jsonl"
# ASCII punctuation and whitespace -> space; other bytes (letters, digits, UTF-8 of non-ASCII) kept
_SPLIT_TABLE = bytes(32 if (chr(c) in string.punctuation or chr(c).isspace()) else c for c in range(256))
_MASK32 = np.uint64(0xFFFFFFFF)
_NGRAM_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant for combining word hashes


@dataclass
class DedupArguments:
    input: str | None = field(
        default=None,
        metadata={
            "help": "IN: .txt (release format), .jsonl/.json, .parquet, save_to_disk dir, a `tinystories data` output dir, or Hub id"
        },
    )
    output_dir: str | None = field(
        default=None, metadata={"help": "OUT: writes data/, dropped/, dedup_stats.json"}
    )
    text_column: str | None = field(
        default=None, metadata={"help": "column to compare (default: 'story' when present, else 'text')"}
    )
    split: str = field(default="train", metadata={"help": "split to read when the input has several"})
    # exact + near duplicates
    exact: bool = field(default=True, metadata={"help": "drop exact duplicates (normalised text hash)"})
    near: bool = field(default=True, metadata={"help": "drop near duplicates (MinHash + LSH)"})
    ngram_size: int = field(default=3, metadata={"help": "words per shingle"})
    num_perm: int = field(default=64, metadata={"help": "MinHash permutations"})
    threshold: float = field(
        default=0.7, metadata={"help": "Jaccard similarity above which two stories are near duplicates"}
    )
    num_bands: int | None = field(
        default=None, metadata={"help": "LSH bands (default: optimised for threshold)"}
    )
    seed: int = field(default=42, metadata={"help": "seed of the MinHash hash functions"})
    # decontamination
    decontaminate: bool = field(
        default=True, metadata={"help": "drop stories that contain an evaluation prompt"}
    )
    decontaminate_against: list[str] | None = field(
        default=None,
        metadata={
            "help": "text/jsonl files of eval prompts ('prompt' or 'text' column); default data_generation/eval_prompts.jsonl"
        },
    )
    decontaminate_ngram: int = field(default=8, metadata={"help": "words per n-gram for the overlap test"})
    decontaminate_threshold: float = field(
        default=0.5, metadata={"help": "fraction of a prompt's n-grams a story must contain to be dropped"}
    )
    # execution
    num_proc: int = field(
        default_factory=lambda: max(1, min(8, os.cpu_count() or 1)), metadata={"help": "hashing processes"}
    )
    batch_size: int = field(default=2000, metadata={"help": "stories per hashing task"})
    write_txt: bool = field(
        default=False,
        metadata={"help": "also write data.txt in the release format (<|endoftext|> between stories)"},
    )

    def validate(self) -> None:
        if not self.input or not self.output_dir:
            raise _config_error("dedup needs --input IN and --output_dir OUT (make dedup IN=... OUT=...)")
        if not 0 < self.threshold <= 1 or not 0 < self.decontaminate_threshold <= 1:
            raise _config_error("threshold and decontaminate_threshold must be in (0, 1]")
        if self.ngram_size < 1 or self.decontaminate_ngram < 1 or self.num_perm < 2 or self.num_proc < 1:
            raise _config_error(
                "ngram_size, decontaminate_ngram >= 1, num_perm >= 2 and num_proc >= 1 are required"
            )
        if self.num_bands is not None and not 1 <= self.num_bands <= self.num_perm:
            raise _config_error(f"num_bands must be in [1, num_perm={self.num_perm}]")


# --------------------------------------------------------------------------------------------- hashing
def normalize_words(text: str) -> list[bytes]:
    """Lower-cased words without punctuation, as UTF-8 bytes (what every hash is computed on)."""
    return text.lower().encode("utf-8").translate(_SPLIT_TABLE).split()


class _WordHashes(dict):
    """word -> 64-bit xxhash, memoised (children's stories reuse a small vocabulary)."""

    def __missing__(self, word: bytes) -> int:
        value = xxhash.xxh3_64_intdigest(word)
        self[word] = value
        return value


def ngram_hashes(word_hashes: np.ndarray, n: int) -> np.ndarray:
    """64-bit hashes of the word n-grams (the whole text as one gram when it is shorter than n)."""
    m = len(word_hashes)
    if m == 0:
        return word_hashes
    n = min(n, m)
    h = word_hashes[: m - n + 1].copy()
    for k in range(1, n):
        h = h * _NGRAM_MULT + word_hashes[k : m - n + 1 + k]  # wraps mod 2^64
    return h


def lsh_params(threshold: float, num_perm: int, num_bands: int | None = None) -> tuple[int, int]:
    if num_bands:
        return num_bands, num_perm // num_bands
    from datasketch.lsh import _optimal_param  # the same optimiser MinHashLSH uses

    return _optimal_param(threshold, num_perm, 0.5, 0.5)


@dataclass
class HashConfig:
    ngram_size: int = 3
    num_perm: int = 64
    seed: int = 42
    decontaminate_ngram: int = 8
    prompt_grams: np.ndarray | None = None  # sorted unique n-gram hashes of the eval prompts


class Hasher:
    """Turns a batch of texts into exact hashes, MinHash signatures and eval-prompt n-gram hits."""

    def __init__(self, cfg: HashConfig):
        self.cfg = cfg
        rng = np.random.default_rng(cfg.seed)
        # multiply-shift hashing h(x) = ((a*x + b) mod 2^64) >> 32 with odd a: a 2-universal family
        self.a = rng.integers(1, 2**63, size=cfg.num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.b = rng.integers(0, 2**63, size=cfg.num_perm, dtype=np.uint64)
        self.words = _WordHashes()

    def __call__(self, texts: Sequence[str | None]) -> dict[str, Any]:
        cfg = self.cfg
        n = len(texts)
        exact = np.empty(n, dtype=np.uint64)
        signatures = np.full((n, cfg.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
        word_lists = [normalize_words(t or "") for t in texts]
        for i, words in enumerate(word_lists):
            exact[i] = xxhash.xxh3_64_intdigest(b" ".join(words))
        num_words = np.fromiter(map(len, word_lists), dtype=np.int64, count=n)
        total = int(num_words.sum())
        # the whole batch at once: word hashes of every story back to back, then n-grams that do not
        # cross a story boundary (per-story numpy calls would cost more than the arithmetic)
        word_hashes = np.fromiter(
            map(self.words.__getitem__, itertools.chain.from_iterable(word_lists)),
            dtype=np.uint64,
            count=total,
        )
        story_of_word = np.repeat(np.arange(n, dtype=np.int64), num_words)
        grams, owners = self._batch_ngrams(word_hashes, story_of_word, num_words, cfg.ngram_size)
        if len(grams):
            self._minhash(grams, owners, signatures)
        hits: dict[int, np.ndarray] = {}
        if cfg.prompt_grams is not None and len(cfg.prompt_grams):
            if cfg.decontaminate_ngram == cfg.ngram_size:
                dgrams, downers = grams, owners
            else:
                dgrams, downers = self._batch_ngrams(
                    word_hashes, story_of_word, num_words, cfg.decontaminate_ngram
                )
            found = np.flatnonzero(np.isin(dgrams, cfg.prompt_grams))
            if len(found):  # grams are grouped by story: split the matches at each new owner
                owner_of_hit = downers[found]
                cuts = np.flatnonzero(owner_of_hit[1:] != owner_of_hit[:-1]) + 1
                for group in np.split(found, cuts):
                    hits[int(downers[group[0]])] = np.unique(dgrams[group])
        return {"exact": exact, "signatures": signatures, "num_words": num_words, "hits": hits}

    @staticmethod
    def _batch_ngrams(
        word_hashes: np.ndarray, story_of_word: np.ndarray, num_words: np.ndarray, n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(gram hashes, owning story) for a batch, grouped by story in order."""
        grams = ngram_hashes(word_hashes, n)
        if len(word_hashes) >= n:
            valid = story_of_word[: len(grams)] == story_of_word[n - 1 : n - 1 + len(grams)]
            grams, owners = grams[valid], story_of_word[: len(valid)][valid]
        else:
            grams, owners = grams[:0], story_of_word[:0]
        short = np.flatnonzero((num_words > 0) & (num_words < n))
        if len(short):  # stories shorter than n: the whole story is one gram
            offsets = np.r_[0, np.cumsum(num_words)]
            extra = [ngram_hashes(word_hashes[offsets[i] : offsets[i + 1]], n) for i in short.tolist()]
            grams = np.concatenate([grams, *extra])
            owners = np.concatenate([owners, short.astype(np.int64)])
            order = np.argsort(owners, kind="stable")
            grams, owners = grams[order], owners[order]
        return grams, owners

    def _minhash(self, grams: np.ndarray, owners: np.ndarray, out: np.ndarray, chunk: int = 4096) -> None:
        # (num_perm, chunk) layout: the segment min (reduceat over each story's grams, which are
        # contiguous) runs over contiguous memory; small chunks and in-place ops stay in cache
        buf = np.empty((len(self.a), min(chunk, len(grams))), dtype=np.uint64)
        a, b, shift = self.a[:, None], self.b[:, None], np.uint64(32)
        for start in range(0, len(grams), chunk):
            g = grams[start : start + chunk]
            o = owners[start : start + chunk]
            values = buf[:, : len(g)]
            np.multiply(a, g[None, :], out=values)
            values += b
            values >>= shift
            starts = np.flatnonzero(np.r_[True, o[1:] != o[:-1]])
            mins = np.minimum.reduceat(values.astype(np.uint32), starts, axis=1).T
            rows = o[starts]
            out[rows] = np.minimum(out[rows], mins)  # a story split across chunks is merged


_WORKER_HASHER: Hasher | None = None


def _init_worker(cfg: HashConfig) -> None:
    global _WORKER_HASHER
    _WORKER_HASHER = Hasher(cfg)


def _hash_in_worker(args: tuple[int, list[str]]) -> tuple[int, dict[str, Any]]:
    start, texts = args
    assert _WORKER_HASHER is not None
    return start, _WORKER_HASHER(texts)


# ---------------------------------------------------------------------------------------- clustering
class _UnionFind:
    def __init__(self):
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    def union(self, x: int, y: int) -> None:
        rx, ry = self.find(x), self.find(y)
        if rx != ry:
            lo, hi = (rx, ry) if rx < ry else (ry, rx)
            self.parent[hi] = lo  # the root is the smallest index: the first story is kept


def candidate_pairs(
    signatures: np.ndarray, active: np.ndarray, bands: int, rows: int, seed: int = 0
) -> np.ndarray:
    """(i, j) pairs (i < j) that share at least one LSH band, each member against its bucket's first."""
    idx = np.flatnonzero(active)
    if len(idx) < 2:
        return np.empty((0, 2), dtype=np.int64)
    rng = np.random.default_rng(seed + 1)
    mult = rng.integers(1, 2**63, size=rows, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    pairs = []
    every = len(idx) == len(signatures)
    for band in range(bands):  # one (n, rows) slice at a time: no copy of the whole signature matrix
        cols = slice(band * rows, (band + 1) * rows)
        block = (signatures[:, cols] if every else signatures[idx, cols]).astype(np.uint64)
        keys = (block * mult[None, :]).sum(axis=1, dtype=np.uint64) ^ np.uint64(band)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        same = sorted_keys[1:] == sorted_keys[:-1]
        if not same.any():
            continue
        group_start = np.flatnonzero(np.r_[True, ~same])
        group_of = np.cumsum(np.r_[True, ~same]) - 1
        first = order[group_start[group_of]]
        members = np.flatnonzero(np.r_[False, same])
        pairs.append(np.stack([idx[first[members]], idx[order[members]]], axis=1))
    if not pairs:
        return np.empty((0, 2), dtype=np.int64)
    p = np.concatenate(pairs)
    p = np.sort(p, axis=1)
    return np.unique(p, axis=0)


def estimated_jaccard(signatures: np.ndarray, pairs: np.ndarray, chunk: int = 100_000) -> np.ndarray:
    out = np.empty(len(pairs), dtype=np.float64)
    for s in range(0, len(pairs), chunk):
        p = pairs[s : s + chunk]
        out[s : s + chunk] = (signatures[p[:, 0]] == signatures[p[:, 1]]).mean(axis=1)
    return out


# ------------------------------------------------------------------------------------ eval prompts
def read_eval_prompts(paths: Sequence[str | Path]) -> list[str]:
    prompts: list[str] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise _config_error(f"--decontaminate_against file {str(path)!r} not found")
        if path.suffix in (".jsonl", ".json"):
            text = path.read_text(encoding="utf-8")
            if path.suffix == ".jsonl":
                rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            else:
                rows = json.loads(text)
                rows = rows if isinstance(rows, list) else [rows]
            for row in rows:
                value = row.get("prompt", row.get("text")) if isinstance(row, dict) else row
                if not isinstance(value, str):
                    raise _config_error(f"{str(path)!r}: each record needs a 'prompt' or 'text' string")
                prompts.append(value)
        else:  # plain text: one prompt per line, or <|endoftext|>-separated
            text = path.read_text(encoding="utf-8")
            parts = text.split("<|endoftext|>") if "<|endoftext|>" in text else text.splitlines()
            prompts += [p.strip() for p in parts if p.strip()]
    return prompts


class PromptIndex:
    """n-gram hashes of each evaluation prompt, for the overlap test."""

    def __init__(self, prompts: Sequence[str], n: int):
        self.prompts = list(prompts)
        self.n = n
        self.grams: list[set[int]] = []
        hasher = _WordHashes()
        for p in self.prompts:
            words = normalize_words(p)
            wh = np.fromiter(map(hasher.__getitem__, words), dtype=np.uint64, count=len(words))
            self.grams.append(set(ngram_hashes(wh, n).tolist()))
        self.all = (
            np.unique(np.fromiter((g for s in self.grams for g in s), dtype=np.uint64))
            if self.grams
            else None
        )
        self.owners: dict[int, list[int]] = {}
        for k, s in enumerate(self.grams):
            for g in s:
                self.owners.setdefault(g, []).append(k)

    def best_match(self, hits: np.ndarray) -> tuple[int, float]:
        """(prompt index, fraction of its n-grams found) for the prompt best covered by `hits`."""
        counts: dict[int, int] = {}
        for g in hits.tolist():
            for k in self.owners.get(g, ()):
                counts[k] = counts.get(k, 0) + 1
        if not counts:
            return -1, 0.0
        k = max(counts, key=lambda j: counts[j] / len(self.grams[j]))
        return k, counts[k] / len(self.grams[k])


# ------------------------------------------------------------------------------------------- core
@dataclass
class DedupResult:
    keep: np.ndarray  # bool per input row
    reason: list[str | None]  # per input row: None (kept) / exact_duplicate / near_duplicate / contaminated
    duplicate_of: np.ndarray  # int64 per row, -1 when none
    similarity: np.ndarray  # float per row (1.0 exact, estimated Jaccard near, overlap contaminated)
    matched_prompt: dict[int, str]
    stats: dict[str, Any]


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
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    index = PromptIndex(eval_prompts, decontaminate_ngram) if eval_prompts else None
    cfg = HashConfig(ngram_size, num_perm, seed, decontaminate_ngram, index.all if index else None)
    exact_h = np.empty(num_texts, dtype=np.uint64)
    signatures = np.empty((num_texts, num_perm), dtype=np.uint32)
    num_words = np.empty(num_texts, dtype=np.int64)
    hits: dict[int, np.ndarray] = {}
    bar = tqdm(total=num_texts, unit="story", desc="hashing", disable=not progress)

    def collect(start: int, out: dict[str, Any]) -> None:
        n = len(out["exact"])
        exact_h[start : start + n] = out["exact"]
        signatures[start : start + n] = out["signatures"]
        num_words[start : start + n] = out["num_words"]
        for i, h in out["hits"].items():
            hits[start + i] = h
        bar.update(n)

    seen = 0
    if num_proc > 1 and num_texts > batch_size:
        # fork (as `datasets.map(num_proc=...)` does on Linux): workers start at once, without re-importing
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(num_proc, initializer=_init_worker, initargs=(cfg,)) as pool:
            pending: collections.deque = collections.deque()
            for task in _batches(texts, batch_size):  # at most 2 batches per worker in flight: bounded memory
                pending.append(pool.apply_async(_hash_in_worker, (task,)))
                while len(pending) >= 2 * num_proc or (pending and pending[0].ready()):
                    start, out = pending.popleft().get()
                    collect(start, out)
                    seen += len(out["exact"])
            while pending:
                start, out = pending.popleft().get()
                collect(start, out)
                seen += len(out["exact"])
    else:
        hasher = Hasher(cfg)
        for start, batch in _batches(texts, batch_size):
            collect(start, hasher(batch))
            seen += len(batch)
    bar.close()
    if seen != num_texts:
        raise ValueError(f"expected {num_texts} texts, got {seen}")
    t_hash = time.perf_counter() - t0

    keep = np.ones(num_texts, dtype=bool)
    reason: list[str | None] = [None] * num_texts
    duplicate_of = np.full(num_texts, -1, dtype=np.int64)
    similarity = np.zeros(num_texts, dtype=np.float64)
    matched: dict[int, str] = {}

    # 1. decontamination
    contaminated = 0
    if index is not None:
        for i in sorted(hits):
            k, overlap = index.best_match(hits[i])
            if k >= 0 and overlap >= decontaminate_threshold:
                keep[i] = False
                reason[i] = "contaminated"
                similarity[i] = overlap
                matched[i] = index.prompts[k]
                contaminated += 1

    # 2. exact duplicates: first occurrence of each normalised hash among the rows still kept
    exact_dups = 0
    if exact:
        rows = np.flatnonzero(keep)
        order = np.argsort(exact_h[rows], kind="stable")
        sorted_rows = rows[order]
        sorted_h = exact_h[sorted_rows]
        same = np.r_[False, sorted_h[1:] == sorted_h[:-1]]
        first = sorted_rows[np.maximum.accumulate(np.where(~same, np.arange(len(same)), 0))]
        dup_rows = sorted_rows[same]
        keep[dup_rows] = False
        duplicate_of[dup_rows] = first[same]
        similarity[dup_rows] = 1.0
        for i in dup_rows.tolist():
            reason[i] = "exact_duplicate"
        exact_dups = len(dup_rows)

    # 3. near duplicates among what is left
    near_dups, num_candidates, num_verified = 0, 0, 0
    bands, rows_per_band = lsh_params(threshold, num_perm, num_bands)
    t1 = time.perf_counter()
    if near:
        active = keep & (num_words > 0)
        pairs = candidate_pairs(signatures, active, bands, rows_per_band, seed)
        num_candidates = len(pairs)
        if len(pairs):
            sims = estimated_jaccard(signatures, pairs)
            ok = sims >= threshold
            pairs, sims = pairs[ok], sims[ok]
            num_verified = len(pairs)
            uf = _UnionFind()
            for i, j in pairs.tolist():
                uf.union(i, j)
            best: dict[int, float] = {}
            for (_, j), s in zip(pairs.tolist(), sims.tolist(), strict=True):
                best[j] = max(best.get(j, 0.0), s)
            for node in list(uf.parent):
                root = uf.find(node)
                if root != node:
                    keep[node] = False
                    reason[node] = "near_duplicate"
                    duplicate_of[node] = root
                    similarity[node] = best.get(node, float((signatures[node] == signatures[root]).mean()))
                    near_dups += 1
    t_near = time.perf_counter() - t1
    total = time.perf_counter() - t0
    stats = {
        "input": num_texts,
        "contaminated": contaminated,
        "exact_duplicates": exact_dups,
        "near_duplicates": near_dups,
        "kept": int(keep.sum()),
        "params": {
            "ngram_size": ngram_size,
            "num_perm": num_perm,
            "threshold": threshold,
            "bands": bands,
            "rows_per_band": rows_per_band,
            "decontaminate_ngram": decontaminate_ngram,
            "decontaminate_threshold": decontaminate_threshold,
            "num_eval_prompts": len(eval_prompts),
            "num_proc": num_proc,
        },
        "lsh_candidate_pairs": num_candidates,
        "verified_pairs": num_verified,
        "seconds": {
            "hashing": round(t_hash, 3),
            "near_duplicates": round(t_near, 3),
            "total": round(total, 3),
        },
        "stories_per_second": round(num_texts / total, 1) if total > 0 else None,
    }
    assert stats["kept"] + contaminated + exact_dups + near_dups == num_texts
    return DedupResult(keep, reason, duplicate_of, similarity, matched, stats)


# --------------------------------------------------------------------------------------------- I/O
def load_input(source: str, split: str = "train"):
    """A `datasets.Dataset` from any accepted source, including a `tinystories data` output dir."""
    from datasets import DatasetDict

    from tinystories.data import load_raw

    ds = load_raw(source)
    if isinstance(ds, DatasetDict):
        if split not in ds:
            raise _config_error(f"{source!r} has no split {split!r} (splits: {list(ds)}); pass --split")
        ds = ds[split]
    return ds


def _iter_column(ds, column: str, batch_size: int = 10_000) -> Iterator[str]:
    table = ds.with_format("arrow")
    for start in range(0, len(ds), batch_size):
        yield from table[start : start + batch_size][column].to_pylist()


def run(args: DedupArguments) -> dict[str, Any]:
    args.validate()
    eval_paths = args.decontaminate_against
    if args.decontaminate and not eval_paths:
        eval_paths = [str(DEFAULT_EVAL_PROMPTS)] if DEFAULT_EVAL_PROMPTS.is_file() else []
        if not eval_paths:
            logger.warning("no evaluation prompts found (%s): decontamination skipped", DEFAULT_EVAL_PROMPTS)
    prompts = read_eval_prompts(eval_paths) if (args.decontaminate and eval_paths) else []
    t0 = time.perf_counter()
    ds = load_input(args.input, args.split)
    t_load = time.perf_counter() - t0
    column = args.text_column or ("story" if "story" in ds.column_names else "text")
    if column not in ds.column_names:
        raise _config_error(
            f"{args.input!r} has no {column!r} column (columns: {ds.column_names}); pass --text_column"
        )
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    result = deduplicate(
        _iter_column(ds, column),
        len(ds),
        exact=args.exact,
        near=args.near,
        ngram_size=args.ngram_size,
        num_perm=args.num_perm,
        threshold=args.threshold,
        num_bands=args.num_bands,
        seed=args.seed,
        eval_prompts=prompts,
        decontaminate_ngram=args.decontaminate_ngram,
        decontaminate_threshold=args.decontaminate_threshold,
        num_proc=args.num_proc,
        batch_size=args.batch_size,
    )
    t1 = time.perf_counter()
    kept_idx = np.flatnonzero(result.keep)
    dropped_idx = np.flatnonzero(~result.keep)
    ds.select(kept_idx).save_to_disk(str(out / "data"))
    dropped = ds.select(dropped_idx)
    dropped = dropped.add_column("reason", [result.reason[i] for i in dropped_idx.tolist()])
    dropped = dropped.add_column("duplicate_of", result.duplicate_of[dropped_idx].tolist())
    dropped = dropped.add_column("similarity", result.similarity[dropped_idx].tolist())
    dropped = dropped.add_column(
        "matched_prompt", [result.matched_prompt.get(i) for i in dropped_idx.tolist()]
    )
    dropped = dropped.add_column("input_index", dropped_idx.tolist())
    dropped.save_to_disk(str(out / "dropped"))
    if args.write_txt:
        with open(out / "data.txt", "w", encoding="utf-8") as f:
            for i, text in enumerate(_iter_column(ds.select(kept_idx), column)):
                f.write(("<|endoftext|>\n" if i else "") + text.strip() + "\n")
    stats = {
        "source": _display_path(args.input) if Path(args.input).exists() else args.input,
        "text_column": column,
        **result.stats,
        "eval_prompts_files": [_display_path(p) for p in eval_paths or []],
    }
    stats["seconds"] = {
        "load": round(t_load, 3),
        **result.stats["seconds"],
        "write": round(time.perf_counter() - t1, 3),
        "end_to_end": round(time.perf_counter() - t0, 3),
    }
    (out / "dedup_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def _display_path(path: str) -> str:
    p = Path(path).resolve()
    try:
        return str(p.relative_to(REPO_ROOT))  # no absolute local paths in shared outputs
    except ValueError:
        return p.name


# ---------------------------------------------------------------------------------------- benchmark
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
    import random

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


def run_benchmark(
    num_stories: int = 20000, num_proc: int = 2, sample_path: str | None = None, **kwargs
) -> dict:
    """Dedup throughput on the shared sample replicated with edits (planted exact/near duplicates)."""
    import resource

    path = Path(sample_path) if sample_path else _default_sample()
    if path.is_file():
        from tinystories.data import iter_txt_stories

        base = [s.strip() for s in iter_txt_stories(path) if s.strip()]
        source = "TinyStories-train.sample.txt"
    else:  # no shared data: offline template stories
        from tinystories.synthesis import TemplateBackend, Vocabulary

        vocab, backend = Vocabulary(), TemplateBackend()
        base = [backend.story(vocab.spec(0, i)) for i in range(2000)]
        source = "template backend stories"
    texts, near_of, exact_of = make_benchmark_corpus(base, num_stories)
    eval_prompts = read_eval_prompts([DEFAULT_EVAL_PROMPTS]) if DEFAULT_EVAL_PROMPTS.is_file() else []

    def cpu() -> float:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    cpu0, t0 = cpu(), time.perf_counter()
    result = deduplicate(
        texts, len(texts), num_proc=num_proc, eval_prompts=eval_prompts, progress=False, **kwargs
    )
    seconds = time.perf_counter() - t0
    cpu_seconds = cpu() - cpu0  # workers are counted once the pool has exited
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


def main(argv: list[str] | None = None) -> int:
    from tinystories.config import parse_args

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    (args,) = parse_args([DedupArguments], argv)
    stats = run(args)
    print(json.dumps(stats, indent=2))
    print(f"kept {stats['kept']} of {stats['input']} -> {Path(args.output_dir) / 'data'}")
    return 0


__all__ = ["DedupArguments", "deduplicate", "main", "make_benchmark_corpus", "run", "run_benchmark", "score"]
