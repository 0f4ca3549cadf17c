"""What is cut from an LLM completion before it becomes a record: chat preambles, title lines, labels.

Instruction-tuned models often open with a line that is not part of the story. `strip_preamble` removes,
from the start of a completion only, and only while text remains after it (at most three lines/prefixes):

- a title line: `Title: ...`, `**Title:** ...`, a Markdown heading (`# The Red Ball`), a whole line in bold
  (`**The Red Ball**`, up to 80 characters);
- a lone interjection line: `Sure!`, `Certainly.`, `Of course!`, `Okay,` ...;
- a preamble line: an optional interjection, then `Here is` / `Here's` / `Here are` / `Below is`, ending in
  `:` or naming a story, tale or summary (`Sure! Here's a short story for a 3-year-old:`);
- the same preamble ending in `:` at the start of the first line, before the story on that line;
- a `Story:` / `Summary:` label.

It is conservative on purpose: `Here is Tom.` (no colon, no story/summary/tale) stays, nothing inside or
after the story is touched, and a completion that is nothing but a preamble is left as it is.

After the preamble (`screen_story`, applied by the job to every backend's completions):

- a refusal (`I'm sorry, but I can't ...`, `As an AI ...` at the start) is rejected (`refused`);
- a second story (a later paragraph opening with `Once upon a time`, `Once there was`, `Title:`, `Story 2`,
  a Markdown heading) is cut off (`second_story`);
- a degenerate loop is cut at the second occurrence of the repeated unit, and rejected (`loop`) when less
  than `MIN_KEPT_WORDS` words would remain. A loop is a sentence of at least 4 words said 4 times or more,
  a paragraph of at least 8 words said twice, or any 25-word span said twice. On the 2,316 real stories of
  the shared TinyStories sample these rules flag 1 story (a sentence said 4 times) and cut none as a
  second story; small instruction models write "She was so happy." ten times in a row.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field

from tinystories.data.wordforms import split_sentences

_INTERJECTION = r"(?:sure|certainly|of course|okay|ok|absolutely|alright|gladly|great)\b[^\n:]{0,40}?[!,.]"
_HERE = r"(?:here(?:'s|’s| is| are)|below is)\b"
_TITLE_LINE = re.compile(r"^(?:\*{0,2}\s*title\s*\*{0,2}\s*:|#{1,6}\s+\S|\*\*[^*\n]{1,80}\*\*$)", re.I)
_INTERJECTION_LINE = re.compile(rf"^{_INTERJECTION}$", re.I)
_PREAMBLE_LINE = re.compile(rf"^(?:{_INTERJECTION}\s*)?{_HERE}[^\n]*$", re.I)
_NAMES_TEXT = re.compile(r"\b(?:story|stories|tale|summary)\b", re.I)
_INLINE_PREAMBLE = re.compile(
    rf"^(?:{_INTERJECTION}\s*)?{_HERE}[^\n:]{{0,200}}\b(?:story|tale|summary)\b[^\n:]{{0,100}}:[ \t]*", re.I
)
_LABELS = ("Story:", "Summary:")


def _preamble_length(text: str) -> int:
    """How many characters at the start of `text` are one preamble item (0: none)."""
    first, newline, rest = text.partition("\n")
    line = first.strip()
    if newline and rest.strip():
        if _TITLE_LINE.match(line) or _INTERJECTION_LINE.match(line):
            return len(first) + 1
        if _PREAMBLE_LINE.match(line) and (line.endswith(":") or _NAMES_TEXT.search(line)):
            return len(first) + 1
    match = _INLINE_PREAMBLE.match(text)
    if match and text[match.end() :].strip():
        return match.end()
    for label in _LABELS:
        if text.startswith(label) and text[len(label) :].strip():
            return len(label)
    return 0


def strip_preamble(text: str) -> tuple[str, str | None]:
    """(the completion without its preamble, what was cut or None), both stripped of outer whitespace."""
    text = text.strip()
    kept = text
    for _ in range(3):
        n = _preamble_length(kept)
        if not n:
            break
        kept = kept[n:].strip()
    cut = text[: len(text) - len(kept)].strip()
    return kept, cut or None


def clean_completion(text: str) -> str:
    """`text` without surrounding whitespace and without a preamble (`strip_preamble`)."""
    return strip_preamble(text)[0]


# ------------------------------------------------------------------------------ refusals, loops, second stories
MIN_KEPT_WORDS = 40  # a loop trimmed to fewer words than this is rejected, not kept
LOOP_SENTENCE_WORDS, LOOP_SENTENCE_REPEATS = 4, 4
LOOP_PARAGRAPH_WORDS = 8
LOOP_SPAN_WORDS = 25
_WORD = re.compile(r"[a-z0-9']+")
_REFUSAL = re.compile(
    r"^(?:i'?m sorry|i am sorry|sorry,|i can(?:no|')t|i cannot|i am unable|i'?m unable|as an ai)\b", re.I
)
_NEXT_STORY = re.compile(
    r"\n[ \t]*(?:\n[ \t]*)*(?:once upon a time|once there was|\*{0,2}title\s*:|\*{0,2}story\s+\d|#{1,6}\s)",
    re.I,
)


@dataclass
class Screened:
    """A story completion after `screen_story`: the text kept, what was cut, or why it was rejected."""

    text: str
    cuts: list[str] = field(default_factory=list)  # "loop: <cut text>", "second_story: <cut text>"
    rejected: str | None = None  # "refused" or "loop"


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def is_refusal(text: str) -> bool:
    return _REFUSAL.match(text.strip()) is not None


def _second_occurrence(text: str, units: list[str], min_words: int, repeats: int) -> int | None:
    """Character offset of the second occurrence of the first unit (sentence/paragraph) said `repeats` times."""
    keys = [" ".join(_words(u)) for u in units]
    counts = collections.Counter(k for k in keys if len(k.split()) >= min_words)
    looped = {k for k, n in counts.items() if n >= repeats}
    seen: set[str] = set()
    offset = 0
    for unit, key in zip(units, keys, strict=True):
        offset = text.index(unit, offset)
        if key in looped and key in seen:
            return offset
        seen.add(key)
        offset += len(unit)
    return None


def _repeated_span(text: str, n: int = LOOP_SPAN_WORDS) -> int | None:
    """Character offset of the sentence holding the second occurrence of a repeated `n`-word span."""
    matches = list(re.finditer(r"[a-z0-9']+", text.lower()))
    words = [m.group() for m in matches]
    seen: set[tuple[str, ...]] = set()
    for i in range(len(words) - n + 1):
        gram = tuple(words[i : i + n])
        if gram in seen:
            start = matches[i].start()
            boundary = max(text.rfind(". ", 0, start), text.rfind("\n", 0, start), text.rfind("! ", 0, start))
            cut = boundary + 1 if boundary >= 0 else start
            return cut + len(text[cut:start]) - len(text[cut:start].lstrip())
        seen.add(gram)
    return None


def loop_start(text: str) -> int | None:
    """Where a degenerate loop starts repeating (its second occurrence), or None when there is none."""
    paragraphs = [p for p in text.split("\n") if p.strip()]
    cuts = [
        _second_occurrence(text, split_sentences(text), LOOP_SENTENCE_WORDS, LOOP_SENTENCE_REPEATS),
        _second_occurrence(text, paragraphs, LOOP_PARAGRAPH_WORDS, 2),
        _repeated_span(text),
    ]
    found = [c for c in cuts if c is not None]
    return min(found) if found else None


def cut_second_story(text: str) -> tuple[str, str | None]:
    """(the first story, the second one that followed it or None)."""
    match = _NEXT_STORY.search(text)
    if not match:
        return text, None
    return text[: match.start()].strip(), text[match.start() :].strip()


def screen_story(text: str, min_kept_words: int = MIN_KEPT_WORDS) -> Screened:
    """Refusal, second story, loop: what is cut from a story completion, or why it is rejected."""
    if is_refusal(text):
        return Screened(text, rejected="refused")
    screened = Screened(text)
    first, second = cut_second_story(text)
    if second is not None and first:
        screened = Screened(first, [f"second_story: {second}"])
    start = loop_start(screened.text)
    if start is not None:
        kept, cut = screened.text[:start].strip(), screened.text[start:].strip()
        screened = Screened(kept, [f"loop: {cut}", *screened.cuts])
        if len(_words(kept)) < min_kept_words:
            screened.rejected = "loop"
    return screened
