"""The TinyStories-Instruct text format, shared by synthesis, SFT and generation.

One example is a block of instruction lines, a `Story: ` line, a blank line and the story, exactly as in
the released `roneneldan/TinyStoriesInstruct` files (examples separated by `<|endoftext|>`; ␣ is a space)::

    Features: Dialogue, Twist
    Words: run, ball, happy
    Summary: A girl finds a ball and shares it.
    Random sentence: She threw the ball high.
    Story:␣

    Once upon a time ...

Instruction lines come in any order and any subset (the paper randomises both, so the model learns to
follow whichever constraints it is given); this project writes `Story: ` last. Some released records put
instruction lines (`Summary:`, `Words:`, ...) AFTER the story: `parse_example` moves those into the prompt
fields, so they are never trained on as story text.

A prompt (`format_prompt`, `build_prompt`, the SFT `prompt` column) ends `Story: \n`, and the completion
starts with the blank line's `\n`: with the GPT-Neo tokenizer the file's `Story: \n\nOnce` is `:`, ` `, `\n`,
`\n`, `Once`, so the prompt is a token-exact prefix of what every model (the released ones included) saw
before a story, and prompt + completion is the record as it stands in the file.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache

import yaml

from tinystories.core import DATA_GENERATION_DIR

FIELDS: dict[str, str] = {  # attribute -> line label
    "features": "Features",
    "words": "Words",
    "summary": "Summary",
    "random_sentence": "Random sentence",
}
STORY_LABEL = "Story:"
PROMPT_END = "Story: \n"  # the `Story: ` line; the blank line before the story starts the completion
STORY_START = "\n"
_LABEL_TO_FIELD = {label.lower(): name for name, label in FIELDS.items()}


@cache
def feature_names() -> tuple[str, ...]:
    """The labels of the `Features:` line (`data_generation/features.yaml`; those of roneneldan/TinyStoriesInstruct)."""
    return tuple(yaml.safe_load((DATA_GENERATION_DIR / "features.yaml").read_text(encoding="utf-8")) or {})


@dataclass
class InstructExample:
    story: str = ""
    features: list[str] = field(default_factory=list)
    words: list[str] = field(default_factory=list)
    summary: str | None = None
    random_sentence: str | None = None
    order: list[str] = field(default_factory=list)  # instruction fields in the order they appear

    def present_fields(self) -> list[str]:
        present = [
            name
            for name in FIELDS
            if (getattr(self, name) if name not in ("features", "words") else bool(getattr(self, name)))
        ]
        ordered = [f for f in self.order if f in present]
        return ordered + [f for f in present if f not in ordered]


def _field_value(example: InstructExample, name: str) -> str:
    value = getattr(example, name)
    if isinstance(value, list):
        return ", ".join(value)
    return " ".join(str(value).split())  # one line


def format_prompt(example: InstructExample) -> str:
    """Instruction lines plus the `Story: ` line: what the model is conditioned on."""
    lines = [f"{FIELDS[name]}: {_field_value(example, name)}\n" for name in example.present_fields()]
    return "".join(lines) + PROMPT_END


def format_completion(story: str) -> str:
    """The blank line after `Story: ` and the story: what the model learns to write."""
    return STORY_START + story.strip()


def format_example(example: InstructExample) -> str:
    """One record as in the released files: instructions, `Story: `, a blank line, the story."""
    return format_prompt(example) + format_completion(example.story)


def randomize_fields(
    example: InstructExample, rng: random.Random, keep_probability: float = 0.75, always: tuple[str, ...] = ()
) -> InstructExample:
    """Random subset (each field kept with `keep_probability`, at least one; `always`: kept whenever present)
    in random order."""
    present = example.present_fields()
    kept = [f for f in present if f in always or rng.random() < keep_probability] or (
        [rng.choice(present)] if present else []
    )
    rng.shuffle(kept)
    return InstructExample(
        story=example.story,
        features=list(example.features) if "features" in kept else [],
        words=list(example.words) if "words" in kept else [],
        summary=example.summary if "summary" in kept else None,
        random_sentence=example.random_sentence if "random_sentence" in kept else None,
        order=kept,
    )


def _split_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _instruction_line(line: str) -> tuple[str, str] | None:
    """`(field, value)` when `line` is an instruction line such as `Summary: ...`, else None."""
    label, sep, value = line.strip().partition(":")
    name = _LABEL_TO_FIELD.get(label.strip().lower())
    return (name, value.strip()) if sep and name is not None else None


def _set_field(example: InstructExample, name: str, value: str) -> None:
    if name in example.order:
        return  # a field given twice: the first one wins
    setattr(example, name, _split_list(value) if name in ("features", "words") else value)
    example.order.append(name)


def parse_example(text: str) -> InstructExample:
    """Read one example back. Raises ValueError when there is no `Story:` line.

    Unknown lines before `Story:` are skipped. Instruction lines after it (the released files put
    `Summary:` / `Words:` / ... after the story in some records) are taken out of the story and added
    to the fields, after the ones that came before `Story:`.
    """
    lines = text.strip("\n").split("\n")
    example = InstructExample()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.lower().startswith(STORY_LABEL.lower()):
            story_lines = []
            for after in lines[i + 1 :]:
                field = _instruction_line(after)
                if field is None:
                    story_lines.append(after)
                else:
                    _set_field(example, *field)
            first = stripped[len(STORY_LABEL) :].strip()
            rest = "\n".join(story_lines).strip()
            example.story = "\n".join(p for p in (first, rest) if p)
            return example
        field = _instruction_line(stripped)
        if field is not None:
            _set_field(example, *field)
    raise ValueError("not a TinyStories-Instruct example: no 'Story:' line found")


def split_prompt_completion(text: str) -> tuple[str, str]:
    """Split an example into (every instruction line + `Story: \\n`, the blank line + the story).

    Instruction lines found after the story go to the prompt, never to the completion.
    """
    example = parse_example(text)
    return format_prompt(example), format_completion(example.story)


def build_prompt(
    words: Sequence[str] | None = None,
    features: Sequence[str] | None = None,
    summary: str | None = None,
    random_sentence: str | None = None,
) -> str:
    """The prompt a user gives at generation time (fields in the canonical order).

    It ends `Story: \\n`, exactly as the `prompt` of every SFT example does (`split_prompt_completion`) and
    token for token as the released files do before the blank line and the story.
    """
    example = InstructExample(
        features=list(features or []),
        words=list(words or []),
        summary=summary,
        random_sentence=random_sentence,
    )
    return format_prompt(example)
