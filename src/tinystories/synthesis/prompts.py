"""Seeded prompts: three random words (verb, noun, adjective) and a random subset of story features.

Record `i` of a job with seed `s` is drawn from its own `random.Random(f"{s}-{i}")`, so a prompt
depends only on `(seed, index)`: not on the shard layout, the order requests finish in, or on how
often a job was restarted. That is what makes sharding and resuming exact.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import yaml

from tinystories.core import DATA_GENERATION_DIR, ConfigError
from tinystories.data.wordforms import WORD_FILES, read_words, split_sentences

DEFAULT_DATA_GENERATION_DIR = DATA_GENERATION_DIR
FEATURES_FILE = "features.yaml"
STORY_TEMPLATE = "templates/story.jinja"
SUMMARY_TEMPLATE = "templates/summary.jinja"


@dataclass(frozen=True)
class Feature:
    name: str  # the label on the Instruct `Features:` line, e.g. "Dialogue"
    instruction: (
        str  # the clause the story prompt adds, e.g. "the story should contain at least one dialogue"
    )
    probability: float  # chance that a prompt asks for it


@dataclass
class PromptSpec:
    """Everything random about one record, drawn from `(seed, index)`."""

    index: int
    seed: int
    verb: str
    noun: str
    adjective: str
    features: list[str]
    prompt: str = ""
    id: str = field(default="")

    @property
    def words(self) -> list[str]:
        return [self.verb, self.noun, self.adjective]


def record_id(seed: int, index: int) -> str:
    return f"s{seed}-{index:09d}"


def record_rng(seed: int, index: int, purpose: str = "prompt") -> random.Random:
    # str seeds are hashed with SHA-512 by `random`: stable across processes and PYTHONHASHSEED
    return random.Random(f"{seed}-{index}-{purpose}")


class Vocabulary:
    """Word lists, features and Jinja templates from a `data_generation/`-style directory."""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        story_template: str | None = None,
        summary_template: str | None = None,
        features_file: str | None = None,
    ):
        # default: the installed package data (`core.DATA_GENERATION_DIR`, read via importlib.resources)
        self.data_dir = Path(data_dir) if data_dir else DEFAULT_DATA_GENERATION_DIR
        if not self.data_dir.is_dir():
            raise ConfigError(
                f"data generation directory {str(self.data_dir)!r} not found: pass --data_generation_dir "
                "<dir with nouns.txt, verbs.txt, adjectives.txt, features.yaml, templates/>"
            )
        self.words = {pos: read_words(self.data_dir / name) for pos, name in WORD_FILES.items()}
        self.features = self._read_features(self._resolve(features_file, FEATURES_FILE))
        self.story_template_path = self._resolve(story_template, STORY_TEMPLATE)
        self.summary_template_path = self._resolve(summary_template, SUMMARY_TEMPLATE)
        env = jinja2.Environment(
            undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False
        )
        self.story_template = env.from_string(self.story_template_path.read_text(encoding="utf-8"))
        self.summary_template = env.from_string(self.summary_template_path.read_text(encoding="utf-8"))

    def _resolve(self, name: str | None, default: str) -> Path:
        """A given file: as given (absolute or from the current directory), else in `data_dir`.

        A default name is looked up in `data_dir` only, whatever the current directory holds.
        """
        path = Path(name) if name else self.data_dir / default
        name = name or default
        if not path.is_absolute() and not path.exists():
            path = self.data_dir / name
        if not path.is_file():
            raise ConfigError(f"{name!r} not found (looked in {str(self.data_dir)!r} too): fix the path")
        return path

    @staticmethod
    def _read_features(path: Path) -> dict[str, Feature]:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(raw, dict) or not raw:
            raise ConfigError(f"{str(path)!r} must map feature names to {{instruction, probability}}")
        features = {}
        for name, spec in raw.items():
            if not isinstance(spec, dict) or "instruction" not in spec:
                raise ConfigError(f"feature {name!r} in {str(path)!r} needs an 'instruction' sentence")
            p = float(spec.get("probability", 0.25))
            if not 0 <= p <= 1:
                raise ConfigError(f"feature {name!r}: probability must be in [0, 1], got {p}")
            features[str(name)] = Feature(str(name), str(spec["instruction"]).strip(), p)
        return features

    def fingerprint(self) -> str:
        """Hash of everything that shapes a prompt: resuming with other lists would mix two jobs."""
        h = hashlib.sha256()
        for pos in WORD_FILES:
            h.update("\n".join(self.words[pos]).encode())
        for f in self.features.values():
            h.update(f"{f.name}|{f.instruction}|{f.probability}".encode())
        h.update(self.story_template_path.read_bytes())
        h.update(self.summary_template_path.read_bytes())
        return h.hexdigest()[:16]

    # ----------------------------------------------------------------------------------- prompts
    def spec(self, seed: int, index: int) -> PromptSpec:
        rng = record_rng(seed, index)
        verb = rng.choice(self.words["verb"])
        noun = rng.choice(self.words["noun"])
        adjective = rng.choice(self.words["adjective"])
        features = [f.name for f in self.features.values() if rng.random() < f.probability]
        spec = PromptSpec(index, seed, verb, noun, adjective, features, id=record_id(seed, index))
        spec.prompt = self.story_prompt(spec)
        return spec

    def story_prompt(self, spec: PromptSpec) -> str:
        features = [self.features[name] for name in spec.features]
        return self.story_template.render(
            verb=spec.verb, noun=spec.noun, adjective=spec.adjective, features=features, words=spec.words
        ).strip()

    def summary_prompt(self, story: str) -> str:
        return self.summary_template.render(story=story.strip()).strip()


def _balanced(sentence: str) -> bool:
    return sentence.count('"') % 2 == 0 and sentence.count("“") == sentence.count("”")


def random_sentence(story: str, rng: random.Random, min_words: int = 3) -> str | None:
    """A random sentence of the story (the paper's `Random sentence:` instruction).

    Preferred: at least `min_words` words and no unpaired quote (`Do you want to play?"` is passed over
    when the story has a whole sentence to offer).
    """
    sentences = split_sentences(story)
    long_enough = [s for s in sentences if len(s.split()) >= min_words]
    candidates = [s for s in long_enough if _balanced(s)] or long_enough or sentences
    return rng.choice(candidates) if candidates else None
