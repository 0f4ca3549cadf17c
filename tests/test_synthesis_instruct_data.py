"""Instruct records from real stories without an LLM (`--data`, backend `stories`), and with one for summaries."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
from datasets import load_from_disk

from tinystories.core import ConfigError
from tinystories.data.features import detect_features
from tinystories.data.instruct import PROMPT_END, parse_example
from tinystories.data.loading import load_stories
from tinystories.data.wordforms import FormIndex, split_sentences, uses_word
from tinystories.stages.data import main
from tinystories.synthesis.arguments import SynthesisArguments
from tinystories.synthesis.from_stories import choose_words, lowercase_words
from tinystories.synthesis.job import run
from tinystories.synthesis.prompts import Vocabulary
from tinystories.training.finetune.arguments import FinetuneArguments
from tinystories.training.finetune.data import prepare_data

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai_server import FakeOpenAIServer, ok_plan

REPO = Path(__file__).resolve().parents[1]
N = 60


@pytest.fixture(scope="module")
def corpus(stories, tmp_path_factory) -> Path:
    """The first N real stories in the release's `.txt` format."""
    path = tmp_path_factory.mktemp("corpus") / "stories.txt"
    path.write_text("\n<|endoftext|>\n".join(stories[:N]) + "\n<|endoftext|>\n", encoding="utf-8")
    return path


def _args(tmp_path: Path, source: Path, **kw) -> SynthesisArguments:
    defaults = dict(output_dir=str(tmp_path / "out"), mode="instruct", backend="stories",
                    data=str(source), num_stories=0, flush_every=25)  # fmt: skip
    return SynthesisArguments(**{**defaults, **kw})


def test_features_detected_from_the_text():
    assert detect_features('Tom said, "Let us play!" They played.') == ["Dialogue"]
    assert detect_features("Mia smiled. “Thank you,” she said.") == ["Dialogue"]
    assert detect_features("Tom played. The moral of the story is to share.") == ["MoralValue"]
    assert detect_features('The sign said "" and 5" of rain fell.') == []  # no words between quotes
    assert detect_features("Tom and Sue played all day.") == []


def test_words_are_list_words_the_story_uses_in_base_form():
    index = FormIndex(Vocabulary().words)
    story = "Lily ran to the park. She was happy and played with her small dogs."
    picks = choose_words(story, index, random.Random(0))
    assert picks["verb"] in {"run", "play"} and picks["noun"] in {"park", "dog"}
    assert picks["adjective"] in {"happy", "small"}
    assert picks["words"] == [picks["verb"], picks["noun"], picks["adjective"]]
    assert "lily" not in lowercase_words(story)  # the name is not the flower
    # a story without a list adjective: the third word is another word it uses, never `ran` again
    picks = choose_words("The cat ran. The cat ran again and again.", index, random.Random(1))
    assert picks["verb"] == "run" and picks["noun"] == "cat" and picks["adjective"] == ""
    assert len(picks["words"]) == 2  # `again` is a function word, `ran` is `run`


def test_instruct_records_from_real_stories(tmp_path, corpus, stories):
    result = run(_args(tmp_path, corpus))
    assert result["merge"]["generated"] == N and result["merge"]["failed"] == 0
    assert result["merge"]["missing"] == 0 and result["merge"]["job"]["source_stories"] == N
    ds = load_from_disk(str(tmp_path / "out" / "dataset"))
    assert len(ds) == N and ds["index"] == list(range(N))
    index = FormIndex(Vocabulary().words)
    for row, story in zip(ds, stories[:N], strict=True):
        assert row["story"] == story.strip() and row["backend"] == "stories" and row["summary"] is None
        assert row["model"] == "none (stories of stories.txt)" and row["generation_prompt"] is None
        example = parse_example(row["text"])
        assert example.story == row["story"] and example.summary is None
        assert example.order == row["instruction_fields"] and "summary" not in example.order
        assert len(row["words"]) == 3
        for word in row["words"]:
            assert uses_word(story, word), (word, story)  # every word really occurs
        found = index.found(lowercase_words(story))
        for pos in ("verb", "noun", "adjective"):  # one of each part of speech the story has
            if found.get(pos):
                assert set(row["words"]) & set(found[pos]), (pos, row["words"])
        assert row["random_sentence"] in split_sentences(story)
        assert ("Dialogue" in row["features"]) == (story.count('"') >= 2)
        if "words" in example.order:
            assert example.words == row["words"]
    assert sum("Dialogue" in f for f in ds["features"]) > 10
    assert len({tuple(o) for o in ds["instruction_fields"]}) > 5  # random subsets and orders


