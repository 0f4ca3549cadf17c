"""Decontamination: the evaluation prompts and their n-gram index, for the overlap test."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tinystories.core import ConfigError
from tinystories.dedup.minhash import WordHashes, ngram_hashes, normalize_words


def read_eval_prompts(paths: Sequence[str | Path]) -> list[str]:
    prompts: list[str] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise ConfigError(f"--decontaminate_against file {str(path)!r} not found")
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
                    raise ConfigError(f"{str(path)!r}: each record needs a 'prompt' or 'text' string")
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
        hasher = WordHashes()
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
