"""The screen after the preamble: refusals, second stories, degenerate loops (synthesis/cleaning.screen_story),
and how a job counts them (`stats.json`: loops_trimmed, loops_rejected, second_stories_cut, refused)."""

from __future__ import annotations

from pathlib import Path

from datasets import load_from_disk

from tinystories.data.loading import iter_txt_stories
from tinystories.synthesis.arguments import SynthesisArguments
from tinystories.synthesis.backends import Completion, TemplateBackend
from tinystories.synthesis.cleaning import (
    MIN_KEPT_WORDS,
    cut_second_story,
    is_refusal,
    loop_start,
    screen_story,
)
from tinystories.synthesis.job import run, run_shard
from tinystories.synthesis.prompts import Vocabulary
from tinystories.synthesis.records import RecordBuilder

SAMPLE = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories" / "TinyStories-train.sample.txt"
)
OPENING = (
    "Once upon a time, there was a little girl named Mia. She had a red ball and a small dog. Every day, Mia and "
    "the dog played in the big green park near the house. One day, the ball rolled into the pond."
)  # 44 words
LOOP = " She was so happy." * 10


def test_a_sentence_said_ten_times_is_cut_at_its_second_occurrence():
    screened = screen_story(OPENING + " She was so happy." + LOOP)
    assert screened.text == OPENING + " She was so happy."
    assert screened.cuts == ["loop: " + LOOP.strip()]
    assert screened.rejected is None


def test_a_loop_leaving_too_little_is_rejected():
    text = "Tom had a cat." + LOOP
    assert len(text[: loop_start(text)].split()) < MIN_KEPT_WORDS
    assert screen_story(text).rejected == "loop"


def test_a_repeated_paragraph_and_a_repeated_long_span_are_loops():
    paragraph = "The dog ran to the park and found a big stick under the tree."
    text = f"{OPENING}\n{paragraph}\n{paragraph}"
    assert text[: loop_start(text)].strip() == f"{OPENING}\n{paragraph}"
    span = " ".join(f"w{i}" for i in range(25)) + "."
    text = f"{OPENING} {span} And then {span}"
    assert text[loop_start(text) :].startswith("And then")


def test_a_refrain_said_three_times_is_not_a_loop():
    text = (
        OPENING
        + ' "We can still be friends." Tom cried. "We can still be friends." "We can still be friends."'
    )
    assert loop_start(text) is None and screen_story(text).cuts == []


def test_second_story_and_refusal():
    first, second = cut_second_story(OPENING + "\n\nOnce upon a time, there was a boy named Sam.")
    assert first == OPENING and second == "Once upon a time, there was a boy named Sam."
    assert cut_second_story(OPENING + "\nThe End. Mia smiled.") == (OPENING + "\nThe End. Mia smiled.", None)
    assert is_refusal("I'm sorry, but I can't write that story.") and not is_refusal(
        "Sorry was the name of the dog."
    )


def test_real_stories_pass_the_screen_almost_untouched():
    """Of the 2,316 real stories of the shared sample, 1 has a sentence said 4 times; none a second story."""
    stories = list(iter_txt_stories(SAMPLE))
    screened = [screen_story(s) for s in stories]
    assert len(stories) == 2316
    assert sum(bool(s.cuts) for s in screened) == 1
    assert sum(s.rejected is not None for s in screened) == 0


class _Replies(TemplateBackend):
    """Story i gets reply i % 5: a good story, a trimmable loop, a short loop, a refusal, a second story."""

    REPLIES = (
        OPENING,
        OPENING + " She was so happy." + LOOP,
        "Tom had a cat." + LOOP,
        "I'm sorry, but I cannot write this story.",
        OPENING + "\n\nOnce upon a time, there was a boy named Sam.",
    )

    def complete_batch(self, requests):
        return [
            Completion(self.REPLIES[r.spec.index % 5], "stop", {"completion_tokens": 9}) for r in requests
        ]


def test_the_job_counts_what_the_screen_caught(tmp_path):
    args = SynthesisArguments(
        output_dir=str(tmp_path / "out"), backend="template", num_stories=10, flush_every=3
    )
    shard = run_shard(args, backend=_Replies(args.sampling()))
    assert shard["generated"] == 6 and shard["failed"] == 4
    assert (
        shard["loops_trimmed"],
        shard["loops_rejected"],
        shard["refused"],
        shard["second_stories_cut"],
    ) == (
        2,
        2,
        2,
        2,
    )
    merged = run(args)["merge"]
    assert merged["loops_trimmed"] == 2 and merged["refused"] == 2
    ds = load_from_disk(str(tmp_path / "out" / "dataset"))
    assert ds["finish_reason"] == ["stop", "loop", "second_story"] * 2
    assert ds["cuts"][1] == ["story: loop: " + LOOP.strip()]
    assert ds["cuts"][2] == ["story: second_story: Once upon a time, there was a boy named Sam."]


def test_corpus_stories_are_not_screened(tmp_path):
    """A real story with a refrain said 4 times stays whole when Instruct records are made from a corpus."""
    args = SynthesisArguments(output_dir=str(tmp_path / "out"), backend="template")
    builder = RecordBuilder(args, Vocabulary(), TemplateBackend(args.sampling()))
    text = "Tom had a cat." + LOOP
    assert builder.screen(Completion(text, from_model=False)).text == text
    assert builder.screen(Completion(text)).error_type == "loop"
