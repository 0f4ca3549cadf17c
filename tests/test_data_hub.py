"""Stand-ins shaped like the real Hub repos, read offline by every stage through the one loader.

`roneneldan/TinyStories` (parquet shards under `data/`, the `.txt` releases, `Evaluation prompts.yaml`,
`README.md`; `conftest.publish_tinystories_dataset`) and `roneneldan/TinyStoriesInstruct` (only `.txt` files,
records between `<|endoftext|>`): eval scores the validation parquet and completes the paper's 44 prompts,
dedup reads whole Instruct records, the benchmark reads what pretraining reads, a local file is scored whole.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from datasets import load_from_disk

from benchmarks.bench import BenchArguments, prepare_tokens
from conftest import publish_tinystories_dataset
from tiny import make_tiny_model_dir, train_tiny_tokenizer, write_instruct_txt
from tinystories.core import ConfigError
from tinystories.data import loading as data_module
from tinystories.data.loading import hub_data_files, load_eval_texts, load_split, load_stories
from tinystories.evaluation.generation import load_prompt_set
from tinystories.stages import eval as evaluation
from tinystories.stages.dedup import DedupArguments, run

INSTRUCT = "roneneldan/TinyStoriesInstruct"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread beats two busy ones
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(stories, tmp_path_factory):
    """(model dir, tokenizer): a tiny random GPT-Neo with a BPE trained on real stories."""
    tokenizer = train_tiny_tokenizer(stories[:300])
    model = make_tiny_model_dir(
        tmp_path_factory.mktemp("hub_data") / "model", tokenizer, seed=3, window_size=16
    )
    return model, tokenizer


@pytest.fixture
def tinystories(hub_cache, tmp_path, stories):
    return publish_tinystories_dataset(hub_cache, tmp_path, stories)


@pytest.fixture
def fetched(monkeypatch):
    """The files `tinystories.data` downloads from the Hub (cache), in order."""
    names: list[str] = []
    real = data_module.hf_hub_download

    def spy(repo_id, filename, **kwargs):
        names.append(filename)
        return real(repo_id, filename, **kwargs)

    monkeypatch.setattr(data_module, "hf_hub_download", spy)
    return names


def test_training_reads_the_parquet_splits(tinystories, fetched):
    files = hub_data_files("roneneldan/TinyStories")
    assert sorted(files) == ["train", "validation"] and len(files["train"]) == 4
    assert all(f.startswith("data/") and f.endswith(".parquet") for names in files.values() for f in names)
    splits, stats = load_stories("roneneldan/TinyStories", return_stats=True)
    assert sorted(splits["train"]["text"]) == sorted(tinystories["train"])  # the parquet, not the .txt files
    assert list(splits["validation"]["text"]) == tinystories["validation"]
    assert stats.validation_from == "split" and not any(f.endswith(".txt") for f in fetched)


def test_eval_scores_the_validation_parquet_and_completes_the_paper_prompts(
    tiny, tinystories, fetched, tmp_path
):
    model, _ = tiny
    out = tmp_path / "eval"
    argv = ["--model", str(model), "--data", "roneneldan/TinyStories", "--output_dir", str(out)]
    argv += ["--max_new_tokens", "3", "--batch_size", "8", "--write_card", "false"]
    assert evaluation.main(argv) == 0
    results = json.loads((out / "eval_results.json").read_text())
    validation = tinystories["validation"]
    assert results["num_stories"] == len(validation) and results["split"] == "validation"
    assert results["selected"] == "split" and "held_out_fraction" not in results
    assert results["num_bytes"] == sum(len(t.encode()) for t in validation)
    assert fetched == [f for f in hub_data_files("roneneldan/TinyStories")["validation"]]  # train not fetched
    rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert results["prompt_set"] == "paper" and len(rows) == 44
    assert [r["prompt"] for r in rows] == tinystories["prompts"]
    assert [r["prompt_id"] for r in rows] == [f"paper-{i:03d}" for i in range(44)]


def test_missing_split_names_the_ones_there(tinystories):
    with pytest.raises(ConfigError, match=r"no test split \(splits: \['train', 'validation'\]\).*--split"):
        load_eval_texts("roneneldan/TinyStories", split="test")


def test_paper_prompts_offline_and_their_fallback(hub_cache, tmp_path, stories, caplog):
    with caplog.at_level(logging.WARNING, logger="tinystories.evaluation.generation"):
        fallback = load_prompt_set("paper")  # nothing cached: the project's own, said once
    assert fallback.name == "project" and len(fallback) >= 45 and fallback.rows[0]["id"] == "p000"
    assert len([r for r in caplog.records if "project's own" in r.getMessage()]) == 1
    published = publish_tinystories_dataset(hub_cache, tmp_path, stories)
    paper = load_prompt_set("paper", limit=5)
    assert paper.name == "paper" and [r["prompt"] for r in paper.rows] == published["prompts"][:5]
    custom = tmp_path / "mine.jsonl"
    custom.write_text(json.dumps({"prompt": "Tom saw a"}) + "\n")
    assert load_prompt_set(str(custom)).name == "mine.jsonl"


def test_dedup_reads_instruct_records_whole(hub_cache, tmp_path, stories):
    folder = tmp_path / "instruct"
    folder.mkdir()
    write_instruct_txt(stories, folder / "TinyStories-Instruct-train.txt", n=40)
    write_instruct_txt(stories[100:], folder / "TinyStories-Instruct-valid.txt", n=10, seed=1)
    hub_cache.add(INSTRUCT, folder, repo_type="dataset")
    assert len(load_split(INSTRUCT, "validation")) == 10
    out = tmp_path / "dedup"
    stats = run(DedupArguments(data=INSTRUCT, output_dir=str(out), decontaminate=False, num_proc=1))
    assert stats["input"] == 40 and stats["text_column"] == "text"  # records, not ~400 lines
    kept = load_from_disk(str(out / "data"))
    assert all("Story:" in t and t.count("\n") >= 2 for t in kept["text"])


def test_bench_prepares_what_pretraining_reads(tiny, tinystories):
    _, tokenizer = tiny
    args = BenchArguments(data="roneneldan/TinyStories", steps=2, batch_size=4, block_size=64)
    tokens = prepare_tokens(args, tokenizer)
    assert tokens["real_tokens"] == len(tokens["packed_rows"]) * 64 > 0


def _write_txt(path: Path, texts: list[str]) -> Path:
    path.write_text("\n<|endoftext|>\n".join(texts) + "\n", encoding="utf-8")
    return path


def test_local_file_is_scored_whole_and_held_out_only_when_asked(tiny, stories, tmp_path):
    model, _ = tiny
    data = _write_txt(tmp_path / "stories.txt", stories[:37])
    common = ["--model", str(model), "--data", str(data), "--generate", "false", "--write_card", "false"]
    assert evaluation.main([*common, "--output_dir", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "eval_results.json").read_text())
    assert whole["num_stories"] == 37 and whole["selected"] == "whole_file" and whole["split"] == "all"
    argv = [*common, "--output_dir", str(tmp_path / "held"), "--validation_fraction", "0.1", "--seed", "7"]
    assert evaluation.main(argv) == 0
    held = json.loads((tmp_path / "held" / "eval_results.json").read_text())
    expected = load_stories(str(data), validation_fraction=0.1, seed=7)["validation"]["text"]
    assert held["num_stories"] == len(expected) == 4 and held["selected"] == "held_out_fraction"
    assert held["held_out_fraction"] == 0.1 and held["held_out_seed"] == 7 and held["split"] == "validation"
    assert held["num_bytes"] == sum(len(t.encode()) for t in expected)
    with pytest.raises(ConfigError, match="fraction must be in"):
        load_eval_texts(str(data), validation_fraction=1.5)
