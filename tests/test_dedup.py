"""Deduplication: planted exact / near duplicates are found, distinct stories kept; decontamination; I/O."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from datasets import load_from_disk

from benchmarks.dedup_bench import make_benchmark_corpus, run_benchmark, score
from tinystories.core import ConfigError
from tinystories.dedup.minhash import HashConfig, Hasher, normalize_words
from tinystories.dedup.pipeline import deduplicate
from tinystories.stages.dedup import DedupArguments, run


def _edit(text: str, rng: random.Random, n: int) -> str:
    words = text.split(" ")
    for _ in range(n):
        pos = rng.randrange(len(words))
        op = rng.random()
        if op < 0.4:
            words[pos] = rng.choice(["dog", "tree", "happy", "ran", "blue", "cake"])
        elif op < 0.7:
            words.insert(pos, "very")
        else:
            del words[pos]
    return " ".join(words)


def test_normalisation_and_signatures():
    assert normalize_words("Hello,  WORLD!\nIt's  me.") == [b"hello", b"world", b"it", b"s", b"me"]
    h = Hasher(HashConfig(num_perm=32))
    out = h(["The cat sat on the mat.", "the CAT sat   on the mat", "A dog ran.", "", "Hi"])
    assert out["exact"][0] == out["exact"][1] != out["exact"][2]
    assert (out["signatures"][0] == out["signatures"][1]).all()
    assert out["num_words"].tolist() == [6, 6, 3, 0, 1]
    assert (out["signatures"][3] == np.iinfo(np.uint32).max).all()  # empty text: no shingles
    assert (out["signatures"][4] < np.iinfo(np.uint32).max).all()  # shorter than n: one gram
    # chunked MinHash equals the one-story-at-a-time result
    singles = np.stack([h([t])["signatures"][0] for t in ["The cat sat on the mat.", "A dog ran."]])
    assert (singles == out["signatures"][[0, 2]]).all()


def test_planted_duplicates_precision_recall(stories):
    rng = random.Random(0)
    base = stories[:600]
    texts = list(base)
    near_of, exact_of = {}, {}
    for _ in range(60):  # near duplicates: 2-3 words edited
        src = rng.randrange(len(base))
        near_of[len(texts)] = src
        texts.append(_edit(base[src], rng, rng.choice([2, 3])))
    for _ in range(30):  # exact after normalisation: case and spacing only
        src = rng.randrange(len(base))
        exact_of[len(texts)] = src
        texts.append(base[src].upper().replace(" ", "  "))
    result = deduplicate(texts, len(texts), num_proc=1, progress=False)
    s = result.stats
    assert (
        s["input"] == 690
        and s["kept"] + s["exact_duplicates"] + s["near_duplicates"] + s["contaminated"] == 690
    )
    assert s["exact_duplicates"] == 30
    quality = score(result, near_of, exact_of)
    assert quality["precision"] == 1.0, quality  # no distinct story dropped
    assert quality["recall"] >= 0.95, quality
    assert result.keep[: len(base)].all()  # originals come first, so every original is kept
    for i in near_of:
        if not result.keep[i]:
            assert result.reason[i] == "near_duplicate" and result.duplicate_of[i] == near_of[i]
            assert result.similarity[i] >= 0.7
    for i in exact_of:
        assert result.reason[i] == "exact_duplicate" and result.duplicate_of[i] == exact_of[i]


def test_distinct_stories_are_kept(stories):
    result = deduplicate(stories, len(stories), num_proc=1, progress=False)
    # the real sample holds no (near) duplicates at the default threshold: nothing may be dropped
    assert result.stats["kept"] >= len(stories) - 2, result.stats


def test_parallel_equals_serial(stories):
    texts, near_of, exact_of = make_benchmark_corpus(stories, 6000, seed=1)
    serial = deduplicate(texts, len(texts), num_proc=1, batch_size=1000, progress=False)
    parallel = deduplicate(iter(texts), len(texts), num_proc=2, batch_size=1000, progress=False)
    assert (serial.keep == parallel.keep).all() and serial.reason == parallel.reason
    q = score(parallel, near_of, exact_of)
    assert q["precision"] >= 0.99 and q["recall"] >= 0.95, q


def test_decontamination(stories):
    prompt = stories[5][:120].rsplit(" ", 1)[0]  # an eval prompt taken from a story's beginning
    result = deduplicate(stories[:300], 300, eval_prompts=[prompt], num_proc=1, progress=False)
    assert result.stats["contaminated"] == 1 and result.reason[5] == "contaminated"
    assert result.matched_prompt[5] == prompt and result.similarity[5] == 1.0
    generic = "Once upon a time, there was a little girl named Lily. She liked to play"
    result = deduplicate(stories[:300], 300, eval_prompts=[generic], num_proc=1, progress=False)
    assert result.stats["contaminated"] <= 3  # a generic opening alone does not mark stories


def test_cli_on_release_txt(tmp_path, stories):
    rng = random.Random(3)
    texts = [*stories[:200], stories[10], _edit(stories[20], rng, 2), stories[30].upper()]
    src = tmp_path / "stories.txt"
    src.write_text("\n<|endoftext|>\n".join(texts) + "\n")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": stories[40][:150]}) + "\n")
    out = tmp_path / "dedup"
    stats = run(DedupArguments(data=str(src), output_dir=str(out), decontaminate_against=[str(prompts)],
                               num_proc=1, write_txt=True))  # fmt: skip
    saved = json.loads((out / "dedup_stats.json").read_text())
    for key in ("input", "exact_duplicates", "near_duplicates", "contaminated", "kept"):
        assert saved[key] == stats[key]
    assert (saved["input"], saved["exact_duplicates"], saved["near_duplicates"], saved["contaminated"]) == (
        203, 2, 1, 1,
    )  # fmt: skip
    kept = load_from_disk(str(out / "data"))
    dropped = load_from_disk(str(out / "dropped"))
    assert len(kept) == 199 and len(dropped) == 4
    assert sorted(dropped["reason"]) == [
        "contaminated",
        "exact_duplicate",
        "exact_duplicate",
        "near_duplicate",
    ]
    assert sorted(dropped["input_index"]) == [40, 200, 201, 202]
    assert (out / "data.txt").read_text().count("<|endoftext|>") == 198


def test_cli_on_generator_output(tmp_path):
    from tinystories.synthesis.arguments import SynthesisArguments
    from tinystories.synthesis.job import run as synth

    gen = tmp_path / "gen"
    synth(SynthesisArguments(output_dir=str(gen), backend="template", num_stories=50, mode="instruct"))
    stats = run(
        DedupArguments(data=str(gen), output_dir=str(tmp_path / "d"), num_proc=1, decontaminate=False)
    )
    assert stats["text_column"] == "story" and stats["input"] == 50
    kept = load_from_disk(str(tmp_path / "d" / "data"))
    assert "generation_prompt" in kept.column_names and len(kept) == stats["kept"]


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="--data"):
        DedupArguments().validate()
    with pytest.raises(ConfigError, match="threshold"):
        DedupArguments(data="x", output_dir="y", threshold=1.5).validate()
    with pytest.raises(ConfigError, match="not found"):
        run(
            DedupArguments(
                data=str(tmp_path), output_dir=str(tmp_path / "o"), decontaminate_against=["nope.jsonl"]
            )
        )


def test_run_benchmark_small():
    r = run_benchmark(num_stories=3000, num_proc=1)
    assert r["num_stories"] == 3000 and r["stories_per_second"] > 0
    assert r["precision"] >= 0.99 and r["recall"] >= 0.95
    assert r["exact_duplicates"] == 150
