"""TinyStories-Instruct text format: random field subsets/orders round-trip through the parser."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest

from tinystories.data.instruct import (
    FIELDS,
    InstructExample,
    build_prompt,
    format_example,
    parse_example,
    randomize_fields,
    split_prompt_completion,
)
from tinystories.synthesis.backends import TemplateBackend
from tinystories.synthesis.prompts import Vocabulary, random_sentence

# The layout of roneneldan/TinyStoriesInstruct (a blank line after `Story:`, fields in any order)
RELEASE_EXAMPLE = """Features: Dialogue, Twist
Random sentence: The bird flew away with the shiny key.
Words: fly, key, shiny
Summary: Lily finds a shiny key, but a bird takes it and she learns to share.
Story:\x20

Lily found a shiny key in the park. "Look, Mom!" she said.
Mom said: "It is pretty."

The bird flew away with the shiny key. Lily was sad, but then she smiled."""


# Released records where instruction lines follow the story (the file's `Story: ` line, a blank line)
TRAILING_FIELDS_EXAMPLE = """Features: Dialogue
Story:\x20

Tom had a red kite. "Look!" he said.
Summary: Tom flies a red kite with his dad.
Words: kite, fly, red"""

ALL_AFTER_EXAMPLE = """Story:\x20

Sue found a shell on the beach.
She gave it to her mom.

