"""Shared fixtures: offline data, tokenizers and tiny models.

Everything here runs offline on a CPU in seconds. `../shared/data` (real TinyStories text and the
byte-exact GPT-Neo tokenizer) is used when present; the `tiny_tokenizer` fixture trains a small
byte-level BPE on the fly so tests also run without it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network in tests
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SAMPLE_TXT = SHARED_DATA / "tinystories" / "TinyStories-train.sample.txt"
GPT_NEO_TOKENIZER = SHARED_DATA / "tokenizer-gpt-neo"


def read_sample_stories(n: int | None = None) -> list[str]:
    text = SAMPLE_TXT.read_text(encoding="utf-8")
    stories = [s.strip() for s in text.split("<|endoftext|>") if s.strip()]
    return stories[:n] if n else stories


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def sample_txt() -> Path:
    if not SAMPLE_TXT.is_file():
        pytest.skip("../shared/data is not present")
    return SAMPLE_TXT


@pytest.fixture(scope="session")
def stories() -> list[str]:
    if not SAMPLE_TXT.is_file():
        pytest.skip("../shared/data is not present")
    return read_sample_stories()


@pytest.fixture(scope="session")
def gpt_neo_tokenizer_dir() -> Path:
    if not GPT_NEO_TOKENIZER.is_dir():
        pytest.skip("../shared/data/tokenizer-gpt-neo is not present")
    return GPT_NEO_TOKENIZER


@pytest.fixture(scope="session")
def gpt_neo_tokenizer(gpt_neo_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gpt_neo_tokenizer_dir)
