"""Errors and constants every layer shares. Standard library only: importing it costs nothing.

`ConfigError` is what every stage raises for input it cannot run (the CLI prints its message, which names
the fix, without a traceback). The data files of the recipes (`data_generation/`) are found from here.
"""

from __future__ import annotations

import os
from pathlib import Path

TRAINED_CONTEXT = 512  # tokens the TinyStories models were trained at; quality degrades past it
LOCAL_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")

REPO_ROOT = Path(__file__).resolve().parents[2]  # a source checkout: src/tinystories/core.py
DATA_GENERATION_DIR = REPO_ROOT / "data_generation"
EVAL_PROMPTS_FILE = DATA_GENERATION_DIR / "eval_prompts.jsonl"


class ConfigError(ValueError):
    """A recipe or command line that cannot be run; the message names the fix."""


def offline_hint() -> str:
    """Appended to Hub errors: the usual reason a download fails on a configured machine."""
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
    return " (HF_HUB_OFFLINE is set)" if offline else ""
