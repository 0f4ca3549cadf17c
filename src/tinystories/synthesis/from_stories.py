"""TinyStories-Instruct records from an existing story corpus: the stories are kept, the instructions derived.

`--data` is any corpus `tinystories.data` reads (a `.txt` with `<|endoftext|>` between stories,
`.jsonl`/`.json`/`.parquet` with a `text` column, a `save_to_disk` dir, a `tinystories data` output, a Hub id;
`--split` of a Hub dataset). Record `i` is story `i`; its instructions depend only on `(seed, i)`:

- `Words:` one verb, one noun and one adjective of the project's word lists (`data_generation/`) that the
  story uses, in the lists' base form (`ran` in the story gives `run`; the rule is `tinystories.data.wordforms`,
  on the words the story writes in lowercase, so the name `Lily` is not the noun `lily`), drawn with the
  record's own seeded rng; a part of speech the story has none of is filled from the other lists' words it
  uses, then from its other lowercase words (4+ letters, not a function word).
- `Random sentence:` a sentence of the story (`prompts.random_sentence`, drawn in `RecordBuilder.record`).
- `Features:` every feature a rule reads off the text (`tinystories.data.features`: `Dialogue`, `MoralValue`,
  `BadEnding`), all of them, and the line is never dropped: a listed feature is present, an absent one absent.
- `Summary:` only with an LLM backend (`--backend openai|transformers|vllm`), which is asked for the summary
  alone; `--backend stories` writes none.

Then the synthesis job's own randomisation (`instruct.randomize_fields`, `--instruct_keep_probability`) and
output (shards, `dataset/`, `RECORD_SCHEMA`; `backend` is `stories` or `stories+<llm backend>`). An empty
story becomes a failure row (`error_type` `empty_story`), so every index is accounted for.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tinystories.core import ConfigError
from tinystories.core.paths import data_name
from tinystories.data.features import detect_features
from tinystories.data.loading import load_split
from tinystories.data.wordforms import PARTS_OF_SPEECH, FormIndex, word_forms
from tinystories.synthesis.backends import Completion, GenerationFailure, Request
from tinystories.synthesis.prompts import PromptSpec, Vocabulary, record_id, record_rng

_FUNCTION_WORDS_TEXT = (  # never a fallback `Words:` word
    "about above after again against also always away back because been before being below between both "
    "came come could didn does doing done down during each even ever every from going gone have having "
    "here into just keep like made make many more most much must never next once only onto other over "
    "said same should some soon still such than that their them then there these they thing things this "
    "those through told took very want wanted well went were what when where which while will with "
    "would your yours upon"
)
_FUNCTION_WORDS = frozenset(_FUNCTION_WORDS_TEXT.split())
_READ_BATCH = 1000


def lowercase_words(story: str) -> set[str]:
    """The letter runs of `story` written in lowercase: `Lily` the name is not `lily` the flower."""
    return {w for w in re.findall(r"[A-Za-z]+", story) if w.islower()}


def _other_words(words: set[str]) -> list[str]:
    """Fallback words: 4+ letters, not a function word."""
    return sorted(w for w in words if len(w) >= 4 and w not in _FUNCTION_WORDS)


def choose_words(story: str, index: FormIndex, rng: random.Random, n: int = 3) -> dict[str, Any]:
    """{"verb", "noun", "adjective": a list word the story uses or "", "words": up to `n` words}."""
    words = lowercase_words(story)
    found = index.found(words)
    picks: dict[str, Any] = {}
    for pos in PARTS_OF_SPEECH:
        options = [w for w in found.get(pos, []) if w not in picks.values()]
        picks[pos] = rng.choice(options) if options else ""
    chosen = [w for w in picks.values() if w]
    spare = sorted({w for ws in found.values() for w in ws} - set(chosen))
    others = _other_words(words)
    rng.shuffle(spare), rng.shuffle(others)
    for word in spare + others:  # never a second form of a word already chosen (`saw` after `see`)
        if len(chosen) >= n:
            break
        if not any(word in word_forms(c) or c in word_forms(word) for c in chosen):
            chosen.append(word)
    picks["words"] = chosen
    return picks


@dataclass
class StorySpec(PromptSpec):
    """A record of a corpus story: its words and features were found in it, not asked for."""

    story: str = ""
    chosen: list[str] = field(default_factory=list)
    features_complete = True  # every detectable feature is listed: the Features line is never dropped

    @property
    def words(self) -> list[str]:
        return list(self.chosen)


class StorySource:
    """The stories of `--data` (`--split`, `--text_column`), read by index."""

    def __init__(
        self, data: str, split: str = "train", text_column: str = "text", on_decode_error: str = "fail"
    ):
        dataset = load_split(data, split, on_decode_error=on_decode_error)
        if text_column not in dataset.column_names:
            raise ConfigError(
                f"{data!r} has no {text_column!r} column (columns: {dataset.column_names}): "
                "pass --text_column <name>"
            )
        self.data, self.split = data, split
        self.dataset = dataset.select_columns([text_column])
        self.text_column = text_column

    def __len__(self) -> int:
        return len(self.dataset)

    def fingerprint(self) -> dict[str, Any]:
        return {"source_data": data_name(self.data), "source_split": self.split, "source_stories": len(self)}

    def texts(self, indices: list[int]) -> Iterator[str]:
        for start in range(0, len(indices), _READ_BATCH):
            batch = self.dataset.select(indices[start : start + _READ_BATCH])
            for text in batch[self.text_column]:
                yield str(text or "").strip()

    def specs(self, vocab: Vocabulary, seed: int, indices: list[int]) -> list[StorySpec]:
        """The spec of each record: the story, its words (seeded by `(seed, index)`) and features."""
        index = FormIndex(vocab.words)
        specs = []
        for i, story in zip(indices, self.texts(indices), strict=True):
            picks = choose_words(story, index, record_rng(seed, i, "words"))
            spec = StorySpec(
                i, seed, picks["verb"], picks["noun"], picks["adjective"], detect_features(story),
                id=record_id(seed, i), story=story, chosen=picks["words"],
            )  # fmt: skip
            specs.append(spec)
        return specs


class CorpusBackend:
    """Story requests answered from the corpus (no model); summary requests by `llm`, when there is one."""

    def __init__(self, source: StorySource, llm=None):
        self.source, self.llm = source, llm
        self.name = f"stories+{llm.name}" if llm is not None else "stories"
        self.is_async = bool(llm is not None and llm.is_async)
        self.model = llm.model if llm is not None else f"none (stories of {data_name(source.data)})"
        self.sampling = llm.sampling if llm is not None else None

    @staticmethod
    def _story(request: Request) -> Completion | GenerationFailure:
        story = getattr(request.spec, "story", "")
        if not story:
            return GenerationFailure("the source story is empty", "empty_story")
        return Completion(story, from_model=False)  # a corpus story: not screened as LLM output

    async def complete(self, request: Request) -> Completion:
        if request.kind == "story":
            answer = self._story(request)
            if isinstance(answer, GenerationFailure):
                raise answer
            return answer
        return await self.llm.complete(request)

    def complete_batch(self, requests: list[Request]) -> list[Completion | GenerationFailure]:
        results: list[Any] = [self._story(r) if r.kind == "story" else None for r in requests]
        asked = [i for i, r in enumerate(requests) if r.kind != "story"]
        if asked:
            answers = self.llm.complete_batch([requests[i] for i in asked])
            for i, answer in zip(asked, answers, strict=True):
                results[i] = answer
        return results

    async def aclose(self) -> None:
        if self.llm is not None and hasattr(self.llm, "aclose"):
            await self.llm.aclose()
