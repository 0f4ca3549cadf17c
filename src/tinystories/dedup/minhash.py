"""Hashing and clustering: word normalisation, n-gram hashes, MinHash signatures, LSH banding, union-find.

Every hash is computed on `normalize_words` (lower case, ASCII punctuation and whitespace removed).
`Hasher` turns a batch of texts into exact hashes, MinHash signatures (multiply-shift hash functions) and
eval-prompt n-gram hits; `init_worker` / `hash_in_worker` run it in a process pool.
"""

from __future__ import annotations

import itertools
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash
from datasketch.lsh import _optimal_param  # the same optimiser MinHashLSH uses

# ASCII punctuation and whitespace -> space; other bytes (letters, digits, UTF-8 of non-ASCII) kept
_SPLIT_TABLE = bytes(32 if (chr(c) in string.punctuation or chr(c).isspace()) else c for c in range(256))
_NGRAM_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant for combining word hashes


# --------------------------------------------------------------------------------------------- hashing
def normalize_words(text: str) -> list[bytes]:
    """Lower-cased words without punctuation, as UTF-8 bytes (what every hash is computed on)."""
    return text.lower().encode("utf-8").translate(_SPLIT_TABLE).split()


class WordHashes(dict):
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
        self.words = WordHashes()

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


def init_worker(cfg: HashConfig) -> None:
    """Pool initializer: one `Hasher` per worker process."""
    global _WORKER_HASHER
    _WORKER_HASHER = Hasher(cfg)


def hash_in_worker(args: tuple[int, list[str]]) -> tuple[int, dict[str, Any]]:
    start, texts = args
    assert _WORKER_HASHER is not None
    return start, _WORKER_HASHER(texts)


# ---------------------------------------------------------------------------------------- clustering
class UnionFind:
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