Random sentence: She gave it to her mom.
Summary: Sue gives her mom a shell."""


def _full_examples(n: int) -> list[InstructExample]:
    vocab, backend = Vocabulary(), TemplateBackend()
    examples = []
    for i in range(n):
        spec = vocab.spec(3, i)
        story = backend.story(spec)
        examples.append(
            InstructExample(
                story=story,
                features=list(spec.features),
                words=spec.words,
                summary=backend.summary(spec, story),
                random_sentence=random_sentence(story, random.Random(i)),
            )
        )
    return examples


def test_round_trip_random_subsets_and_orders():
    rng = random.Random(0)
    seen_orders = set()
    for full in _full_examples(300):
        shown = randomize_fields(full, rng)
        text = format_example(shown)
        back = parse_example(text)
        assert back.order == shown.order
        assert back.story == full.story.strip()
        for name in FIELDS:
            expected = getattr(shown, name)
            assert getattr(back, name) == (expected if expected else getattr(InstructExample(), name)), name
        assert format_example(back) == text  # parse -> format is the identity
        prompt, completion = split_prompt_completion(text)
        assert prompt + completion == text and prompt.endswith("Story: \n") and completion.startswith("\n")
        seen_orders.add(tuple(shown.order))
    assert len(seen_orders) > 20  # many subsets and orders, as in the paper


def test_field_keep_probability_and_orders():
    rng = random.Random(1)
    full = _full_examples(1)[0]
    full.features = full.features or ["Dialogue"]
    counts: Counter[str] = Counter()
    firsts: Counter[str] = Counter()
    n = 4000
    for _ in range(n):
        shown = randomize_fields(full, rng, keep_probability=0.75)
        assert shown.order  # at least one instruction
        counts.update(shown.order)
        firsts[shown.order[0]] += 1
    for name in FIELDS:
        assert 0.72 <= counts[name] / n <= 0.78, (name, counts[name] / n)
        assert 0.18 <= firsts[name] / n <= 0.32  # each field leads about a quarter of the time


def test_parse_release_layout():
    ex = parse_example(RELEASE_EXAMPLE)
    assert ex.order == ["features", "random_sentence", "words", "summary"]
    assert ex.features == ["Dialogue", "Twist"] and ex.words == ["fly", "key", "shiny"]
    assert ex.summary.startswith("Lily finds") and ex.random_sentence.endswith("shiny key.")
    assert (
        ex.story.startswith("Lily found") and 'Mom said: "It is pretty."' in ex.story
    )  # colons in the story
    assert ex.random_sentence in ex.story
    texts = [RELEASE_EXAMPLE, format_example(ex)]
    parsed = [parse_example(t) for t in "<|endoftext|>".join(texts).split("<|endoftext|>")]
    assert parsed[0] == parsed[1]


@pytest.mark.parametrize("fields", list(itertools.permutations(["words", "summary"])))
def test_build_prompt_and_order(fields):
    ex = InstructExample(
        story="A story.", words=["run", "ball", "red"], summary="A ball.", order=list(fields)
    )
    text = format_example(ex)
    assert [line.split(":")[0] for line in text.splitlines()[:2]] == [FIELDS[f] for f in fields]
    assert build_prompt(words=["run", "ball", "red"]) == "Words: run, ball, red\nStory: \n"


def test_not_an_instruct_example():
    with pytest.raises(ValueError, match="Story:"):
        parse_example("Words: a, b, c\nSummary: nothing")


def test_instruction_lines_after_the_story_go_to_the_prompt():
    ex = parse_example(TRAILING_FIELDS_EXAMPLE)
    assert ex.story == 'Tom had a red kite. "Look!" he said.'
    assert ex.order == ["features", "summary", "words"]  # before the story first, then the ones after
    assert ex.summary == "Tom flies a red kite with his dad." and ex.words == ["kite", "fly", "red"]
    prompt, completion = split_prompt_completion(TRAILING_FIELDS_EXAMPLE)
    assert prompt == (
        "Features: Dialogue\nSummary: Tom flies a red kite with his dad.\nWords: kite, fly, red\nStory: \n"
    )
    assert completion == "\n" + ex.story and "Summary" not in completion and "kite, fly" not in completion

    prompt, completion = split_prompt_completion(ALL_AFTER_EXAMPLE)  # every instruction after the story
    assert (
        prompt == "Random sentence: She gave it to her mom.\nSummary: Sue gives her mom a shell.\nStory: \n"
    )
    assert completion == "\nSue found a shell on the beach.\nShe gave it to her mom."
    assert parse_example(format_example(parse_example(ALL_AFTER_EXAMPLE))) == parse_example(ALL_AFTER_EXAMPLE)


def test_story_lines_that_only_look_like_fields_stay_in_the_story():
    text = "Words: sun\nStory:\nMom said: run!\nStory: time.\nThe end: they slept.\nWords: moon"
    ex = parse_example(text)
    assert ex.story == "Mom said: run!\nStory: time.\nThe end: they slept."
    assert ex.words == ["sun"] and ex.order == ["words"]  # a field given twice: the first one wins


def test_build_prompt_ends_as_the_sft_prompts():
    """Generation conditions on exactly the text SFT trains on before a story."""
    prompt = build_prompt(words=["kite", "fly", "red"], summary="Tom flies a kite.", features=["Dialogue"])
    assert prompt.endswith("\nStory: \n") and not prompt.endswith("\n\n")
    record = (
        "Story:\x20\n\nTom flew it.\nSummary: Tom flies a kite.\nWords: kite, fly, red\nFeatures: Dialogue"
    )
    sft_prompt, _ = split_prompt_completion(record)
    assert sorted(sft_prompt.splitlines()) == sorted(prompt.splitlines())
    assert sft_prompt.endswith("\nStory: \n")


def test_prompt_is_a_token_exact_prefix_of_the_released_records(gpt_neo_tokenizer):
    """`Story: \\n\\nOnce` in the files is `:`, ` `, `\\n`, `\\n`, `Once`: the prompt is its exact token prefix."""
    record = "Words: run, ball, red\nStory: \n\nOnce upon a time, Tom had a red ball."
    prompt, completion = split_prompt_completion(record)
    assert prompt + completion == record  # the record as it stands in the file
    assert format_example(parse_example(record)) == record
    ids = gpt_neo_tokenizer(record)["input_ids"]
    prompt_ids = gpt_neo_tokenizer(prompt)["input_ids"]
    assert ids[: len(prompt_ids)] == prompt_ids
    assert prompt_ids + gpt_neo_tokenizer(completion)["input_ids"] == ids
    assert build_prompt(words=["run", "ball", "red"]) == prompt