def test_deterministic_sharded_and_resumable(tmp_path, corpus):
    single = run(_args(tmp_path / "a", corpus, seed=7))
    for k in range(2):
        run(_args(tmp_path / "b", corpus, seed=7, num_shards=2, shard_index=k))
    a = load_from_disk(str(tmp_path / "a" / "out" / "dataset"))
    b = load_from_disk(str(tmp_path / "b" / "out" / "dataset"))
    assert a["text"] == b["text"] and a["words"] == b["words"]
    again = run(_args(tmp_path / "a", corpus, seed=7))  # resume: nothing left to do
    assert again["shard"]["this_run"]["generated"] == 0 and again["merge"] == single["merge"]
    with pytest.raises(ConfigError, match="different job"):
        run(_args(tmp_path / "a", corpus, seed=8))
    other = run(_args(tmp_path / "c", corpus, seed=8, num_stories=10))
    assert other["merge"]["generated"] == 10
    c = load_from_disk(str(tmp_path / "c" / "out" / "dataset"))
    assert c["text"] != a["text"][:10] and c["story"] == a["story"][:10]


def test_output_trains_unchanged(tmp_path, corpus):
    run(_args(tmp_path, corpus))
    out = str(tmp_path / "out")
    loaded = load_stories(out, validation_fraction=0.1, seed=0)
    assert len(loaded["train"]) + len(loaded["validation"]) == N
    data, fmt = prepare_data(FinetuneArguments(data=out, validation_fraction=0.1))
    assert fmt == "instruct" and len(data["train"]) + len(data["validation"]) == N
    for row in data["train"]:
        assert row["prompt"].endswith(PROMPT_END) and row["completion"].startswith("\n")
        assert "Summary:" not in row["prompt"] and "Story:" not in row["completion"]


def test_empty_stories_fail_and_jsonl_sources(tmp_path):
    source = tmp_path / "s.jsonl"
    texts = ['Tom ran to the big park. "Hi!" he said.', "  ", "A small cat slept in the warm sun."]
    source.write_text("".join(json.dumps({"story": t}) + "\n" for t in texts))
    result = run(_args(tmp_path, source, text_column="story"))
    assert result["merge"]["generated"] == 2 and result["merge"]["failed"] == 1
    failed = load_from_disk(str(tmp_path / "out" / "failed"))
    assert failed["index"] == [1] and failed["error_type"] == ["empty_story"]
    with pytest.raises(ConfigError, match="text_column"):
        run(_args(tmp_path / "x", source))


def test_llm_backend_is_asked_only_for_the_summary(tmp_path, corpus):
    with FakeOpenAIServer(ok_plan) as server:
        args = _args(tmp_path, corpus, backend="openai", model="fake", base_url=server.url, num_stories=12,
                     concurrency=4)  # fmt: skip
        result = run(args)
        asked = list(server.attempts)
    assert result["merge"]["generated"] == 12
    assert len(asked) == 12 and all(p.startswith("Summarize") for p in asked)  # one summary request each
    ds = load_from_disk(str(tmp_path / "out" / "dataset"))
    assert set(ds["backend"]) == {"stories+openai"} and set(ds["model"]) == {"fake"}
    assert set(ds["summary"]) == {"A child plays and is happy."}
    assert all(p.startswith("Summarize") for p in ds["summary_prompt"])


def test_recipe_and_make_target(tmp_path, corpus, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = REPO / "recipes" / "data" / "instruct_from_stories.yaml"
    argv = [
        "--config",
        str(recipe),
        "--data",
        str(corpus),
        "--output_dir",
        "out",
        "--num_stories",
        "5",
    ]
    assert main(argv) == 0
    assert len(load_from_disk(str(tmp_path / "out" / "dataset"))) == 5
    assert "$(call opt,--data,$(DATA))" in (REPO / "Makefile").read_text()


def test_source_settings_are_checked(tmp_path, corpus):
    with pytest.raises(ConfigError, match="--data"):
        SynthesisArguments(backend="stories").validate()
    with pytest.raises(ConfigError, match="mode instruct"):
        SynthesisArguments(backend="stories", data=str(corpus), mode="stories").validate()
    with pytest.raises(ConfigError, match="num_stories"):
        SynthesisArguments(num_stories=0).validate()
    with pytest.raises(ConfigError, match="on_truncated"):
        SynthesisArguments(backend="template", on_truncated="maybe").validate()
