"""Exact and near duplicates within several story collections and across them (for `tinystories data-report`).

The same hashing and the same decisions as `make dedup`: every text is hashed once (`pipeline.hash_texts`:
normalised-text xxhash, MinHash over word n-grams); within a collection the exact and near duplicates are
exactly what `deduplicate` would drop from it (`drop_exact_duplicates`, `drop_near_duplicates`); across two
collections A and B, a story of A *overlaps* B when B holds a story with the same normalised text (exact) or
an LSH candidate whose estimated Jaccard similarity is at least `threshold` (near). Use it for validation
against training data, or generated data against a real corpus.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tinystories.dedup.minhash import HashConfig, candidate_pairs, estimated_jaccard, lsh_params
from tinystories.dedup.pipeline import DedupResult, drop_exact_duplicates, drop_near_duplicates, hash_texts


def _within(
    hashes, rows: slice, threshold: float, bands: int, rows_per_band: int, seed: int
) -> dict[str, Any]:
    exact_h, signatures, num_words = hashes.exact[rows], hashes.signatures[rows], hashes.num_words[rows]
    n = len(exact_h)
    result = DedupResult.all_kept(n)
    exact = drop_exact_duplicates(result, exact_h)
    near, _, _ = drop_near_duplicates(result, signatures, num_words, threshold, bands, rows_per_band, seed)
    return {"exact": exact, "near": near, "exact_share": _share(exact, n), "near_share": _share(near, n)}


def _share(count: int, total: int) -> float | None:
    return round(count / total, 4) if total else None


def _near_matches(hashes, owner: np.ndarray, threshold: float, bands: int, rows_per_band: int, seed: int):
    """{(row, other collection)} for every verified near pair across two collections."""
    pairs = candidate_pairs(hashes.signatures, hashes.num_words > 0, bands, rows_per_band, seed)
    if not len(pairs):
        return set()
    pairs = pairs[owner[pairs[:, 0]] != owner[pairs[:, 1]]]
    if not len(pairs):
        return set()
    pairs = pairs[estimated_jaccard(hashes.signatures, pairs) >= threshold]
    matched = set()
    for i, j in pairs.tolist():
        matched.add((i, int(owner[j])))
        matched.add((j, int(owner[i])))
    return matched


def duplicate_overlap(
    collections: Sequence[Sequence[str]],
    names: Sequence[str],
    *,
    ngram_size: int = 3,
    num_perm: int = 64,
    threshold: float = 0.7,
    seed: int = 42,
) -> dict[str, Any]:
    """`within`: per collection, exact and near duplicates (what `make dedup` drops); `across`: per ordered
    pair (a, b), a's stories with an exact or near duplicate in b (a story counted once: exact first)."""
    sizes = [len(c) for c in collections]
    texts = [t for c in collections for t in c]
    owner = np.repeat(np.arange(len(collections)), sizes)
    hashes = hash_texts(texts, len(texts), HashConfig(ngram_size, num_perm, seed), progress=False)
    bands, rows_per_band = lsh_params(threshold, num_perm)
    starts = np.r_[0, np.cumsum(sizes)].tolist()
    within = {
        name: _within(hashes, slice(starts[k], starts[k + 1]), threshold, bands, rows_per_band, seed)
        for k, name in enumerate(names)
    }
    near = _near_matches(hashes, owner, threshold, bands, rows_per_band, seed)
    exact_sets = [set(hashes.exact[starts[k] : starts[k + 1]].tolist()) for k in range(len(names))]
    across = []
    for a, name_a in enumerate(names):
        rows_a = range(starts[a], starts[a + 1])
        for b, name_b in enumerate(names):
            if a == b:
                continue
            exact = [i for i in rows_a if int(hashes.exact[i]) in exact_sets[b]]
            exact_rows = set(exact)
            near_rows = [i for i in rows_a if i not in exact_rows and (i, b) in near]
            across.append(
                {
                    "a": name_a,
                    "b": name_b,
                    "exact": len(exact),
                    "near": len(near_rows),
                    "share_of_a": _share(len(exact) + len(near_rows), sizes[a]),
                }
            )
    settings = {"ngram_size": ngram_size, "num_perm": num_perm, "threshold": threshold, "seed": seed}
    return {"within": within, "across": across, "settings": settings}
