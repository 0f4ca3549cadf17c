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
"""

from __future__ import annotations

import re

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
