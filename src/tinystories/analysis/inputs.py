"""What `tinystories analyze` reads: stories as model inputs, batched forward passes, and word categories.

Every story is tokenized, prefixed by EOS (the models saw it before every story) and cut to the analysed
context (min(512, max_position_embeddings)). `run_batches` feeds right-padded batches to the model (causal
attention: a real query never sees the padding after it) and hands each batch to the accumulators of
`analysis_heads` and `analysis_neurons`. `WordCategories` labels the word a token belongs to: name, noun,
verb, adjective (the project's word lists in `data_generation/`), function word, punctuation, or other.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from tinystories.data.wordforms import FormIndex, word_lists

CATEGORIES = ("name", "noun", "verb", "adjective", "function_word", "punctuation")
OTHER = "other"
# Closed-class words (and the adverbs TinyStories opens sentences with): never a name, noun, verb or adjective.
_FUNCTION_WORDS = """a an the and or but so if then than because while when where what who whom whose which
    why how that this these those there here it its it's i me my mine you your yours he him his she her hers we us our
    ours they them their theirs myself yourself himself herself itself ourselves themselves one ones some any
    all both each every no not nor none many much more most few less other another such own same to of in
    on at by for with from into onto upon about over under after before above below up down out off
    through around near along across between behind beside inside outside until till since as like is am are
    was were be been being do does did done have has had having will would shall should can could may might
    must let lets don't didn't can't won't isn't wasn't aren't weren't i'm you're he's she's we're they're
    i'll you'll we'll they'll i've you've we've they've very too also just only even still again once
    always never often sometimes soon now today tomorrow yesterday later then suddenly finally together
    away back yes oh okay please thank thanks hello hi bye well really quickly slowly"""
FUNCTION_WORDS = frozenset(_FUNCTION_WORDS.split())
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
_MID_SENTENCE_CAPITAL = re.compile(r"(?<![.!?\"'\s])\s+([A-Z][a-z]+)\b")


@dataclass
class EncodedStories:
    """Token ids (EOS first) and character offsets (None for the EOS) of every analysed story."""

    texts: list[str]
    ids: list[list[int]]
    offsets: list[list[tuple[int, int] | None]]
    starts: list[int] = field(default_factory=list)  # flat index of each story's first token

    def __post_init__(self):
        self.starts = [0]
        for seq in self.ids[:-1]:
            self.starts.append(self.starts[-1] + len(seq))

    @property
    def num_tokens(self) -> int:
        return sum(len(s) for s in self.ids)

    def flat_ids(self) -> torch.Tensor:
        return torch.tensor([t for seq in self.ids for t in seq], dtype=torch.long)

    def locate(self, flat: int) -> tuple[int, int]:
        """(story, position) of a flat token index."""
        story = bisect.bisect_right(self.starts, flat) - 1
        return story, flat - self.starts[story]


def encode_stories(tokenizer, texts: list[str], context: int) -> EncodedStories:
    """Each story as [EOS] + its tokens, cut to `context` tokens."""
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    eos = tokenizer.eos_token_id
    ids = [[eos, *seq][:context] for seq in enc["input_ids"]]
    offsets = [[None, *map(tuple, off)][:context] for off in enc["offset_mapping"]]
    return EncodedStories(list(texts), ids, offsets)


def run_batches(model, stories: EncodedStories, batch_size: int, accumulators, attentions: bool) -> None:
    """Forward passes over right-padded batches; every accumulator's `update(batch, outputs)` sees each one."""
    device = next(model.parameters()).device
    pad = 0
    model.eval()
    for start in tqdm(range(0, len(stories.ids), batch_size), desc="analysing", unit="batch", mininterval=2):
        seqs = stories.ids[start : start + batch_size]
        width = max(len(s) for s in seqs)
        input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=device)
        batch = Batch(
            input_ids=input_ids,
            lengths=torch.tensor([len(s) for s in seqs], device=device),
            flat_start=torch.tensor(stories.starts[start : start + batch_size], device=device),
        )
        with torch.inference_mode():
            outputs = model(input_ids=input_ids, output_attentions=attentions, use_cache=False)
        for acc in accumulators:
            acc.update(batch, outputs)


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T), right-padded
    lengths: torch.Tensor  # (B,) real tokens per row
    flat_start: torch.Tensor  # (B,) flat index of each row's first token

    def valid(self) -> torch.Tensor:
        """(B, T) True at real tokens."""
        positions = torch.arange(self.input_ids.shape[1], device=self.input_ids.device)
        return positions[None, :] < self.lengths[:, None]


class WordCategories:
    """The category of the word a token belongs to (`CATEGORIES`, or `other`).

    Names are words seen capitalized mid-sentence in the analysed stories and never in lower case (a
    sentence-initial "Suddenly" is not a name, "Lily" after "named" is, although "lily" is on the noun list).
    Nouns, verbs and adjectives are the word lists of `data_generation/` (`data.wordforms.word_lists`)
    with their inflections (`wordforms`: played → play, mice → mouse); a form of several lists counts for
    the first of noun, verb, adjective.
    """

    def __init__(self, texts: list[str]):
        self.forms = FormIndex(word_lists())
        lower = {m.group(0) for t in texts for m in _WORD.finditer(t) if m.group(0)[0].islower()}
        capital = {m.group(1) for t in texts for m in _MID_SENTENCE_CAPITAL.finditer(t)}
        self.names = {w for w in capital if w.lower() not in lower and w.lower() not in FUNCTION_WORDS}

    def _listed(self, word: str) -> str | None:
        if word in FUNCTION_WORDS:
            return "function_word"
        found = {pos for pos, _ in self.forms.bases.get(word, [])}
        return next((c for c in ("noun", "verb", "adjective") if c in found), None)

    def of_word(self, word: str) -> str:
        if word.endswith("'s") and word.lower() not in FUNCTION_WORDS:
            word = word[:-2]  # Lily's → Lily
        if word in self.names:
            return "name"
        return self._listed(word.lower()) or OTHER

    def of_token(self, text: str, span: tuple[int, int] | None) -> str:
        """The category of the token at character `span` of `text` (None: the EOS prefix → other)."""
        if span is None:
            return OTHER
        start, end = span
        piece = text[start:end].strip()
        letters = [k for k in range(start, end) if text[k].isalpha()]
        if not letters:
            return "punctuation" if piece and not any(ch.isalnum() for ch in piece) else OTHER
        lo = hi = letters[0]
        while lo > 0 and (text[lo - 1].isalpha() or text[lo - 1] == "'"):
            lo -= 1
        while hi + 1 < len(text) and (text[hi + 1].isalpha() or text[hi + 1] == "'"):
            hi += 1
        return self.of_word(text[lo : hi + 1].strip("'"))

    def label_all(self, stories: EncodedStories) -> list[str]:
        """The category of every token, in flat order."""
        return [
            self.of_token(text, span)
            for text, offsets in zip(stories.texts, stories.offsets, strict=True)
            for span in offsets
        ]


def token_context(tokenizer, stories: EncodedStories, flat: int, before: int = 6, after: int = 2) -> str:
    """A short context of a flat token index: a few tokens before, the token in [brackets], a few after."""
    story, pos = stories.locate(flat)
    seq = stories.ids[story]
    left = tokenizer.decode(seq[max(1, pos - before) : pos])
    right = tokenizer.decode(seq[pos + 1 : pos + 1 + after])
    token = tokenizer.decode([seq[pos]])
    return f"{left}[{token}]{right}".replace("\n", " ")
