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

Modules: `minhash` (hashing, LSH, union-find), `decontamination` (eval prompts), `pipeline`
(`deduplicate` and its filters), `cli` (arguments, I/O, `main`).
"""

from tinystories.dedup.cli import DedupArguments, load_input, main, run
from tinystories.dedup.decontamination import PromptIndex, read_eval_prompts
from tinystories.dedup.minhash import (
    HashConfig,
    Hasher,
    candidate_pairs,
    estimated_jaccard,
    lsh_params,
    ngram_hashes,
    normalize_words,
)
from tinystories.dedup.pipeline import (
    DedupResult,
    deduplicate,
    drop_contaminated,
    drop_exact_duplicates,
    drop_near_duplicates,
    hash_texts,
)

__all__ = [
    "DedupArguments",
    "DedupResult",
    "HashConfig",
    "Hasher",
    "PromptIndex",
    "candidate_pairs",
    "deduplicate",
    "drop_contaminated",
    "drop_exact_duplicates",
    "drop_near_duplicates",
    "estimated_jaccard",
    "hash_texts",
    "load_input",
    "lsh_params",
    "main",
    "ngram_hashes",
    "normalize_words",
    "read_eval_prompts",
    "run",
]
