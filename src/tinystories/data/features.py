"""Story features a rule can read off the text: what Instruct `Features:` lines list, and what eval counts.

The same functions write the training records (`synthesis/from_stories.py`: a listed feature is present, an
absent one absent) and score a model's completions (`evaluation/instructions.py`: `instruct_features`,
`dark_stories`), so the metric measures exactly what the data teaches. Detectors, each checked by reading a
sample of real TinyStories (`tests/test_data_features.py` holds the labelled sample):

- `Dialogue`: quoted speech, straight or curly double quotes hugging words (`"Hi, Tom!"`, `“Yes.”`).
- `MoralValue`: the word "moral" ("The moral of the story is ...").
- `BadEnding`: the last two sentences are clearly negative: VADER compound <= -0.3. VADER
  (`vaderSentiment`, a rule- and lexicon-based sentiment model for short English text, lexicon shipped in the
  wheel, no model download, deterministic, handles negation and "but") rather than a hand list of sad words.
  Read by hand, 45 stories of the shared sample: 18 of the 20 it flags end badly (the 2 others end in relief
  after a scare), 0 of 25 unflagged ones do (5.6% of the sample's 2,316 stories are flagged).

`is_dark` (the "fever dream" count): the whole text is strongly negative (compound <= -0.5) or it names
death, injury or violence (`DARK_WORDS`, whole words).
"""

from __future__ import annotations

import re
from functools import lru_cache

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from tinystories.data.wordforms import split_sentences

FEATURES = ("Dialogue", "MoralValue", "BadEnding")  # the detectable ones, in the Instruct files' names
BAD_ENDING_THRESHOLD = -0.3  # VADER compound of the last ENDING_SENTENCES sentences
ENDING_SENTENCES = 2
DARK_THRESHOLD = -0.5  # VADER compound of the whole text: strongly negative
_DARK_WORDS_TEXT = (  # death, injury, violence; whole words, case-insensitive
    "die died dies dying dead death deaths kill killed kills killing murder murdered blood bloody bleed "
    "bleeding injured injury injuries wound wounded stab stabbed shoot shot gun guns funeral corpse"
)
DARK_WORDS = tuple(_DARK_WORDS_TEXT.split())

# an opening quote right before a word, words, a closing quote right after one: `"Hi, Tom!"`, `“Yes.”`
_QUOTED_SPEECH = re.compile(r'"(?=\S)[^"\n]*[A-Za-z][^"\n]*(?<=\S)"|“(?=\S)[^”\n]*[A-Za-z][^”\n]*(?<=\S)”')
_MORAL = re.compile(r"\bmoral\b", re.IGNORECASE)
_DARK = re.compile(r"\b(?:" + "|".join(DARK_WORDS) + r")\b", re.IGNORECASE)


@lru_cache(maxsize=1)
def _analyzer() -> SentimentIntensityAnalyzer:
    return SentimentIntensityAnalyzer()


def sentiment(text: str) -> float:
    """VADER's compound score of `text`, in [-1, 1]."""
    return _analyzer().polarity_scores(text)["compound"] if text.strip() else 0.0


def ending_sentiment(story: str, sentences: int = ENDING_SENTENCES) -> float:
    return sentiment(" ".join(split_sentences(story)[-sentences:]))


def has_dialogue(story: str) -> bool:
    return _QUOTED_SPEECH.search(story) is not None


def states_moral(story: str) -> bool:
    return _MORAL.search(story) is not None


def has_bad_ending(story: str) -> bool:
    return ending_sentiment(story) <= BAD_ENDING_THRESHOLD


DETECTORS = {"Dialogue": has_dialogue, "MoralValue": states_moral, "BadEnding": has_bad_ending}


def detect_features(story: str) -> list[str]:
    """Every feature of `FEATURES` the story's text shows, in `FEATURES` order."""
    return [name for name in FEATURES if DETECTORS[name](story)]


def is_dark(text: str) -> bool:
    """Strongly negative as a whole, or naming death, injury or violence."""
    return _DARK.search(text) is not None or sentiment(text) <= DARK_THRESHOLD
