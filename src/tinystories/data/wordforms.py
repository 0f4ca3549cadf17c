"""Does a text use a word? The one rule the Instruct data (`Words:` found in a story) and its eval share.

A text *uses* a word when one of its lowercase letter runs (`[a-z]+` of the lowercased text, so `dog's` is
`dog` + `s`) is the word itself or one of its inflections:

- nouns: plural `-s`, `-es` (after s/x/z/ch/sh/o), `-ies` (consonant + y), `-ves` (f/fe), irregular plurals
  (`mouse` → `mice`);
- verbs: `-s`/`-es`/`-ies`, `-ing` (final `e` dropped, `ie` → `ying`, the final consonant of a one-syllable
  consonant-vowel-consonant word doubled: `run` → `running`) and the past: `-ed`/`-d`/`-ied` (`stop` →
  `stopped`), or for an irregular verb its own forms instead (`run` → `ran`, `see` → `saw`/`seen`);
- adjectives: `-er`/`-est` (`-r`/`-st` after `e`, `-ier`/`-iest`, doubled consonant: `big` → `bigger`) and
  irregular comparatives (`good` → `better`/`best`).

With no part of speech every rule applies. Spellings the rules make up that are not words (`visitting`)
are harmless: they never occur. Derived words (`happily`, `singer`) do not count, and an irregular form
that is mostly another word is left out (`bit` is not counted as `bite`: "a little bit").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path

from tinystories.core import DATA_GENERATION_DIR, ConfigError

PARTS_OF_SPEECH = ("verb", "noun", "adjective")

# The basic vocabulary of `data_generation/` (the word lists prompts draw from)
WORD_FILES = {"verb": "verbs.txt", "noun": "nouns.txt", "adjective": "adjectives.txt"}
_VOWELS = "aeiou"
_LETTERS = re.compile(r"[a-z]+")

IRREGULAR_VERBS: dict[str, tuple[str, ...]] = {
    "begin": ("began", "begun"),
    "bend": ("bent",),
    "bite": ("bitten",),
    "blow": ("blew", "blown"),
    "break": ("broke", "broken"),
    "bring": ("brought",),
    "build": ("built",),
    "buy": ("bought",),
    "catch": ("caught",),
    "choose": ("chose", "chosen"),
    "come": ("came",),
    "creep": ("crept",),
    "dig": ("dug",),
    "do": ("did", "done", "does"),
    "draw": ("drew", "drawn"),
    "dream": ("dreamed", "dreamt"),
    "drink": ("drank", "drunk"),
    "drive": ("drove", "driven"),
    "eat": ("ate", "eaten"),
    "fall": ("fell", "fallen"),
    "feed": ("fed",),
    "feel": ("felt",),
    "fight": ("fought",),
    "find": ("found",),
    "fly": ("flew", "flown"),
    "forget": ("forgot", "forgotten"),
    "forgive": ("forgave", "forgiven"),
    "freeze": ("froze", "frozen"),
    "get": ("got", "gotten"),
    "give": ("gave", "given"),
    "go": ("went", "gone", "goes"),
    "grow": ("grew", "grown"),
    "hang": ("hanged", "hung"),
    "have": ("has", "had"),
    "hear": ("heard",),
    "hide": ("hid", "hidden"),
    "hold": ("held",),
    "keep": ("kept",),
    "kneel": ("kneeled", "knelt"),
    "know": ("knew", "known"),
    "lead": ("led",),
    "leave": ("left",),
    "lend": ("lent",),
    "lie": ("lay", "lain"),
    "lose": ("lost",),
    "make": ("made",),
    "meet": ("met",),
    "ride": ("rode", "ridden"),
    "ring": ("rang", "rung"),
    "run": ("ran",),
    "say": ("said",),
    "see": ("saw", "seen"),
    "sell": ("sold",),
    "send": ("sent",),
    "sew": ("sewn",),
    "shake": ("shook", "shaken"),
    "shine": ("shone",),
    "shrink": ("shrank", "shrunk"),
    "sing": ("sang", "sung"),
    "sink": ("sank", "sunk"),
    "sit": ("sat",),
    "sleep": ("slept",),
    "slide": ("slid",),
    "sneak": ("snuck",),
    "speak": ("spoke", "spoken"),
    "spin": ("spun",),
    "stand": ("stood",),
    "steal": ("stole", "stolen"),
    "stick": ("stuck",),
    "sting": ("stung",),
    "sweep": ("swept",),
    "swim": ("swam", "swum"),
    "swing": ("swung",),
    "take": ("took", "taken"),
    "teach": ("taught",),
    "tear": ("tore", "torn"),
    "tell": ("told",),
    "think": ("thought",),
    "throw": ("threw", "thrown"),
    "understand": ("understood",),
    "wake": ("woke", "woken"),
    "wear": ("wore", "worn"),
    "win": ("won",),
    "write": ("wrote", "written"),
}
IRREGULAR_NOUNS: dict[str, tuple[str, ...]] = {
    "child": ("children",),
    "foot": ("feet",),
    "goose": ("geese",),
    "man": ("men",),
    "mouse": ("mice",),
    "person": ("people",),
    "tooth": ("teeth",),
    "woman": ("women",),
}
IRREGULAR_ADJECTIVES: dict[str, tuple[str, ...]] = {
    "bad": ("worse", "worst"),
    "far": ("farther", "further", "farthest", "furthest"),
    "good": ("better", "best"),
}


def read_words(path: Path) -> list[str]:
    """The words of a word list (one per line, `#` comments), in order, each once."""
    if not path.is_file():
        raise ConfigError(
            f"word list {str(path)!r} not found: pass --data_generation_dir <dir with {path.name}>"
        )
    words, seen = [], set()
    for line in path.read_text(encoding="utf-8").splitlines():
        word = line.split("#", 1)[0].strip()
        if word and word not in seen:
            seen.add(word)
            words.append(word)
    if not words:
        raise ConfigError(f"word list {str(path)!r} is empty: one word per line")
    return words


# a sentence ends at . ! ? (and a closing quote) before whitespace and a capital, a quote or a digit, so
# `"Look!" said Tom.` stays one sentence
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"“'(0-9])|(?<=[.!?][\"”'])\s+(?=[A-Z\"“'(0-9])")


def split_sentences(text: str) -> list[str]:
    sentences = []
    for paragraph in text.split("\n"):
        for part in _SENTENCE_END.split(paragraph.strip()):
            if part.strip():
                sentences.append(part.strip())
    return sentences


def word_lists(data_dir: str | Path | None = None) -> dict[str, list[str]]:
    """The basic vocabulary by part of speech (default: the package's `data_generation/`)."""
    folder = Path(data_dir) if data_dir else DATA_GENERATION_DIR
    return {pos: read_words(folder / name) for pos, name in WORD_FILES.items()}


def _one_syllable_cvc(word: str) -> bool:
    """`run`, `stop`, `big`: a final consonant after one vowel, in a one-syllable word (it doubles)."""
    if len(word) < 3 or word[-1] in _VOWELS + "wxy" or word[-2] not in _VOWELS or word[-3] in _VOWELS:
        return False
    return len(re.findall(r"[aeiouy]+", word)) == 1


def _cvc(word: str) -> bool:
    return (
        len(word) >= 3 and word[-1] not in _VOWELS + "wxy" and word[-2] in _VOWELS and word[-3] not in _VOWELS
    )


def _suffixed(word: str, suffix: str) -> set[str]:
    """`word` + a vowel suffix (`ed`, `ing`, `er`, `est`) with English spelling changes."""
    if word.endswith("e"):  # hope -> hoped, hoping; agree -> agreed, agreeing; tie -> tying
        if suffix[0] == "e":
            return {word + suffix[1:]}
        if word.endswith("ie"):
            return {word[:-2] + "y" + suffix}
        return {word + suffix} if word.endswith(("ee", "ye", "oe")) else {word[:-1] + suffix}
    if word.endswith("y") and len(word) > 1 and word[-2] not in _VOWELS and suffix != "ing":
        return {word[:-1] + "i" + suffix}
    if _one_syllable_cvc(word):
        return {word + word[-1] + suffix}
    if _cvc(word):  # `visit` -> `visited`, `travel` -> `travelled`: both spellings
        return {word + suffix, word + word[-1] + suffix}
    return {word + suffix}


def _plural(word: str) -> set[str]:
    """Third person `-s` and noun plurals."""
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return {word + "es"}
    if word.endswith("y") and len(word) > 1 and word[-2] not in _VOWELS:
        return {word[:-1] + "ies"}
    if word.endswith("o"):
        return {word + "s", word + "es"}
    return {word + "s"}


def _noun_forms(word: str) -> set[str]:
    forms = _plural(word) | set(IRREGULAR_NOUNS.get(word, ()))
    if word.endswith("fe"):
        forms.add(word[:-2] + "ves")
    elif word.endswith("f"):
        forms.add(word[:-1] + "ves")
    return forms


def _verb_forms(word: str) -> set[str]:
    past = IRREGULAR_VERBS.get(word) or _suffixed(word, "ed")  # no `runned`, no `seed` for `see`
    return _plural(word) | _suffixed(word, "ing") | set(past)


def _adjective_forms(word: str) -> set[str]:
    return _suffixed(word, "er") | _suffixed(word, "est") | set(IRREGULAR_ADJECTIVES.get(word, ()))


_FORMS = {"noun": _noun_forms, "verb": _verb_forms, "adjective": _adjective_forms}


@lru_cache(maxsize=16384)
def word_forms(word: str, pos: str | None = None) -> frozenset[str]:
    """The word and the inflections that count as using it (every part of speech's when `pos` is None)."""
    word = word.strip().lower()
    if pos is not None and pos not in _FORMS:
        raise ValueError(f"part of speech must be one of {PARTS_OF_SPEECH}, got {pos!r}")
    rules = [_FORMS[pos]] if pos else list(_FORMS.values())
    forms = {word}
    for rule in rules:
        forms |= rule(word)
    return frozenset(forms)


def text_words(text: str) -> set[str]:
    """The lowercase letter runs of `text`: what `uses_word` matches against."""
    return set(_LETTERS.findall(text.lower()))


def uses_word(text: str | set[str], word: str, pos: str | None = None) -> bool:
    """True when `text` (or its `text_words`) contains `word` or one of its inflections as a whole word."""
    words = text if isinstance(text, set) else text_words(text)
    return not words.isdisjoint(word_forms(word, pos))


class FormIndex:
    """Every form of every word of some word lists, mapped back to the words (base form) it inflects."""

    def __init__(self, lists: Mapping[str, Iterable[str]]):
        self.bases: dict[str, list[tuple[str, str]]] = {}
        for pos, words in lists.items():
            for word in words:
                for form in word_forms(word, pos if pos in _FORMS else None):
                    self.bases.setdefault(form, []).append((pos, word))

    def found(self, text: str | set[str]) -> dict[str, list[str]]:
        """{part of speech: base forms of its list that `text` uses}, each list sorted."""
        words = text if isinstance(text, set) else text_words(text)
        found: dict[str, set[str]] = {}
        for token in words:
            for pos, base in self.bases.get(token, ()):
                found.setdefault(pos, set()).add(base)
        return {pos: sorted(bases) for pos, bases in found.items()}
