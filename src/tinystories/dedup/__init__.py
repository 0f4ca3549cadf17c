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
(`deduplicate` and its filters); the stage itself (arguments, I/O, `main`) is `tinystories.stages.dedup`.
"""
