"""Instruction following, measured: the words-used rule, the rate against a hand count, eval and card wiring."""

from __future__ import annotations

import json
import shutil

import pytest

from tiny import make_tiny_model_dir, train_tiny_tokenizer
from tinystories.core import ConfigError
from tinystories.data.wordforms import uses_word, word_forms
from tinystories.evaluation.instructions import (
    base_model_of,
    wants_instruct_eval,
    word_triples,
    words_used_rate,
)
from tinystories.hub.cards import write_model_card
from tinystories.stages import eval as evaluation
from tinystories.synthesis.prompts import Vocabulary

BASE_ID = "someone/TinyStories-tiny-base"


@pytest.mark.parametrize(
    ("text", "word", "pos", "used"),
    [
        ("Tom runs.", "run", "verb", True),
        ("Tom ran home.", "run", "verb", True),
        ("They were running.", "run", "verb", True),
        ("The RUN was long.", "run", "noun", True),  # case-insensitive
        ("The runner won.", "run", "verb", False),  # a derived word is not an inflection
        ("Sue cried.", "cry", "verb", True),
        ("She is hoping.", "hope", "verb", True),
        ("He hopped.", "hope", "verb", False),
        ("Two mice.", "mouse", "noun", True),
        ("Lily's dogs barked.", "dog", "noun", True),
        ("A hotdog.", "dog", "noun", False),  # whole words only
        ("The bigger box.", "big", "adjective", True),
        ("The happiest girl.", "happy", "adjective", True),
        ("The best day.", "good", "adjective", True),
        ("A little bit.", "bite", "verb", False),  # `bit` is left out on purpose
    ],
)
def test_word_used_rule(text, word, pos, used):
    assert uses_word(text, word, pos) is used


def test_words_used_rate_equals_a_hand_count():
    rows = [
        {"words": {"verb": "run", "noun": "ball", "adjective": "happy"},
         "completion": "Tom ran after the ball. He was happy."},  # 3 of 3
        {"words": {"verb": "jump", "noun": "tree", "adjective": "red"},
         "completion": "The bird jumped into the trees."},  # jump, tree: 2 of 3
        {"words": {"verb": "sing", "noun": "cat", "adjective": "tiny"},
         "completion": "Sue sang to her dog."},  # sing: 1 of 3
        {"words": {"verb": "eat", "noun": "apple", "adjective": "big"},
         "completion": "Once upon a time."},  # 0 of 3
    ]  # fmt: skip
    result = words_used_rate(rows)
    assert result["words_used"] == 6 and result["words_required"] == 12
    assert result["rate"] == pytest.approx(0.5) and result["all_words_rate"] == pytest.approx(0.25)
    assert result["completions"] == 4 and words_used_rate([])["rate"] is None


def test_word_triples_are_seeded_list_words():
    vocab = Vocabulary()
    triples = word_triples(50, seed=3, vocab=vocab)
    assert triples == word_triples(50, seed=3) and triples != word_triples(50, seed=4)
    assert len({tuple(t.values()) for t in triples}) == 50
    for t in triples:
        assert list(t) == ["verb", "noun", "adjective"]
        assert all(t[pos] in vocab.words[pos] and t[pos] in word_forms(t[pos], pos) for pos in t)


def test_auto_detection_and_base_model(tmp_path):
    sft, pre, plain = tmp_path / "sft", tmp_path / "pre", tmp_path / "lora-plain"
    for folder, stage, fmt in ((sft, "sft", "instruct"), (pre, "pretrain", None), (plain, "lora", "stories")):
        folder.mkdir()
        info = {"stage": stage, "base_model": BASE_ID, "hyperparameters": {"data_format": fmt}}
        (folder / "card_info.json").write_text(json.dumps(info))
    assert wants_instruct_eval(str(sft)) and not wants_instruct_eval(str(pre))
    assert not wants_instruct_eval(str(plain))  # LoRA on plain stories is no Instruct model
    assert wants_instruct_eval("roneneldan/TinyStories-Instruct-33M")
    assert not wants_instruct_eval("roneneldan/TinyStories-33M")
    assert wants_instruct_eval(str(pre), "true") and not wants_instruct_eval(str(sft), "false")
    assert base_model_of(str(sft)) == BASE_ID and base_model_of(str(sft), "other/base") == "other/base"
    (sft / "card_info.json").write_text(json.dumps({"stage": "sft", "base_model": "pretrain"}))  # a local dir
    assert base_model_of(str(sft)) is None
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(pre)}))
    assert base_model_of(str(adapter)) == str(pre)
    with pytest.raises(ConfigError, match="instruct_eval"):
        evaluation.main(["--model", str(sft), "--instruct_eval", "maybe"])


