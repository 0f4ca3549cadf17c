"""Copying and diversity numbers of `eval_results.json`'s `memorization` on hand-made texts with known answers,
and their place in the model card."""

from __future__ import annotations

import pytest

from tinystories.evaluation.memorization import (
    SpanIndex,
    copying,
    distinct_n,
    diversity,
    memorization,
    repeated_openings,
    same_lengths,
)
from tinystories.hub.cards import _eval_section

TRAIN = [
    "one two three four five six seven eight nine ten eleven twelve",
    "the cat sat on the mat and looked at the big red ball all day",
]


def test_copying_finds_shared_spans_and_the_longest():
    index = SpanIndex(TRAIN)
    texts = [
        "Zero ONE two three, four five six seven eight nine! new words here",  # 9 words copied: 2 spans
        "the cat sat on the mat and looked at a dog",  # 9 words copied: 2 spans
        "nothing here is copied from any training story at all today",
        "too short",
    ]
    got = copying(texts, index)
    assert got["texts"] == 4 and got["scored"] == 3
    assert got["share_with_shared_span"] == pytest.approx(2 / 3, abs=1e-4)
    assert got["longest_shared_span"] == 9
    spans = [13 - 8 + 1, 11 - 8 + 1, 11 - 8 + 1]  # spans per scored text
    assert got["mean_share_of_spans"] == pytest.approx((2 / spans[0] + 2 / spans[1] + 0) / 3, abs=1e-4)


def test_diversity():
    texts = ["a b a b", "a b c d"]
    assert distinct_n(texts, 1) == pytest.approx(4 / 8, abs=1e-4)
    assert distinct_n(texts, 2) == pytest.approx(4 / 6, abs=1e-4)  # ab ba ab | ab bc cd
    assert repeated_openings(["x y z w v q", "x y z w v r", "other opening words here now"]) == pytest.approx(
        2 / 3, abs=1e-4
    )
    assert diversity(["short"])["repeated_openings"] is None


def test_memorization_puts_held_out_stories_at_the_completions_lengths():
    assert same_lengths(["a b c d e f", "g h i"], ["x y", "x y z w", "q"]) == ["a b", "g h i", "a"]
    assert same_lengths(["a b c d e f"], ["x y", "z"], skips=[3, 1]) == ["d e", "b"]
    completions = ["the cat sat on the mat and looked at the sky"]
    held_out = ["zero one two three four five six seven eight nine ten eleven twelve thirteen"]
    got = memorization(completions, held_out, TRAIN, "train.txt", prompts=["zero"])
    assert got["completions"]["share_with_shared_span"] == 1.0
    assert got["completions"]["longest_shared_span"] == 10
    assert got["held_out"]["share_with_shared_span"] == 1.0
    assert got["held_out"]["longest_shared_span"] == 11  # cut to 11 words, all in training
    section = _eval_section({"memorization": got}, 512)["memorization"]
    assert section["model"]["shared"] == "100%" and section["held_out"]["longest"] == "11"
