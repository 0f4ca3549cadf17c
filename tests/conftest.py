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


def make_hub_cache(cache_dir: Path, repo_id: str, folder: Path, repo_type: str = "model") -> Path:
    """Lay `folder` out as the real HF cache of `repo_id` (refs/main -> snapshots/<hash>/...).

    Loading `repo_id` with HF_HUB_CACHE=cache_dir and HF_HUB_OFFLINE=1 then takes the same code path
    a user with the Hub takes, without the network.
    """
    import hashlib
    import shutil

    prefix = {"model": "models", "dataset": "datasets", "space": "spaces"}[repo_type]
    root = Path(cache_dir) / f"{prefix}--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit
    if snapshot.exists():
        shutil.rmtree(snapshot)
    shutil.copytree(folder, snapshot)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty offline HF cache: `hub_cache.add(repo_id, folder)` publishes a folder under a repo id.

    HF_HUB_CACHE is set for subprocesses and patched in-process (huggingface_hub reads it at import).
    """
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)

    class _Cache:
        path = cache

        @staticmethod
        def add(repo_id: str, folder: Path, repo_type: str = "model") -> Path:
            return make_hub_cache(cache, repo_id, folder, repo_type)

    return _Cache()