@pytest.fixture(scope="module")
def tiny_pair(stories, tmp_path_factory):
    """(an `sft` model dir whose card names BASE_ID, the base model dir)."""
    tokenizer = train_tiny_tokenizer(stories[:200])
    root = tmp_path_factory.mktemp("instruct_eval")
    base = make_tiny_model_dir(root / "base", tokenizer, seed=1)
    sft = make_tiny_model_dir(root / "TinyStories-tiny-sft", tokenizer, seed=2)
    return sft, base


def test_eval_writes_instruct_words_for_the_model_and_its_base(tiny_pair, tmp_path, monkeypatch, hub_cache):
    sft_src, base = tiny_pair
    hub_cache.add(BASE_ID, base)
    monkeypatch.chdir(tmp_path)
    sft = shutil.copytree(sft_src, tmp_path / "TinyStories-tiny-sft")
    write_model_card(
        sft, {"stage": "sft", "base_model": BASE_ID, "datasets": ["roneneldan/TinyStoriesInstruct"]}
    )
    args = ["--model", str(sft), "--skip_loss", "--prompts", "project", "--num_prompts", "1",
            "--max_new_tokens", "12", "--instruct_prompts", "3", "--num_completions", "2"]  # fmt: skip
    assert evaluation.main(args) == 0
    words = json.loads((sft / "eval_results.json").read_text())["instruct_words"]
    assert words["prompts"] == 3 and words["completions"] == 6 and words["words_required"] == 18
    assert words["base"]["model"] == BASE_ID and words["base"]["completions"] == 6
    rows = [json.loads(line) for line in (sft / "instruct_completions.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and {r["model"] for r in rows} == {"TinyStories-tiny-sft", BASE_ID}
    mine, theirs = rows[:6], rows[6:]
    assert [r["prompt"] for r in mine] == [r["prompt"] for r in theirs]  # the same prompts for both
    assert all(r["prompt"].startswith("Words: ") for r in rows)
    for result, part in ((words, mine), (words["base"], theirs)):
        used = sum(uses_word(r["completion"], w, pos) for r in part for pos, w in r["words"].items())
        assert result["words_used"] == used and result["rate"] == pytest.approx(used / 18)
    card = (sft / "README.md").read_text()
    assert "Instruction following" in card and f"`{BASE_ID}`, given the same prompts" in card

    # --compare_base names another base; a pretrained folder gets no instruct_words unless asked
    args += ["--compare_base", str(base)]
    assert evaluation.main(args) == 0
    words = json.loads((sft / "eval_results.json").read_text())["instruct_words"]
    assert words["base"]["model"] == "base"
    plain = [
        "--model",
        str(base),
        "--skip_loss",
        "--prompts",
        "project",
        "--num_prompts",
        "1",
        "--max_new_tokens",
        "4",
    ]
    assert evaluation.main(plain) == 0
    assert "instruct_words" not in json.loads((base / "eval_results.json").read_text())


def test_eval_writes_instruct_features_and_dark_stories(
    tiny_pair, tmp_path, monkeypatch, hub_cache, sample_txt
):
    """`instruct_features` for the model and its base on the same prompts, `dark_stories` next to the data's."""
    from tinystories.data.features import DETECTORS, is_dark

    sft_src, base = tiny_pair
    hub_cache.add(BASE_ID, base)
    monkeypatch.chdir(tmp_path)
    sft = shutil.copytree(sft_src, tmp_path / "TinyStories-tiny-sft")
    write_model_card(sft, {"stage": "sft", "base_model": BASE_ID, "datasets": ["x"]})
    args = ["--model", str(sft), "--data", str(sample_txt), "--max_samples", "40", "--prompts", "project",
            "--num_prompts", "3", "--max_new_tokens", "12", "--instruct_prompts", "1", "--feature_prompts", "2",
            "--num_completions", "2"]  # fmt: skip
    assert evaluation.main(args) == 0
    results = json.loads((sft / "eval_results.json").read_text())
    features = results["instruct_features"]
    assert features["prompts"] == 6 and features["completions"] == 12 and features["base"]["model"] == BASE_ID
    rows = [json.loads(line) for line in (sft / "feature_completions.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and [r["prompt"] for r in rows[:12]] == [r["prompt"] for r in rows[12:]]
    for result, part in ((features, rows[:12]), (features["base"], rows[12:])):
        for name, rates in result["features"].items():
            asked = [DETECTORS[name](r["completion"]) for r in part if r["asks"] == name]
            other = [DETECTORS[name](r["completion"]) for r in part if r["asks"] != name]
            assert rates["asked"]["rate"] == pytest.approx(sum(asked) / 4) and len(asked) == 4
            assert (
                rates["not_asked"]["rate"] == pytest.approx(sum(other) / 8)
                and rates["not_asked"]["prompts"] == 4
            )
            assert rates["difference"] == pytest.approx(sum(asked) / 4 - sum(other) / 8)
    dark = results["dark_stories"]
    completions = [json.loads(line) for line in (sft / "completions.jsonl").read_text().splitlines()]
    assert dark["model"]["completions"] == len(completions) == 6
    assert dark["model"]["rate"] == pytest.approx(sum(is_dark(r["completion"]) for r in completions) / 6)
    assert dark["data"]["stories"] == 40 and 0 <= dark["data"]["rate"] <= 1
    card = (sft / "README.md").read_text()
    assert "| feature | asked | not asked | base: asked | base: not asked |" in card
    assert "| Dialogue |" in card and "Dark stories" in card


def test_two_models_of_one_base_sample_the_base_once(tiny_pair, tmp_path, monkeypatch):
    """`make quickstart` evaluates the SFT model and the merged LoRA against one base: the base is loaded and
    sampled once, and both results carry the same base numbers."""
    from tinystories.evaluation import pipeline

    sft_src, base = tiny_pair
    monkeypatch.chdir(tmp_path)
    one = shutil.copytree(sft_src, tmp_path / "TinyStories-tiny-sft")
    two = shutil.copytree(sft_src, tmp_path / "TinyStories-tiny-lora")
    loaded = []
    real = pipeline.load_model
    monkeypatch.setattr(
        pipeline, "load_model", lambda name, **kw: loaded.append(str(name)) or real(name, **kw)
    )
    args = ["--model", str(one), str(two), "--skip_loss", "--prompts", "project", "--num_prompts", "1",
            "--max_new_tokens", "8", "--instruct_prompts", "2", "--feature_prompts", "1", "--num_completions", "1",
            "--instruct_eval", "true", "--compare_base", str(base)]  # fmt: skip
    assert evaluation.main(args) == 0
    assert sorted(loaded) == sorted([str(one), str(two), str(base)])  # each model once, the base once
    first, second = (json.loads((m / "eval_results.json").read_text()) for m in (one, two))
    assert first["instruct_words"]["base"] == second["instruct_words"]["base"]
    assert first["instruct_features"]["base"] == second["instruct_features"]["base"]
    assert first["instruct_features"]["base"]["completions"] == 3  # 3 features x 1 prompt x 1 completion
    rows = [json.loads(line) for line in (two / "feature_completions.jsonl").read_text().splitlines()]
    assert (
        len(rows) == 6 and sum(r["model"] == "base" for r in rows) == 3
    )  # its file still lists the base's rows
